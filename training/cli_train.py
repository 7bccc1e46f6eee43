"""``mediq train sft|reward|dpo|fuse``: the training scripts as one command (registered by entry point).

Wiring: ``[project.entry-points."mediq.commands"] train = "training.cli_train:register"``. Registering
imports only the argument definitions (no torch, transformers or trl), so ``mediq --help`` stays fast;
the heavy libraries load when a sub-command runs. Without the entry point the same commands run as
``python -m training.cli_train sft ...``. Other packages may add more ``mediq train`` sub-commands (the RL
trainers do) from their own entry points, in either load order: the ``train`` parser is shared.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mediq_env.errors import MediQError

__all__ = ["build_parser", "main", "register"]


def register(sub: Any) -> None:
    """Add the ``train`` command and its sub-commands to the ``mediq`` sub-parsers ``sub``."""
    from training import dpo, fusion, reward, sft

    tsub = _train_subparsers(sub)
    for name, module, help_text in (
        ("sft", sft, "supervised fine-tuning on next-question examples (TRL SFTTrainer)"),
        ("reward", reward, "one reward model per attribute on preference pairs (TRL RewardTrainer)"),
        ("dpo", dpo, "DPO on attribute preference pairs, mixed or per attribute (TRL DPOTrainer)"),
        ("fuse", fusion, "average the weights of per-attribute checkpoints (policy fusion)"),
    ):
        p = tsub.add_parser(name, help=help_text, description=(module.__doc__ or "").split("\n\n")[0])
        module.add_arguments(p)
        p.set_defaults(func=_with_logging(module.run_from_args))


def _train_subparsers(sub: Any) -> Any:
    """The sub-commands of ``mediq train``, creating ``train`` only if no other registration did.

    Other packages (the RL trainers) add their own ``mediq train`` sub-commands from their own entry point,
    in whatever order entry points load; argparse refuses a second ``train`` parser, so whoever comes
    second reuses the first one's sub-commands action.
    """
    choices = getattr(sub, "choices", None) or {}
    train = choices.get("train")
    if train is None:
        train = sub.add_parser("train", help="train question-askers: SFT, reward models, DPO, fusion (and RL)")
    for action in train._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return train.add_subparsers(dest="train_command", required=True)


def _with_logging(run: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        # Our progress lines (pairs per attribute, where checkpoints went) at INFO; library chatter stays at
        # its own levels.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("training").setLevel(logging.INFO)
        return int(run(args) or 0)

    return wrapped


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the ``train`` sub-commands at the top level (for ``python -m``)."""
    parser = argparse.ArgumentParser(prog="python -m training.cli_train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.cli_train sft ...`` ≡ ``mediq train sft ...``."""
    parser = build_parser()
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except MediQError as exc:
        print(f"mediq train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
