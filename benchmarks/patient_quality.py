"""How faithfully does a patient answer? Measured on the labelled probe set, per source and per half.

For every probe (``benchmarks/data/probes``: team-written questions over built-in, MediQ-AskDocs and MedQA
cases, labelled with every fact that answers them) the patient replies, and we count:

* **answered** — answerable questions whose reply reveals at least one labelled fact;
* **off-target** — answerable questions whose reply reveals facts, none of them labelled (the wrong answer);
* **precision** — of all facts revealed for answerable questions, the share that answer;
* **recall** — of all labelled answering facts of answerable questions, the share revealed (a broad
  question — "what medicines do you take?" — is only fully answered when every medicine is named);
* **abstained** — unanswerable questions (``unanswerable`` probes, and ``opening`` or ``history`` probes with no label)
  whose reply reveals nothing, as it should;
* **adversarial held** — adversarial actions (keyword lists, catch-alls, statements, several questions,
  option guesses) that reveal nothing.

Targets (on the test half, per source): answered ≥ 90%, off-target ≤ 5%, abstained ≥ 90%, adversarial held
≥ 98%. Nothing is tuned on the test half: the relevance head and its threshold are fitted on the
calibration half (``python -m benchmarks.fit_relevance``).

Run:  ``python -m benchmarks.patient_quality [--patients faithful,bm25,bm25+minilm] [--llm-limit N]``
      → ``benchmarks/results/patient_quality.{json,md}``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import publish_result
from benchmarks.probes import SOURCES, Probe, load_probe_cases, load_probes
from mediq_env.patient import Patient, PatientQuery, make_patient

__all__ = ["TARGETS", "evaluate_patient", "probe_metrics"]

TARGETS = {"answered": 0.90, "off_target": 0.05, "abstained": 0.90, "adversarial_held": 0.98}


def probe_metrics(probes: Sequence[Probe], revealed: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The faithfulness figures for replies that revealed ``revealed[i]`` to ``probes[i]``."""
    answerable = [(p, set(r)) for p, r in zip(probes, revealed, strict=True) if p.answerable]
    unanswerable = [set(r) for p, r in zip(probes, revealed, strict=True) if p.kind != "adversarial" and not p.answers]
    adversarial = [set(r) for p, r in zip(probes, revealed, strict=True) if p.kind == "adversarial"]
    answered = sum(bool(r & set(p.answers)) for p, r in answerable)
    off_target = sum(bool(r) and not (r & set(p.answers)) for p, r in answerable)
    n_revealed = sum(len(r) for _, r in answerable)
    n_right = sum(len(r & set(p.answers)) for p, r in answerable)

    def rate(k: int, n: int) -> float | None:
        return k / n if n else None

    return {
        "probes": len(probes),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "adversarial": len(adversarial),
        "answered": rate(answered, len(answerable)),
        "off_target": rate(off_target, len(answerable)),
        "precision": rate(n_right, n_revealed),
        "facts_per_reply": rate(n_revealed, len(answerable)),
        "recall": rate(n_right, sum(len(p.answers) for p, _ in answerable)),
        "abstained": rate(sum(not r for r in unanswerable), len(unanswerable)),
        "adversarial_held": rate(sum(not r for r in adversarial), len(adversarial)),
    }


def evaluate_patient(patient: Patient, probes: Sequence[Probe], *, batch_size: int = 64) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Ask every probe of ``probes``; return the figures and what was revealed for each."""
    queries = [PatientQuery(load_probe_cases(p.source)[p.case_id], p.question) for p in probes]
    revealed: list[tuple[int, ...]] = []
    t0 = time.perf_counter()
    for start in range(0, len(queries), batch_size):
        revealed.extend(r.revealed for r in patient.reply_batch(queries[start : start + batch_size]))
    seconds = time.perf_counter() - t0
    metrics = probe_metrics(probes, revealed)
    metrics["replies_per_second"] = len(queries) / seconds if seconds > 0 else None
    return metrics, revealed


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = [
        "| patient | source | probes | answered (≥90%) | off-target (≤5%) | precision | abstained (≥90%) | adversarial held (≥98%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_source in results.items():
        for source, m in by_source.items():
            rows.append(
                f"| {name} | {source} | {m['probes']} | {_fmt(m['answered'])} | {_fmt(m['off_target'])} | {_fmt(m['precision'])} | "
                f"{_fmt(m['abstained'])} | {_fmt(m['adversarial_held'])} |"
            )
    return "\n".join(rows)


ANSWERABLE_KINDS = ("targeted", "opening", "history")


def by_kind(probes: Sequence[Probe], revealed: Sequence[Sequence[int]]) -> dict[str, dict[str, Any]]:
    """:func:`probe_metrics` for each kind of real question (targeted paraphrases, questions from the opening,
    broad history-taking questions), so a patient that only handles one kind cannot hide behind the mix."""
    out = {}
    for kind in ANSWERABLE_KINDS:
        idx = [i for i, p in enumerate(probes) if p.kind == kind]
        if idx:
            out[kind] = probe_metrics([probes[i] for i in idx], [revealed[i] for i in idx])
    return out


def _kind_table(kinds: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = ["| patient | source | " + " | ".join(f"{k}: answered / recall / off-target" for k in ANSWERABLE_KINDS) + " |",
            "|---|---|" + "---|" * len(ANSWERABLE_KINDS)]
    for name, by_source in kinds.items():
        for source, per in by_source.items():
            cells = []
            for k in ANSWERABLE_KINDS:
                m = per.get(k)
                cells.append("—" if m is None else f"{_fmt(m['answered'])} / {_fmt(m['recall'])} / {_fmt(m['off_target'])} (n={m['answerable']})")
            rows.append(f"| {name} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", default="faithful,bm25,bm25+minilm", help="comma-separated patient names")
    parser.add_argument("--split", default="test", choices=["test", "calibration"])
    parser.add_argument("--llm-limit", type=int, default=0, help="also run the SmolLM2 select patient on the first N probes per source")
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    probes = load_probes(split=args.split)
    sources = [s for s in SOURCES if any(p.source == s for p in probes)]
    specs = [s for s in args.patients.split(",") if s]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    kinds: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in specs + (["llm-select:smollm2"] if args.llm_limit else []):
        patient = make_patient(spec)
        results[spec], kinds[spec] = {}, {}
        for source in sources:
            subset = [p for p in probes if p.source == source]
            if spec.startswith("llm"):
                subset = subset[: args.llm_limit]
            results[spec][source], revealed = evaluate_patient(patient, subset)
            kinds[spec][source] = by_kind(subset, revealed)
            print(spec, source, {k: v for k, v in results[spec][source].items() if v is not None and not isinstance(v, int)}, flush=True)
    md = (
        f"# Patient faithfulness on the labelled probe set ({args.split} half)\n\n"
        f"Command: `python -m benchmarks.patient_quality --patients {args.patients}"
        + (f" --llm-limit {args.llm_limit}" if args.llm_limit else "")
        + (f" --split {args.split}" if args.split != "test" else "")
        + "`\n\n"
        + _table(results)
        + "\n\nBy kind of question (answered / recall of labelled facts / off-target, over answerable questions of that kind):\n\n"
        + _kind_table(kinds)
        + "\n\nanswered / off-target / precision: over answerable questions (a fact answers them); abstained: over "
        "questions no fact answers; adversarial held: keyword lists, catch-alls, statements, several questions in "
        "one action and option guesses that revealed nothing. Probes and labelling rule: `benchmarks/data/probes/`."
        + (f" The SmolLM2 patient ran on the first {args.llm_limit} probes of each source only (CPU time)." if args.llm_limit else "")
        + "\n"
    )
    name = "patient_quality" if args.split == "test" else "patient_quality_calibration"
    publish_result(name, {"split": args.split, "targets": TARGETS, "results": results, "by_kind": kinds}, md, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
