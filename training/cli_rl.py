"""``mediq train ppo`` and ``mediq train grpo``: thin command-line front ends to the RL trainers.

The flags are generated from the config dataclasses (:class:`training.ppo.PPOConfig`,
:class:`training.grpo.GRPOEnvConfig`), one ``--kebab-case`` flag per field, so the CLI can never drift from
the config and every validation lives in the config's ``__post_init__``. ``--config FILE.json`` gives a
base config; flags given on the command line override it.

Several packages may add sub-commands under ``mediq train`` (SFT, reward models, DPO live elsewhere), in any
entry-point load order, so :func:`train_subparsers` reuses the ``train`` parser when another registration
created it first.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from mediq_env.errors import ConfigError, MediQError

__all__ = ["add_config_arguments", "config_from_args", "one_line_errors", "register", "train_subparsers"]

_UNSET = object()


def train_subparsers(sub: Any) -> Any:
    """The sub-commands action of ``mediq train``, creating the ``train`` command if nobody has yet."""
    parser = sub.choices.get("train") if hasattr(sub, "choices") else None
    if parser is None:
        parser = sub.add_parser("train", help="train question-askers (SFT, reward models, DPO, PPO, GRPO)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="train_command", required=True)


def register(sub: Any) -> None:
    """Entry point of the ``mediq.commands`` group: adds ``train ppo``, ``train grpo``, ``train question-grpo``,
    ``train rft`` and ``train question-ppo``."""
    from training.grpo import GRPOEnvConfig
    from training.ppo import PPOConfig

    train = train_subparsers(sub)
    p = train.add_parser("ppo", help="multi-turn PPO on the environment (torch + transformers + accelerate)")
    add_config_arguments(p, PPOConfig)
    p.set_defaults(func=_run_ppo)
    p = train.add_parser("grpo", help="GRPO on the environment through TRL's GRPOTrainer (multi-turn rollout_func)")
    add_config_arguments(p, GRPOEnvConfig)
    p.set_defaults(func=_run_grpo)
    from training.question_grpo import QuestionGRPOConfig

    p = train.add_parser("question-grpo", help="GRPO on single doctor turns from train-split interview states (TRL GRPOTrainer)")
    add_config_arguments(p, QuestionGRPOConfig)
    p.set_defaults(func=_run_question_grpo)
    from training.rejection_sampling import RejectionSamplingConfig

    p = train.add_parser("rft", help="rejection-sampling fine-tuning: best sampled question per train state, then LoRA SFT")
    add_config_arguments(p, RejectionSamplingConfig)
    p.set_defaults(func=_run_rft)
    from training.question_ppo import QuestionPPOConfig

    p = train.add_parser("question-ppo", help="clipped PPO on sampled doctor turns (samples of `train rft --stage sample`), group-mean baseline")
    add_config_arguments(p, QuestionPPOConfig)
    p.set_defaults(func=_run_question_ppo)


def one_line_errors(entry: typing.Callable[[Any], int], argv: Any = None) -> int:
    """Run a module's own command line (``python -m training.X``): a bad setting or input file ends in one line
    naming it and exit status 2, as under ``mediq``, not in a traceback."""
    import sys

    try:
        return entry(argv)
    except MediQError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_mapping(text: str) -> dict[str, float]:
    """``{"a": 1}`` (JSON) or ``a=1,b=0.5``."""
    text = text.strip()
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return {str(k): float(v) for k, v in value.items()}
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=value, got {part!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{key.strip()}: {value!r} is not a number") from err
    return out


def _none_or(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per dataclass field of ``cls`` (defaults left unset, so ``--config`` values are not
    overridden by defaults the user never typed)."""
    parser.add_argument("--config", type=Path, help="a JSON file of config values (flags override it)")
    hints = get_type_hints(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        optional = _strip_optional(tp) is not tp
        base = _strip_optional(tp)
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        help_text = f"(default: {default!r})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": _UNSET, "help": help_text}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(base) is Literal:
            kwargs["choices"] = list(get_args(base))
        elif get_origin(base) is dict:
            kwargs["type"] = _parse_mapping
            kwargs["metavar"] = "NAME=VALUE,..."
        elif get_origin(base) is list:
            kwargs["nargs"] = "+"
        elif base in (int, float, str):
            kwargs["type"] = _none_or(base) if optional else base
        else:
            kwargs["type"] = str
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The config of ``cls`` from ``--config`` (if any) overridden by the flags that were given."""
    data: dict[str, Any] = {}
    path = getattr(args, "config", None)
    if path is not None:
        try:
            loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"could not read config file {path}: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        data.update(loaded)
    for f in fields(cls):
        value = getattr(args, f.name, _UNSET)
        if value is not _UNSET:
            data[f.name] = value
    return cls.from_dict(data)  # type: ignore[attr-defined]


def _run_ppo(args: argparse.Namespace) -> int:
    from training.ppo import PPOConfig, train_ppo

    config = config_from_args(PPOConfig, args)
    history = train_ppo(config)
    if history:
        last = history[-1]
        print(f"PPO: {last['step']} updates; last mean episode reward {last['reward/mean']:.4f}; policy in {config.output_dir}/policy")
    return 0


def _run_grpo(args: argparse.Namespace) -> int:
    from training.grpo import GRPOEnvConfig, train_grpo

    config = config_from_args(GRPOEnvConfig, args)
    train_grpo(config)
    print(f"GRPO: done; policy in {config.output_dir}/policy")
    return 0


def _run_rft(args: argparse.Namespace) -> int:
    from training.rejection_sampling import RejectionSamplingConfig, run

    print(json.dumps(run(config_from_args(RejectionSamplingConfig, args)), default=str))
    return 0


def _run_question_ppo(args: argparse.Namespace) -> int:
    from training.question_ppo import QuestionPPOConfig, train_question_ppo

    config = config_from_args(QuestionPPOConfig, args)
    result = train_question_ppo(config)
    print(f"question-level PPO: {result['steps']} steps on {result['states_used']} states; policy in {config.output_dir}/policy")
    return 0


def _run_question_grpo(args: argparse.Namespace) -> int:
    from training.question_grpo import QuestionGRPOConfig, train_question_grpo

    config = config_from_args(QuestionGRPOConfig, args)
    result = train_question_grpo(config)
    print(f"question-level GRPO: {result['global_step']} steps on {result['states']} states; policy in {config.output_dir}/policy")
    return 0
