"""Paired comparison of two benchmark runs on the same cases.

* **Diagnostic error reduction** (ALFA's headline metric): ``(err_A - err_B) / err_A`` in percent, with a
  paired bootstrap interval (cases are resampled together in both runs).
* **Accuracy difference** ``acc_B - acc_A`` with its paired bootstrap interval.
* **Question-level win rate** of B over A, judged pairwise on matching turns: turn ``t`` of the same
  episode in both runs, where the dialogue before ``t`` is identical in both (always true for the first
  question), so the two questions answer the same context. Both presentation orders, ``k`` samples each;
  ties count half; an unparseable verdict counts as a tie in the headline figure and is reported — no
  instance is ever dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.metrics import bootstrap_ci, paired_bootstrap_diff
from benchmarks.report import load_run
from mediq_env import Case, DialogueState, Turn, builtin_cases, load_cases
from mediq_env.errors import ConfigError

__all__ = ["compare_runs", "error_reduction", "format_comparison", "matching_turn_pairs", "win_rate"]


def error_reduction(correct_a: np.ndarray, correct_b: np.ndarray, *, n_resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Relative reduction of the error rate from A to B, in percent, with a paired bootstrap interval."""
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    if a.size == 0:
        return {"percent": math.nan, "ci_low": math.nan, "ci_high": math.nan}

    def reduction(ia: np.ndarray, ib: np.ndarray) -> float:
        err_a, err_b = 1 - ia.mean(), 1 - ib.mean()
        return math.nan if err_a == 0 else 100.0 * (err_a - err_b) / err_a

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_resamples, a.size))
    samples = np.array([reduction(a[i], b[i]) for i in idx])
    samples = samples[~np.isnan(samples)]
    lo, hi = (float(np.quantile(samples, 0.025)), float(np.quantile(samples, 0.975))) if samples.size else (math.nan, math.nan)
    return {"percent": reduction(a, b), "ci_low": lo, "ci_high": hi}


def win_rate(p_b: list[float]) -> dict[str, float]:
    """Mean win probability of B (NaN verdicts count as ties) with a bootstrap interval; counts kept."""
    values = [0.5 if math.isnan(p) else p for p in p_b]
    lo, hi = bootstrap_ci(values)
    parsed = [p for p in p_b if not math.isnan(p)]
    return {
        "win_rate": float(np.mean(values)) if values else math.nan,
        "ci_low": lo,
        "ci_high": hi,
        "pairs": len(values),
        "unscored_pairs": len(values) - len(parsed),
        "win_rate_parsed_only": float(np.mean(parsed)) if parsed else math.nan,
    }


def _cases_for(manifest: dict[str, Any]) -> dict[str, Case]:
    cfg = manifest["config"]
    cases = load_cases(cfg["cases"], initial_info=cfg.get("initial_info", "auto")) if cfg.get("cases") else builtin_cases()
    return {c.id: c for c in cases}


def _state(case: Case, episode: dict[str, Any], upto: int) -> DialogueState:
    order = episode.get("option_order") or list(case.options)
    shown = case.with_options_permuted(order) if order != list(case.options) else case
    turns = []
    for t in episode["turns"][:upto]:
        if t["action_type"] == "question":
            turns.append(Turn(_question_text(t), t.get("reply") or "", tuple(t.get("revealed") or ())))
    return DialogueState(case.id, shown.initial_info, shown.question, dict(shown.options), tuple(turns))


def _question_text(turn: dict[str, Any]) -> str:
    action = turn.get("action")
    if isinstance(action, dict):
        return str(action.get("question", ""))
    return str(action or "")


def matching_turn_pairs(ep_a: dict[str, Any], ep_b: dict[str, Any]) -> list[tuple[int, str, str]]:
    """(turn index, question in A, question in B) for the turns whose preceding dialogue is identical."""
    pairs = []
    for t, (ta, tb) in enumerate(zip(ep_a.get("turns", []), ep_b.get("turns", []), strict=False)):
        if ta["action_type"] == "question" and tb["action_type"] == "question":
            pairs.append((t, _question_text(ta), _question_text(tb)))
        same = _question_text(ta) == _question_text(tb) and ta["action_type"] == tb["action_type"]
        if not same:
            break
    return pairs


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    judge: str | Any | None = None,
    attribute: str = "overall",
    samples: int = 1,
) -> dict[str, Any]:
    """Compare run B against baseline run A on the interactive episodes they share."""
    man_a, eps_a = load_run(run_a)
    man_b, eps_b = load_run(run_b)
    a = {e["key"]: e for e in eps_a if e.get("mode", "interactive") == "interactive"}
    b = {e["key"]: e for e in eps_b if e.get("mode", "interactive") == "interactive"}
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ConfigError(f"{run_a} and {run_b} share no interactive episode: run them on the same cases and seeds")
    ca = np.array([bool(a[k].get("correct")) and not a[k].get("error") for k in keys], dtype=float)
    cb = np.array([bool(b[k].get("correct")) and not b[k].get("error") for k in keys], dtype=float)
    diff, lo, hi = paired_bootstrap_diff(ca, cb)
    result: dict[str, Any] = {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "agent_a": man_a["config"]["agent"],
        "agent_b": man_b["config"]["agent"],
        "paired_episodes": len(keys),
        "only_in_a": len(set(a) - set(b)),
        "only_in_b": len(set(b) - set(a)),
        "accuracy_a": float(ca.mean()),
        "accuracy_b": float(cb.mean()),
        "accuracy_diff": {"mean": diff, "ci_low": lo, "ci_high": hi},
        "error_reduction": error_reduction(ca, cb),
        "questions_a": float(np.mean([a[k].get("questions_asked", 0) for k in keys])),
        "questions_b": float(np.mean([b[k].get("questions_asked", 0) for k in keys])),
    }
    if judge is not None:
        result["win_rate"] = _judged_win_rate(man_a, a, b, keys, judge, attribute, samples)
    return result


def _judged_win_rate(
    manifest: dict[str, Any], a: dict[str, Any], b: dict[str, Any], keys: list[str], judge: str | Any, attribute: str, samples: int
) -> dict[str, Any]:
    from mediq_env.scoring import PairItem, PairwiseJudge

    if isinstance(judge, str):
        from mediq_env.backends.factory import make_backend

        judge = make_backend(judge)
    cases = _cases_for(manifest)
    items, where = [], []
    for k in keys:
        case = cases.get(a[k]["case_id"])
        if case is None:
            continue
        for t, qa, qb in matching_turn_pairs(a[k], b[k]):
            items.append(PairItem(_state(case, a[k], t), qa, qb))
            where.append((k, t))
    results = PairwiseJudge(judge, attribute, samples=samples).compare(items)
    p_b = [1 - r.p_a if not math.isnan(r.p_a) else math.nan for r in results]
    out: dict[str, Any] = dict(win_rate(p_b))
    consistent = [r.position_consistent for r in results if r.position_consistent is not None]
    out["attribute"] = attribute
    out["samples_per_order"] = samples
    out["position_consistency"] = float(np.mean(consistent)) if consistent else math.nan
    out["first_turn_pairs"] = sum(1 for _, t in where if t == 0)
    return out


def format_comparison(r: dict[str, Any]) -> str:
    er = r["error_reduction"]
    d = r["accuracy_diff"]
    lines = [
        f"A = {r['run_a']} ({r['agent_a']})   B = {r['run_b']} ({r['agent_b']})   paired episodes: {r['paired_episodes']}"
        + (f" (unpaired: {r['only_in_a']} only in A, {r['only_in_b']} only in B)" if r["only_in_a"] or r["only_in_b"] else ""),
        f"accuracy: A {r['accuracy_a']:.1%}, B {r['accuracy_b']:.1%}; B - A = {d['mean']:+.1%} [{d['ci_low']:+.1%}, {d['ci_high']:+.1%}]",
        f"diagnostic error reduction (B vs A): {er['percent']:.1f}% [{er['ci_low']:.1f}%, {er['ci_high']:.1f}%]",
        f"questions asked: A {r['questions_a']:.2f}, B {r['questions_b']:.2f}",
    ]
    if "win_rate" in r:
        w = r["win_rate"]
        lines.append(
            f"question-level win rate of B ({w['attribute']}): {w['win_rate']:.1%} [{w['ci_low']:.1%}, {w['ci_high']:.1%}] over "
            f"{w['pairs']} matching turns ({w['unscored_pairs']} unscored, counted as ties; parsed only: {w['win_rate_parsed_only']:.1%}); "
            f"judge position consistency {w['position_consistency']:.1%}"
        )
    return "\n".join(lines)
