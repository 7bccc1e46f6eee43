"""GRPO through TRL's GRPOTrainer with the multi-turn rollout_func (training/grpo.py).

Two optimizer steps on the tiny local Llama on CPU must make the episodes with an above-group-average return
likelier; the rollout must hand TRL whole episodes with the patient's tokens masked out, and the same return
PPO would sum; option orders must change from step to step; episodes cut before their first turn must stay
out of the group baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from mediq_env.case import Case  # noqa: E402
from mediq_env.errors import ConfigError  # noqa: E402
from training.grpo import GRPOEnvConfig, build_grpo_trainer, episode_dataset, episode_return, episode_seed, episodes_to_rollout  # noqa: E402
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
    # The cut episode was never played: no return (TRL leaves it out of the group mean/std), no components.
    assert out["episode_return"] == [1.25, None]
    assert out["episode_components"] == [{"proxy:focus": 0.25, "correctness": 1.0}, None]
    assert out["logprobs"] is None
    logged: list[tuple[str, float]] = []
    assert episode_return([], [], out["episode_return"], log_metric=lambda k, v: logged.append((k, v))) == [1.25, None]
    assert logged == [("episodes/cut_before_first_turn", 1.0)]


def _capture(trainer: Any) -> list[dict[str, Any]]:
    """Wrap the trainer's rollout_func so a test sees every generation batch it handed to TRL."""
    seen: list[dict[str, Any]] = []
    inner = trainer.rollout_func

    def rollout(prompts: list[Any], tr: Any) -> dict[str, Any]:
        out = inner(prompts, tr)
        seen.append({"step": tr.state.global_step, "prompts": prompts, **out})
        return out

    trainer.rollout_func = rollout
    return seen


class LengthBonus:
    """The env plus a ``length`` reward component (the doctor's text length / 10): the tiny model's
    gibberish earns the same env reward in every episode, and GRPO learns nothing from equal returns."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def step(self, actions: list[Any]) -> Any:
        results = self.inner.step(actions)
        for action, r in zip(actions, results, strict=True):
            r.info.setdefault("reward_components", {})["length"] = len(str(action)) / 10.0
        return results


def _seq_logp(model: Any, prompt: list[int], completion: list[int], mask: list[int]) -> float:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    tok = logp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)[len(prompt) - 1 :]
    return float((tok * torch.tensor(mask, dtype=torch.float32)).sum())


def test_two_grpo_steps_make_above_average_episodes_likelier(tiny_dir: Path, tmp_path: Path) -> None:
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config(tmp_path)
    env = LengthBonus(cfg.build_env(4, cases=CASES))
    dataset, lookup = episode_dataset(env, make_prompt_format("env"))
    assert len(dataset) == 3 and sorted(v[0] for v in lookup.values()) == ["g0", "g1", "g2"]

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    trainer = build_grpo_trainer(cfg, model=model, tokenizer=tokenizer, env=env)
    before = copy.deepcopy(trainer.model).eval()
    seen = _capture(trainer)
    trainer.train()
    assert trainer.state.global_step == 2
    # The GRPO objective moved the right way on the episodes it was trained on: the group-normalised
    # advantage times the change of each episode's doctor-token log-probability sums to > 0.
    after = trainer.model.eval()
    print("CHANGED", sum(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters())), [e.get("loss") for e in trainer.state.log_history])
    gain, total = 0.0, 0.0
    for batch in seen:
        returns = torch.tensor(batch["episode_return"], dtype=torch.float32).view(-1, cfg.num_generations)
        adv = ((returns - returns.mean(1, keepdim=True)) / (returns.std(1, keepdim=True) + 1e-4)).flatten()
        for a, p, c, m in zip(adv.tolist(), batch["prompt_ids"], batch["completion_ids"], batch["env_mask"], strict=True):
            delta = _seq_logp(after, p, c, m) - _seq_logp(before, p, c, m)
            print("D", a, delta, sum(m), type(p), len(c))
            gain += a * delta
            total += abs(a)
    assert total > 0 and gain > 0, [(b["step"], b["episode_return"]) for b in seen]
    logs = [entry for entry in trainer.state.log_history if "rewards/episode_return/mean" in entry]
    assert len(logs) == 2
    # Per-component logging (weight 0) sums to the episode return (with the test's unlogged length bonus).
    for entry, batch in zip(logs, seen, strict=True):
        components = sum(v for k, v in entry.items() if k.startswith("rewards/") and k.endswith("/mean") and "episode_return" not in k)
        length = sum(c["length"] for c in batch["episode_components"]) / len(batch["episode_components"])
        assert components + length == pytest.approx(entry["rewards/episode_return/mean"], abs=1e-5)
        # Two doctor turns of at most 5 tokens each: the patient's tokens are not counted as completion.
        assert entry["completions/max_length"] <= 10
