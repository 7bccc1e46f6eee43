"""The benchmark's ``mediq`` sub-commands: ``bench``, ``report``, ``compare``, ``view`` and ``export`` (registered
by entry point)."""

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
    run.add_openai_arguments(p)
    p.set_defaults(func=_compare)

    p = sub.add_parser("view", help="one self-contained HTML file to read runs: leaderboard, episodes as chats, filters")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", help="HTML file to write (default: <run>/viewer.html for one run, ./viewer.html for several)")
    p.add_argument("--serve", action="store_true", help="also serve it on http://127.0.0.1 until Ctrl-C")
    p.add_argument("--cases", help="the cases file the runs used, when the path in their manifest no longer resolves")
    p.set_defaults(func=_view)

    p = sub.add_parser("export", help="a run's episodes (chat format + rewards) or synth pairs as a training dataset")
    p.add_argument("path", help="a run directory, or a `mediq synth` output folder (preference pairs)")
    p.add_argument("--format", required=True, choices=["jsonl", "parquet", "hf"],
                   help="jsonl / parquet: one file; hf: a datasets.save_to_disk folder")
    p.add_argument("--out", help="file (jsonl, parquet) or folder (hf) to write (default: PATH/export.jsonl, "
                   "PATH/export.parquet or the folder PATH/export_hf)")
    p.add_argument("--cases", help="the cases file the run used, when the path in its manifest no longer resolves")
    p.add_argument("--modes", help="only these run modes, comma-separated (default: all)")
    p.add_argument("--pairs", choices=["pairs", "overall"], default="pairs",
                   help="synth folders: per-attribute pairs, or the pooled overall pairs")
    p.set_defaults(func=_export)


def _report(args: argparse.Namespace) -> int:
    from benchmarks.report import leaderboard

    print(leaderboard(args.runs))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from benchmarks.compare import compare_runs, format_comparison
    from benchmarks.run import apply_openai_arguments

    apply_openai_arguments(args)
    result = compare_runs(
        args.run_a, args.run_b, judge=args.judge, attribute=args.attribute, samples=args.samples,
        force=args.force, progress=not args.no_progress,
    )
    print(format_comparison(result))
    if args.out:
        import json
        from pathlib import Path

        from mediq_env.errors import ConfigError

        try:
            Path(args.out).write_text(json.dumps(result, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
        except OSError as exc:  # the comparison is printed above; say why the file is missing, in one line
            raise ConfigError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    return 0


def _view(args: argparse.Namespace) -> int:
    from benchmarks.view import run_view

    return run_view(args.runs, out=args.out, serve_after=args.serve, cases=args.cases)


def _export(args: argparse.Namespace) -> int:
    from benchmarks.export import export

    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
    out, n = export(args.path, args.format, args.out, cases=args.cases, modes=modes, pairs=args.pairs)
    print(f"wrote {n} rows to {out}")
    return 0
