"""training.pipeline: the whole loop (demos → SFT → PPO / GRPO → held-out eval) on a tiny model, and its pieces."""

from __future__ import annotations

import json
import shutil
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
    # GRPO: from the SFT model, a merged policy, a TRL checkpoint, one metrics row per step.
    assert (out / "grpo" / "policy" / "config.json").is_file() and (out / "grpo" / "adapter" / "adapter_config.json").is_file()
    assert (out / "grpo" / "checkpoint-1" / "trainer_state.json").is_file()
    grpo_manifest = json.loads((out / "grpo" / "manifest.json").read_text(encoding="utf-8"))
    assert grpo_manifest["config"]["model"] == str(out / "sft" / "model") and grpo_manifest["config"]["beta"] > 0
    assert grpo_manifest["config"]["cases"] == str(out / "demos" / "train_cases.jsonl")
    grpo_rows = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in grpo_rows] == [1]
    assert {"reward/mean", "kl", "facts_per_question", "gate_pass", "correct", "questions", "time/update_s"} <= set(grpo_rows[0])
    assert grpo_rows[0]["episodes_this_step"] == 4 and grpo_rows[0]["episodes"] == 4
    # The held-out table has the four variants.
    result = json.loads((out / "eval" / "heldout.json").read_text(encoding="utf-8"))
    assert list(result["agents"]) == list(pipeline.VARIANTS)
    assert all(result["agents"][v]["episodes"] > 0 for v in pipeline.VARIANTS)
    table = (out / "eval" / "heldout.md").read_text(encoding="utf-8")
    assert all(f"| {v} (" in table or f" {v} (`" in table for v in pipeline.VARIANTS)
    assert set(result["paired"]) == {"sft - base", "sft+ppo - sft", "sft+grpo - sft"}
    assert "| sft+grpo - sft | 2 |" in table
    assert grpo_manifest["reward"] == "info_gain" and result["rewards"] == {"sft+ppo": "info_gain", "sft+grpo": "info_gain"}
    assert "RL training reward: sft+ppo: `info_gain`, sft+grpo: `info_gain`." in table

    # Rerunning the same command skips every stage.
    capsys.readouterr()
    assert pipeline.main(["--tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(f"[{stage}] done earlier" in printed for stage in pipeline.STAGES)

    # A GRPO run killed after its checkpoint-1 (no policy, no finished manifest) resumes from it: asked for 2
    # steps, it trains only step 2, and the metrics log keeps step 1's row.
    (out / "grpo" / "manifest.json").unlink()
    shutil.rmtree(out / "grpo" / "policy")
    assert pipeline.main(["--tiny", "--out", str(out), "--stages", "grpo", "--grpo-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"[grpo] resuming from {out / 'grpo' / 'checkpoint-1'} (step 1 of 2)" in printed
    assert "[grpo] step 1:" not in printed and "[grpo] step 2:" in printed
    rows = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0] == grpo_rows[0]
    assert (out / "grpo" / "policy" / "config.json").is_file()
    assert json.loads((out / "grpo" / "manifest.json").read_text())["resumed_from"] == str(out / "grpo" / "checkpoint-1")


def test_options_are_checked_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown stages"):
        pipeline.PipelineOptions(model="m", stages=("demos", "dpo"))
    with pytest.raises(ConfigError, match="multiple of grpo_num_generations"):
        pipeline.PipelineOptions(model="m", grpo_episodes_per_step=6, grpo_num_generations=4)
    with pytest.raises(ConfigError, match="grpo_num_generations >= 2"):
        pipeline.PipelineOptions(model="m", grpo_num_generations=1, grpo_episodes_per_step=4)
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


def test_grpo_config_uses_the_ppo_episodes_and_reward(tmp_path: Path) -> None:
    opts = pipeline.PipelineOptions(model="m", out=str(tmp_path), grpo_episodes_per_step=16, grpo_num_generations=4,
                                    grpo_micro_batch_size=4, grpo_beta=0.05, grpo_lr=5e-5, grpo_lora_r=8)
    ppo = pipeline.ppo_config(opts, tmp_path)
    grpo = pipeline.grpo_config(opts, tmp_path)
    shared = ("model", "cases", "reward_weights", "correct", "incorrect", "question_cost", "repeat_penalty", "invalid_penalty",
              "max_questions", "prompt_format", "max_new_tokens", "max_seq_len", "scorer", "temperature")
    assert {k: getattr(grpo, k) for k in shared} == {k: getattr(ppo, k) for k in shared}
    assert grpo.use_lora and grpo.lora_r == 8 and grpo.beta == 0.05 and grpo.learning_rate == 5e-5
    assert grpo.per_device_train_batch_size * grpo.gradient_accumulation_steps == 16 and grpo.num_generations == 4
    assert grpo.output_dir == str(tmp_path / "grpo")
    args = pipeline.build_parser().parse_args(["--model", "m", "--grpo-steps", "7", "--grpo-beta", "0.1", "--grpo-num-generations", "2",
                                                "--grpo-episodes-per-step", "8", "--grpo-micro-batch-size", "2"])
    parsed = pipeline.options_from_args(args)
    assert (parsed.grpo_steps, parsed.grpo_beta, parsed.grpo_num_generations, parsed.grpo_episodes_per_step) == (7, 0.1, 2, 8)


def test_question_stats_env_counts_questions_facts_gate_and_answers() -> None:
    result = SimpleNamespace

    class Inner:
        @property
        def active(self) -> list[int]:
            return [0, 1]

        def __len__(self) -> int:
            return 2

        def reset_at(self, index: int, **kwargs: object) -> tuple[str, dict[str, object]]:
            return "obs", {"case_id": f"c{index}"}

        def step(self, actions: list[object]) -> list[object]:
            return [
                result(info={"action_type": "question", "reward_components": {"proxy:info_gain": 1.0}}, done=False),
                result(info={"action_type": "answer", "correct": True, "reward_components": {"correctness": 1.0}}, done=True),
            ]

    env = pipeline.QuestionStatsEnv(Inner(), {"c0": {"A": "Flu", "B": "Cold"}, "c1": {"A": "Flu"}}, info_gain_weight=0.5)
    env.reset_at(0, seed=0)
    env.reset_at(1, seed=0)
    assert len(env) == 2
    env.step([{"question": "Do you have a fever?"}, "ANSWER: A"])
    stats = env.take_stats()
    assert stats["facts_per_question"] == 2.0 and stats["gate_pass"] == 1.0 and stats["questions"] == 0.5
    assert stats["correct"] == 0.5 and stats["episodes_this_step"] == 2
    assert env.take_stats()["episodes_this_step"] == 0  # taken: the next step starts afresh


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


def test_reward_option_is_validated_and_reaches_both_env_configs(tmp_path: Path) -> None:
    from benchmarks.hacks import REWARD_CONFIGS

    assert set(pipeline.reward_configs()) == set(REWARD_CONFIGS) | {"info_gain_only"}
    with pytest.raises(ConfigError, match="unknown reward 'info_gian'"):
        pipeline.PipelineOptions(model="m", reward="info_gian")
    assert pipeline.main(["--model", "m", "--out", str(tmp_path / "x"), "--reward", "nope"]) == 2
    assert pipeline.PipelineOptions(model="m").reward == "info_gain"  # the default is unchanged

    parsed = pipeline.options_from_args(pipeline.build_parser().parse_args(["--model", "m", "--reward", "info_gain_only"]))
    assert parsed.reward == "info_gain_only"
    info_gain = REWARD_CONFIGS["info_gain"]
    assert info_gain is not None
    for config in (pipeline.ppo_config(parsed, tmp_path), pipeline.grpo_config(parsed, tmp_path)):
        # The questions alone are rewarded: new facts x 1 - 0.02 per question; the answer earns nothing.
        assert config.correct == 0.0 and config.incorrect == 0.0 and config.scorer == "environment"
        assert config.reward_weights == dict(info_gain.weights) and config.question_cost == info_gain.question_cost
        env_reward = config.reward_config()
        assert (env_reward.correct, env_reward.incorrect, env_reward.question_cost) == (0.0, 0.0, 0.02)
        assert dict(env_reward.weights) == {"proxy_info_gain": 1.0}
    # correctness (None in the hack suite) is the env's own reward with no question scorer.
    plain = pipeline.grpo_config(pipeline.PipelineOptions(model="m", reward="correctness"), tmp_path)
    assert plain.scorer == "none" and plain.correct == 1.0 and plain.question_cost == 0.0
    # A finished RL stage trained with another reward is not silently reused.
    (tmp_path / "grpo" / "policy").mkdir(parents=True)
    (tmp_path / "grpo" / "policy" / "config.json").write_text("{}")
    (tmp_path / "grpo" / "metrics.jsonl").write_text("")
    (tmp_path / "grpo" / "manifest.json").write_text(json.dumps({"complete": True, "reward": "info_gain"}))
    with pytest.raises(ConfigError, match="finished earlier with reward 'info_gain'"):
        pipeline.stage_grpo(parsed, tmp_path, [])
    assert pipeline.trained_rewards({"base": "b", "sft+grpo": "g"}, tmp_path) == {"sft+grpo": "info_gain"}
