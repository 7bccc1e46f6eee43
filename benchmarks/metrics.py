"""Metrics over episode records, each with its uncertainty.

All functions take plain episode dicts (the lines of ``episodes.jsonl``), so that a finished run can be
re-scored without re-running anything. Failed episodes count as incorrect and are also reported.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy_by_questions",
    "bootstrap_ci",
    "calibration",
    "majority_letter_baseline",
    "paired_bootstrap_diff",
    "summarise",
]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over ``values`` (NaN, NaN for an empty sample)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    stats = np.apply_along_axis(stat, 1, x[idx]) if stat is not np.mean else x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired items, with a bootstrap interval that resamples the pairs together."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError("paired samples must have the same length")
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    d = y - x
    lo, hi = bootstrap_ci(d, n_resamples=n_resamples, level=level, seed=seed)
    return (float(d.mean()), lo, hi)


def majority_letter_baseline(episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of always answering the most common correct letter.

    Reported for the letters as shown (after any shuffling) and for the file's own lettering — the latter
    is what a letter-biased model can exploit when options are not shuffled (about half of MediQ-AskDocs
    answers are C).
    """
    shown = Counter(e["correct_answer"] for e in episodes if e.get("correct_answer"))
    original = Counter(
        e["option_order"]["ABCDEFGHIJ".index(e["correct_answer"])]
        for e in episodes
        if e.get("correct_answer") and e.get("option_order")
    )
    if not shown:
        return {"letter": None, "accuracy": math.nan, "file_letter": None, "file_accuracy": math.nan}
    letter, count = shown.most_common(1)[0]
    file_letter, file_count = original.most_common(1)[0] if original else (None, 0)
    return {
        "letter": letter,
        "accuracy": count / sum(shown.values()),
        "file_letter": file_letter,
        "file_accuracy": file_count / sum(original.values()) if original else math.nan,
    }


def _intermediate(turn: dict[str, Any]) -> str | None:
    agent = turn.get("agent") or {}
    value = agent.get("intermediate_answer")
    return value if isinstance(value, str) else None


def accuracy_by_questions(episodes: Sequence[dict[str, Any]], max_questions: int) -> list[dict[str, float]]:
    """Accuracy of the agent's intermediate answer after k questions, k = 0..max_questions.

    An episode that stopped asking before k questions contributes its final answer. Episodes whose agent
    gives no intermediate answers are left out (their count is reported as ``n``).
    """
    rows = []
    for k in range(max_questions + 1):
        hits = []
        for e in episodes:
            answers: list[str | None] = []
            asked = 0
            for turn in e.get("turns", []):
                if asked == k:
                    answers.append(_intermediate(turn))
                    break
                if turn.get("action_type") == "question":
                    asked += 1
            if asked < k or not answers:
                # Ended before asking k questions: its final answer stands.
                if e.get("answer") is None and not e.get("turns"):
                    continue
                hits.append(bool(e.get("correct")))
            elif answers[0] is not None:
                hits.append(answers[0] == e.get("correct_answer"))
        rows.append({"questions": k, "accuracy": float(np.mean(hits)) if hits else math.nan, "n": len(hits)})
    return rows


def calibration(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> dict[str, Any]:
    """Expected calibration error (equal-width bins), Brier score, and the reliability table."""
    c = np.asarray(confidences, dtype=float)
    y = np.asarray(correct, dtype=float)
    if c.size == 0:
        return {"n": 0, "ece": math.nan, "brier": math.nan, "bins": []}
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(c, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    table = []
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        conf, acc = float(c[mask].mean()), float(y[mask].mean())
        ece += mask.mean() * abs(conf - acc)
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(mask.sum()), "confidence": conf, "accuracy": acc})
    return {"n": int(c.size), "ece": float(ece), "brier": float(np.mean((c - y) ** 2)), "bins": table}


def _mean_ci(values: Sequence[float], seed: int) -> dict[str, float]:
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": float(np.mean(values)) if len(values) else math.nan, "ci_low": lo, "ci_high": hi}


def attribute_means(episodes: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean per-question score of every attribute/proxy recorded in the turns (NaN = unscored, skipped)."""
    values: dict[str, list[float]] = {}
    unscored: Counter[str] = Counter()
    for e in episodes:
        for turn in e.get("turns", []):
            for name, score in (turn.get("scores") or {}).items():
                if score is None or (isinstance(score, float) and math.isnan(score)):
                    unscored[name] += 1
                else:
                    values.setdefault(name, []).append(float(score))
    names = sorted(set(values) | set(unscored))
    return {
        n: {"mean": float(np.mean(values[n])) if values.get(n) else math.nan, "scored": len(values.get(n, [])), "unscored": unscored[n]}
        for n in names
    }


def summarise(episodes: Sequence[dict[str, Any]], *, max_questions: int, seed: int = 0) -> dict[str, Any]:
    """Every metric of one run mode (interactive, or a baseline mode) over its episode records."""
    n = len(episodes)
    correct = [bool(e.get("correct")) and not e.get("error") for e in episodes]
    failed = [e for e in episodes if e.get("error")]
    asked = [e.get("questions_asked", 0) for e in episodes if not e.get("error")]
    coverage = [e["n_facts_revealed"] / e["n_facts"] for e in episodes if e.get("n_facts") and not e.get("error")]
    confident = [(e["confidence"], c) for e, c in zip(episodes, correct, strict=True) if isinstance(e.get("confidence"), (int, float))]
    acc = _mean_ci([float(c) for c in correct], seed)
    return {
        "episodes": n,
        "failed": len(failed),
        "failure_reasons": dict(Counter((e.get("error") or "").split(":")[0] for e in failed)),
        "accuracy": acc,
        "error_rate": {"mean": 1 - acc["mean"], "ci_low": 1 - acc["ci_high"], "ci_high": 1 - acc["ci_low"]},
        "questions_asked": _mean_ci(asked, seed),
        "forced_answer_rate": float(np.mean([bool(e.get("forced")) for e in episodes])) if n else math.nan,
        "no_answer_rate": float(np.mean([e.get("answer") is None for e in episodes])) if n else math.nan,
        "fact_coverage": _mean_ci(coverage, seed),
        "accuracy_by_questions": accuracy_by_questions(episodes, max_questions),
        "calibration": calibration([c for c, _ in confident], [y for _, y in confident]),
        "attributes": attribute_means(episodes),
        "majority_letter": majority_letter_baseline(episodes),
        "reward": _mean_ci([e.get("total_reward", 0.0) for e in episodes], seed),
    }
