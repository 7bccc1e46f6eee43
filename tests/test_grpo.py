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
from training.grpo import (  # noqa: E402
    GRPOEnvConfig,
    build_grpo_trainer,
    episode_dataset,
    episode_return,
    episode_seed,
    episodes_to_rollout,
)
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config(tmp_path)
    env = LengthBonus(cfg.build_env(4, cases=CASES))
    dataset, lookup = episode_dataset(env, make_prompt_format("env"))
    assert len(dataset) == 3 and sorted(v[0] for v in lookup.values()) == ["g0", "g1", "g2"]

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    trainer = build_grpo_trainer(cfg, model=model, tokenizer=tokenizer, env=env)
    seen = _capture(trainer)
    trainer.train()
    assert trainer.state.global_step == 2
    # The GRPO objective moved the right way on the episodes it was trained on: the group-normalised
    # advantage times the change of each episode's doctor-token log-probability sums to > 0.
    # Fresh copies: the initial weights from disk, the trained ones loaded into a plain model (TRL patches
    # the trained model's forward, and a deepcopy would keep calling the original through that patch).
    before = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    after = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    after.load_state_dict(trainer.model.state_dict())
    gain, total = 0.0, 0.0
    for batch in seen:
        returns = torch.tensor(batch["episode_return"], dtype=torch.float32).view(-1, cfg.num_generations)
        adv = ((returns - returns.mean(1, keepdim=True)) / (returns.std(1, keepdim=True) + 1e-4)).flatten()
        for a, p, c, m in zip(adv.tolist(), batch["prompt_ids"], batch["completion_ids"], batch["env_mask"], strict=True):
            delta = _seq_logp(after, p, c, m) - _seq_logp(before, p, c, m)
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


def test_each_generation_step_reshuffles_the_options(tiny_dir: Path, tmp_path: Path) -> None:
    """seeds_per_case=1: the dataset has one row per case, but each generation step plays it with a new
    seed (a new option order), the same for every episode of the group."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert [episode_seed(0, s, 1) for s in range(3)] == [0, 1, 2]
    assert {episode_seed(b, s, 2) for b in range(2) for s in range(3)} == set(range(6))  # rows never collide
    four = [
        Case(id=f"f{i}", initial_info=f"A woman has had a rash for {i + 2} days.", facts=CASES[0].facts, question="Most likely cause?",
             options={"A": "eczema", "B": "measles", "C": "scabies", "D": "psoriasis"}, answer="A")
        for i in range(2)
    ]
    cfg = config(tmp_path, max_new_tokens=2)
    trainer = build_grpo_trainer(
        cfg, model=AutoModelForCausalLM.from_pretrained(tiny_dir), tokenizer=AutoTokenizer.from_pretrained(tiny_dir), env=cfg.build_env(4, cases=four)
    )
    prompt = trainer.train_dataset[0]["prompt"]
    tok = trainer.processing_class
    openings = []
    for step in range(4):
        trainer.state.global_step = step
        out = trainer.rollout_func([prompt, prompt], trainer)
        assert out["prompt_ids"][0] == out["prompt_ids"][1]  # one group, one opening
        openings.append(tok.decode(out["prompt_ids"][0]))
    assert openings[0] == tok.decode(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert len(set(openings)) > 1


def test_episodes_cut_before_their_first_turn_stay_out_of_the_baseline(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    long_case = Case(id="long", initial_info="The patient reports a cough. " * 80, facts=CASES[0].facts, question="Most likely cause?",
                     options={"A": "eczema", "B": "measles"}, answer="A")
    cases = [CASES[0], long_case]  # two rows, two groups a step: every step plays both
    cfg = config(tmp_path, max_seq_len=300, max_steps=1)
    env = LengthBonus(cfg.build_env(4, cases=cases))
    trainer = build_grpo_trainer(
        cfg, model=AutoModelForCausalLM.from_pretrained(tiny_dir), tokenizer=AutoTokenizer.from_pretrained(tiny_dir), env=env
    )
    seen = _capture(trainer)
    advantages: list[float] = []
    score = trainer._generate_and_score_completions

    def scoring(inputs: Any) -> Any:
        out = score(inputs)
        advantages.extend(out["advantages"].tolist())
        return out

    trainer._generate_and_score_completions = scoring
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == len(seen) == 1
    cut_total = 0
    for entry, batch in zip(logs, seen, strict=True):
        played = [r for r in batch["episode_return"] if r is not None]
        cut = len(batch["episode_return"]) - len(played)
        cut_total += cut
        # The logged mean reward is over played episodes only, and the cut ones are counted.
        assert entry["reward"] == pytest.approx(sum(played) / len(played), abs=1e-5)
        assert entry["episodes/cut_before_first_turn"] == cut
    assert cut_total == cfg.num_generations
    # TRL gave the cut episodes advantage 0 (they are NaN in its baseline), the played ones a real one.
    returns = [r for batch in seen for r in batch["episode_return"]]
    assert [a for a, r in zip(advantages, returns, strict=True) if r is None] == [0.0] * cut_total
    assert any(a != 0 for a, r in zip(advantages, returns, strict=True) if r is not None)
