"""The benchmark's ``mediq`` sub-commands: ``bench``, ``report`` and ``compare`` (registered by entry point)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from benchmarks import run

    p = sub.add_parser("bench", help="run the interactive clinical QA benchmark (resumable)")
    run.add_arguments(p)
    p.set_defaults(func=run.main_from_args)

    p = sub.add_parser("report", help="leaderboard of finished runs")
    p.add_argument("runs", nargs="+", help="run directories")
    p.set_defaults(func=_report)

    p = sub.add_parser("compare", help="paired comparison of two runs on the same cases")
    p.add_argument("run_a", help="the baseline run")
    p.add_argument("run_b", help="the run compared against it")
    p.add_argument("--judge", help="backend for the question-level win rate (e.g. smollm2, openai:<model>)")
    p.add_argument("--attribute", default="overall", help="attribute the pairwise judge compares on")
    p.add_argument("--samples", type=int, default=1, help="judge samples per order")
    p.add_argument("--out", help="write the comparison as JSON here")
    p.add_argument("--force", action="store_true", help="compare runs made with different settings (prints a warning)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while judging")
    p.set_defaults(func=_compare)


def _report(args: argparse.Namespace) -> int:
    from benchmarks.report import leaderboard

    print(leaderboard(args.runs))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from benchmarks.compare import compare_runs, format_comparison

    result = compare_runs(
        args.run_a, args.run_b, judge=args.judge, attribute=args.attribute, samples=args.samples,
        force=args.force, progress=not args.no_progress,
    )
    print(format_comparison(result))
    if args.out:
        import json
        from pathlib import Path

        Path(args.out).write_text(json.dumps(result, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
    return 0
