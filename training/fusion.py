"""Policy fusion: average the weights of several fine-tuned checkpoints of one architecture.

ALFA's alternative to data mixing: train one policy per attribute, then fuse them into one model by
(weighted) averaging of their parameters — "model soup" style, which works when every policy started from
the same model (the SFT checkpoint), so their weights stay in one basin. A leave-one-attribute-out
fusion (:func:`fuse_leave_one_out`) measures what each attribute's policy contributes.

Safetensors in, safetensors out, one tensor at a time: each output tensor is the float32 weighted mean
of the inputs' tensors under the same name, cast back to the first input's dtype, and written in shards
(``max_shard_bytes``, default 5 GiB, with a ``model.safetensors.index.json`` when there are several), so an
8B fusion needs memory for a shard, not for n models. Non-floating tensors (integer buffers) must be equal
in every input and are copied. Key sets and shapes must match exactly. Inputs that are LoRA adapters
(``adapter_config.json``) are first merged into their base model in a temporary directory (needs peft).
The config, generation config and tokenizer are copied from the first input.

    mediq train fuse --model clarity=runs/dpo/clarity --model focus=runs/dpo/focus --out runs/fused
    mediq train fuse --model ... --out runs/loo --leave-one-out      # one fusion per left-out attribute
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mediq_env.errors import ConfigError
from training.common import resolve_model, write_metadata
from training.config import FusionConfig, parse_weights

__all__ = [
    "add_arguments",
    "fuse_checkpoints",
    "fuse_leave_one_out",
    "fusion_weights",
    "main",
    "run_from_args",
]

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
#: Files never copied from the first input: its weights (replaced by the fused ones) and training leftovers.
_SKIP_COPY = {INDEX_NAME, "training_args.bin", "adapter_config.json", "adapter_model.safetensors", "mediq_training.json"}
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def fusion_weights(
    names: Sequence[str], weights: Mapping[str, float] | None = None, leave_out: Sequence[str] = ()
) -> dict[str, float]:
    """Normalised weights (summing to 1) of the ``names`` not in ``leave_out``: uniform by default, else
    ``weights`` renormalised over the kept names. Zero-weight names are dropped."""
    kept = [n for n in names if n not in set(leave_out)]
    if not kept:
        raise ConfigError("no model left to fuse")
    raw = {n: 1.0 for n in kept} if weights is None else {n: float(weights[n]) for n in kept}
    raw = {n: w for n, w in raw.items() if w > 0}
    total = sum(raw.values())
    if total <= 0:
        raise ConfigError("the kept models' weights sum to 0")
    return {n: w / total for n, w in raw.items()}


class _Checkpoint:
    """Lazy, per-tensor access to the safetensors weights of one checkpoint directory."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        index = path / INDEX_NAME
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        elif (path / SINGLE_NAME).is_file():
            weight_map = {}
        else:
            raise ConfigError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME} (fusion reads safetensors checkpoints only)")
        files = sorted(set(weight_map.values())) or [SINGLE_NAME]
        self._handles = {name: safe_open(str(path / name), framework="pt") for name in files}
        if not weight_map:
            weight_map = {k: SINGLE_NAME for k in self._handles[SINGLE_NAME].keys()}  # noqa: SIM118 (not a dict)
        self.weight_map = weight_map

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def info(self, key: str) -> tuple[list[int], str]:
        tensor_slice = self._handles[self.weight_map[key]].get_slice(key)
        return list(tensor_slice.get_shape()), str(tensor_slice.get_dtype())

    def get(self, key: str) -> Any:
        return self._handles[self.weight_map[key]].get_tensor(key)


def _merge_adapter(adapter: Path, base_model: str | None, into: Path) -> Path:
    """Merge a LoRA adapter into its base and save the plain checkpoint in ``into``."""
    try:
        import transformers
        from peft import PeftModel
    except ImportError as err:
        from mediq_env.errors import MissingDependencyError

        raise MissingDependencyError(err.name or "peft", "train", f"merging the LoRA adapter {adapter}") from err
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = base_model or config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter}: the adapter names no base model; pass base_model")
    base_path = resolve_model(base)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_path)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(into, safe_serialization=True)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base_path)
    transformers.AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(into)
    return into


def _plan_shards(first: _Checkpoint, keys: list[str], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for key in keys:
        shape, dtype = first.info(key)
        n = _DTYPE_BYTES.get(dtype, 1)
        for d in shape:
            n *= d
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


def fuse_checkpoints(config: FusionConfig) -> Path:
    """Write the weighted average of ``config.models`` (minus ``leave_out``) to ``config.output_dir``."""
    import torch
    from safetensors.torch import save_file

    assert isinstance(config.models, Mapping)
    models: dict[str, Path] = {str(k): Path(v) for k, v in config.models.items()}
    weights = fusion_weights(
        list(models), config.weights if isinstance(config.weights, Mapping) else None, config.leave_out
    )
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=out) as tmp:
        checkpoints: dict[str, _Checkpoint] = {}
        for name in weights:
            path = models[name]
            if (path / "adapter_config.json").is_file():
                logger.info("merging LoRA adapter %s", path)
                path = _merge_adapter(path, config.base_model, Path(tmp) / f"merged-{len(checkpoints)}")
            checkpoints[name] = _Checkpoint(path)
        names = list(checkpoints)
        first = checkpoints[names[0]]
        keys = first.keys()
        for name in names[1:]:
            other = checkpoints[name]
            if set(other.keys()) != set(keys):
                diff = sorted(set(other.keys()) ^ set(keys))
                raise ConfigError(f"{name!r} and {names[0]!r} have different parameters (e.g. {diff[:3]}); same architecture needed")
            for key in keys:
                if other.info(key)[0] != first.info(key)[0]:
                    raise ConfigError(f"{key}: shape {other.info(key)[0]} in {name!r} but {first.info(key)[0]} in {names[0]!r}")

        shards = _plan_shards(first, keys, config.max_shard_bytes)
        files = [SINGLE_NAME] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
        ]  # fmt: skip
        for stale in [*out.glob("model*.safetensors"), out / INDEX_NAME]:
            stale.unlink(missing_ok=True)  # an overwritten output must not keep shards of an older layout
        weight_map: dict[str, str] = {}
        total = 0
        for shard_keys, filename in zip(shards, files, strict=True):
            tensors: dict[str, Any] = {}
            for key in shard_keys:
                reference = first.get(key)
                if reference.is_floating_point():
                    acc = torch.zeros(reference.shape, dtype=torch.float32)
                    for name, w in weights.items():
                        acc += w * checkpoints[name].get(key).to(torch.float32)
                    tensors[key] = acc.to(reference.dtype).contiguous()
                else:
                    for name in names[1:]:
                        if not torch.equal(checkpoints[name].get(key), reference):
                            raise ConfigError(f"non-float tensor {key} differs between {names[0]!r} and {name!r}")
                    tensors[key] = reference.contiguous()
                total += tensors[key].numel() * tensors[key].element_size()
                weight_map[key] = filename
            save_file(tensors, str(out / filename), metadata={"format": "pt"})
            del tensors
        if len(files) > 1:
            (out / INDEX_NAME).write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n", encoding="utf-8"
            )
        for item in first.path.iterdir():
            if item.is_file() and item.name not in _SKIP_COPY and not item.name.endswith((".safetensors", ".bin", ".pt")):
                shutil.copy2(item, out / item.name)
    write_metadata(
        out, "fusion", config, inputs={n: str(models[n]) for n in weights}, weights=weights, left_out=list(config.leave_out)
    )
    return out


def fuse_leave_one_out(config: FusionConfig) -> dict[str, Path]:
    """For each model ``m`` of ``config.models``, the fusion of all the others in ``output_dir/without_<m>``
    (ALFA's leave-one-attribute-out ablation); ``config.leave_out`` must be empty."""
    if config.leave_out:
        raise ConfigError("fuse_leave_one_out leaves out each model in turn; leave_out must be empty")
    assert isinstance(config.models, Mapping)
    if len(config.models) < 2:
        raise ConfigError("leave-one-out needs at least two models")
    root = Path(config.output_dir)
    results: dict[str, Path] = {}
    for name in config.models:
        label = Path(name).name if ("/" in name or "\\" in name) else name  # unnamed models are keyed by path
        sub = FusionConfig(
            models=dict(config.models), output_dir=root / f"without_{label}", weights=config.weights,
            leave_out=(name,), base_model=config.base_model, max_shard_bytes=config.max_shard_bytes,
            overwrite=config.overwrite,
        )  # fmt: skip
        results[name] = fuse_checkpoints(sub)
    return results


# ---------------------------------------------------------------------------------------------------
# Command line


def _parse_models(items: Sequence[str]) -> dict[str, str] | list[str]:
    named = [i for i in items if "=" in i]
    if named and len(named) != len(items):
        raise ConfigError("name every --model (attribute=path) or none")
    if not named:
        return list(items)
    out: dict[str, str] = {}
    for item in items:
        key, _, path = item.partition("=")
        if key.strip() in out:
            raise ConfigError(f"--model {key.strip()} given twice")
        out[key.strip()] = path
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``mediq train fuse``."""
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]DIR",
                   help="a checkpoint to fuse (repeat); name them (clarity=runs/dpo/clarity) to use --leave-out")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", help="name=weight,... (default uniform)")
    p.add_argument("--leave-out", help="comma-separated names to exclude (ablation)")
    p.add_argument("--leave-one-out", action="store_true", help="write one fusion per left-out model in <out>/without_<name>")
    p.add_argument("--base-model", help="base model of LoRA adapter inputs (default: from their adapter_config.json)")
    p.add_argument("--max-shard-gb", type=float, default=5.0)
    p.add_argument("--overwrite", action="store_true")


def run_from_args(args: argparse.Namespace) -> int:
    models = _parse_models(args.model)
    weights = parse_weights(args.weights)
    if weights is not None and not isinstance(models, dict):
        raise ConfigError("--weights needs named models (--model name=dir)")
    leave_out = tuple(x.strip() for x in args.leave_out.split(",") if x.strip()) if args.leave_out else ()
    config = FusionConfig(
        models=models, output_dir=args.out, weights=weights, leave_out=leave_out, base_model=args.base_model,
        max_shard_bytes=int(args.max_shard_gb * 1024**3), overwrite=args.overwrite,
    )  # fmt: skip
    if args.leave_one_out:
        for name, path in fuse_leave_one_out(config).items():
            print(f"without {name}: {path}")
    else:
        print(f"fused checkpoint: {fuse_checkpoints(config)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.fusion", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
