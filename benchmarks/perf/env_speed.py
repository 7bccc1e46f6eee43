"""Speed of the core loop on one core: env steps per second, BM25 patient vs the faithful default.

Every step is a real question answered by the patient, except the final answer step of each episode.
Measured side by side in one run (the machine is noisy; compare ratios, not absolute figures):

* ``single`` — one ``MediQEnv`` stepped one question at a time;
* ``batched`` — a ``BatchedEnv`` of 64 episodes, one patient call per turn;
* questions either come from a fixed list of 10 (``repeated``: the faithful patient's question-embedding
  cache hits, as in RL where a policy re-asks similar questions) or are all distinct (``unique``: every
  question is embedded, the worst case).

Threads are pinned to one (BLAS, torch, tokenizers) so the figure is per core.

Run:  ``python -m benchmarks.perf.env_speed``  → ``benchmarks/results/env_speed.{json,md}``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_var, "1" if _var != "TOKENIZERS_PARALLELISM" else "false")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from mediq_env import BatchedEnv, MediQEnv, builtin_cases  # noqa: E402
from mediq_env.patient import FactLookupPatient, FaithfulPatient, Patient, PatientQuery  # noqa: E402

QUESTIONS = [
    "How old are you?", "Do you smoke?", "Do you take any medication?", "Any fever?",
    "Has anyone in your family had similar problems?", "When did it start?", "Any allergies?",
    "Do you drink alcohol?", "Have you travelled recently?", "Is the pain worse at night?",
]


def _question(i: int, unique: bool) -> str:
    q = QUESTIONS[i % len(QUESTIONS)]
    # A distinct but still well-formed question each time: the cache cannot help.
    return f"{q[:-1]}, {['as far as you know', 'at the moment', 'these days', 'lately'][i % 4]} (#{i})?" if unique else q


def _pin_torch() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def single(patient: Patient, episodes: int, max_questions: int, unique: bool) -> float:
    env = MediQEnv(builtin_cases(), patient=patient, max_questions=max_questions)
    steps, n = 0, 0
    t0 = time.perf_counter()
    for ep in range(episodes):
        env.reset(seed=ep)
        for _ in range(max_questions):
            env.step(_question(n, unique))
            n += 1
            steps += 1
        env.step("ANSWER: A")
        steps += 1
    return steps / (time.perf_counter() - t0)


def batched(patient: Patient, episodes: int, max_questions: int, unique: bool, width: int = 64) -> float:
    batch = BatchedEnv(width, builtin_cases(), patient=patient, max_questions=max_questions)
    steps, n = 0, 0
    t0 = time.perf_counter()
    for start in range(0, episodes, width):
        batch.reset(seeds=[start + i for i in range(width)])
        for _ in range(max_questions):
            actions = [_question(n + j, unique) for j in range(len(batch.active))]
            n += len(actions)
            steps += len(batch.step(actions))
        steps += len(batch.step(["ANSWER: A"] * len(batch.active)))
    return steps / (time.perf_counter() - t0)


def measure(episodes: int = 256, max_questions: int = 10) -> dict[str, Any]:
    _pin_torch()
    patients: dict[str, Patient] = {"bm25": FactLookupPatient(), "faithful": FaithfulPatient()}
    out: dict[str, Any] = {"episodes": episodes, "max_questions": max_questions, "batch_width": 64}
    for name, patient in patients.items():
        # Warm the per-case indexes (built once per case and cached) so the figures are steady-state stepping.
        t0 = time.perf_counter()
        patient.reply_batch([PatientQuery(c, "How old are you?") for c in builtin_cases()])
        out[f"{name}_index_build_ms_per_case"] = (time.perf_counter() - t0) / len(builtin_cases()) * 1000
        for unique in (False, True):
            tag = "unique" if unique else "repeated"
            out[f"{name}_single_{tag}"] = single(patient, episodes // 4 if unique else episodes, max_questions, unique)
            out[f"{name}_batched_{tag}"] = batched(patient, episodes, max_questions, unique)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    r = measure(args.episodes)
    rows = ["| patient | single, repeated questions | single, unique | batched ×64, repeated | batched ×64, unique | index build / case |", "|---|---|---|---|---|---|"]
    for name in ("bm25", "faithful"):
        rows.append(
            f"| {name} | {r[f'{name}_single_repeated']:,.0f} | {r[f'{name}_single_unique']:,.0f} | "
            f"{r[f'{name}_batched_repeated']:,.0f} | {r[f'{name}_batched_unique']:,.0f} | {r[f'{name}_index_build_ms_per_case']:.1f} ms |"
        )
    ratio = r["bm25_batched_unique"] / r["faithful_batched_unique"]
    md = (
        "# Core loop speed: env steps per second on one core\n\n"
        "Command: `python -m benchmarks.perf.env_speed` (both patients in one run; every step but the last of an "
        "episode is a question answered by the patient).\n\n"
        + "\n".join(rows)
        + f"\n\nWith distinct questions in batches of 64, the faithful patient costs {ratio:.1f}× BM25's time per step "
        "(most of it is embedding the question with MiniLM; repeated questions hit its embedding cache).\n"
    )
    path = write_result("env_speed", r, md, args.out_dir)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
