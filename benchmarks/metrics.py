"""Metrics over episode records, each with its uncertainty.

All functions take plain episode dicts (the lines of ``episodes.jsonl``), so that a finished run can be
re-scored without re-running anything. Failed episodes count as incorrect and are also reported.

:func:`summarise` returns None (never NaN) for an undefined value, so ``summary.json`` is strict JSON.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "FALLBACK_WARN_RATE",
    "accuracy_by_questions",
    "bootstrap_ci",
    "calibration",
    "cluster_bootstrap_ratio",
    "facts_and_questions",
    "facts_per_question",
    "fallback_summary",
    "majority_letter_baseline",
    "nan_to_none",
    "newcombe_paired_diff",
    "paired_bootstrap_diff",
    "paired_episode_diffs",
    "paired_ratio_diff",
    "redraw_summary",
    "summarise",
    "wilson_interval",
]

FALLBACK_WARN_RATE = 0.2
"""Above this share of agent turns taken by fallbacks, a run's numbers describe the fallback, not the model."""


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


def wilson_interval(successes: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (valid at 0 or n successes, unlike the Wald interval)."""
    if n <= 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


NEWCOMBE_METHOD = "Newcombe square-and-add (Wilson score) interval for paired proportions"


def newcombe_paired_diff(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, level: float = 0.95
) -> dict[str, Any]:
    """``mean(b) - mean(a)`` for paired 0/1 outcomes, with Newcombe's square-and-add interval.

    Newcombe (1998, Stat Med 17:2635), as in Fagerland, Lydersen & Laake, *Statistical Analysis of
    Contingency Tables* (2017, ch. 8): Wilson intervals of both proportions, combined with the estimated
    correlation of the pair (shrunk towards 0 by n/2 when positive). Unlike a percentile bootstrap it keeps
    its coverage for small counts: 1 error in 20 against 0 gives an interval that includes 0 and negatives.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError("paired samples must have the same length")
    if not np.isin(x, (0.0, 1.0)).all() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("the Newcombe interval needs 0/1 outcomes")
    n = int(x.size)
    out: dict[str, Any] = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "method": NEWCOMBE_METHOD}
    if n == 0:
        return out
    # The paired table: rows b (1, 0), columns a (1, 0).
    n11 = int(((y == 1) & (x == 1)).sum())
    n10 = int(((y == 1) & (x == 0)).sum())
    n01 = int(((y == 0) & (x == 1)).sum())
    n00 = n - n11 - n10 - n01
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = wilson_interval(n11 + n10, n, level=level)
    l2, u2 = wilson_interval(n11 + n01, n, level=level)
    margins = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    cross = n11 * n00 - n10 * n01
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    else:
        phi = cross / math.sqrt(margins)
    d = p1 - p2
    lower = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    out.update(mean=d, ci_low=max(-1.0, lower), ci_high=min(1.0, upper))
    return out


def cluster_bootstrap_ratio(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``sum(numerators) / sum(denominators)`` with a cluster (case-level) percentile bootstrap interval.

    Each position is one cluster (an episode): its items (turns, questions) are correlated, so clusters are
    resampled whole, never items one by one. A resample whose denominators sum to zero has no ratio: it is
    left out and counted in ``undefined_resamples`` (reported, never hidden). Undefined values are NaN.
    """
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if num.shape != den.shape:
        raise ValueError("numerators and denominators must have the same length")
    total = float(den.sum()) if den.size else 0.0
    out: dict[str, Any] = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "clusters": int(num.size),
                           "undefined_resamples": 0}
    if total == 0:
        return out
    out["mean"] = float(num.sum()) / total
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(n_resamples, num.size))
    sn, sd = num[idx].sum(axis=1), den[idx].sum(axis=1)
    ok = sd > 0
    out["undefined_resamples"] = int((~ok).sum())
    if ok.any():
        ratios = sn[ok] / sd[ok]
        alpha = (1 - level) / 2
        out["ci_low"], out["ci_high"] = float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))
    return out


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


def fallback_summary(episodes: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Share of agent turns whose action came from a documented fallback, not from the model's own output.

    Counts the turns whose agent info has ``fallback_kinds`` (model-driven agents record it on every turn;
    see ``agents.base.FALLBACK_KINDS``); None when no turn has it (baseline agents, older runs).
    ``by_kind`` counts turns per kind — a turn with two kinds (an unparsed decision, then no usable
    question) counts once in each, and once in ``rate``.
    """
    turns = 0
    with_fallback = 0
    by_kind: Counter[str] = Counter()
    for e in episodes:
        for turn in e.get("turns", []):
            agent = turn.get("agent") or {}
            if "fallback_kinds" not in agent:
                continue
            turns += 1
            kinds = list(agent.get("fallback_kinds") or [])
            if not kinds and agent.get("fallback"):
                kinds = [agent["fallback"]]
            if kinds:
                with_fallback += 1
                by_kind.update(set(kinds))
    if turns == 0:
        return None
    return {"rate": with_fallback / turns, "by_kind": dict(sorted(by_kind.items())), "turns": turns, "turns_with_fallback": with_fallback}


def redraw_summary(episodes: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How many questions the agent redrew because they restated an earlier question word for word
    (``LLMAgent(redraw_repeats=N)``), and how many still repeat after the last draw; None when the agent
    does not redraw. A redrawn question is the model's own, but not its first choice: the summary says so."""
    questions = redrawn = still = draws = 0
    for e in episodes:
        for turn in e.get("turns", []):
            agent = turn.get("agent") or {}
            if "question_redraws" not in agent:
                continue
            questions += 1
            n = int(agent["question_redraws"])
            draws += n
            redrawn += n > 0
            still += bool(agent.get("question_repeats")) and n > 0
    if questions == 0:
        return None
    return {"questions": questions, "redrawn": redrawn, "share": redrawn / questions, "still_repeating": still, "draws": draws}


def facts_per_question(episodes: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Mean number of new facts the patient revealed per question asked, over all questions of the episodes.

    The interval is a cluster bootstrap over episodes (questions of one episode are correlated). ``mean`` is
    NaN when no question was asked; ``questions`` is how many were.
    """
    facts, questions = [], []
    for e in episodes:
        qs = [t for t in e.get("turns", []) if t.get("action_type") == "question"]
        questions.append(len(qs))
        facts.append(sum(len(t.get("new_facts") or ()) for t in qs))
    r = cluster_bootstrap_ratio(facts, questions, seed=seed)
    return {"mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "questions": int(sum(questions)),
            "undefined_resamples": r["undefined_resamples"]}


def _fact_coverage(episodes: Sequence[dict[str, Any]], mode: str, seed: int) -> dict[str, Any]:
    """Share of the facts not known at reset that questions revealed, per episode, with its interval.

    The denominator leaves out ``n_facts_known`` (facts stated in the opening) when the record has it;
    older records without it use all ``n_facts`` (``denominator`` says which). Episodes with no fact left
    to find are left out and counted. In full-information mode every fact is given up front, so coverage
    means nothing there: it is None with a note.
    """
    if mode == "full_information":
        return {"mean": None, "ci_low": None, "ci_high": None,
                "note": "not defined in full-information mode: every fact is given up front"}
    values, no_unknown = [], 0
    known_counts = 0
    for e in episodes:
        if e.get("error") or not e.get("n_facts"):
            continue
        known = e.get("n_facts_known")
        known_counts += known is not None
        unknown = e["n_facts"] - (known or 0)
        if unknown <= 0:
            no_unknown += 1
            continue
        values.append(e.get("n_facts_revealed", 0) / unknown)
    out: dict[str, Any] = dict(_mean_ci(values, seed))
    out["episodes"] = len(values)
    out["no_facts_to_find"] = no_unknown
    if known_counts == 0:
        out["denominator"] = "n_facts"
    elif known_counts == len(values) + no_unknown:
        out["denominator"] = "n_facts - n_facts_known"
    else:
        out["denominator"] = "mixed: n_facts - n_facts_known where recorded, else n_facts"
    return out


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every NaN float (nested in dicts, lists, tuples) replaced by None; numpy scalars unwrapped."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def summarise(
    episodes: Sequence[dict[str, Any]], *, max_questions: int, seed: int = 0, mode: str | None = None
) -> dict[str, Any]:
    """Every metric of one run mode (interactive, or a baseline mode) over its episode records.

    ``mode`` defaults to the episodes' own ``mode`` field (``interactive`` when absent). Undefined values
    are None. ``fallback`` is present only when the agent recorded per-turn fallback kinds.
    """
    n = len(episodes)
    if mode is None:
        mode = str(episodes[0].get("mode", "interactive")) if episodes else "interactive"
    correct = [bool(e.get("correct")) and not e.get("error") for e in episodes]
    failed = [e for e in episodes if e.get("error")]
    asked = [e.get("questions_asked", 0) for e in episodes if not e.get("error")]
    confident = [(e["confidence"], c) for e, c in zip(episodes, correct, strict=True) if isinstance(e.get("confidence"), (int, float))]
    acc = _mean_ci([float(c) for c in correct], seed)
    summary: dict[str, Any] = {
        "mode": mode,
        "episodes": n,
        "failed": len(failed),
        "failure_reasons": dict(Counter((e.get("error") or "").split(":")[0] for e in failed)),
        "accuracy": acc,
        "error_rate": {"mean": 1 - acc["mean"], "ci_low": 1 - acc["ci_high"], "ci_high": 1 - acc["ci_low"]},
        "questions_asked": _mean_ci(asked, seed),
        "forced_answer_rate": float(np.mean([bool(e.get("forced")) for e in episodes])) if n else math.nan,
        "no_answer_rate": float(np.mean([e.get("answer") is None for e in episodes])) if n else math.nan,
        "fact_coverage": _fact_coverage(episodes, mode, seed),
        "facts_per_question": facts_per_question([e for e in episodes if not e.get("error")], seed),
        "accuracy_by_questions": accuracy_by_questions(episodes, max_questions),
        "calibration": calibration([c for c, _ in confident], [y for _, y in confident]),
        "attributes": attribute_means(episodes),
        "majority_letter": majority_letter_baseline(episodes),
        "reward": _mean_ci([e.get("total_reward", 0.0) for e in episodes], seed),
    }
    fallback = fallback_summary(episodes)
    if fallback is not None:
        summary["fallback"] = fallback
    redraws = redraw_summary(episodes)
    if redraws is not None:
        summary["question_redraws"] = redraws
    return nan_to_none(summary)


def paired_ratio_diff(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]], *, seed: int = 0,
                      n_boot: int = 2000) -> dict[str, Any]:
    """Paired cluster bootstrap of (sum facts / sum questions) of ``b`` minus ``a`` over the same episodes."""
    fa, qa = np.array([x[0] for x in a]), np.array([x[1] for x in a])
    fb, qb = np.array([x[0] for x in b]), np.array([x[1] for x in b])
    if qa.sum() == 0 or qb.sum() == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "pairs": len(a)}
    mean = fb.sum() / qb.sum() - fa.sum() / qa.sum()
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(a), size=len(a))
        if qa[idx].sum() == 0 or qb[idx].sum() == 0:
            continue
        diffs.append(fb[idx].sum() / qb[idx].sum() - fa[idx].sum() / qa[idx].sum())
    lo, hi = (float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))) if diffs else (None, None)
    return {"mean": float(mean), "ci_low": lo, "ci_high": hi, "pairs": len(a)}


def paired_episode_diffs(a: Mapping[Any, Mapping[str, Any]], b: Mapping[Any, Mapping[str, Any]], keys: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``b − a`` over the same episodes (``keys`` index both): the accuracy difference (a failed episode counts
    as wrong) and the facts-per-question difference, each with its paired bootstrap interval."""
    correct = [[float(bool(x[k].get("correct")) and not x[k].get("error")) for k in keys] for x in (a, b)]
    mean, lo, hi = paired_bootstrap_diff(correct[0], correct[1], seed=0)
    facts = paired_ratio_diff([facts_and_questions(a[k]) for k in keys], [facts_and_questions(b[k]) for k in keys])
    return {"mean": mean, "ci_low": lo, "ci_high": hi}, facts


def facts_and_questions(e: Mapping[str, Any]) -> tuple[float, float]:
    """(new facts revealed, questions asked) of one episode record: the pair that facts per question pools."""
    qs = [t for t in e.get("turns", []) if t.get("action_type") == "question"]
    return float(sum(len(t.get("new_facts") or ()) for t in qs)), float(len(qs))
