"""How well does the fact-lookup patient answer natural, paraphrased questions?

For every probe in ``benchmarks/data/patient_probes.jsonl`` (a question written by the team to target one
fact of a built-in case, in other words than the fact's own) we ask the patient and measure:

* **target recall** — the targeted fact is in the reply;
* **other facts per reply** — facts revealed besides the target (the patient should say only what is asked);
* **off-target reply rate** — replies that reveal a fact but not the target (the wrong answer entirely);
* **cannot-answer rate** — replies that reveal nothing;
* **unrelated-question reveal rate** — generic or off-topic questions (:data:`UNRELATED`) asked of every
  case that got any fact in reply (the patient should say it cannot answer).

The patient's default thresholds were chosen on the even-numbered cases; the odd-numbered cases are
reported separately as a held-out figure.

Run:  ``python -m benchmarks.patient_quality [--no-embeddings]``  → ``benchmarks/results/patient_quality.{json,md}``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, write_result
from mediq_env import FactLookupPatient, PatientQuery, builtin_cases

__all__ = ["UNRELATED", "evaluate_patient", "load_probes", "unrelated_reveal_rate"]

UNRELATED = (
    "Tell me everything.",
    "What is your favourite colour?",
    "Who won the football match last night?",
    "Can you describe all of your symptoms in detail?",
    "What's the weather like today?",
    "Do you like pizza?",
    "Is there anything else I should know?",
    "How is your day going?",
)


def load_probes(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or DATA_DIR / "patient_probes.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate_patient(patient: FactLookupPatient, probes: list[dict[str, Any]] | None = None) -> dict[str, float]:
    probes = probes if probes is not None else load_probes()
    cases = {c.id: c for c in builtin_cases()}
    queries = [PatientQuery(cases[p["case_id"]], p["question"]) for p in probes]
    t0 = time.perf_counter()
    replies = patient.reply_batch(queries)
    seconds = time.perf_counter() - t0
    hits = others = off_target = silent = 0
    for probe, reply in zip(probes, replies, strict=True):
        target = probe["fact_index"]
        hit = target in reply.revealed
        hits += hit
        others += len([i for i in reply.revealed if i != target])
        off_target += bool(reply.revealed) and not hit
        silent += not reply.revealed
    n = len(probes)
    return {
        "probes": n,
        "target_recall": hits / n,
        "other_facts_per_reply": others / n,
        "off_target_reply_rate": off_target / n,
        "cannot_answer_rate": silent / n,
        "replies_per_second": n / seconds if seconds > 0 else float("inf"),
    }


def unrelated_reveal_rate(patient: FactLookupPatient) -> float:
    queries = [PatientQuery(c, q) for c in builtin_cases() for q in UNRELATED]
    return sum(bool(r.revealed) for r in patient.reply_batch(queries)) / len(queries)


def _held_out(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in probes if int(p["case_id"].rsplit("-", 1)[-1]) % 2 == 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-embeddings", action="store_true", help="measure BM25 only")
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    probes = load_probes()
    patients = {"bm25": FactLookupPatient()}
    if not args.no_embeddings:
        patients["bm25+minilm"] = FactLookupPatient(embedder="minilm")
    results: dict[str, Any] = {}
    for name, patient in patients.items():
        results[name] = evaluate_patient(patient, probes)
        results[name]["held_out"] = evaluate_patient(patient, _held_out(probes))
        results[name]["unrelated_reveal_rate"] = unrelated_reveal_rate(patient)
    rows = [
        "| patient | probes | target recall (held-out) | other facts / reply | off-target replies (held-out) | cannot answer | unrelated questions answered |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        h = r["held_out"]
        rows.append(
            f"| {name} | {r['probes']} | {r['target_recall']:.1%} ({h['target_recall']:.1%}) | {r['other_facts_per_reply']:.2f} | "
            f"{r['off_target_reply_rate']:.1%} ({h['off_target_reply_rate']:.1%}) | {r['cannot_answer_rate']:.1%} | "
            f"{r['unrelated_reveal_rate']:.1%} |"
        )
    md = "# Fact-lookup patient on paraphrased probe questions\n\n" + "\n".join(rows) + "\n"
    path = write_result("patient_quality", {"results": results}, md, args.out_dir)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
