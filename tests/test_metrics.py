"""Metrics and comparisons on constructed data with known answers."""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------------------------------------------
# summary.json: strict JSON, fallbacks, facts per question, coverage


def _llm_turn(kind=None, kinds=None, action_type="question", new_facts=()):
    kinds = list(kinds if kinds is not None else ([kind] if kind else []))
    agent = {"intermediate_answer": "B", "fallback": kinds[0] if kinds else None, "fallback_kinds": kinds}
    return {"action_type": action_type, "agent": agent, "new_facts": list(new_facts)}


def test_summary_is_strict_json_with_none_for_undefined():
    import json

    # No confidences (calibration undefined), no questions, and an empty mode: all undefined values.
    for eps in ([_episode(True, [], "B")], []):
        s = summarise(eps, max_questions=2)
        text = json.dumps(s, allow_nan=False)  # raises on a bare NaN
        assert "NaN" not in text
    s = summarise([], max_questions=0)
    assert s["accuracy"]["mean"] is None and s["calibration"]["ece"] is None
    assert s["accuracy_by_questions"][0]["accuracy"] is None


def test_fallback_summary_rate_and_kinds():
    ep = _episode(True, [], "B")
    ep["turns"] = [
        _llm_turn(),
        _llm_turn(kinds=["decision_unparsed", "question_missing"]),
        _llm_turn("question_missing"),
        _llm_turn("answer_missing", action_type="answer"),
    ]
    s = summarise([ep], max_questions=3)
    assert s["fallback"]["rate"] == pytest.approx(3 / 4) and s["fallback"]["turns"] == 4
    assert s["fallback"]["by_kind"] == {"answer_missing": 1, "decision_unparsed": 1, "question_missing": 2}
    # Baseline agents record no fallback kinds: no fallback entry at all (not a rate of 0).
    assert "fallback" not in summarise([_episode(True, ["A"], "B")], max_questions=1)


def test_facts_per_question_mean_and_case_level_interval():
    def ep(facts_per_q):
        e = _episode(True, [], "B")
        e["turns"] = [_llm_turn(new_facts=range(k)) for k in facts_per_q] + [_llm_turn(action_type="answer")]
        return e

    eps = [ep([2, 0]), ep([1]), ep([]), ep([0, 0, 0])]
    f = summarise(eps, max_questions=3)["facts_per_question"]
    assert f["mean"] == pytest.approx(3 / 6) and f["questions"] == 6
    assert f["ci_low"] <= f["mean"] <= f["ci_high"]
    # Resampling whole episodes: every resample's ratio is one of a few case mixes, all within [0, 1].
    assert f["ci_low"] >= 0 and f["ci_high"] <= 1
    assert summarise([ep([])], max_questions=3)["facts_per_question"]["mean"] is None


def test_fact_coverage_excludes_facts_known_at_reset():
    e = {**_episode(True, [], "B"), "n_facts": 10, "n_facts_revealed": 2}
    assert summarise([e], max_questions=0)["fact_coverage"]["mean"] == pytest.approx(0.2)
    known = {**e, "n_facts_known": 6}
    c = summarise([known], max_questions=0)["fact_coverage"]
    assert c["mean"] == pytest.approx(2 / 4) and c["denominator"] == "n_facts - n_facts_known"
    # Nothing left to find: left out and counted, not a division by zero.
    c = summarise([{**e, "n_facts_known": 10}], max_questions=0)["fact_coverage"]
    assert c["mean"] is None and c["no_facts_to_find"] == 1
    full = summarise([{**e, "mode": "full_information"}], max_questions=0)["fact_coverage"]
    assert full["mean"] is None and "full-information" in full["note"]


# ---------------------------------------------------------------------------------------------------
# Reports: fallback rate, facts per question, None values, the accuracy plot


def _config(**kw):
    from benchmarks.run import BenchConfig

    return BenchConfig(agent="llm:fake", max_questions=2, scorer="none", **kw)


def _llm_episode(kinds_per_turn, mode="interactive", correct=True):
    e = _episode(correct, [], "B")
    e["mode"] = mode
    e["turns"] = [_llm_turn(kinds=k, new_facts=[1]) for k in kinds_per_turn[:-1]]
    e["turns"].append(_llm_turn(kinds=kinds_per_turn[-1], action_type="answer"))
    e["questions_asked"] = len(kinds_per_turn) - 1
    return e


def test_report_flags_a_run_measuring_its_fallback(tmp_path):
    from benchmarks.report import format_summary, write_reports

    mostly_fallback = [_llm_episode([["decision_unparsed", "question_missing"], [], ["answer_missing"]])] * 3
    summary = write_reports(tmp_path, _config(), mostly_fallback)
    report = (tmp_path / "report.md").read_text()
    warning = [line for line in report.splitlines() if "measure the fallback" in line]
    assert len(warning) == 1 and "67%" in warning[0]
    assert "| 66.7% |" in report  # the fallback-rate column
    assert "1.00 [1.00, 1.00]" in report  # one new fact per question
    assert "measure the fallback" in format_summary(summary)
    clean = [_llm_episode([[], [], []])] * 3
    write_reports(tmp_path, _config(), clean)
    report = (tmp_path / "report.md").read_text()
    assert "measure the fallback" not in report and "| 0.0% |" in report


def test_summary_json_is_strict_and_report_renders_undefined_values(tmp_path):
    from benchmarks.report import markdown, write_reports

    eps = [{**_episode(True, [], "B"), "mode": "interactive"}, {**_episode(True, [], "B"), "mode": "full_information"}]
    summary = write_reports(tmp_path, _config(), eps)

    def refuse(token):
        raise AssertionError(f"bare {token} in summary.json")

    json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    full = summary["modes"]["full_information"]["fact_coverage"]
    assert full["mean"] is None
    text = markdown(summary)
    assert "Fact coverage (full_information): not defined" in text
    assert "| — |" in text  # baseline-like episodes: no fallback rate at all, not 0%


def test_accuracy_plot_has_integer_ticks_and_labelled_reference_lines():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.report import accuracy_figure

    rows = [{"questions": k, "accuracy": 0.4 + 0.1 * k, "n": 10} for k in range(3)]
    summary = {
        "modes": {
            "interactive": {"accuracy_by_questions": rows, "majority_letter": {"accuracy": 0.5}},
            "no_interaction": {"accuracy": {"mean": 0.5}},  # on top of the majority-letter line
            "full_information": {"accuracy": {"mean": 0.8}},
        }
    }
    fig = accuracy_figure(summary)
    assert fig is not None
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks == [0, 1, 2]
    labels = ax.get_legend().get_texts()
    names = " | ".join(t.get_text() for t in labels)
    for name in ("no interaction (50%)", "full information (80%)", "majority letter (50%)", "interactive"):
        assert name in names
    # The two lines at 50% keep readable labels: their annotations are moved apart.
    heights = sorted(a.xyann[1] for a in ax.texts if "50%" in a.get_text())
    assert len(heights) == 2 and heights[1] - heights[0] >= 0.05
    plt.close(fig)
    one = {"modes": {"interactive": {"accuracy_by_questions": rows[:1], "majority_letter": {"accuracy": None}}}}
    fig = accuracy_figure(one)
    assert fig is not None
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert [t for t in ax.get_xticks() if lo <= t <= hi] == [0]
    plt.close(fig)


def test_leaderboard_shows_fallback_rate_and_facts_per_question(tmp_path):
    from benchmarks.report import leaderboard

    for name, kinds in (("llm", [["question_missing"], ["question_missing"], []]), ("clean", [[], [], []])):
        run = tmp_path / name
        run.mkdir()
        (run / "manifest.json").write_text(
            json.dumps({"config": {"agent": name, "cases": None, "max_questions": 2, "seed": 0}, "cases_sha256": "abc"})
        )
        record = {**_llm_episode(kinds), "key": "interactive/c0#r0", "case_id": "c0", "error": None}
        (run / "episodes.jsonl").write_text(json.dumps(record) + "\n")
    table = leaderboard([tmp_path / "llm", tmp_path / "clean"])
    assert "fallback" in table.splitlines()[0] and "new facts per question" in table.splitlines()[0]
    assert "66.7% ⚠" in table and "measure the fallback" in table
    assert "| 0.0% |" in table and "1.00 [1.00, 1.00]" in table
