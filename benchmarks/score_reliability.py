"""How reliable are the question scores? Distributions, agreement and position bias on real questions.

Data: real follow-up questions that clinicians asked on r/AskDocs (``askdocs_questions_eval.jsonl``, read
from ``--data``; never copied into the project, and no question text is written to the results). For the
first ``--n`` questions we score each real question and a *degraded* variant of it, made deterministically
(``--degrade vague``: a generic question such as "Can you tell me more about that?"; ``--degrade
truncate``: the first half of the question's words). Every scorer that can rate a question without a
simulated case takes part:

* one :class:`~mediq_env.scoring.JudgeScorer` per ``--judge`` (rubric scores for the six ALFA attributes
  and ``overall``);
* ``--reward-model`` (optional): a :class:`~mediq_env.scoring.RewardModelScorer`;
* the text-only environment proxy ``proxy_focus`` (the other proxies need a simulated patient reply).

Reported per scorer and attribute: mean, sd, histogram over 1..5, unscored rate, and how often the real
question beats its degraded variant (a validity check: any useful judge should prefer the real question).
Agreement: Spearman rank correlation between scorers on the same attribute, between the judges' ``focus``
and ``proxy_focus``, and between a judge's attributes (all near 1 means the attributes are not told apart:
a halo). Position bias: a :class:`~mediq_env.scoring.PairwiseJudge` compares each real question with its
degraded variant in both orders; we report how often the verdict flips with the order, how often the
first-shown question wins, and how often the real question wins.

Context given to judges: a :class:`~mediq_env.DialogueState` with ``initial_info`` = title + post (cut to
``--max-post-chars``), no clinical multiple-choice question, no options, no earlier turns; ``case`` is
None in the :class:`~mediq_env.scoring.ScoreItem` (judges never see a case anyway).

Run:  ``python -m benchmarks.score_reliability --judge smollm2``
→ ``benchmarks/results/score_reliability.{json,md}``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result
from mediq_env.attributes import ALFA_ATTRIBUTES
from mediq_env.backends.base import Backend
from mediq_env.dialogue import DialogueState
from mediq_env.scoring import (
    EnvironmentScorer,
    JudgeScorer,
    PairItem,
    PairwiseJudge,
    PairwiseResult,
    RewardModelScorer,
    ScoreItem,
    Scorer,
    ScoreRecord,
)

__all__ = ["degrade", "load_questions", "main", "run", "spearman", "to_markdown"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "askdocs_questions_eval.jsonl"
ATTRIBUTES = (*ALFA_ATTRIBUTES, "overall")

_VAGUE = (
    "Can you tell me more about that?",
    "Is there anything else going on?",
    "How are you feeling in general?",
    "Have you noticed anything else?",
)


def _text(value: Any) -> str:
    """Fields of this file are sometimes strings, sometimes lists or null: flatten them to text."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    return str(value).strip()


def load_questions(path: Path, n: int) -> list[dict[str, str]]:
    """The first ``n`` rows that have a non-empty question, as {key, title, post, question}."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            rec = json.loads(line)
            question = _text(rec.get("question"))
            if not question:
                continue
            rows.append({"key": str(i), "title": _text(rec.get("title")), "post": _text(rec.get("post")), "question": question})
            if len(rows) >= n:
                break
    return rows


def degrade(question: str, mode: str) -> str:
    """A deterministic worse variant of ``question`` (same input, same output, across runs and machines)."""
    if mode == "vague":
        h = int(hashlib.sha256(question.encode("utf-8")).hexdigest(), 16)
        return _VAGUE[h % len(_VAGUE)]
    if mode == "truncate":
        words = question.split()
        return " ".join(words[: max(2, len(words) // 2)]).rstrip("?.,;:!") + "?"
    raise ValueError(f"unknown degradation {mode!r} (use 'vague' or 'truncate')")


def context_of(row: Mapping[str, str], max_post_chars: int) -> DialogueState:
    post = row["post"]
    if len(post) > max_post_chars:
        post = post[:max_post_chars].rstrip() + " [...]"
    info = f"{row['title']}. {post}" if row["title"] else post
    return DialogueState(case_id=f"askdocs-{row['key']}", initial_info=info, question="", options={})


# ---------------------------------------------------------------------------------------------------
# Statistics


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as scipy's rankdata does."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, int]:
    """Spearman's rho over the pairs where both are scored, and how many pairs that was.

    NaN when fewer than 3 pairs remain or either side is constant (a correlation is then undefined, and
    reporting 0 would claim "no agreement" where there is simply no variation).
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, n
    try:
        from scipy.stats import spearmanr

        return float(spearmanr(a, b).statistic), n
    except ImportError:
        ra, rb = _ranks(a), _ranks(b)
        return float(np.corrcoef(ra, rb)[0, 1]), n


def _distribution(values: Sequence[float], rubric: bool) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    scored = v[~np.isnan(v)]
    out: dict[str, Any] = {
        "n": len(v),
        "unscored_rate": float(np.isnan(v).mean()) if len(v) else math.nan,
        "mean": float(scored.mean()) if len(scored) else math.nan,
        "sd": float(scored.std(ddof=1)) if len(scored) > 1 else math.nan,
    }
    if rubric:
        # Means of several samples may fall between levels: they are rounded half up for the histogram.
        levels = np.floor(scored + 0.5).astype(int)
        out["histogram"] = {str(k): int((levels == k).sum()) for k in range(1, 6)}
    else:
        vals, counts = np.unique(scored, return_counts=True)
        out["histogram"] = {f"{val:g}": int(c) for val, c in zip(vals, counts, strict=True)}
    return out


def _real_vs_degraded(real: Sequence[float], worse: Sequence[float]) -> dict[str, Any]:
    pairs = [(r, d) for r, d in zip(real, worse, strict=True) if not (math.isnan(r) or math.isnan(d))]
    n = len(pairs)
    if not n:
        return {"pairs": 0, "real_higher": math.nan, "equal": math.nan, "real_lower": math.nan, "mean_difference": math.nan}
    return {
        "pairs": n,
        "real_higher": sum(r > d for r, d in pairs) / n,
        "equal": sum(r == d for r, d in pairs) / n,
        "real_lower": sum(r < d for r, d in pairs) / n,
        "mean_difference": float(np.mean([r - d for r, d in pairs])),
    }


def _pairwise_summary(results: Sequence[PairwiseResult]) -> dict[str, Any]:
    verdicts = [v for r in results for v in (*r.verdicts_ab, *r.verdicts_ba)]
    parsed = [v for v in verdicts if v is not None]
    consistent = [r.position_consistent for r in results if r.position_consistent is not None]
    firsts = [r.first_position_rate for r in results if not math.isnan(r.first_position_rate)]
    p_real = [r.p_a for r in results if not math.isnan(r.p_a)]
    return {
        "pairs": len(results),
        "verdicts": len(verdicts),
        "unscored_rate": (len(verdicts) - len(parsed)) / len(verdicts) if verdicts else math.nan,
        "tie_rate": parsed.count("TIE") / len(parsed) if parsed else math.nan,
        "pairs_with_both_orders": len(consistent),
        "flip_rate": 1 - float(np.mean(consistent)) if consistent else math.nan,
        "first_position_rate": float(np.mean(firsts)) if firsts else math.nan,
        "p_real_wins": float(np.mean(p_real)) if p_real else math.nan,
    }


# ---------------------------------------------------------------------------------------------------


def run(
    rows: Sequence[Mapping[str, str]],
    judges: Mapping[str, Backend],
    *,
    reward_model: Scorer | None = None,
    degrade_mode: str = "vague",
    attributes: Sequence[str] = ATTRIBUTES,
    pairwise_attributes: Sequence[str] = ATTRIBUTES,
    samples: int = 1,
    max_post_chars: int = 1500,
    show_unparsed: int = 0,
    format_examples: bool = False,
) -> dict[str, Any]:
    """Score ``rows`` (real questions) and their degraded variants; return the result dict (no data text)."""
    contexts = [context_of(r, max_post_chars) for r in rows]
    real = [ScoreItem(r["question"], c) for r, c in zip(rows, contexts, strict=True)]
    worse = [ScoreItem(degrade(r["question"], degrade_mode), c) for r, c in zip(rows, contexts, strict=True)]
    both = real + worse
    n = len(rows)

    scorers: list[tuple[Scorer, bool]] = [
        (JudgeScorer(b, attributes, samples=samples, format_examples=format_examples), True) for b in judges.values()
    ]
    if reward_model is not None:
        scorers.append((reward_model, False))
    scorers.append((EnvironmentScorer(["proxy_focus"], embedder=None), False))

    per_scorer: dict[str, dict[str, Any]] = {}
    columns: dict[tuple[str, str], list[float]] = {}
    timings: dict[str, float] = {}
    unparsed_examples: list[str] = []
    for scorer, rubric in scorers:
        t0 = time.perf_counter()
        records: list[ScoreRecord] = scorer.score(both)
        timings[scorer.name] = time.perf_counter() - t0
        print(f"scored {len(both)} questions with {scorer.name} in {timings[scorer.name]:.0f} s", file=sys.stderr)
        keys = list(records[0].scores) if records else []
        stats: dict[str, Any] = {}
        for key in keys:
            values = [rec.scores.get(key, math.nan) for rec in records]
            columns[(scorer.name, key)] = values[:n]
            stats[key] = {
                "real": _distribution(values[:n], rubric),
                "degraded": _distribution(values[n:], rubric),
                "real_vs_degraded": _real_vs_degraded(values[:n], values[n:]),
            }
            if rubric and len(unparsed_examples) < show_unparsed:
                for rec in records:
                    for out, parsed in zip(rec.raw[key]["outputs"], rec.raw[key]["parsed"], strict=True):
                        if parsed is None and len(unparsed_examples) < show_unparsed:
                            unparsed_examples.append(out)
        per_scorer[scorer.name] = stats
    for example in unparsed_examples:  # to the terminal only: judge outputs may quote the data
        print(f"unparsed judge output: {example!r}", file=sys.stderr)

    agreement: list[dict[str, Any]] = []
    names = list(per_scorer)
    for a, b in combinations(names, 2):
        for key in sorted(set(per_scorer[a]) & set(per_scorer[b])):
            rho, m = spearman(columns[(a, key)], columns[(b, key)])
            agreement.append({"a": a, "b": b, "attribute": key, "spearman": rho, "pairs": m})
    env_name = scorers[-1][0].name
    for scorer, rubric in scorers:
        if rubric and "focus" in per_scorer[scorer.name]:
            rho, m = spearman(columns[(scorer.name, "focus")], columns[(env_name, "proxy_focus")])
            agreement.append({"a": scorer.name, "b": env_name, "attribute": "focus~proxy_focus", "spearman": rho, "pairs": m})
    halo: dict[str, Any] = {}
    for scorer, rubric in scorers:
        if not rubric:
            continue
        keys = list(per_scorer[scorer.name])
        rhos = [spearman(columns[(scorer.name, x)], columns[(scorer.name, y)])[0] for x, y in combinations(keys, 2)]
        finite = [r for r in rhos if not math.isnan(r)]
        halo[scorer.name] = {
            "mean_inter_attribute_spearman": float(np.mean(finite)) if finite else math.nan,
            "defined_pairs": len(finite),
            "attribute_pairs": len(rhos),
        }

    pairwise: dict[str, dict[str, Any]] = {}
    pairs = [PairItem(c, r.question, w.question) for c, r, w in zip(contexts, real, worse, strict=True)]
    for label, backend in judges.items():
        pairwise[label] = {}
        for attr in pairwise_attributes:
            judge = PairwiseJudge(backend, attr, samples=samples, format_examples=format_examples)
            t0 = time.perf_counter()
            results = judge.compare(pairs)
            timings[f"{judge.name}/{attr}"] = time.perf_counter() - t0
            print(f"compared {len(pairs)} pairs with {judge.name} on {attr} in {timings[f'{judge.name}/{attr}']:.0f} s", file=sys.stderr)
            pairwise[label][attr] = _pairwise_summary(results)

    return {
        "config": {
            "questions": n,
            "degrade": degrade_mode,
            "judges": list(judges),
            "attributes": list(attributes),
            "pairwise_attributes": list(pairwise_attributes),
            "samples": samples,
            "max_post_chars": max_post_chars,
            "format_examples": format_examples,
            "reward_model": reward_model.name if reward_model is not None else None,
        },
        "scores": per_scorer,
        "agreement": agreement,
        "halo": halo,
        "pairwise": pairwise,
        "seconds": timings,
    }


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def to_markdown(result: Mapping[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "# Score reliability on real clinician questions (r/AskDocs)",
        "",
        f"{cfg['questions']} real questions, each against a degraded variant (`{cfg['degrade']}`); "
        f"judges: {', '.join(cfg['judges']) or 'none'}; samples per judgement: {cfg['samples']}; "
        f"format examples in judge prompts: {'yes' if cfg.get('format_examples') else 'no'}; "
        f"post cut to {cfg['max_post_chars']} characters.",
        "",
        "## Score distributions (real questions) and real-vs-degraded",
        "",
        "| scorer | score | mean | sd | histogram 1..5 (or values) | unscored | degraded mean | real > degraded | equal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scorer, stats in result["scores"].items():
        for key, s in stats.items():
            hist = " ".join(f"{k}:{v}" for k, v in s["real"]["histogram"].items())
            rvd = s["real_vs_degraded"]
            lines.append(
                f"| {scorer} | {key} | {_f(s['real']['mean'])} | {_f(s['real']['sd'])} | {hist} | "
                f"{_f(s['real']['unscored_rate'])} | {_f(s['degraded']['mean'])} | {_f(rvd['real_higher'])} | {_f(rvd['equal'])} |"
            )
    lines += ["", "## Agreement between scorers (Spearman, real questions)", "", "| a | b | score | rho | pairs |", "| --- | --- | --- | --- | --- |"]
    for a in result["agreement"]:
        lines.append(f"| {a['a']} | {a['b']} | {a['attribute']} | {_f(a['spearman'])} | {a['pairs']} |")
    lines += ["", "## Halo: mean Spearman between a judge's attributes", ""]
    for name, h in result["halo"].items():
        lines.append(f"- {name}: {_f(h['mean_inter_attribute_spearman'])} ({h['defined_pairs']} of {h['attribute_pairs']} attribute pairs defined)")
    lines += [
        "",
        "## Pairwise judge: real vs degraded, both orders",
        "",
        "| judge | attribute | unscored | ties | pairs with both orders | flip rate | first shown wins | P(real wins) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for judge, per_attr in result["pairwise"].items():
        for attr, p in per_attr.items():
            lines.append(
                f"| {judge} | {attr} | {_f(p['unscored_rate'])} | {_f(p['tie_rate'])} | {p['pairs_with_both_orders']} | "
                f"{_f(p['flip_rate'])} | {_f(p['first_position_rate'])} | {_f(p['p_real_wins'])} |"
            )
    lines += [
        "",
        "Reading guide: *unscored* = replies that were not a clean 1–5 (or A/B/TIE) and were left NaN; "
        "*flip rate* = pairs whose verdict changes when the order is swapped (0 for an order-blind judge); "
        "*first shown wins* = share of decisive verdicts for whichever question came first (0.5 unbiased); "
        "rho is '–' where a side is constant or fewer than 3 pairs are scored.",
        "",
    ]
    return "\n".join(lines)


def _reward_model(specs: Sequence[str]) -> Scorer | None:
    if not specs:
        return None
    if len(specs) == 1 and "=" not in specs[0]:
        return RewardModelScorer(specs[0])
    mapping = dict(s.split("=", 1) for s in specs)
    return RewardModelScorer(mapping)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--judge", action="append", help="backend spec: smollm2 (default), hf:<id>, openai:<model>; repeatable")
    parser.add_argument("--reward-model", action="append", default=[], help="a multi-head model path, or attr=path (repeatable)")
    parser.add_argument("--degrade", choices=("vague", "truncate"), default="vague")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--max-post-chars", type=int, default=1500)
    parser.add_argument("--attributes", default=",".join(ATTRIBUTES), help="comma-separated attributes for the pointwise judges")
    parser.add_argument("--pairwise", default=",".join(ATTRIBUTES), help="comma-separated attributes for the pairwise judge")
    parser.add_argument("--format-examples", action="store_true", help="show judges two worked examples (helps tiny models)")
    parser.add_argument("--show-unparsed", type=int, default=0, help="print this many unparseable judge outputs (terminal only)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    if not args.data.exists():
        print(f"data not found: {args.data} (pass --data)", file=sys.stderr)
        return 2
    from mediq_env.backends.factory import make_backend

    specs = args.judge or ["smollm2"]
    judges = {spec: make_backend(spec) for spec in specs}
    rows = load_questions(args.data, args.n)
    t0 = time.perf_counter()
    result = run(
        rows,
        judges,
        reward_model=_reward_model(args.reward_model),
        degrade_mode=args.degrade,
        attributes=[a for a in args.attributes.split(",") if a],
        pairwise_attributes=[a for a in args.pairwise.split(",") if a],
        samples=args.samples,
        max_post_chars=args.max_post_chars,
        show_unparsed=args.show_unparsed,
        format_examples=args.format_examples,
    )
    result["seconds"]["total"] = time.perf_counter() - t0
    result["config"]["data"] = args.data.name
    markdown = to_markdown(result)
    path = write_result("score_reliability", result, markdown, out_dir=args.out_dir)
    print(markdown)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
