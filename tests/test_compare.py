"""Paired comparison of runs: honest error-reduction intervals, case-level win-rate intervals, dialogue-prefix
pairing, refusal of runs with different settings, and what `mediq compare` prints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.compare import (
    WIN_RATE_NEEDS_JUDGE,
    compare_runs,
    error_reduction,
    format_comparison,
    matching_turn_pairs,
    win_rate,
)
from benchmarks.metrics import newcombe_paired_diff
from mediq_env.errors import ConfigError

CONFIG = {"agent": "x", "seed": 0, "shuffle_options": True, "patient": "lookup", "max_questions": 2,
          "initial_info": "auto", "cases": None}


def _q(text: str, reply: str = "No.") -> dict[str, Any]:
    return {"action_type": "question", "action": {"question": text}, "reply": reply}


def _write_run(path: Path, correct: list[bool], *, agent: str = "x", sha: str = "abc", **config: Any) -> Path:
    path.mkdir(parents=True)
    manifest = {"config": {**CONFIG, "agent": agent, **config}, "cases_sha256": sha}
    (path / "manifest.json").write_text(json.dumps(manifest))
    lines = [
        json.dumps({"key": f"interactive/c{i}#r0", "mode": "interactive", "case_id": f"c{i}", "correct": c,
                    "questions_asked": 1, "error": None,
                    "turns": [_q("Age?"), {"action_type": "answer", "action": {"answer": "A"}}]})
        for i, c in enumerate(correct)
    ]
    (path / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------
# Error reduction and the paired difference


def test_error_reduction_one_error_against_none_is_not_a_certain_100_percent():
    a = np.array([0] + [1] * 19)  # A: 1 error in 20
    b = np.ones(20)  # B: none
    r = error_reduction(a, b)
    assert r["percent"] == pytest.approx(100.0)
    assert (r["errors_a"], r["errors_b"], r["n"]) == (1, 0, 20)
    # About (19/20)^20 = 36% of resamples hold no error of A: the ratio is undefined there, and it says so.
    assert 500 < r["undefined_resamples"] < 900
    assert math.isnan(r["ci_low"]) and r["ci_high"] == pytest.approx(100.0)  # lower end unbounded, never [100, 100]
    # The small-count interval on the difference of error rates includes "no difference".
    d = r["error_rate_diff"]
    assert d["mean"] == pytest.approx(0.05) and d["ci_low"] < 0 < d["ci_high"]
    assert "Newcombe" in d["method"] and "undefined" in r["method"]


def test_error_reduction_large_counts_unchanged_and_fully_defined():
    a = np.array([1] * 40 + [0] * 60)
    b = np.array([1] * 70 + [0] * 30)
    r = error_reduction(a, b)
    assert r["percent"] == pytest.approx(50.0) and r["undefined_resamples"] == 0
    assert 30 < r["ci_low"] < 50 < r["ci_high"] < 70


def test_newcombe_paired_interval_keeps_its_coverage_for_small_counts():
    # 20 paired cases, errors rare (A 8%, B 4%, correlated): the regime where percentile bootstraps fail.
    rng = np.random.default_rng(0)
    p_both, p_a_only, p_b_only = 0.03, 0.05, 0.01  # P(both wrong), P(only A wrong), P(only B wrong)
    truth = (p_both + p_a_only) - (p_both + p_b_only)  # err_A - err_B = acc_B - acc_A
    covered = 0
    sims = 1000
    for _ in range(sims):
        u = rng.random(20)
        a = ~((u < p_both) | ((u >= p_both) & (u < p_both + p_a_only)))  # A correct
        b = ~((u < p_both) | ((u >= p_both + p_a_only) & (u < p_both + p_a_only + p_b_only)))
        d = newcombe_paired_diff(a.astype(float), b.astype(float))
        covered += d["ci_low"] <= truth <= d["ci_high"]
    assert covered / sims >= 0.93
    same = newcombe_paired_diff([1, 0, 1], [1, 0, 1])
    assert same["mean"] == 0 and same["ci_low"] < 0 < same["ci_high"]


# ---------------------------------------------------------------------------------------------------
# Win rate and matching turns


def test_win_rate_interval_resamples_episodes_not_turns():
    # 10 episodes of 10 turns each; within an episode B always wins or always loses: the effective sample
    # is 10 episodes, not 100 turns.
    values = [1.0] * 50 + [0.0] * 50
    clusters = [i // 10 for i in range(100)]
    by_turn = win_rate(values)
    by_case = win_rate(values, clusters=clusters)
    assert by_case["win_rate"] == by_turn["win_rate"] == 0.5
    assert by_case["interval"] == "cluster bootstrap over episodes" and by_case["clusters"] == 10
    width_turn = by_turn["ci_high"] - by_turn["ci_low"]
    width_case = by_case["ci_high"] - by_case["ci_low"]
    assert width_case > 2.5 * width_turn
    # Binomial with n = 10 episodes: the 95% interval is about +-0.3.
    assert 0.45 < width_case < 0.75


def test_matching_turns_need_the_same_replies_too():
    a = {"turns": [_q("Age?", "I am 40."), _q("Smoke?", "No."), _q("Fever?")]}
    b = {"turns": [_q("Age?", "Forty."), _q("Smoke?", "No."), _q("Fever?")]}
    # Same first question, different replies: the second questions answer different dialogues.
    assert matching_turn_pairs(a, b) == [(0, "Age?", "Age?")]
    same = {"turns": [_q("Age?", "I am 40."), _q("Cough?", "No.")]}
    assert matching_turn_pairs(a, same) == [(0, "Age?", "Age?"), (1, "Smoke?", "Cough?")]
    # The case shown differently (another option order): no shared context at all.
    assert matching_turn_pairs({**a, "option_order": ["A", "B"]}, {**a, "option_order": ["B", "A"]}) == []


# ---------------------------------------------------------------------------------------------------
# compare_runs: settings, messages, progress


def test_compare_refuses_runs_with_different_settings_unless_forced(tmp_path):
    a = _write_run(tmp_path / "a", [True, False, True])
    b = _write_run(tmp_path / "b", [True, True, True], seed=1, shuffle_options=False, sha="def")
    with pytest.raises(ConfigError) as err:
        compare_runs(a, b)
    for setting in ("seed", "shuffle_options", "cases_sha256"):
        assert setting in str(err.value)
    assert "max_questions" not in str(err.value)
    r = compare_runs(a, b, force=True)
    assert r["warnings"] and "seed" in r["warnings"][0]
    text = format_comparison(r)
    assert text.splitlines()[0].startswith("WARNING: FORCED")
    # Same settings: no warning.
    c = _write_run(tmp_path / "c", [True, True, False])
    assert compare_runs(a, c)["warnings"] == []


def test_compare_output_is_strict_json_and_says_the_win_rate_needs_a_judge(tmp_path):
    a = _write_run(tmp_path / "a", [True] * 20, agent="base")  # A made no error: the reduction is undefined
    b = _write_run(tmp_path / "b", [True] * 19 + [False], agent="new")
    r = compare_runs(a, b)
    json.dumps(r, allow_nan=False)
    assert r["error_reduction"]["percent"] is None and r["win_rate_note"] == WIN_RATE_NEEDS_JUDGE
    text = format_comparison(r)
    assert "undefined, A made no error" in text and "--judge" in text
    assert "Newcombe" in text


def test_compare_out_that_cannot_be_written_is_one_line(tmp_path, capsys):
    from mediq_env.cli import main

    a = _write_run(tmp_path / "a", [True, False, True])
    b = _write_run(tmp_path / "b", [True, True, True])
    (tmp_path / "afile").write_text("x")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "afile" / "c.json")]) == 2
    captured = capsys.readouterr()
    assert "paired episodes: 3" in captured.out  # the comparison itself is still printed
    assert captured.err == f"mediq: error: cannot write {tmp_path / 'afile' / 'c.json'}: Not a directory\n"


def test_judged_win_rate_shows_progress_and_resamples_episodes(tmp_path, capsys):
    from benchmarks.run import BenchConfig, run_benchmark
    from mediq_env.backends.scripted import ScriptedBackend

    a = BenchConfig(agent="checklist", max_questions=2, limit=3, scorer="none", modes=("interactive",))
    b = BenchConfig(agent="random:5", max_questions=2, limit=3, scorer="none", modes=("interactive",))
    run_benchmark(a, tmp_path / "a", progress=False)
    run_benchmark(b, tmp_path / "b", progress=False)
    capsys.readouterr()
    r = compare_runs(tmp_path / "a", tmp_path / "b", judge=ScriptedBackend(["B"], cycle=True), progress=True)
    assert "judging" in capsys.readouterr().err
    w = r["win_rate"]
    assert w["interval"] == "cluster bootstrap over episodes" and w["clusters"] == 3
    assert "win rate of B" in format_comparison(r) and "--judge" not in format_comparison(r)
