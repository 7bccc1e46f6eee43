"""Wall time of a whole benchmark run on the 205 MediQ-AskDocs dev cases, with a model-free agent.

Measures the harness itself (loading, env, fact-lookup patient, run directory with fsync per episode,
metrics, report) with the checklist agent, 5 questions per case, all three modes (615 episodes). The
LLM-agent comparison of batched versus one-at-a-time rollouts is ``benchmarks/perf/rollout_speed.py``.

Run:  ``python -m benchmarks.perf.bench_speed [--cases ../shared/data/mediq_askdocs_dev.jsonl]``
      → ``benchmarks/results/bench_speed.{json,md}``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result
from benchmarks.run import BenchConfig, run_benchmark

DEFAULT_CASES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mediq_askdocs_dev.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    if not args.cases.exists():
        parser.error(f"{args.cases} not found: point --cases at the public MediQ-AskDocs file")
    cfg = BenchConfig(agent="checklist", cases=str(args.cases), max_questions=5, scorer="none")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_benchmark(cfg, Path(tmp) / "run", progress=False)
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_benchmark(cfg, Path(tmp) / "run", progress=False)  # everything done: a resume only re-reports
        resume_seconds = time.perf_counter() - t0
    episodes = sum(m["episodes"] for m in summary["modes"].values())
    r = {"cases": str(args.cases), "episodes": episodes, "seconds": seconds, "episodes_per_second": episodes / seconds,
         "resume_of_finished_run_seconds": resume_seconds,
         "accuracy": summary["modes"]["interactive"]["accuracy"]["mean"],
         "majority_letter_file": summary["modes"]["interactive"]["majority_letter"]["file_accuracy"]}
    md = (
        "# Benchmark harness speed (checklist agent, fact-lookup patient)\n\n"
        f"{episodes} episodes ({args.cases.name}, 3 modes, up to 5 questions) in **{seconds:.1f} s** "
        f"({r['episodes_per_second']:.0f} episodes/s, including loading, fsync per episode, metrics, report and plots). "
        f"Re-running the finished run (resume, nothing to do) takes {resume_seconds:.1f} s.\n"
    )
    path = write_result("bench_speed", r, md, args.out_dir)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
