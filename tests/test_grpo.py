"""GRPO through TRL's GRPOTrainer with the multi-turn rollout_func (training/grpo.py).

Two optimizer steps on the tiny local Llama on CPU must change its weights; the rollout must hand TRL whole
episodes with the patient's tokens masked out, and the same return PPO would sum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from mediq_env.case import Case  # noqa: E402
from mediq_env.errors import ConfigError  # noqa: E402
from training.grpo import GRPOEnvConfig, build_grpo_trainer, episode_dataset, episodes_to_rollout  # noqa: E402
from training.rl_common import Episode, TurnLog, make_prompt_format  # noqa: E402

CASES = [
    Case(
        id=f"g{i}",
        initial_info=f"A woman has had a rash for {i + 2} days.",
        facts=("The patient has a fever.", "The patient has an itchy rash.", "The patient has a new cat.", "The patient is 30 years old."),
        question="Most likely cause?",
        options={"A": "eczema", "B": "measles"},
        answer="A",
    )
    for i in range(3)
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(out: Path, **kw: Any) -> GRPOEnvConfig:
    base: dict[str, Any] = {
        "model": "unused",
        "output_dir": str(out),
        "prompt_format": "env",
        "max_questions": 1,
        "max_new_tokens": 5,
        "num_generations": 2,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1e-2,
        "use_cpu": True,
        # proxy_focus depends on the words written, so the two episodes of a group (almost surely) differ
        # and the group-relative advantage is not zero.
        "reward_weights": {"proxy_focus": 1.0},
        "max_seq_len": 400,
    }
    base.update(kw)
    return GRPOEnvConfig(**base)


@pytest.mark.parametrize(
    "kw", [{"num_generations": 1}, {"per_device_train_batch_size": 3}, {"temperature": 0.0}, {"max_steps": 0}]
)
def test_config_rejects_bad_values(tmp_path: Path, kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        config(tmp_path, **kw)


def test_rollout_output_masks_the_patient() -> None:
    ep = Episode("g0", 0, list(range(10)), [0, 0, 0, 1, 1, 0, 0, 1, 1, 1], prompt_len=3)
    ep.turns = [TurnLog("q", "q", "question", 0.25, {"proxy:focus": 0.25}, 4), TurnLog("a", "a", "answer", 1.0, {"correctness": 1.0}, 9)]
    cut = Episode("g1", 0, [0, 1, 2], [0, 0, 0], prompt_len=3, cut=True)
    out = episodes_to_rollout([ep, cut], pad_id=99)
    assert out["prompt_ids"] == [[0, 1, 2], [0, 1, 2]]
    assert out["completion_ids"][0] == [3, 4, 5, 6, 7, 8, 9]
    assert out["env_mask"][0] == [1, 1, 0, 0, 1, 1, 1]
    assert out["completion_ids"][1] == [99] and out["env_mask"][1] == [0]
    assert out["episode_return"] == [1.25, 0.0]
    assert out["logprobs"] is None


def test_two_grpo_steps_change_the_parameters(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config(tmp_path)
    env = cfg.build_env(4, cases=CASES)
    dataset, lookup = episode_dataset(env, make_prompt_format("env"))
    assert len(dataset) == 3 and sorted(v[0] for v in lookup.values()) == ["g0", "g1", "g2"]

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    trainer = build_grpo_trainer(cfg, model=model, tokenizer=tokenizer, env=env)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v)]
    assert changed
    logs = [entry for entry in trainer.state.log_history if "rewards/episode_return/mean" in entry]
    assert len(logs) == 2
    # Per-component logging (weight 0) sums to the episode return.
    for entry in logs:
        components = sum(v for k, v in entry.items() if k.startswith("rewards/") and k.endswith("/mean") and "episode_return" not in k)
        assert components == pytest.approx(entry["rewards/episode_return/mean"], abs=1e-5)
        # Two doctor turns of at most 5 tokens each: the patient's tokens are not counted as completion.
        assert entry["completions/max_length"] <= 10
