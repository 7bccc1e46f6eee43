"""Rejection-sampling fine-tuning (training/rejection_sampling.py): which reply a state keeps, how a crashed
or failed sampling run resumes, and a tiny-model run from sampling to a trained policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mediq_env.errors import ConfigError
from training.rejection_sampling import RejectionSamplingConfig, _read_samples, select_examples


def _reply(text: str, facts: int, asked: bool = True) -> dict[str, Any]:
    return {"text": text, "reward": (facts - 0.02) if asked else (0.0 if text.startswith("ANSWER") else -0.02),
            "new_facts": facts, "asked": asked, "answered": text.startswith("ANSWER"), "invalid": not asked and not text.startswith("ANSWER")}


def _record(case: str, replies: list[dict[str, Any]], source: str = "builtin") -> dict[str, Any]:
    return {"key": case, "source": source, "case_id": case, "prompt": [{"role": "user", "content": case}], "replies": replies}


def test_the_best_accepted_question_is_kept_and_fruitless_states_give_nothing() -> None:
    records = [
        _record("a", [_reply("ASK: q1", 0), _reply("ASK: q2", 2), _reply("ASK: q3", 2), _reply("ANSWER: B", 0, asked=False)]),
        _record("b", [_reply("ASK: nothing", 0), _reply("ANSWER: A", 0, asked=False)]),
        # A reply the gate turned away never wins, whatever it would have found.
        _record("c", [_reply("ASK: fever cough pain", 3, asked=False), _reply("ASK: Any fever?", 1)], source="medqa"),
    ]
    examples, summary = select_examples(records, min_new_facts=1)
    assert [(e["case_id"], e["completion"][0]["content"]) for e in examples] == [("a", "ASK: q2"), ("c", "ASK: Any fever?")]
    assert examples[0]["prompt"] == [{"role": "user", "content": "a"}]
    assert summary["states_sampled"] == 3 and summary["replies"] == 8 and summary["states_kept"] == 2
    assert summary["kept_by_source"] == {"builtin": 1, "medqa": 1}
    assert summary["share_asking"] == pytest.approx(5 / 8)
    assert summary["facts_per_question_sampled"] == pytest.approx(5 / 5)
    assert summary["best_of_n_facts_per_state"] == pytest.approx((2 + 0 + 1) / 3)
    assert select_examples(records, min_new_facts=2)[1]["states_kept"] == 1


def test_failed_and_cut_lines_are_sampled_again_and_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    ok = _record("a", [_reply("ASK: q", 1)])
    path.write_text(json.dumps(ok) + "\n" + json.dumps({"key": "b", "error": "RuntimeError: boom"}) + "\n" + '{"key": "c", "repl', encoding="utf-8")
    done, failed = _read_samples(path)
    assert list(done) == ["a"] and failed == 2
    # A later success for a failed state counts; a later failure for a done state makes it sampled again.
    path.write_text(path.read_text(encoding="utf-8") + "\n" + json.dumps({**ok, "key": "b"}) + "\n" + json.dumps({"key": "a", "error": "x"}) + "\n",
                    encoding="utf-8")
    done, failed = _read_samples(path)
    assert list(done) == ["b"] and failed == 3
    path.write_text(json.dumps({"key": "a", "questions": []}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"samples\.jsonl:1: field 'replies' missing"):
        _read_samples(path)


def test_config_refuses_settings_that_cannot_work() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        RejectionSamplingConfig(temperature=0)
    with pytest.raises(ConfigError, match="samples_per_state"):
        RejectionSamplingConfig(samples_per_state=0)
    with pytest.raises(ConfigError, match="stage"):
        RejectionSamplingConfig(stage="eval")
    with pytest.raises(ConfigError, match="dtype"):
        RejectionSamplingConfig(dtype="float16")
    with pytest.raises(ConfigError, match="state_batch"):
        RejectionSamplingConfig(state_batch=0)
    with pytest.raises(ConfigError, match="states_file is for states=demos"):
        RejectionSamplingConfig(states="policy", states_file="demo_states.jsonl")
    with pytest.raises(ConfigError, match="unknown RejectionSamplingConfig keys"):
        RejectionSamplingConfig.from_dict({"sample_per_state": 4})


def test_command_line_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from training import question_ppo, rejection_sampling

    assert rejection_sampling.main(["--dtype", "float16"]) == 2
    assert question_ppo.main(["--clip", "1.5"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error: rejection sampling: dtype") and "clip" in err[1]


@pytest.mark.slow
def test_tiny_run_samples_resumes_and_trains(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trl")
    import torch
    from transformers import AutoModelForCausalLM

    import training.question_grpo as qg
    import training.rejection_sampling as rs

    torch.set_num_threads(1)
    out = tmp_path / "rft"
    kw: dict[str, Any] = dict(model=str(tiny_dir), output_dir=str(out), sources="builtin", demo_rounds=1, samples_per_state=3,
                              max_new_tokens=6, max_states=4, epochs=2.0, learning_rate=1e-2, batch_size=2, torch_threads=1, device="cpu")
    # First run: one state's scoring fails. It is recorded and counted, and training waits for it.
    real = qg.DecisionReplayer.outcome
    calls = {"n": 0}

    def flaky(self: Any, row: Any, text: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("patient crashed")
        return real(self, row, text)

    monkeypatch.setattr(qg.DecisionReplayer, "outcome", flaky)
    first = rs.run(RejectionSamplingConfig(**kw))
    assert first == {"states": 4, "sampled_now": 3, "failed_now": 1, "complete": False}
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sum("error" in r for r in lines) == 1 and "patient crashed" in next(r["error"] for r in lines if "error" in r)
    assert not (out / "policy").exists()
    # The untrained tiny model writes nothing the parser reads: its real rewards are all the invalid charge.
    assert all(not o["asked"] and o["new_facts"] == 0 for r in lines if "replies" in r for o in r["replies"])

    # Same seed, same samples: a second directory sampled from scratch gives the same replies.
    monkeypatch.setattr(qg.DecisionReplayer, "outcome", real)
    twin = rs.sample_states(RejectionSamplingConfig(**{**kw, "output_dir": str(tmp_path / "twin")}))
    assert twin["complete"]
    texts = {r["key"]: [o["text"] for o in r["replies"]] for r in map(json.loads, (tmp_path / "twin" / "samples.jsonl").read_text().splitlines())}
    assert all(texts[r["key"]] == [o["text"] for o in r["replies"]] for r in lines if "replies" in r)

    # Real rewards give nothing to imitate: the run says so instead of training on nothing.
    with pytest.raises(ConfigError, match="nothing to train on"):
        rs.run(RejectionSamplingConfig(**{**kw, "output_dir": str(tmp_path / "twin"), "stage": "train"}))
    # Resume under a reward by which every non-empty reply finds a fact: only the failed state is sampled
    # again, its first reply is kept, trained on, and the policy moves.
    monkeypatch.setattr(qg.DecisionReplayer, "outcome",
                        lambda self, row, text: qg.Outcome(0.98, 1, True, False, False) if text.strip() else real(self, row, text))
    result = rs.run(RejectionSamplingConfig(**kw))
    assert result["sampled_now"] == 1 and result["complete"] and result["failed_lines"] == 1
    selection = json.loads((out / "selection.json").read_text())
    assert selection["states_sampled"] == 4 and selection["states_kept"] == 1 and result["states"] == 4
    start = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    trained = AutoModelForCausalLM.from_pretrained(str(out / "policy"))
    assert any(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), trained.state_dict().values(), strict=True))
    assert json.loads((out / "config.json").read_text())["samples_per_state"] == 3


@pytest.mark.slow
def test_states_are_built_once_and_batched_sampling_is_left_padded_and_seeded(tiny_dir: Path, tmp_path: Path) -> None:
    """The GPU path: demo states built once and reused from a file, several states per generate call."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import training.rejection_sampling as rs

    torch.set_num_threads(1)
    kw: dict[str, Any] = dict(model=str(tiny_dir), sources="builtin", demo_rounds=1, samples_per_state=2, max_new_tokens=6,
                              max_states=3, torch_threads=1, device="cpu")
    # min_turn picks states at sampling time; the file, and the count reported, hold every state.
    built = rs.run(RejectionSamplingConfig(**kw, output_dir=str(tmp_path / "states"), stage="states", min_turn=1))
    states_file = tmp_path / "states" / "demo_states.jsonl"
    rows = [json.loads(line) for line in states_file.read_text(encoding="utf-8").splitlines()]
    assert built["states"] == len(rows) > 3 and not (tmp_path / "states" / "samples.jsonl").exists()

    # Left padding changes nothing: at a temperature near 0 each prompt's replies in a batch of three are
    # its replies alone.
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    prompts = [rows[i]["prompt"] for i in (0, 1, len(rows) - 1)]
    assert len({len(tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"]) for p in prompts}) > 1
    cold = RejectionSamplingConfig(**{**kw, "temperature": 1e-3})
    alone = [rs._sample(model, tokenizer, [p], cold, seed=0)[0] for p in prompts]
    assert rs._sample(model, tokenizer, prompts, cold, seed=0) == alone

    # From the file, two states per call: every state sampled, and the same command gives the same samples.
    def sampled(name: str) -> dict[str, list[str]]:
        config = RejectionSamplingConfig(**kw, output_dir=str(tmp_path / name), states_file=str(states_file), state_batch=2, stage="sample")
        assert rs.run(config) == {"states": 3, "sampled_now": 3, "failed_now": 0, "complete": True}
        lines = (tmp_path / name / "samples.jsonl").read_text(encoding="utf-8").splitlines()
        return {r["key"]: [o["text"] for o in r["replies"]] for r in map(json.loads, lines)}

    first = sampled("a")
    assert first == sampled("b") and all(len(v) == 2 for v in first.values())

    # Resuming into those samples with another temperature would leave one file of two distributions.
    with pytest.raises(ConfigError, match=r"a/config\.json: field 'temperature' was 1\.0 .* now 0\.5"):
        rs.run(RejectionSamplingConfig(**kw, output_dir=str(tmp_path / "a"), states_file=str(states_file), state_batch=2, stage="sample",
                                       temperature=0.5))
    with pytest.raises(ConfigError, match=r"demo_states\.jsonl:1: field 'source' is 'builtin', not one of this run's sources \['medqa'\]"):
        rs.run(RejectionSamplingConfig(**{**kw, "sources": "medqa"}, output_dir=str(tmp_path / "m"), states_file=str(states_file), stage="sample"))

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({k: v for k, v in rows[0].items() if k != "prefix"}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.jsonl:1: field 'prefix' missing"):
        rs.run(RejectionSamplingConfig(**kw, output_dir=str(tmp_path / "c"), states_file=str(broken), stage="sample"))


class _ScriptedDoctor:
    """Asks two fixed questions, then answers A; counts its calls (a reused states file must not call it)."""

    def __init__(self) -> None:
        self.calls = 0

    def act(self, states: list[Any]) -> list[Any]:
        from agents.base import AgentStep

        self.calls += 1
        script = ["Do you have a fever?", "How long have you had the cough?"]
        return [AgentStep(script[s.questions_asked] if s.questions_asked < len(script) else {"answer": "A"}) for s in states]


def test_policy_states_are_the_policys_own_interviews_and_replay_exactly(tmp_path: Path) -> None:
    from training.question_grpo import DecisionReplayer, QuestionGRPOConfig
    from training.rejection_sampling import policy_states

    replayer = DecisionReplayer(QuestionGRPOConfig(sources="builtin", max_questions=3))
    config = RejectionSamplingConfig(model="scripted", output_dir=str(tmp_path), sources="builtin", states="policy", min_turn=1,
                                     rollout_seeds=2)
    doctor = _ScriptedDoctor()
    rows = policy_states(config, replayer, doctor, batch_size=5)
    train_cases = 22  # even-numbered built-in cases
    # Turn 0 is skipped (min_turn 1); after one and after two questions the doctor could still ask.
    assert len(rows) == 2 * train_cases * 2
    assert {r["prefix"] for r in rows} == {json.dumps(["Do you have a fever?"]),
                                           json.dumps(["Do you have a fever?", "How long have you had the cough?"])}
    assert {r["seed"] for r in rows} == {0, 1} and all(r["case_id"].startswith("bi-") and int(r["case_id"][3:]) % 2 == 0 for r in rows)
    for row in rows[:6]:
        replayer.check(row)  # the replayed state gives back exactly the prompt the policy saw
    assert {"Questions you may still ask: 1" in r["prompt"][-1]["content"] for r in rows} == {True, False}
    # A resumed run reuses the file without playing again; a file rolled out by another policy is refused.
    calls = doctor.calls
    assert policy_states(config, replayer, doctor) == rows and doctor.calls == calls
    with pytest.raises(ConfigError, match=r"states\.jsonl:1: field 'policy' is 'scripted'"):
        policy_states(RejectionSamplingConfig(**{**config.__dict__, "model": "other"}), replayer, doctor)
    # A forced answer (no questions left) is not a decision state.
    short = RejectionSamplingConfig(model="scripted", output_dir=str(tmp_path / "short"), sources="builtin", states="policy",
                                    max_questions=2, min_turn=0)
    rows = policy_states(short, DecisionReplayer(QuestionGRPOConfig(sources="builtin", max_questions=2)), _ScriptedDoctor())
    assert sorted({len(json.loads(r["prefix"])) for r in rows}) == [0, 1] and len(rows) == 2 * train_cases
    with pytest.raises(ConfigError, match="min_turn"):
        RejectionSamplingConfig(min_turn=3, max_questions=3)
    with pytest.raises(ConfigError, match="states must be"):
        RejectionSamplingConfig(states="mixed")


def test_earlier_rounds_are_merged_rescored_by_todays_patient_and_trained_from_train_from(tmp_path: Path,
                                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import training.question_grpo as qg
    import training.rejection_sampling as rs
    import training.sft as sft

    def rec(case: str, *texts: str, facts: int = 1) -> dict[str, Any]:
        key = json.dumps(["builtin", case, 0, 3, "[]"])
        return {"key": key, "source": "builtin", "case_id": case, "prompt": [{"role": "user", "content": case}],
                "replies": [_reply(t, facts) for t in texts]}

    out, old = tmp_path / "round2", tmp_path / "round1.jsonl"
    out.mkdir()
    (out / "samples.jsonl").write_text(json.dumps(rec("bi-002", "ASK: Any fever?")) + "\n", encoding="utf-8")
    # Round one sampled bi-002 too (the newer round's record wins) and bi-004, where its stored scores say the
    # rash question found a fact; today's patient disagrees and the cough question is kept instead.
    old.write_text(json.dumps(rec("bi-002", "ASK: Any rash?")) + "\n" + json.dumps(rec("bi-004", "ASK: Any rash?", "ASK: Any cough?")) + "\n",
                   encoding="utf-8")

    class Today:
        def __init__(self, config: Any) -> None:
            pass

        def outcome(self, row: Any, text: str) -> Any:
            assert row["case_id"] in ("bi-002", "bi-004") and row["prefix"] == "[]"
            found = int("rash" not in text)
            return qg.Outcome(found - 0.02, found, True, False, False)

    seen: dict[str, Any] = {}

    def fake_train(config: Any, examples: Any) -> str:
        seen.update(model=config.model, examples=examples)
        return "policy"

    monkeypatch.setattr(qg, "DecisionReplayer", Today)
    monkeypatch.setattr(sft, "train_sft", fake_train)
    config = RejectionSamplingConfig(model="sampler", train_from="first-policy", output_dir=str(out), stage="train",
                                     extra_samples=str(old), rescore=True)
    result = rs.run(config)
    assert seen["model"] == "first-policy"
    assert sorted(e["completion"][0]["content"] for e in seen["examples"]) == ["ASK: Any cough?", "ASK: Any fever?"]
    assert result["states_from"] == {"samples.jsonl": 1, str(old): 1} and result["rescored"] == {"replies": 3, "changed": 1}
    assert json.loads((out / "selection.json").read_text())["states_kept"] == 2
    # Without rescoring, the stored scores decide (the first of the tied replies), and a missing file is refused.
    rs.run(RejectionSamplingConfig(**{**config.__dict__, "rescore": False}))
    assert sorted(e["completion"][0]["content"] for e in seen["examples"]) == ["ASK: Any fever?", "ASK: Any rash?"]
    with pytest.raises(ConfigError, match=r"extra_samples: .*nope\.jsonl does not exist"):
        rs.run(RejectionSamplingConfig(**{**config.__dict__, "extra_samples": str(tmp_path / "nope.jsonl")}))
