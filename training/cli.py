"""The training package's ``mediq`` sub-commands (registered through the ``mediq.commands`` entry point).

``mediq synth`` builds ALFA-style attribute-specific preference pairs and SFT examples from real clinician
questions (:mod:`training.synth`)::

    mediq synth --input ../shared/data/askdocs_questions_eval.jsonl --out runs/synth \\
        --generator openai:gpt-4o-mini --judge openai:gpt-4o --cache-dir runs/cache

Without the entry point installed, ``python -m training.cli synth ...`` runs the same command.
Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["config_from_args", "main", "register"]


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def register(sub: Any) -> None:
    """Add ``synth`` to the ``mediq`` sub-parsers."""
    p = sub.add_parser(
        "synth",
        help="synthesise attribute-specific preference pairs (and SFT data) from real clinician questions",
        description="ALFA-style counterfactual data: for each question and attribute, a generator writes an "
        "enhanced and a corrupted rewrite, filters drop bad rewrites, a pairwise judge verifies each pair. "
        "Resumable: rerun the same command to continue.",
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--input", required=True, help="questions JSONL: askdocs format, or plain "
                    '{"id", "post", "question", "history"?: [[q, a], ...], "diagnosis"?, "post_id"?, "title"?}')
    io.add_argument("--input-format", choices=["auto", "askdocs", "plain"], default="auto")
    io.add_argument("--out", required=True, help="output folder (reuse it to resume)")
    io.add_argument("--limit", type=int, help="use only the first N questions")
    io.add_argument("--eval-fraction", type=float, default=0.1, help="share of patient posts in the eval split")
    io.add_argument("--split-seed", type=int, default=0)
    io.add_argument("--no-hf-dataset", action="store_true", help="write JSONL only (no datasets.save_to_disk)")
    io.add_argument("--sft-only", action="store_true", help="write only the SFT examples (no model needed)")
    io.add_argument("--no-sft", action="store_true", help="do not write the SFT examples")

    m = p.add_argument_group("models")
    m.add_argument("--generator", help="backend spec of the rewriting model (smollm2, hf:<id>, vllm:<id>, "
                   "openai:<model>, scripted)")
    m.add_argument("--judge", help="backend spec of the pairwise judge (default: the generator's); 'none' "
                   "skips verification")
    m.add_argument("--generator-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend constructor option, repeatable (e.g. max_concurrency=64, tensor_parallel_size=4); "
                   "VALUE is read as JSON when it parses, else as a string")
    m.add_argument("--judge-option", action="append", default=[], metavar="KEY=VALUE",
                   help="the same for the judge's backend (giving any loads the judge separately)")
    m.add_argument("--cache-dir", help="response cache folder (sqlite); makes reruns free")
    m.add_argument("--batch-size", type=int, default=16, help="(question, attribute) units per backend call")
    m.add_argument("--max-new-tokens", type=int, default=128)
    m.add_argument("--temperature", type=float, default=0.0)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--max-post-chars", type=int, default=4000,
                   help="cut longer posts (keeping the start) in every prompt, training prompts included")

    s = p.add_argument_group("what to synthesise")
    s.add_argument("--attributes", type=_csv, help="comma-separated attribute names (default: the six ALFA ones)")
    s.add_argument("--pair-kinds", type=_csv,
                   help="comma-separated: enhanced>corrupted,enhanced>original,original>corrupted (default: all)")
    s.add_argument("--use-diagnosis", action="store_true",
                   help="condition enhanced rewrites of the clinical attributes on the thread's final diagnosis")
    s.add_argument("--diagnosis-attributes", type=_csv, help="attributes --use-diagnosis applies to")

    f = p.add_argument_group("filters and verification")
    f.add_argument("--judge-samples", type=int, default=1, help="judge samples per presentation order")
    f.add_argument("--judge-min-win", type=float, default=0.75,
                   help="min win rate of the intended winner over both orders (0.5 < x <= 1)")
    f.add_argument("--judge-allow-unparsed", action="store_true",
                   help="decide on the parsed verdicts even if some judge replies were unparseable")
    f.add_argument("--judge-format-examples", action="store_true",
                   help="show the judge two worked examples (helps tiny models keep the format)")
    f.add_argument("--max-token-jaccard", type=float, default=0.9, help="near-duplicate threshold (word sets)")
    f.add_argument("--max-char-ratio", type=float, default=0.95, help="near-duplicate threshold (characters)")
    f.add_argument("--max-rewrite-chars", type=int, default=500)
    f.add_argument("--min-rewrite-chars", type=int, default=8)
    f.add_argument("--max-new-numbers", type=int, default=0)
    f.add_argument("--max-new-medical-terms", type=int, default=0)
    f.add_argument("--max-context-copy", type=float, default=0.5,
                   help="max share of a rewrite's new word 4-grams copied from the post (echo filter)")
    f.add_argument("--content-check-attributes", type=_csv,
                   help="attributes whose rewrites must keep the medical content (default: the general group)")
    p.set_defaults(func=_cmd_synth)


def _options(items: Sequence[str], flag: str) -> dict[str, Any]:
    from mediq_env.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~training.synth.SynthConfig` a parsed ``synth`` command line describes."""
    from training.synth import SynthConfig

    kw: dict[str, Any] = {
        "input": args.input,
        "out_dir": args.out,
        "input_format": args.input_format,
        "limit": args.limit,
        "eval_fraction": args.eval_fraction,
        "split_seed": args.split_seed,
        "save_hf_dataset": not args.no_hf_dataset,
        "sft_only": args.sft_only,
        "write_sft": not args.no_sft,
        "generator": args.generator,
        "cache_dir": args.cache_dir,
        "generator_options": _options(args.generator_option, "--generator-option"),
        "judge_options": _options(args.judge_option, "--judge-option"),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "use_diagnosis": args.use_diagnosis,
        "judge_samples": args.judge_samples,
        "judge_min_win": args.judge_min_win,
        "judge_require_all_parsed": not args.judge_allow_unparsed,
        "judge_format_examples": args.judge_format_examples,
        "max_token_jaccard": args.max_token_jaccard,
        "max_char_ratio": args.max_char_ratio,
        "max_rewrite_chars": args.max_rewrite_chars,
        "min_rewrite_chars": args.min_rewrite_chars,
        "max_new_numbers": args.max_new_numbers,
        "max_new_medical_terms": args.max_new_medical_terms,
        "max_context_copy": args.max_context_copy,
        "max_post_chars": args.max_post_chars,
        "content_check_attributes": args.content_check_attributes,
    }
    if args.judge is not None and args.judge.strip().lower() == "none":
        kw["verify"] = False
    else:
        kw["judge"] = args.judge
    for name in ("attributes", "pair_kinds", "diagnosis_attributes"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    if not args.sft_only and not args.generator:
        from mediq_env.errors import ConfigError

        raise ConfigError("--generator is required (or --sft-only for the SFT examples alone)")
    return SynthConfig(**kw)


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synth import run_synth

    config = config_from_args(args)
    result = run_synth(config, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    if result["pairs"] is not None:
        stats = result["pairs"].stats
        print(f"pairs kept: {stats['pairs_kept']} ({json.dumps(stats['pairs_by_kind'])})")
        for attr, a in stats["per_attribute"].items():
            drops = ", ".join(f"{k} {v}" for k, v in _top_drops(a).items()) or "none"
            print(f"  {attr}: {a['pairs_kept']} pairs; most frequent drops: {drops}")
        print(f"statistics: {config.out_dir}/stats.md")
    if result["sft"] is not None:
        sft = result["sft"]
        print(f"SFT examples: train {sft['train']['rows']}, eval {sft['eval']['rows']} ({config.out_dir}/sft)")
    return 0


def _top_drops(attr_stats: dict[str, Any], n: int = 3) -> dict[str, int]:
    from collections import Counter

    c: Counter[str] = Counter()
    for d, r in attr_stats["rewrites"].items():
        c.update({f"{d}:{k}": v for k, v in r["dropped"].items()})
    for _kind, p in attr_stats["pairs"].items():
        c.update({f"pair:{k}": v for k, v in p["dropped"].items() if not k.endswith("_unusable")})
    return dict(c.most_common(n))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.cli synth ...``: the training commands without the ``mediq`` entry point."""
    from mediq_env.errors import MediQError

    parser = argparse.ArgumentParser(prog="python -m training.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MediQError as exc:
        print(f"mediq: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
