"""How far do two labellers agree on which facts answer a probe? The ceiling under the patient's figures.

A second labeller, who saw only ``LABELLING.md`` and ``python -m benchmarks.probes show`` (never the first
labels, the patient or its scores), labelled a stratified random sample of the test half's non-adversarial
probes: 120 per source (``benchmarks/data/probes/agreement/second_labeller.jsonl``). Each label set is then
scored as if it were a patient's reply, with the same figures as :mod:`benchmarks.patient_quality`:

* the second labeller's labels as the reply, the probe set's as the truth — what a careful human reaches;
* the faithful patient against the first labels, the second, either (union) and both (intersection) — whether
  the patient's misses are label noise (then they would shrink under the union) or its own.

Records match probes by (source, case id, kind, question); the kind was not shown to the labeller, it only
tells apart one question asked as two kinds of probe, and a question asked twice as one kind matches in file
order. A record that names no probe, or a stale fact hash, is an error naming file, line and field.

Run:  ``python -m benchmarks.probe_agreement``  →  ``benchmarks/results/probe_agreement.{json,md}``
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import publish_result
from benchmarks.patient_quality import probe_metrics
from benchmarks.probes import PROBE_DIR, SOURCES, Probe, fact_hash, load_probe_cases, load_probes, source_path
from mediq_env.errors import CaseFormatError

__all__ = ["SAMPLE_SEED", "SECOND_LABELS", "agreement_rows", "draw_sample", "load_second_labels", "pair_kappa"]

SECOND_LABELS = PROBE_DIR / "agreement" / "second_labeller.jsonl"
SAMPLE_SEED = 20261127
PER_SOURCE = 120


def draw_sample(seed: int = SAMPLE_SEED, per_source: int = PER_SOURCE, *, data_dir: str | None = None) -> list[Probe]:
    """The probes the second labeller was given: ``per_source`` non-adversarial test-half probes of each source,
    drawn with one ``random.Random(seed)`` in the order built-in, AskDocs, MedQA (a source whose data is absent
    is left out, and the draw of the sources after it changes: compare per source)."""
    probes = [p for p in load_probes(data_dir=data_dir, split="test") if p.kind != "adversarial"]
    rng = random.Random(seed)
    out: list[Probe] = []
    for source in ("builtin", "askdocs", "medqa"):
        mine = [p for p in probes if p.source == source]
        if mine:
            out += rng.sample(mine, min(per_source, len(mine)))
    return out


def load_second_labels(path: Path = SECOND_LABELS, *, data_dir: str | None = None) -> list[tuple[Probe, tuple[int, ...]]]:
    """(probe, the second labeller's answering facts) for every record whose source's data is present."""
    probes_by_key: dict[tuple[str, str, str, str], list[Probe]] = defaultdict(list)
    for p in load_probes(data_dir=data_dir):
        if p.kind != "adversarial":
            probes_by_key[(p.source, p.case_id, str(p.kind), p.question)].append(p)
    used: dict[tuple[str, str, str, str], int] = defaultdict(int)
    out: list[tuple[Probe, tuple[int, ...]]] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CaseFormatError(str(path), n, "record", f"not JSON: {exc.msg}") from None
        source = rec.get("source") if isinstance(rec, dict) else None
        if source not in SOURCES:
            raise CaseFormatError(str(path), n, "source", f"expected one of {sorted(SOURCES)}, got {source!r}")
        if source != "builtin" and not source_path(source, data_dir).exists():
            continue  # the public data is absent: its records cannot be checked or scored
        key = (source, str(rec.get("case_id", "")), str(rec.get("kind", "")), str(rec.get("question", "")))
        matches = probes_by_key.get(key, [])
        if used[key] >= len(matches):
            raise CaseFormatError(str(path), n, "question", f"no (further) {key[2]} probe of {source} case {key[1]!r} asks {key[3]!r}")
        probe = matches[used[key]]
        used[key] += 1
        facts = load_probe_cases(source, data_dir)[probe.case_id].facts
        answers = rec.get("answers")
        if not isinstance(answers, list):
            raise CaseFormatError(str(path), n, "answers", "must be a list of [fact index, fact hash] pairs")
        indices: list[int] = []
        for pair in answers:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int) and 0 <= pair[0] < len(facts)):
                raise CaseFormatError(str(path), n, "answers", f"bad entry {pair!r}: expected [index, hash] with an index in range")
            if fact_hash(facts[pair[0]]) != pair[1]:
                raise CaseFormatError(str(path), n, "answers", f"fact {pair[0]} has hash {fact_hash(facts[pair[0]])}, label says {pair[1]!r}: stale label")
            indices.append(pair[0])
        out.append((probe, tuple(sorted(set(indices)))))
    return out


def _as_truth(probe: Probe, answers: tuple[int, ...]) -> Probe:
    """``probe`` with ``answers`` as its label (an emptied targeted probe counts as unanswerable)."""
    kind = "unanswerable" if not answers and probe.kind == "targeted" else probe.kind
    return replace(probe, kind=kind, answers=answers)


def pair_kappa(probes: Sequence[Probe], first: Sequence[tuple[int, ...]], second: Sequence[tuple[int, ...]]) -> dict[str, float]:
    """Agreement over every (question, fact) pair — Cohen's kappa — and over whole label sets."""
    a: list[bool] = []
    b: list[bool] = []
    for p, x, y in zip(probes, first, second, strict=True):
        for i in range(len(load_probe_cases(p.source)[p.case_id].facts)):
            a.append(i in x)
            b.append(i in y)
    ya, yb = np.array(a), np.array(b)
    observed = float((ya == yb).mean())
    expected = float(ya.mean() * yb.mean() + (1 - ya.mean()) * (1 - yb.mean()))
    return {
        "pairs": len(a),
        "kappa": (observed - expected) / (1 - expected) if expected < 1 else 1.0,
        "identical": float(np.mean([set(x) == set(y) for x, y in zip(first, second, strict=True)])),
        "same_emptiness": float(np.mean([(not x) == (not y) for x, y in zip(first, second, strict=True)])),
    }


def agreement_rows(probes: Sequence[Probe], second: Sequence[tuple[int, ...]], patient: Sequence[tuple[int, ...]]) -> list[dict[str, Any]]:
    """Each (reply, truth) pairing's figures (see the module docstring)."""
    first = [p.answers for p in probes]
    union = [tuple(sorted(set(x) | set(y))) for x, y in zip(first, second, strict=True)]
    both = [tuple(sorted(set(x) & set(y))) for x, y in zip(first, second, strict=True)]

    def truth(labels: Sequence[tuple[int, ...]]) -> list[Probe]:
        return [_as_truth(p, a) for p, a in zip(probes, labels, strict=True)]

    pairings = [
        ("second labeller", "first labeller (the probe set)", list(probes), second),
        ("first labeller", "second labeller", truth(second), first),
        ("faithful patient", "first labeller (the probe set)", list(probes), patient),
        ("faithful patient", "second labeller", truth(second), patient),
        ("faithful patient", "either labeller (union)", truth(union), patient),
        ("faithful patient", "both labellers (intersection)", truth(both), patient),
    ]
    return [{"reply": r, "truth": t, **probe_metrics(ps, revealed)} for r, t, ps, revealed in pairings]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    from mediq_env.patient import FaithfulPatient, PatientQuery

    pairs = load_second_labels()
    patient = FaithfulPatient()
    replies = patient.reply_batch([PatientQuery(load_probe_cases(p.source)[p.case_id], p.question) for p, _ in pairs])
    result: dict[str, Any] = {"patient_model": patient.model_id, "by_source": {}}
    lines = [
        "# Do two labellers agree? The probe labels against a second, blind labeller (test half)",
        "",
        "Command: `python -m benchmarks.probe_agreement`. Each label set is scored as if it were a patient's reply.",
        "",
        "| source | reply | truth | probes | answerable | answered | off-target | precision | recall | abstained |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for source in ("all", *sorted(SOURCES)):
        idx = [i for i, (p, _) in enumerate(pairs) if source == "all" or p.source == source]
        if not idx:
            continue
        probes = [pairs[i][0] for i in idx]
        second = [pairs[i][1] for i in idx]
        rows = agreement_rows(probes, second, [replies[i].revealed for i in idx])
        kappa = pair_kappa(probes, [p.answers for p in probes], second)
        result["by_source"][source] = {"rows": rows, "agreement": kappa}
        for r in rows:
            lines.append(
                f"| {source} | {r['reply']} | {r['truth']} | {r['probes']} | {r['answerable']} | {r['answered']:.1%} | "
                f"{r['off_target']:.1%} | {r['precision']:.1%} | {r['recall']:.1%} | {r['abstained']:.1%} |"
            )
    lines.append("")
    lines.append("| source | (question, fact) pairs | Cohen's kappa | label sets identical | both empty or both not |")
    lines.append("|---|---|---|---|---|")
    for source, block in result["by_source"].items():
        k = block["agreement"]
        lines.append(f"| {source} | {k['pairs']} | {k['kappa']:.3f} | {k['identical']:.1%} | {k['same_emptiness']:.1%} |")
    lines += [
        "",
        "The sample: 120 non-adversarial test-half probes per source, drawn at random (seed 20261127). The second "
        "labeller saw only `LABELLING.md` and `probes show`. Both labellers were model-based annotators of the same "
        "kind, so this measures how reproducible the labels are under the rule, not agreement between clinicians.",
        "",
    ]
    publish_result("probe_agreement", result, "\n".join(lines), args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
