"""Paired comparison of two benchmark runs on the same cases.

* **Diagnostic error reduction** (ALFA's headline metric): ``(err_A - err_B) / err_A`` in percent, with a
  paired bootstrap interval (cases are resampled together in both runs). A resample in which A made no
  error has no ratio: such resamples are counted (``undefined_resamples``) and placed beyond both ends of
  the interval, so an end is unbounded (None) when they pass the tail share — with 1 error in 20 against
  0 the ratio says nothing, and the output says so. The error counts and the paired difference of error
  rates with a Newcombe (Wilson score) interval, valid for small counts, are always reported beside it.
* **Accuracy difference** ``acc_B - acc_A`` with the same Newcombe paired interval.
* **Question-level win rate** of B over A, judged pairwise on matching turns: turn ``t`` of the same
  episode in both runs, where the dialogue before ``t`` — the questions *and* the patient's replies — is
  identical in both (always true for the first question), so the two questions answer the same context.
  Both presentation orders, ``k`` samples each; ties count half; an unparseable verdict counts as a tie in
  the headline figure and is reported — no instance is ever dropped. Its interval resamples episodes
  (cluster bootstrap): the turns of one episode are correlated. It needs a judge (``--judge``).

Runs are paired by episode key only when they ran under the same settings (seed, option shuffling, patient,
question budget, initial information, cases checksum); otherwise :func:`compare_runs` refuses unless
``force=True``, and then the result carries a warning that :func:`format_comparison` prints first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.metrics import bootstrap_ci, cluster_bootstrap_ratio, nan_to_none, newcombe_paired_diff
from benchmarks.report import load_run
from mediq_env import Case, DialogueState, Turn, builtin_cases, load_cases
from mediq_env.errors import ConfigError

__all__ = ["PAIRING_SETTINGS", "compare_runs", "error_reduction", "format_comparison", "matching_turn_pairs", "win_rate"]

PAIRING_SETTINGS = ("seed", "shuffle_options", "patient", "max_questions", "initial_info")
"""Config fields that must agree for episodes with the same key to be the same patient encounter (with
the manifests' ``cases_sha256``)."""

WIN_RATE_NEEDS_JUDGE = "question-level win rate: not computed (it needs a pairwise judge: --judge <backend>)"

RATIO_METHOD = (
    "paired percentile bootstrap over cases; resamples where A made no error (ratio undefined) are counted "
    "beyond both ends of the interval (-inf below, 100% above)"
)


def error_reduction(
    correct_a: np.ndarray, correct_b: np.ndarray, *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Relative reduction of the error rate from A to B, in percent, with an interval that stays honest.

    ``percent`` is NaN when A made no error. The interval is a paired percentile bootstrap; a resample in
    which A made no error has no ratio, and instead of being dropped (which conditions on A erring and gave
    "100% [100, 100]" for 1 error against 0) it is placed beyond both ends: an end whose tail holds more
    undefined resamples than the tail share is unbounded (NaN; the upper end is capped at 100%, the most a
    reduction can be). ``undefined_resamples`` says how many.
    ``error_rate_diff`` is ``err_A - err_B`` with Newcombe's paired interval, valid for small counts.
    """
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    errors_a, errors_b = int((a == 0).sum()), int((b == 0).sum())
    out: dict[str, Any] = {
        "percent": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "errors_a": errors_a,
        "errors_b": errors_b,
        "n": int(a.size),
        "n_resamples": n_resamples,
        "undefined_resamples": 0,
        "method": RATIO_METHOD,
        # acc_B - acc_A is err_A - err_B: the same Newcombe interval, read as errors removed.
        "error_rate_diff": newcombe_paired_diff(a, b, level=level),
    }
    if a.size == 0:
        return out
    if errors_a:
        out["percent"] = 100.0 * (errors_a - errors_b) / errors_a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_resamples, a.size))
    ea = (1 - a[idx]).sum(axis=1)
    eb = (1 - b[idx]).sum(axis=1)
    defined = ea > 0
    out["undefined_resamples"] = int((~defined).sum())
    ratios = np.full(n_resamples, np.nan)
    ratios[defined] = 100.0 * (ea[defined] - eb[defined]) / ea[defined]
    alpha = (1 - level) / 2
    # Undefined resamples sit beyond both ends (conservative both ways): at -inf for the lower end, and at
    # 100% for the upper end, the most any reduction can be.
    low = np.where(defined, ratios, -np.inf)
    high = np.where(defined, ratios, 100.0)
    # Order statistics, not interpolation: interpolating next to an infinite value gives NaN, and taking
    # the outer neighbour keeps each end conservative.
    lo = float(np.quantile(low, alpha, method="lower"))
    hi = float(np.quantile(high, 1 - alpha, method="higher"))
    out["ci_low"] = lo if math.isfinite(lo) else math.nan
    out["ci_high"] = hi if math.isfinite(hi) else math.nan
    return out


def win_rate(p_b: Sequence[float], clusters: Sequence[Any] | None = None, *, seed: int = 0) -> dict[str, Any]:
    """Mean win probability of B (NaN verdicts count as ties) with a bootstrap interval; counts kept.

    ``clusters`` (one label per pair, e.g. the episode key) makes the interval a cluster bootstrap: whole
    episodes are resampled, since the turns of one episode share a dialogue and are not independent.
    Without it, pairs are resampled one by one (only right when every pair comes from its own episode).
    """
    values = [0.5 if math.isnan(p) else p for p in p_b]
    parsed = [p for p in p_b if not math.isnan(p)]
    out: dict[str, Any] = {
        "win_rate": float(np.mean(values)) if values else math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "pairs": len(values),
        "unscored_pairs": len(values) - len(parsed),
        "win_rate_parsed_only": float(np.mean(parsed)) if parsed else math.nan,
    }
    if clusters is None:
        out["ci_low"], out["ci_high"] = bootstrap_ci(values, seed=seed)
        out["interval"] = "bootstrap over pairs"
        return out
    if len(clusters) != len(values):
        raise ValueError("one cluster label per pair")
    labels = list(dict.fromkeys(clusters))
    where = {c: i for i, c in enumerate(labels)}
    sums, counts = np.zeros(len(labels)), np.zeros(len(labels))
    for c, v in zip(clusters, values, strict=True):
        sums[where[c]] += v
        counts[where[c]] += 1
    r = cluster_bootstrap_ratio(sums, counts, seed=seed)
    out["ci_low"], out["ci_high"] = r["ci_low"], r["ci_high"]
    out["interval"] = "cluster bootstrap over episodes"
    out["clusters"] = len(labels)
    return out


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
    """(turn index, question in A, question in B) for the turns whose preceding dialogue is identical.

    Identical means the same case shown the same way (case id and option order, where recorded) and, turn
    by turn, the same kind of action, the same question and the same patient reply: two different replies
    to the same question (a sampling patient, another patient model) make different contexts.
    """
    for field in ("case_id", "option_order"):
        if ep_a.get(field) is not None and ep_b.get(field) is not None and ep_a[field] != ep_b[field]:
            return []
    pairs = []
    for t, (ta, tb) in enumerate(zip(ep_a.get("turns", []), ep_b.get("turns", []), strict=False)):
        if ta["action_type"] == "question" and tb["action_type"] == "question":
            pairs.append((t, _question_text(ta), _question_text(tb)))
        same = (
            ta["action_type"] == tb["action_type"]
            and _question_text(ta) == _question_text(tb)
            and (ta.get("reply") or "") == (tb.get("reply") or "")
        )
        if not same:
            break
    return pairs


def _setting_differences(man_a: dict[str, Any], man_b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    cfg_a, cfg_b = man_a.get("config", {}), man_b.get("config", {})
    diff = {k: (cfg_a.get(k), cfg_b.get(k)) for k in PAIRING_SETTINGS if cfg_a.get(k) != cfg_b.get(k)}
    if man_a.get("cases_sha256") != man_b.get("cases_sha256"):
        diff["cases_sha256"] = (man_a.get("cases_sha256"), man_b.get("cases_sha256"))
    if man_a.get("patient_model") != man_b.get("patient_model"):  # a refitted patient answers differently
        diff["patient_model"] = (man_a.get("patient_model"), man_b.get("patient_model"))
    return diff


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    judge: str | Any | None = None,
    attribute: str = "overall",
    samples: int = 1,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Compare run B against baseline run A on the interactive episodes they share.

    Refuses (:class:`ConfigError` listing the differences) when the runs differ in a setting that changes
    which encounter an episode key stands for (:data:`PAIRING_SETTINGS`, the cases checksum), unless
    ``force=True``; the result then carries ``warnings``. ``progress`` shows a bar while judging.
    Undefined values are None.
    """
    man_a, eps_a = load_run(run_a)
    man_b, eps_b = load_run(run_b)
    differences = _setting_differences(man_a, man_b)
    listed = "; ".join(f"{k}: A {va!r}, B {vb!r}" for k, (va, vb) in differences.items())
    if differences and not force:
        raise ConfigError(
            f"{run_a} and {run_b} were run with different settings ({listed}): their episodes are not the same "
            "encounters, so pairing them by key would be wrong. Rerun one of them, or pass force=True (--force)."
        )
    a = {e["key"]: e for e in eps_a if e.get("mode", "interactive") == "interactive"}
    b = {e["key"]: e for e in eps_b if e.get("mode", "interactive") == "interactive"}
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ConfigError(f"{run_a} and {run_b} share no interactive episode: run them on the same cases and seeds")
    ca = np.array([bool(a[k].get("correct")) and not a[k].get("error") for k in keys], dtype=float)
    cb = np.array([bool(b[k].get("correct")) and not b[k].get("error") for k in keys], dtype=float)
    result: dict[str, Any] = {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "agent_a": man_a["config"]["agent"],
        "agent_b": man_b["config"]["agent"],
        "warnings": (
            [f"FORCED: the runs differ in {listed}; episodes paired by key may not be the same encounters"]
            if differences else []
        ),
        "paired_episodes": len(keys),
        "only_in_a": len(set(a) - set(b)),
        "only_in_b": len(set(b) - set(a)),
        "accuracy_a": float(ca.mean()),
        "accuracy_b": float(cb.mean()),
        "accuracy_diff": newcombe_paired_diff(ca, cb),
        "error_reduction": error_reduction(ca, cb),
        "questions_a": float(np.mean([a[k].get("questions_asked", 0) for k in keys])),
        "questions_b": float(np.mean([b[k].get("questions_asked", 0) for k in keys])),
    }
    if judge is not None:
        result["win_rate"] = _judged_win_rate(man_a, a, b, keys, judge, attribute, samples, progress=progress)
    else:
        result["win_rate_note"] = WIN_RATE_NEEDS_JUDGE
    return nan_to_none(result)


JUDGE_CHUNK = 16  # pairs per judge call: big enough to batch, small enough for the bar to move


def _judged_win_rate(
    manifest: dict[str, Any],
    a: dict[str, Any],
    b: dict[str, Any],
    keys: list[str],
    judge: str | Any,
    attribute: str,
    samples: int,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    from tqdm import tqdm

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
    pairwise = PairwiseJudge(judge, attribute, samples=samples)
    results = []
    with tqdm(total=len(items), disable=not progress, unit="pair", desc="judging") as bar:
        for start in range(0, len(items), JUDGE_CHUNK):
            chunk = items[start : start + JUDGE_CHUNK]
            results += pairwise.compare(chunk)
            bar.update(len(chunk))
    p_b = [1 - r.p_a if not math.isnan(r.p_a) else math.nan for r in results]
    out: dict[str, Any] = dict(win_rate(p_b, clusters=[k for k, _ in where]))
    consistent = [r.position_consistent for r in results if r.position_consistent is not None]
    out["attribute"] = attribute
    out["samples_per_order"] = samples
    out["position_consistency"] = float(np.mean(consistent)) if consistent else math.nan
    out["first_turn_pairs"] = sum(1 for _, t in where if t == 0)
    return out


def _pct(x: float | None, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.1%}" if sign else f"{x:.1%}"


def _percent(x: float | None, unbounded: str) -> str:
    return unbounded if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}%"


def format_comparison(r: dict[str, Any]) -> str:
    er = r["error_reduction"]
    d = r["accuracy_diff"]
    ed = er["error_rate_diff"]
    lines = [f"WARNING: {w}" for w in r.get("warnings", [])]
    lines += [
        f"A = {r['run_a']} ({r['agent_a']})   B = {r['run_b']} ({r['agent_b']})   paired episodes: {r['paired_episodes']}"
        + (f" (unpaired: {r['only_in_a']} only in A, {r['only_in_b']} only in B)" if r["only_in_a"] or r["only_in_b"] else ""),
        f"accuracy: A {_pct(r['accuracy_a'])}, B {_pct(r['accuracy_b'])}; B - A = {_pct(d['mean'], True)} "
        f"[{_pct(d['ci_low'], True)}, {_pct(d['ci_high'], True)}] ({d['method']})",
    ]
    counts = f"errors: A {er['errors_a']}, B {er['errors_b']}, of {er['n']} cases"
    if er["percent"] is None:
        lines.append(f"diagnostic error reduction (B vs A): undefined, A made no error ({counts})")
    else:
        interval = f"[{_percent(er['ci_low'], '-inf')}, {_percent(er['ci_high'], '+inf')}]"
        lines.append(f"diagnostic error reduction (B vs A): {er['percent']:.1f}% {interval} ({counts}; {er['method']})")
    if er["undefined_resamples"]:
        lines.append(
            f"  {er['undefined_resamples']} of {er['n_resamples']} bootstrap resamples had no error in A (reduction undefined)"
            + ("; an unbounded end means the ratio cannot be estimated from these counts" if er["ci_low"] is None or er["ci_high"] is None else "")
        )
    lines += [
        f"error-rate difference A - B: {_pct(ed['mean'], True)} [{_pct(ed['ci_low'], True)}, {_pct(ed['ci_high'], True)}] ({ed['method']})",
        f"questions asked: A {r['questions_a']:.2f}, B {r['questions_b']:.2f}",
    ]
    if "win_rate" in r:
        w = r["win_rate"]
        consistency = _pct(w["position_consistency"])
        lines.append(
            f"question-level win rate of B ({w['attribute']}): {_pct(w['win_rate'])} [{_pct(w['ci_low'])}, {_pct(w['ci_high'])}] over "
            f"{w['pairs']} matching turns in {w.get('clusters', '?')} episodes ({w.get('interval', 'bootstrap')}; {w['unscored_pairs']} unscored, "
            f"counted as ties; parsed only: {_pct(w['win_rate_parsed_only'])}); judge position consistency {consistency}"
        )
    else:
        lines.append(r.get("win_rate_note", WIN_RATE_NEEDS_JUDGE))
    return "\n".join(lines)
