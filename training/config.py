"""Validated configs of the training scripts, and their conversion to TRL configs.

Why our own dataclasses in front of TRL's: TRL configs accept almost anything and fail (or silently do
something else) deep inside a run — a zero learning rate, a mistyped data path, bf16 on a CPU. These
configs check every value in ``__post_init__`` and raise :class:`~mediq_env.errors.ConfigError` at once
with the field's name; :meth:`TrainConfig.to_trl` then builds the TRL config with the settings that work
here (``use_cpu``/``bf16`` from the device, no reporting integrations, no intermediate checkpoints unless
asked, no gradient checkpointing unless asked). Options this layer does not expose go through
``trl_overrides``.

Defaults are for a real run on a GPU; CPU smoke runs override ``max_steps`` and ``batch_size``. Importing
this module is cheap: trl, torch and peft are imported inside the methods that need them.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from mediq_env.attributes import get_attribute
from mediq_env.errors import ConfigError
from training.common import is_local_path_spec

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "DPOTrainConfig",
    "FusionConfig",
    "LoraSettings",
    "RewardTrainConfig",
    "SFTTrainConfig",
    "TrainConfig",
    "add_common_arguments",
    "common_kwargs_from_args",
    "parse_weights",
]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _check_attributes(name: str, attributes: Sequence[str] | None) -> tuple[str, ...] | None:
    if attributes is None:
        return None
    if isinstance(attributes, str):
        raise ConfigError(f"{name} must be a list of attribute names, not one string ({attributes!r})")
    names = tuple(attributes)
    if not names:
        raise ConfigError(f"{name} must name at least one attribute (or be None for all in the data)")
    for a in names:
        get_attribute(a)  # ConfigError listing the known names
    if len(set(names)) != len(names):
        raise ConfigError(f"{name} repeats an attribute: {list(names)}")
    return names


def _check_weights(name: str, weights: Mapping[str, float] | None, *, attributes: bool = True) -> dict[str, float] | None:
    if weights is None:
        return None
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(f"{name} must be a non-empty mapping of name to weight")
    out: dict[str, float] = {}
    for key, w in weights.items():
        if attributes:
            get_attribute(key)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{name}[{key!r}] must be a finite number >= 0, got {w!r}")
        out[str(key)] = float(w)
    if sum(out.values()) <= 0:
        raise ConfigError(f"{name}: at least one weight must be > 0")
    return out


def _check_model_spec(name: str, spec: str) -> str:
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec).strip():
        raise ConfigError(f"{name} must be a model path, a hub id or 'smollm2'")
    text = os.fspath(spec).strip()
    local = text[3:] if text.lower().startswith("hf:") else text
    if text.lower() != "smollm2" and is_local_path_spec(local) and not Path(local).expanduser().exists():
        raise ConfigError(f"{name}: the model directory {local} does not exist")
    return text


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft). ``merge`` folds the trained adapter into the base weights when saving,
    so the checkpoint is a plain model that any backend and :mod:`training.fusion` can read."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    merge: bool = True

    def __post_init__(self) -> None:
        _positive_int("lora.r", self.r)
        _positive_float("lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str):
            if not self.target_modules.strip():
                raise ConfigError("lora.target_modules must not be empty")
        else:
            self.target_modules = tuple(self.target_modules)
            if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
                raise ConfigError("lora.target_modules must be 'all-linear' or a non-empty list of module names")

    def to_peft(self, task_type: str = "CAUSAL_LM", modules_to_save: Sequence[str] | None = None) -> Any:
        """A ``peft.LoraConfig``; ``task_type`` ``SEQ_CLS`` for reward models (their new head is trained
        in full through ``modules_to_save``)."""
        try:
            from peft import LoraConfig
        except ImportError as err:
            from mediq_env.errors import MissingDependencyError

            raise MissingDependencyError("peft", "train", "LoRA training") from err
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            task_type=task_type,
            modules_to_save=list(modules_to_save) if modules_to_save else None,
        )


@dataclass
class TrainConfig:
    """What every trainer shares. ``model``: a local directory, a hub id, ``hf:<id-or-path>`` or ``smollm2``
    (the offline default, converted on first use). ``data``: JSONL, JSON list, or a ``save_to_disk``
    directory; it may be None only when records are passed to the train function directly.

    ``max_steps`` (optimizer steps) wins over ``epochs`` when set. ``device="auto"`` trains on the GPU when
    there is one. ``precision="auto"`` is bf16 mixed precision on a GPU that supports it and fp32 on CPU;
    ``model_dtype="auto"`` loads float32 weights for full fine-tuning (the optimizer needs full-precision
    master weights) and bfloat16 frozen base weights under LoRA on a GPU.
    """

    model: str
    output_dir: str | Path
    data: str | Path | None = None
    learning_rate: float = 1e-5
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 1024
    seed: int = 0
    lora: LoraSettings | None = None
    device: Device = "auto"
    precision: Precision = "auto"
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int | None = None
    overwrite: bool = False
    progress: bool = True
    trust_remote_code: bool = False
    trl_overrides: Mapping[str, Any] = field(default_factory=dict)

    _trl_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.model = _check_model_spec("model", self.model)
        if not os.fspath(self.output_dir).strip():
            raise ConfigError("output_dir must not be empty")
        self.output_dir = Path(self.output_dir).expanduser()
        if self.output_dir.is_file():
            raise ConfigError(f"output_dir {self.output_dir} is a file")
        if self.output_dir.is_dir() and any(self.output_dir.iterdir()) and not self.overwrite:
            raise ConfigError(f"output_dir {self.output_dir} is not empty; choose a new one or set overwrite")
        if self.data is not None:
            self.data = Path(self.data).expanduser()
            if not self.data.exists():
                raise ConfigError(f"data {self.data} does not exist")
        _positive_float("learning_rate", self.learning_rate)
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        _positive_float("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("grad_accum", self.grad_accum)
        _positive_int("max_length", self.max_length, minimum=8)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise ConfigError("lora must be a LoraSettings or None")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r} (pick a GPU with CUDA_VISIBLE_DEVICES)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device == "cpu" and self.precision in ("bf16", "fp16"):
            raise ConfigError(f"precision {self.precision!r} needs a GPU; use 'fp32' (or 'auto') with device='cpu'")
        if self.model_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"model_dtype must be auto, float32, bfloat16 or float16, got {self.model_dtype!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not isinstance(self.lr_scheduler, str) or not self.lr_scheduler:
            raise ConfigError("lr_scheduler must name a transformers scheduler (linear, cosine, constant, ...)")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        _positive_float("max_grad_norm", self.max_grad_norm)
        _positive_int("logging_steps", self.logging_steps)
        if self.save_steps is not None:
            _positive_int("save_steps", self.save_steps)
        if not isinstance(self.trl_overrides, Mapping):
            raise ConfigError("trl_overrides must be a mapping of TRL config field to value")
        self.trl_overrides = dict(self.trl_overrides)

    # -- conversion ---------------------------------------------------------------------------------

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda`` (``auto`` looks for a GPU; needs torch)."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_model_dtype(self) -> str:
        """The dtype the weights are loaded in (see the class docstring for ``auto``)."""
        if self.model_dtype != "auto":
            return self.model_dtype
        return "bfloat16" if self.lora is not None and self.resolved_device() == "cuda" else "float32"

    def _precision_flags(self) -> dict[str, bool]:
        if self.resolved_device() == "cpu":
            return {"use_cpu": True, "bf16": False, "fp16": False}
        if self.precision == "auto":
            import torch

            bf16 = bool(torch.cuda.is_bf16_supported())
            return {"use_cpu": False, "bf16": bf16, "fp16": not bf16}
        return {"use_cpu": False, "bf16": self.precision == "bf16", "fp16": self.precision == "fp16"}

    def trl_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every TRL config gets from this config (before subclass fields and
        ``trl_overrides``)."""
        kwargs: dict[str, Any] = {
            "output_dir": str(self.output_dir),
            "learning_rate": float(self.learning_rate),
            "num_train_epochs": float(self.epochs),
            "max_steps": self.max_steps if self.max_steps is not None else -1,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "seed": self.seed,
            "warmup_steps": float(self.warmup_ratio),
            "lr_scheduler_type": self.lr_scheduler,
            "weight_decay": float(self.weight_decay),
            "max_grad_norm": float(self.max_grad_norm),
            "gradient_checkpointing": self.gradient_checkpointing,
            "logging_steps": self.logging_steps,
            "save_strategy": "steps" if self.save_steps else "no",
            "report_to": "none",
            "disable_tqdm": not self.progress,
            "dataloader_num_workers": 0,
            "max_length": self.max_length,
            **self._precision_flags(),
        }
        if self.save_steps:
            kwargs["save_steps"] = self.save_steps
        return kwargs

    def _build_trl(self, cls: Any, **specific: Any) -> Any:
        kwargs = {**self.trl_kwargs(), **specific, **self.trl_overrides}
        known = {f.name for f in fields(cls)}
        if "activation_checkpointing" in known:
            # transformers >= 5.x renamed the option; setting both keeps older versions working without the
            # deprecation warning on newer ones (the old name then mirrors the new one).
            kwargs.setdefault("activation_checkpointing", kwargs["gradient_checkpointing"])
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown} (check trl_overrides)")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{cls.__name__}: {err}") from err

    def to_trl(self) -> Any:
        raise NotImplementedError


@dataclass
class SFTTrainConfig(TrainConfig):
    """Supervised fine-tuning on next-question examples (``prompt`` chat → ``completion`` assistant message).
    ``completion_only_loss`` keeps the loss on the question the model should ask, not on the case text."""

    learning_rate: float = 2e-5
    completion_only_loss: bool = True
    packing: bool = False

    def to_trl(self) -> Any:
        from trl import SFTConfig

        return self._build_trl(SFTConfig, completion_only_loss=self.completion_only_loss, packing=self.packing)


@dataclass
class RewardTrainConfig(TrainConfig):
    """Bradley–Terry reward models, one per attribute (``attributes=None``: every attribute in the data).

    ``max_length`` and ``max_context_chars`` default to :class:`~mediq_env.scoring.RewardModelScorer`'s, so
    training sees exactly the inputs the scorer will feed. ``pool_overall`` trains the ``overall`` model on
    the pairs of every attribute when the data holds no ``overall`` pairs (a coarse "better question"
    baseline). ``center_rewards_coefficient`` (TRL) keeps rewards near zero mean.
    """

    learning_rate: float = 1e-5
    max_length: int = 512
    attributes: tuple[str, ...] | None = None
    max_context_chars: int = 4000
    pool_overall: bool = False
    center_rewards_coefficient: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attributes = _check_attributes("attributes", self.attributes)
        _positive_int("max_context_chars", self.max_context_chars, minimum=100)
        if self.center_rewards_coefficient is not None and not self.center_rewards_coefficient >= 0:
            raise ConfigError(f"center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}")

    def to_trl(self) -> Any:
        from trl import RewardConfig

        # We tokenize ourselves exactly as the scorer does (left truncation keeps the question), so TRL
        # must not drop over-long pairs on top of that.
        return self._build_trl(RewardConfig, center_rewards_coefficient=self.center_rewards_coefficient, max_length=None)


@dataclass
class DPOTrainConfig(TrainConfig):
    """DPO on attribute preference pairs.

    ``mode="mixed"``: one run on the pairs of all ``attributes`` (None: every attribute in the data), drawn in
    proportion to ``weights`` when given (each attribute's pairs are resampled to its share of
    ``mix_size`` examples, default the number of pairs used), else in their natural proportions.
    ``mode="per_attribute"``: one run per attribute, each in ``output_dir/<attribute>``; with ``fuse`` their
    weights are then averaged (``weights`` again, default uniform) into ``output_dir/fused``.
    """

    learning_rate: float = 5e-7
    attributes: tuple[str, ...] | None = None
    weights: Mapping[str, float] | None = None
    mode: Literal["mixed", "per_attribute"] = "mixed"
    mix_size: int | None = None
    fuse: bool = False
    beta: float = 0.1
    loss_type: str = "sigmoid"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attributes = _check_attributes("attributes", self.attributes)
        self.weights = _check_weights("weights", self.weights)
        if self.weights is not None and self.attributes is not None:
            extra = sorted(set(self.weights) - set(self.attributes))
            if extra:
                raise ConfigError(f"weights name attributes that are not trained: {extra}")
        if self.mode not in ("mixed", "per_attribute"):
            raise ConfigError(f"mode must be 'mixed' or 'per_attribute', got {self.mode!r}")
        if self.fuse and self.mode != "per_attribute":
            raise ConfigError("fuse applies to mode='per_attribute' (a mixed run trains one model already)")
        if self.mix_size is not None:
            _positive_int("mix_size", self.mix_size)
            if self.weights is None or self.mode != "mixed":
                raise ConfigError("mix_size applies to a weighted mixture (mode='mixed' with weights)")
        _positive_float("beta", self.beta)
        if not isinstance(self.loss_type, str) or not self.loss_type:
            raise ConfigError("loss_type must name a TRL DPO loss (sigmoid, ipo, hinge, ...)")

    def to_trl(self) -> Any:
        from trl import DPOConfig

        return self._build_trl(DPOConfig, beta=float(self.beta), loss_type=[self.loss_type])


@dataclass
class FusionConfig:
    """Policy fusion: a (weighted) average of the weights of several checkpoints of one architecture.

    ``models``: ``{attribute: path}`` (names let ``leave_out`` drop one for leave-one-attribute-out
    ablations) or a list of paths. ``weights``: same keys (or one per path), >= 0, normalised to sum 1;
    default uniform. Checkpoints that are LoRA adapters are merged into ``base_model`` first (default: the
    base named in their ``adapter_config.json``).
    """

    models: Mapping[str, str | Path] | Sequence[str | Path]
    output_dir: str | Path
    weights: Mapping[str, float] | Sequence[float] | None = None
    leave_out: tuple[str, ...] = ()
    base_model: str | None = None
    max_shard_bytes: int = 5 * 1024**3
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.models, (str, os.PathLike)):
            raise ConfigError("models must be a list of paths or a mapping of name to path, not one path")
        if isinstance(self.models, Mapping):
            named = {str(k): Path(v).expanduser() for k, v in self.models.items()}
        else:
            paths = [Path(p).expanduser() for p in self.models]
            named = {str(p): p for p in paths}
            if len(named) != len(paths):
                raise ConfigError("models lists the same path twice")
        if not named:
            raise ConfigError("models must name at least one checkpoint")
        for name, path in named.items():
            if not path.is_dir():
                raise ConfigError(f"model {name!r}: checkpoint directory {path} does not exist")
        self.models = named
        if isinstance(self.leave_out, str):
            self.leave_out = (self.leave_out,)
        self.leave_out = tuple(self.leave_out)
        unknown = [k for k in self.leave_out if k not in named]
        if unknown:
            raise ConfigError(f"leave_out names {unknown}, which are not among the models {sorted(named)}")
        if self.weights is not None:
            if isinstance(self.weights, Mapping):
                weights = _check_weights("weights", self.weights, attributes=False)
                assert weights is not None
                if set(weights) != set(named):
                    raise ConfigError(f"weights must have exactly the models' keys {sorted(named)}, got {sorted(weights)}")
            else:
                values = list(self.weights)
                if len(values) != len(named):
                    raise ConfigError(f"{len(values)} weights for {len(named)} models")
                weights = _check_weights("weights", dict(zip(named, values, strict=True)), attributes=False)
                assert weights is not None
            self.weights = weights
            if sum(w for k, w in weights.items() if k not in self.leave_out) <= 0:
                raise ConfigError("every model left after leave_out has weight 0")
        if len(self.leave_out) >= len(named):
            raise ConfigError("leave_out removes every model")
        _positive_int("max_shard_bytes", self.max_shard_bytes, minimum=1024)
        self.output_dir = Path(self.output_dir).expanduser()
        if self.output_dir.is_dir() and any(self.output_dir.iterdir()) and not self.overwrite:
            raise ConfigError(f"output_dir {self.output_dir} is not empty; choose a new one or set overwrite")


# ---------------------------------------------------------------------------------------------------
# Command-line helpers shared by the sub-commands


def parse_weights(text: str | None) -> dict[str, float] | None:
    """``"clarity=2,focus=1"`` → ``{"clarity": 2.0, "focus": 1.0}`` (None for None or empty)."""
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"weights must look like 'name=2,other=1', got {text!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"weight of {key.strip()!r} is not a number: {value!r}") from None
    return out


def add_common_arguments(p: argparse.ArgumentParser, *, lr: float, max_length: int) -> None:
    """The options every trainer sub-command shares (the ``TrainConfig`` fields)."""
    p.add_argument("--model", default="smollm2", help="model dir, hub id, hf:<id-or-path> or smollm2 (default)")
    p.add_argument("--data", required=True, help="JSONL / JSON / save_to_disk directory")
    p.add_argument("--out", required=True, help="output directory for the checkpoint(s)")
    p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8, help="per-device batch size")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=max_length, help="tokens per example")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0 (default) trains all weights")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-targets", default="all-linear", help="'all-linear' or comma-separated module names")
    p.add_argument("--keep-adapter", action="store_true", help="save the LoRA adapter instead of merged weights")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--warmup-ratio", type=float, default=0.0)
    p.add_argument("--scheduler", default="linear", help="transformers lr scheduler name")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--save-steps", type=int, help="also save intermediate checkpoints every N steps")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    p.add_argument("--no-progress", action="store_true")


def common_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``TrainConfig`` keyword arguments from options added by :func:`add_common_arguments`."""
    lora = None
    if args.lora_r:
        targets = args.lora_targets
        lora = LoraSettings(
            r=args.lora_r,
            alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r,
            dropout=args.lora_dropout,
            target_modules=targets if targets == "all-linear" else tuple(t.strip() for t in targets.split(",") if t.strip()),
            merge=not args.keep_adapter,
        )
    return {
        "model": args.model,
        "data": args.data,
        "output_dir": args.out,
        "learning_rate": args.lr,
        "max_steps": args.steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "max_length": args.max_length,
        "seed": args.seed,
        "lora": lora,
        "device": args.device,
        "precision": args.precision,
        "warmup_ratio": args.warmup_ratio,
        "lr_scheduler": args.scheduler,
        "gradient_checkpointing": args.gradient_checkpointing,
        "logging_steps": args.logging_steps,
        "save_steps": args.save_steps,
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
    }
