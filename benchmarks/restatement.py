"""When is a question a restatement of an earlier one? Plain MiniLM against the tuned relevance encoder.

The faithful patient answers a question that restates an earlier one with the earlier reply (so rewording
cannot fish near the decision threshold). Too loose a test gives a new question a stale reply. For every two
answerable probes of one case, this counts how often each embedding and threshold calls them restatements,
apart for pairs that share an answering fact (a restatement is harmless, often wanted) and pairs about
different facts (a restatement there withholds a fact the question asked for).

Run:  ``python -m benchmarks.restatement``  →  ``benchmarks/results/restatement.{json,md}``
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import publish_result
from benchmarks.probes import load_probes

__all__ = ["pair_rates"]

THRESHOLDS = (0.62, 0.65, 0.70, 0.75, 0.80)


def pair_rates(answers: Sequence[tuple[int, ...]], groups: Sequence[str], embeddings: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    """Share of same-group pairs at or above each threshold, apart for pairs sharing an answer and not."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    shared: list[float] = []
    different: list[float] = []
    for idx in by_group.values():
        for i, j in itertools.combinations(idx, 2):
            if not answers[i] or not answers[j]:
                continue
            (shared if set(answers[i]) & set(answers[j]) else different).append(float(embeddings[i] @ embeddings[j]))
    s, d = np.array(shared), np.array(different)
    return {
        "pairs_sharing_an_answer": len(s),
        "pairs_about_different_facts": len(d),
        "rates": {f"{t:.2f}": {"sharing": float((s >= t).mean()) if len(s) else None, "different": float((d >= t).mean()) if len(d) else None} for t in thresholds},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restatement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    from mediq_env.patient import FaithfulPatient

    patient = FaithfulPatient()
    result: dict[str, Any] = {"default_threshold": patient.repeat_similarity, "halves": {}}
    lines = [
        "# Restatements: plain MiniLM against the tuned relevance encoder",
        "",
        f"Command: `python -m benchmarks.restatement`. The patient's default: tuned encoder, {patient.repeat_similarity:.2f}.",
        "Share of pairs of answerable probes of one case taken as restatements; *sharing*: the two share an",
        "answering fact; *different*: they do not (a restatement there withholds the asked-for fact).",
        "",
        "| half | embedding | threshold | sharing an answer | about different facts |",
        "|---|---|---|---|---|",
    ]
    for half in ("calibration", "test"):
        probes = [p for p in load_probes(split=half) if p.kind != "adversarial"]
        questions = [p.question for p in probes]
        answers = [p.answers for p in probes]
        groups = [f"{p.source}:{p.case_id}" for p in probes]
        block: dict[str, Any] = {}
        for name, emb in (("plain MiniLM", patient.embed_questions_plain(questions)), ("tuned", patient.embed_questions(questions))):
            block[name] = rates = pair_rates(answers, groups, np.asarray(emb), THRESHOLDS)
            for t, r in rates["rates"].items():
                lines.append(f"| {half} | {name} | {t} | {r['sharing']:.1%} | {r['different']:.2%} |")
        result["halves"][half] = block
        n = block["tuned"]
        lines.append(f"| {half} | pairs | | {n['pairs_sharing_an_answer']:,} | {n['pairs_about_different_facts']:,} |")
    lines += ["", "The tuned encoder was trained on the calibration probes, so its calibration rows are partly in-sample.", ""]
    publish_result("restatement", result, "\n".join(lines), args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
