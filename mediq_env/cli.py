"""The ``mediq`` command line.

Core commands live here (``validate``, ``play``). The packages built on mediq_env (benchmarks, training)
add their own commands through the ``mediq.commands`` entry-point group — each entry point is a function
``register(subparsers)`` — so that dependencies keep flowing one way and ``mediq validate`` never imports
torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TextIO

from mediq_env.case import Case, LoadReport, read_cases
from mediq_env.errors import CaseFormatError, MediQError

__all__ = ["main", "play", "validate_report"]


# -- validate -----------------------------------------------------------------------------------------


def validate_report(report: LoadReport) -> str:
    """Per-file statistics and every problem found, as printed by ``mediq validate``."""
    cases = report.cases
    out = [f"== {report.path}", f"records: {report.records}   valid cases: {len(cases)}   problems: {len(report.errors)}"]
    if cases:
        n_facts = [len(c.facts) for c in cases]
        out.append(
            f"facts per case: mean {statistics.mean(n_facts):.1f}, median {statistics.median(n_facts):g}, "
            f"min {min(n_facts)}, max {max(n_facts)}"
        )
        n_opts = Counter(len(c.options) for c in cases)
        out.append("options per case: " + ", ".join(f"{k} options: {v}" for k, v in sorted(n_opts.items())))
        letters = Counter(c.answer for c in cases)
        dist = ", ".join(f"{k} {v} ({v / len(cases):.0%})" for k, v in sorted(letters.items()))
        out.append(f"answer letters: {dist}")
        majority, count = letters.most_common(1)[0]
        out.append(f"majority letter: {majority} = {count / len(cases):.1%} of answers (accuracy of always answering {majority})")
        typical_options = n_opts.most_common(1)[0][0]
        if count / len(cases) > 1.5 / typical_options:
            out.append("  note: answer letters are unbalanced; benchmark with option shuffling and report this baseline")
        specialties = Counter(c.specialty for c in cases if c.specialty)
        if specialties:
            out.append(f"specialties: {len(specialties)} ({', '.join(f'{k} {v}' for k, v in specialties.most_common(6))}{', ...' if len(specialties) > 6 else ''})")
    for quirk, n in sorted(report.quirks.items()):
        out.append(f"quirk: {quirk}: {_plural(n, 'record')}")
    for note in report.notes:
        out.append(f"repaired: {note}")
    for warning in report.warnings:
        out.append(f"warning: {warning}")
    for err in report.errors:
        out.append(f"error: {err}")
    return "\n".join(out)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            report = read_cases(path, initial_info=args.initial_info)
        except CaseFormatError as exc:
            print(f"== {path}\nerror: {exc}")
            failed = True
            continue
        print(validate_report(report))
        failed |= bool(report.errors)
    return 1 if failed else 0


# -- play ---------------------------------------------------------------------------------------------

PLAY_HELP = """Commands: type a question for the patient, '/answer C' to give your final answer,
'/options' to see the options again, '/help' for this text, '/quit' to stop. After the episode you see
the facts you missed."""
PLAY_COMMANDS = ("/answer", "/options", "/help", "/quit")


def play(
    case_id: str | None = None,
    *,
    cases: Sequence[Case] | None = None,
    max_questions: int = 10,
    seed: int | None = None,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
    shuffle_options: bool = True,
) -> dict[str, object]:
    """Play one episode as the doctor in a terminal. Returns the final ``info`` dict.

    ``read`` and ``out`` are the terminal (replaced by scripted input in tests).
    """
    from mediq_env.env import MediQEnv

    out = out or sys.stdout
    env = MediQEnv(cases, max_questions=max_questions, shuffle_options=shuffle_options)
    _, info = env.reset(seed=seed, options={"case_id": case_id} if case_id else None)
    # The game is its own grader: it shows the answer and the missed facts once the episode is over.
    case = env.grader.case
    print(f"Case {case.id}" + (f" ({case.specialty})" if case.specialty else ""), file=out)
    print(f"\n{case.initial_info}\n\n{case.question}", file=out)
    for letter, text in case.options.items():
        print(f"  {letter}: {text}", file=out)
    print(f"\nYou may ask up to {max_questions} questions.\n{PLAY_HELP}\n", file=out)
    while True:
        prompt = "Your answer (/answer X)> " if info["must_answer"] else f"[{info['questions_left']} left] Doctor> "
        try:
            line = read(prompt).strip()
        except EOFError:
            line = "/quit"
        if not line:
            continue
        if line == "/quit":
            print("Stopped without an answer.", file=out)
            break
        if line == "/options":
            for letter, text in case.options.items():
                print(f"  {letter}: {text}", file=out)
            continue
        if line == "/help":
            print(PLAY_HELP, file=out)
            continue
        if line.startswith("/") and line.split(maxsplit=1)[0] not in PLAY_COMMANDS:
            # A mistyped command ("/facts", "/anwser C") would otherwise go to the patient and use up a turn.
            print(f"  (unknown command {line.split(maxsplit=1)[0]!r}; commands: {', '.join(PLAY_COMMANDS)})", file=out)
            continue
        action: object = {"answer": line.split(maxsplit=1)[1] if " " in line else ""} if line.startswith("/answer") else line
        _, _, terminated, truncated, info = env.step(action)
        if info.get("invalid_action"):
            print(f"  ({info['invalid_action']})", file=out)
        elif info["action_type"] == "question":
            print(f"Patient: {info['reply']}", file=out)
        if terminated or truncated:
            if info.get("answer"):
                verdict = "correct" if info["correct"] else f"incorrect — the answer is {case.answer}: {case.answer_text}"
                print(f"\nYou answered {info['answer']}: {verdict}.", file=out)
            else:
                print(f"\nNo answer given. The answer is {case.answer}: {case.answer_text}.", file=out)
            break
    grader = env.grader
    revealed, known = set(grader.revealed), set(grader.known_facts)
    hidden = len(case.facts) - len(known)
    print(f"\nYou uncovered {len(revealed)} of the {hidden} facts not in the opening. Facts of the case:", file=out)
    print("  [x] uncovered   [=] given in the opening   [ ] missed", file=out)
    for i, fact in enumerate(case.facts):
        mark = "=" if i in known else "x" if i in revealed else " "
        key = " (key)" if i in case.key_facts else ""
        print(f"  [{mark}] {fact}{key}", file=out)
    return info


def _cmd_play(args: argparse.Namespace) -> int:
    from mediq_env.case import load_cases

    cases = load_cases(args.cases) if args.cases else None
    play(args.case, cases=cases, max_questions=args.max_questions, seed=args.seed)
    return 0


# -- entry point --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mediq", description="mediq-env: interactive clinical question asking")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check case files and print their statistics")
    p.add_argument("files", nargs="+", help="JSON or JSONL case files (any MediQ variant)")
    p.add_argument("--initial-info", choices=["auto", "given", "derived"], default="auto",
                   help="keep, rebuild, or rebuild-when-mismatched the initial information (default: auto)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("play", help="be the doctor on a built-in case in the terminal")
    p.add_argument("--case", help="case id (default: drawn at random)")
    p.add_argument("--cases", help="a cases file instead of the built-in cases")
    p.add_argument("--max-questions", type=int, default=10)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_cmd_play)

    for ep in entry_points(group="mediq.commands"):
        ep.load()(sub)
    return parser


def _shadowed_agents() -> str | None:
    """Another distribution's top-level ``agents`` package (openai-agents, which verifiers depends on) hides
    ours; every command that builds a doctor would then fail with a confusing ImportError."""
    import importlib.util

    spec = importlib.util.find_spec("agents")
    if spec is None or spec.origin is None:
        return None
    ours = Path(__file__).resolve().parent.parent / "agents"
    return None if Path(spec.origin).resolve().parent == ours or (Path(spec.origin).parent / "rollout.py").exists() else spec.origin


def main(argv: Sequence[str] | None = None) -> int:
    if (other := _shadowed_agents()) is not None:
        print(
            f"mediq: error: the package 'agents' resolves to {other}, not mediq-env's doctor agents: another "
            "distribution (openai-agents, required by verifiers) ships a package of the same name. Install "
            "'mediq-env[verifiers]' in its own environment (the verifiers adapter needs only mediq_env).",
            file=sys.stderr,
        )
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away is then caught below, not reported at exit
        return code
    except MediQError as exc:
        # Errors we raise on purpose are one line for the user, not a traceback.
        print(f"mediq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mediq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mediq bench ... | head`): stop quietly, as other command-line tools do.
        # stdout is pointed at devnull so that the interpreter's final flush raises nothing either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
