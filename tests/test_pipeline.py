"""training.pipeline: the whole loop (demos → SFT → PPO → held-out eval) on a tiny model, and its pieces."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from mediq_env.errors import ConfigError
from training import pipeline


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_pipeline_runs_every_stage_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pipe"
    assert pipeline.main(["--tiny", "--out", str(out)]) == 0

    for stage in pipeline.STAGES:
        manifest = json.loads((out / stage / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["complete"] and manifest["stage"] == stage
        for rel in manifest["outputs"]:
            assert (out / stage / rel).exists(), f"{stage}: {rel} missing"
    # demos: train split only; PPO plays train cases; eval uses held-out ones; the two never overlap.
    demos = json.loads((out / "demos" / "manifest.json").read_text(encoding="utf-8"))
    assert demos["split"] == "train"
    train_ids = {json.loads(line)["id"] for line in (out / "demos" / "train_cases.jsonl").read_text().splitlines()}
    held_ids = {json.loads(line)["id"] for line in (out / "eval" / "cases" / "builtin.jsonl").read_text().splitlines()}
    assert train_ids and held_ids and not train_ids & held_ids
    assert all(int(i.rsplit("-", 1)[1]) % 2 == 0 for i in train_ids)
    # SFT went through `mediq train sft`; PPO exported a loadable policy and logged the question metrics.
    assert (out / "sft" / "model" / "config.json").is_file()
    assert json.loads((out / "sft" / "manifest.json").read_text())["command"].startswith("mediq train sft")
    assert (out / "ppo" / "policy" / "config.json").is_file()
    metrics = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and {"reward/mean", "kl", "facts_per_question", "gate_pass"} <= set(metrics[-1])
    # The held-out table has the three variants.
    result = json.loads((out / "eval" / "heldout.json").read_text(encoding="utf-8"))
    assert list(result["agents"]) == list(pipeline.VARIANTS)
    assert all(result["agents"][v]["episodes"] > 0 for v in pipeline.VARIANTS)
    table = (out / "eval" / "heldout.md").read_text(encoding="utf-8")
    assert all(f"| {v} (" in table or f" {v} (`" in table for v in pipeline.VARIANTS)
    assert set(result["paired"]) == {"sft - base", "sft+ppo - sft"}

    # Rerunning the same command skips every stage.
    capsys.readouterr()
    assert pipeline.main(["--tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(f"[{stage}] done earlier" in printed for stage in pipeline.STAGES)


def test_options_are_checked_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown stages"):
        pipeline.PipelineOptions(model="m", stages=("demos", "dpo"))
    with pytest.raises(ConfigError, match=r"adapter_config\.json"):
        pipeline.PipelineOptions(model="m", sft_adapter=str(tmp_path))
    assert pipeline.main(["--out", str(tmp_path / "x")]) == 2  # no --model, no --tiny


def test_agent_specs() -> None:
    assert pipeline.base_agent_spec("smollm2", vllm=False) == "llm:smollm2-base"  # not the shipped adapter
    assert pipeline.base_agent_spec("hf:Qwen/Qwen2.5-1.5B-Instruct", vllm=True) == "llm:vllm:Qwen/Qwen2.5-1.5B-Instruct"
    assert pipeline.agent_spec("runs/p/sft/model", vllm=False) == "llm:hf:runs/p/sft/model"


def test_split_cases_are_disjoint(tmp_path: Path) -> None:
    train = pipeline.write_split_cases("train", tmp_path / "t.jsonl", ["builtin"])["builtin"]
    held = pipeline.write_split_cases("heldout", tmp_path / "h.jsonl", ["builtin"])["builtin"]
    assert train and held and not set(train) & set(held)
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == len(train)


def test_ppo_config_uses_the_info_gain_reward(tmp_path: Path) -> None:
    from benchmarks.hacks import REWARD_CONFIGS

    opts = pipeline.PipelineOptions(model="m", out=str(tmp_path))
    config = pipeline.ppo_config(opts, tmp_path)
    reward = REWARD_CONFIGS["info_gain"]
    assert reward is not None
    assert config.reward_weights == dict(reward.weights) and config.question_cost == reward.question_cost
    assert config.use_lora and config.model == str(tmp_path / "sft" / "model")
    assert config.cases == str(tmp_path / "demos" / "train_cases.jsonl")
    assert pipeline.ppo_command(config).startswith("mediq train ppo --model ")


def test_question_stats() -> None:
    turn = SimpleNamespace
    episodes = [
        SimpleNamespace(case_id="c", turns=[
            turn(kind="question", action={"question": "Do you have a fever?"}, components={"proxy:info_gain": 2.0}),
            turn(kind="question", action="fever cough smoking alcohol", components={"proxy:info_gain": 0.0}),
            turn(kind="answer", action="ANSWER: A", components={"correct": 1.0}),
        ])
    ]
    stats = pipeline.question_stats(episodes, {"c": {"A": "Flu", "B": "Cold"}})
    assert stats["facts_per_question"] == 1.0 and stats["gate_pass"] == 0.5 and stats["questions_total"] == 2.0
