"""The faithful patient in bfloat16: how much faster, and how many replies change.

The encoder is the faithful patient's whole cost (``encoder_roofline``: 82% of one core's float32 matrix
peak), so faster code around it cannot reach the issue's 1,000 steps/s; cheaper arithmetic can. This runs
the same patient two ways, side by side in one process, on one core:

* ``float32`` — the default, what the head and threshold were fitted on;
* ``bfloat16`` — the encoder under CPU autocast (``FaithfulPatient(precision="bfloat16")``,
  ``make_patient("faithful:bfloat16")``).

and reports (1) env steps/s, single and batched ×64, with distinct questions (``env_speed``'s worst case),
(2) on every probe of both halves, how many replies reveal other facts than in float32, and (3) the test
half's four faithfulness figures per source for both. Whether the CPU has native bfloat16 units is
recorded: without them autocast is expected to emulate bfloat16 and run slower (not measured here), one reason
float32 stays the default.

int8 dynamic quantisation was tried first and rejected (noted in the result file): 2.5× faster, but the
tuned embeddings moved to a median cosine of 0.95 with float32's, which no threshold survives.

Run:  ``python -m benchmarks.perf.patient_precision``  → ``benchmarks/results/patient_precision.{json,md}``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_var, "1" if _var != "TOKENIZERS_PARALLELISM" else "false")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from benchmarks.patient_quality import evaluate_patient, probe_metrics  # noqa: E402
from benchmarks.perf.env_speed import _pin_torch, batched, single  # noqa: E402
from benchmarks.probes import SOURCES, load_probes  # noqa: E402
from mediq_env import builtin_cases  # noqa: E402
from mediq_env.patient import PRECISIONS, FaithfulPatient, PatientQuery  # noqa: E402

FIGURES = ("answered", "off_target", "abstained", "adversarial_held")


def cpu_bf16_units() -> list[str]:
    """The CPU flags that give native bfloat16 matrix arithmetic (empty: emulated, slow)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def measure(episodes: int, rounds: int, sources: list[str] | None = None) -> dict[str, Any]:
    _pin_torch()
    patients = {p: FaithfulPatient(precision=p) for p in PRECISIONS}
    out: dict[str, Any] = {"episodes": episodes, "rounds": rounds, "sources": sources, "cpu_bf16_units": cpu_bf16_units(), "speed": {}, "model_id": {}}
    for name, patient in patients.items():
        patient.reply_batch([PatientQuery(c, "How old are you?") for c in builtin_cases()])  # build the case indexes
        out["model_id"][name] = patient.model_id
    # Interleaved rounds, best of each: the two precisions see the same background load.
    for r in range(rounds):
        for name, patient in patients.items():
            patient.forget_questions()
            s = out["speed"].setdefault(name, {"single_unique": 0.0, "batched_unique": 0.0})
            s["single_unique"] = max(s["single_unique"], single(patient, episodes // 4, 10, True))
            patient.forget_questions()
            s["batched_unique"] = max(s["batched_unique"], batched(patient, episodes, 10, True))
            print(f"round {r + 1}: {name} {s}", flush=True)
    probes = load_probes(sources or tuple(SOURCES))
    revealed: dict[str, list[tuple[int, ...]]] = {}
    out["test_half"] = {name: {} for name in PRECISIONS}
    for name, patient in patients.items():
        _, revealed[name] = evaluate_patient(patient, probes)
        for source in SOURCES:
            subset = [(p, r) for p, r in zip(probes, revealed[name], strict=True) if p.source == source and p.split == "test"]
            if subset:
                out["test_half"][name][source] = probe_metrics([p for p, _ in subset], [r for _, r in subset])
    changed = [i for i, (a, b) in enumerate(zip(revealed["float32"], revealed["bfloat16"], strict=True)) if set(a) != set(b)]
    out["probes"] = len(probes)
    out["replies_changed"] = len(changed)
    out["changed_examples"] = [
        {"source": probes[i].source, "case_id": probes[i].case_id, "kind": probes[i].kind,
         "float32": list(revealed["float32"][i]), "bfloat16": list(revealed["bfloat16"][i])}
        for i in changed[:20]
    ]
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def report(r: dict[str, Any]) -> str:
    s32, s16 = r["speed"]["float32"], r["speed"]["bfloat16"]
    rows = "\n".join(
        f"| {name} | {r['speed'][name]['single_unique']:,.0f} | {r['speed'][name]['batched_unique']:,.0f} |" for name in PRECISIONS
    )
    fig_rows = "\n".join(
        f"| {name} | {source} | " + " | ".join(_pct(m[f]) for f in FIGURES) + " |"
        for name in PRECISIONS for source, m in r["test_half"][name].items()
    )
    units = ", ".join(r["cpu_bf16_units"]) or "none (bfloat16 is emulated here)"
    return (
        "# The faithful patient in bfloat16: speed and changed replies\n\n"
        f"Command: `python -m benchmarks.perf.patient_precision --episodes {r['episodes']} --rounds {r['rounds']}"
        + (f" --sources {','.join(r['sources'])}" if r["sources"] else "") + "` "
        f"(one core; distinct questions, so every question is embedded; best of {r['rounds']} interleaved rounds). "
        f"This CPU's native bfloat16 units: {units}.\n\n"
        "| precision | single, unique (steps/s) | batched ×64, unique (steps/s) |\n|---|---|---|\n"
        + rows
        + f"\n\nbfloat16 / float32: **{s16['batched_unique'] / s32['batched_unique']:.2f}×** batched, "
        f"{s16['single_unique'] / s32['single_unique']:.2f}× single.\n\n"
        f"Replies that reveal other facts than in float32: **{r['replies_changed']} of {r['probes']}** probes "
        "(both halves, every source and kind).\n\n"
        "Test half, per source:\n\n| precision | source | answered | off-target | abstained | adversarial held |\n|---|---|---|---|---|---|\n"
        + fig_rows
        + f"\n\nPatient model ids (recorded in run manifests): float32 `{r['model_id']['float32']}`, bfloat16 "
        f"`{r['model_id']['bfloat16']}`: runs of the two are never mixed on resume or compared.\n\n"
        "Not shipped as the default: on a CPU without native bfloat16 units autocast is expected to be emulated "
        "and slower (not measured: this run's CPU has them), and the doctor tables were made in float32. int8 dynamic quantisation (torch `quantize_dynamic` on every "
        "linear layer) was tried first: 2.5× faster, but the tuned question embeddings fell to a median cosine "
        "of 0.95 with float32's (quantising only the feed-forward input layer: 0.99, but 1.25×), so it was dropped.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sources", default=None, help="comma-separated probe sources (default: every one present)")
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    unknown = set(args.sources.split(",") if args.sources else ()) - set(SOURCES)
    if unknown:
        parser.error(f"--sources: unknown {', '.join(sorted(unknown))}; use {', '.join(SOURCES)}")
    r = measure(args.episodes, args.rounds, args.sources.split(",") if args.sources else None)
    md = report(r)
    path = write_result("patient_precision", r, md, args.out_dir)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
