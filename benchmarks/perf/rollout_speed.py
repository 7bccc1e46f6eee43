"""Batched rollouts versus one episode at a time, side by side in one run, with the same model.

The published MediQ code runs one case at a time, one model call per turn. Here the same 16 episodes
run twice with the SmolLM2 doctor (and the fact-lookup patient): once with ``BatchedEnv(1)`` (one episode
at a time) and once with ``BatchedEnv(16)`` (one batched generation per stage per turn for all active
episodes). Greedy decoding, so both runs ask for the same work; we report wall time, the ratio, tokens
generated, how many episodes ended identically, and the process's peak resident memory.

Run:  ``python -m benchmarks.perf.rollout_speed [--episodes 16] [--max-questions 3]``
      → ``benchmarks/results/rollout_speed.{json,md}``
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from mediq_env import BatchedEnv, FactLookupPatient, builtin_cases

__all__ = ["measure"]


class CountingBackend:
    """Counts generate calls and generated tokens of the wrapped backend."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.calls = 0
        self.tokens = 0

    def generate(self, chats: Any, params: Any) -> Any:
        self.calls += 1
        out = self.inner.generate(chats, params)
        self.tokens += sum(g.usage.get("completion_tokens", 0) for g in out)
        return out


def _run(agent: Any, n_slots: int, cases: list, max_questions: int) -> tuple[float, list[dict[str, Any]]]:
    from agents.rollout import EpisodeSpec, rollout

    envs = BatchedEnv(n_slots, cases, patient=FactLookupPatient(), max_questions=max_questions)
    specs = [EpisodeSpec(c.id, seed=i) for i, c in enumerate(cases)]
    t0 = time.perf_counter()
    records = list(rollout(agent, envs, specs))
    return time.perf_counter() - t0, [r.to_dict() for r in records]


def measure(episodes: int = 16, max_questions: int = 3) -> dict[str, Any]:
    from agents import LLMAgent
    from mediq_env.backends.factory import make_backend

    cases = builtin_cases()[:episodes]
    backend = CountingBackend(make_backend("smollm2"))
    agent = LLMAgent(backend)
    _run(agent, 1, cases[:1], 1)  # warm-up: first-call overheads out of the comparison
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    backend.calls = backend.tokens = 0
    seq_time, seq = _run(agent, 1, cases, max_questions)
    seq_calls, seq_tokens = backend.calls, backend.tokens
    backend.calls = backend.tokens = 0
    bat_time, bat = _run(agent, episodes, cases, max_questions)
    bat_calls, bat_tokens = backend.calls, backend.tokens
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    by_key = {r["key"]: r for r in seq}
    same = sum(1 for r in bat if by_key[r["key"]]["answer"] == r["answer"] and len(by_key[r["key"]]["turns"]) == len(r["turns"]))
    return {
        "episodes": episodes,
        "max_questions": max_questions,
        "sequential_seconds": seq_time,
        "batched_seconds": bat_time,
        "speedup": seq_time / bat_time,
        "sequential_generate_calls": seq_calls,
        "batched_generate_calls": bat_calls,
        "sequential_tokens": seq_tokens,
        "batched_tokens": bat_tokens,
        "episodes_with_identical_outcome": same,
        "peak_rss_mb_after_model_load": rss_before,
        "peak_rss_mb": peak,
        "sequential_accuracy": sum(r["correct"] for r in seq) / episodes,
        "batched_accuracy": sum(r["correct"] for r in bat) / episodes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-questions", type=int, default=3)
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    r = measure(args.episodes, args.max_questions)
    md = (
        f"# Batched rollouts vs one at a time ({r['episodes']} episodes, SmolLM2-135M doctor, CPU)\n\n"
        "| | wall time | generate calls | tokens generated | accuracy |\n|---|---|---|---|---|\n"
        f"| one at a time | {r['sequential_seconds']:.1f} s | {r['sequential_generate_calls']} | {r['sequential_tokens']} | {r['sequential_accuracy']:.0%} |\n"
        f"| batched | {r['batched_seconds']:.1f} s | {r['batched_generate_calls']} | {r['batched_tokens']} | {r['batched_accuracy']:.0%} |\n\n"
        f"Speed-up: **{r['speedup']:.2f}×** in wall time. Episodes with the same outcome in both runs: "
        f"{r['episodes_with_identical_outcome']}/{r['episodes']} (left padding changes float rounding, so greedy "
        f"outputs can differ slightly). Peak resident memory: {r['peak_rss_mb']:.0f} MB "
        f"({r['peak_rss_mb_after_model_load']:.0f} MB after loading the model).\n"
    )
    path = write_result("rollout_speed", r, md, args.out_dir)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
