"""Speed of the core loop on one core: FactLookupPatient replies per second and env steps per second.

Every step here is a real question answered by the patient (BM25 retrieval), except the final answer
step of each episode. Threads are pinned to one (BLAS, tokenizers) so the figure is per core.

Run:  ``python -m benchmarks.perf.env_speed``  → ``benchmarks/results/env_speed.{json,md}``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from mediq_env import FactLookupPatient, MediQEnv, PatientQuery, builtin_cases  # noqa: E402

QUESTIONS = [
    "How old are you?", "Do you smoke?", "Do you take any medication?", "Any fever?",
    "Has anyone in your family had similar problems?", "When did it start?", "Any allergies?",
    "Do you drink alcohol?", "Have you travelled recently?", "Is the pain worse at night?",
]


def measure(episodes: int = 400, max_questions: int = 10) -> dict[str, float]:
    cases = builtin_cases()
    patient = FactLookupPatient()
    env = MediQEnv(cases, patient=patient, max_questions=max_questions)
    # Warm the per-case indexes so the figure is steady-state stepping, then time separately the build.
    t0 = time.perf_counter()
    for c in cases:
        patient.reply(c, "warm up")
    index_build = (time.perf_counter() - t0) / len(cases)

    queries = [PatientQuery(cases[i % len(cases)], QUESTIONS[i % len(QUESTIONS)]) for i in range(5000)]
    t0 = time.perf_counter()
    patient.reply_batch(queries)
    replies_per_s = len(queries) / (time.perf_counter() - t0)

    steps = 0
    t0 = time.perf_counter()
    for ep in range(episodes):
        env.reset(seed=ep)
        for q in QUESTIONS[:max_questions]:
            env.step(q)
            steps += 1
        env.step("ANSWER: A")
        steps += 1
    elapsed = time.perf_counter() - t0
    return {
        "episodes": episodes,
        "steps": steps,
        "env_steps_per_second": steps / elapsed,
        "patient_replies_per_second": replies_per_s,
        "index_build_ms_per_case": index_build * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    r = measure(args.episodes)
    md = (
        "# Core loop speed (one core)\n\n"
        f"- env steps per second (questions answered by FactLookupPatient, BM25): **{r['env_steps_per_second']:,.0f}**\n"
        f"- patient replies per second (batched call): **{r['patient_replies_per_second']:,.0f}**\n"
        f"- per-case index build (once per case, cached): {r['index_build_ms_per_case']:.2f} ms\n"
    )
    path = write_result("env_speed", r, md, args.out_dir)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
