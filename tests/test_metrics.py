"""Metrics and comparisons on constructed data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.compare import error_reduction, matching_turn_pairs, win_rate
from benchmarks.metrics import (
    accuracy_by_questions,
    bootstrap_ci,
    calibration,
    majority_letter_baseline,
    paired_bootstrap_diff,
    summarise,
)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.random(50) < 0.7
    large = rng.random(5000) < 0.7
    lo_s, hi_s = bootstrap_ci(small.astype(float))
    lo_l, hi_l = bootstrap_ci(large.astype(float))
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    # Binomial standard error for n=5000, p=0.7 is 0.0065: a 95% interval is about 0.025 wide.
    assert 0.018 < hi_l - lo_l < 0.032


def test_bootstrap_degenerate_and_empty():
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_paired_diff_known_answer():
    a = [0, 0, 1, 1] * 25
    b = [1, 0, 1, 1] * 25
    mean, lo, hi = paired_bootstrap_diff(a, b)
    assert mean == pytest.approx(0.25)
    assert lo > 0.1 and hi < 0.4


def test_error_reduction_known_answer():
    # A: 40% accuracy (60% error); B: 70% accuracy (30% error) -> 50% fewer errors.
    a = np.array([1] * 40 + [0] * 60)
    b = np.array([1] * 70 + [0] * 30)
    r = error_reduction(a, b)
    assert r["percent"] == pytest.approx(50.0)
    assert r["ci_low"] < 50 < r["ci_high"]
    assert math.isnan(error_reduction(np.ones(5), np.ones(5))["percent"])  # A made no errors


def test_win_rate_counts_ties_half_and_never_drops_unscored():
    r = win_rate([1.0, 0.0, 0.5, float("nan")])
    assert r["pairs"] == 4 and r["unscored_pairs"] == 1
    assert r["win_rate"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert r["win_rate_parsed_only"] == pytest.approx(0.5)
    # Zero scores are data: a B that always loses has a win rate of 0, not an undefined one.
    assert win_rate([0.0, 0.0, 0.0])["win_rate"] == 0.0


def test_calibration_perfect_and_overconfident():
    perfect = calibration([0.8] * 10, [True] * 8 + [False] * 2)
    assert perfect["ece"] == pytest.approx(0.0) and perfect["brier"] == pytest.approx(0.16)
    over = calibration([1.0] * 10, [True] * 5 + [False] * 5)
    assert over["ece"] == pytest.approx(0.5)


def _episode(correct, answers, final, correct_answer="B", order=("A", "B", "C", "D")):
    turns = [{"action_type": "question", "agent": {"intermediate_answer": a}} for a in answers]
    turns.append({"action_type": "answer", "agent": {"intermediate_answer": final}})
    return {"correct": correct, "answer": final, "correct_answer": correct_answer, "turns": turns, "questions_asked": len(answers), "option_order": list(order), "n_facts": 10, "n_facts_revealed": 2}


def test_accuracy_by_questions_uses_intermediate_then_final():
    eps = [_episode(True, ["A", "B"], "B"), _episode(False, ["A"], "A")]
    rows = accuracy_by_questions(eps, 2)
    # k=0: both wrong; k=1: first right (B), second wrong; k=2: second stopped early, its wrong final stands.
    assert [r["accuracy"] for r in rows] == [0.0, 0.5, 0.5]


def test_majority_letter_in_shown_and_file_lettering():
    eps = [_episode(True, [], "B", "B", ("C", "A", "B", "D"))] * 3 + [_episode(True, [], "A", "A")]
    m = majority_letter_baseline(eps)
    assert m["letter"] == "B" and m["accuracy"] == 0.75
    assert m["file_letter"] == "A" and m["file_accuracy"] == 1.0


def test_summary_counts_failures_as_incorrect():
    eps = [_episode(True, [], "B"), {**_episode(True, [], "B"), "error": "agent failed: boom"}]
    s = summarise(eps, max_questions=0)
    assert s["failed"] == 1 and s["accuracy"]["mean"] == 0.5
    assert s["failure_reasons"] == {"agent failed": 1}


def test_matching_turns_stop_where_dialogues_diverge():
    q = lambda text: {"action_type": "question", "action": text}  # noqa: E731
    a = {"turns": [q("Age?"), q("Smoke?"), q("Fever?")]}
    b = {"turns": [q("Age?"), q("Cough?"), q("Fever?")]}
    assert matching_turn_pairs(a, b) == [(0, "Age?", "Age?"), (1, "Smoke?", "Cough?")]
