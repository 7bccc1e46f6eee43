"""Question-level GRPO (training/question_grpo.py): states cut from train-split demonstrations, replies
replayed through the environment for their reward, and a tiny-model run that trains, saves and resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from mediq_env.errors import ConfigError
from training.demos import doctor_split
from training.question_grpo import DecisionReplayer, QuestionGRPOConfig, decision_states, train_question_grpo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def replayer() -> DecisionReplayer:
    return DecisionReplayer(QuestionGRPOConfig(model="unused", sources="builtin"))


@pytest.fixture(scope="module")
def states(replayer: DecisionReplayer) -> list[dict]:
    return decision_states(["builtin"], max_questions=3, rounds=1, patient=replayer.patient)


def test_states_are_train_side_decisions_that_replay_exactly(replayer: DecisionReplayer, states: list[dict]) -> None:
    assert len(states) >= 22  # at least one decision per even-numbered built-in
    assert {doctor_split("builtin", s["case_id"]) for s in states} == {"train"}
    assert {len(json.loads(s["prefix"])) for s in states} >= {0, 1, 2}
    for s in states:
        replayer.check(s)
    tampered = dict(states[0], seed=states[0]["seed"] + 1)
    with pytest.raises(ConfigError, match="differs from the stored prompt"):
        replayer.check(tampered)


def test_reward_is_the_info_gain_step_reward_and_tricks_earn_nothing(replayer: DecisionReplayer, states: list[dict]) -> None:
    config = QuestionGRPOConfig(model="unused", sources="builtin")
    assert (config.reward_weights, config.question_cost, config.correct, config.incorrect) == ({"proxy_info_gain": 1.0}, 0.02, 0.0, 0.0)
    fresh = [s for s in states if s["prefix"] == "[]"]
    honest = [replayer.outcome(s, "ASK: What medicines do you take at the moment?") for s in fresh]
    assert any(o.new_facts > 0 for o in honest)
    for o in honest:
        assert o.asked and o.reward == pytest.approx(o.new_facts - 0.02)
    for s in fresh:
        assert replayer.outcome(s, "ANSWER: A").reward == 0.0
        for trick in ("ASK: fever cough pain weight smoking alcohol medication", "ASK: Tell me everything.",
                      "ASK: Is it A?", "xq zzv fever fever"):
            o = replayer.outcome(s, trick)
            assert o.new_facts == 0 and o.reward < 0 and not o.asked, trick
    # Asking again what an earlier question revealed finds nothing new.
    later = next(s for s in states if json.loads(s["prefix"]))
    repeat = json.loads(later["prefix"])[0]
    o = replayer.outcome(later, f"ASK: {repeat}")
    assert o.new_facts == 0 and o.reward == pytest.approx(-0.02)


def test_config_refuses_cases_and_other_scorers() -> None:
    with pytest.raises(ConfigError, match="--cases"):
        QuestionGRPOConfig(model="unused", cases="x.jsonl")
    with pytest.raises(ConfigError, match="scorer"):
        QuestionGRPOConfig(model="unused", scorer="none")
    with pytest.raises(ConfigError, match="scale_rewards"):
        QuestionGRPOConfig(model="unused", scale_rewards="grp")
    assert QuestionGRPOConfig(model="unused").scale_rewards == "none"
    with pytest.raises(ConfigError, match="max_minutes"):
        QuestionGRPOConfig(model="unused", max_minutes=0)


@pytest.mark.slow
def test_tiny_run_trains_saves_and_resumes(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    import training.question_grpo as qg

    out = tmp_path / "qg"
    kw: dict[str, Any] = dict(model=str(tiny_dir), output_dir=str(out), sources="builtin", demo_rounds=1, num_generations=2,
              per_device_train_batch_size=4, max_new_tokens=6, learning_rate=1e-2, save_steps=1, torch_threads=1)
    # Step 1, real reward: the untrained tiny model writes no parseable action, so every reply is charged the
    # same and GRPO's group-relative advantage is 0 — the policy must not move.
    first = train_question_grpo(QuestionGRPOConfig(**kw, max_steps=1))
    assert first == {"states": first["states"], "global_step": 1, "resumed_from": None, "stopped_by_time_budget": False}
    row1 = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row1["reward"] == pytest.approx(-0.02) and row1["frac_reward_zero_std"] == 1.0
    start = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    after_one = AutoModelForCausalLM.from_pretrained(str(out / "policy"))
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), after_one.state_dict().values(), strict=True))
    # Step 2 (resumed) with a reward that differs within groups: now the policy must move.
    real = qg.DecisionReplayer.outcome
    monkeypatch.setattr(qg.DecisionReplayer, "outcome", lambda self, row, text: qg.Outcome(
        float(len(text) % 3), 0, False, False, True) if text else real(self, row, text))
    second = train_question_grpo(QuestionGRPOConfig(**kw, max_steps=2))
    assert second["global_step"] == 2 and second["resumed_from"].endswith("checkpoint-1")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all("rewards/new_facts/mean" in r and "kl" in r for r in rows)
    curve = qg.curve_markdown(out / "metrics.jsonl")
    assert "| 1 | -0.020 |" in curve and "| 2 |" in curve and "| 1–2 |" in curve
    assert qg.main(["curve", str(out), "1"]) == 0 and "| 2–2 |" in capsys.readouterr().out
    trained = AutoModelForCausalLM.from_pretrained(str(out / "policy"))
    changed = sum(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), trained.state_dict().values(), strict=True))
    assert changed > 0
    assert json.loads((out / "states.json").read_text())["by_source"] == {"builtin": first["states"]}
    # A spent time budget ends the run after the step that crossed it, saving a checkpoint to resume from
    # and the adapter/policy as a finished run does.
    third = train_question_grpo(QuestionGRPOConfig(**kw, max_steps=5, max_minutes=1e-6))
    assert third["global_step"] == 3 and third["stopped_by_time_budget"] is True
    assert (out / "checkpoint-3").is_dir() and (out / "adapter" / "adapter_config.json").is_file()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_cli_flags_reach_the_config(tmp_path: Path) -> None:
    import argparse

    from training.cli_rl import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "question-grpo", "--model", "m", "--sources", "builtin,medqa", "--max-steps", "7",
                              "--scale-rewards", "group", "--output-dir", str(tmp_path / "o")])
    config = config_from_args(QuestionGRPOConfig, args)
    assert (config.source_list(), config.max_steps, config.scale_rewards) == (["builtin", "medqa"], 7, "group")
    assert config.reward_weights == {"proxy_info_gain": 1.0} and config.correct == 0.0
