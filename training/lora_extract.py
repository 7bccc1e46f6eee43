"""Recover a LoRA adapter from a merged fine-tune: ``tuned − start`` per linear weight, factored by SVD.

Why: ``training.rejection_sampling`` (like every ``train_sft`` run with ``merge``) writes the merged policy,
517 MB in fp32, but the package ships adapters of a few MB. A LoRA update of rank r merged into the weights
leaves a difference of rank at most r, so a rank-r SVD of each difference gives the update back exactly (to
float error); the residual reported per run says whether that held (a full fine-tune, or the wrong start
model, shows up as a large residual and is refused above ``max_residual``).

    python -m training.lora_extract --start runs/ppo-from-sft/sft/model --tuned runs/question-rft/policy \
        --rank 8 --out runs/question-rft/adapter
    python -m training.demos ship runs/question-rft/adapter --dest mediq_env/data/adapters/smollm2-doctor-rft
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mediq_env.errors import ConfigError

__all__ = ["extract_lora", "main"]


def _weights(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{model_dir}: no *.safetensors weights")
    tensors: dict[str, Any] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def extract_lora(start: str | Path, tuned: str | Path, out: str | Path, *, rank: int, max_residual: float = 1e-3) -> dict[str, Any]:
    """Write a plain LoRA adapter (``adapter_config.json`` + fp32 ``adapter_model.safetensors``, scale 1) to
    ``out`` whose update added to ``start`` gives ``tuned``; returns what changed and the worst relative
    residual ``‖Δ − BA‖ / ‖Δ‖`` over the modules."""
    import torch
    from safetensors.torch import save_file

    if rank < 1:
        raise ConfigError(f"rank must be >= 1, got {rank}")
    a_w, b_w = _weights(Path(start)), _weights(Path(tuned))
    if set(a_w) != set(b_w):
        raise ConfigError(f"{start} and {tuned} hold different tensors: not the same architecture")
    tensors: dict[str, Any] = {}
    modules: set[str] = set()
    worst = 0.0
    for key in sorted(a_w):
        delta = b_w[key].to(torch.float32) - a_w[key].to(torch.float32)
        if not torch.any(delta):
            continue
        if delta.ndim != 2 or not key.endswith(".weight"):
            raise ConfigError(f"{tuned}: {key} changed, and only linear weights can be written as LoRA")
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        root = s[:rank].sqrt()
        lora_b, lora_a = u[:, :rank] * root, root[:, None] * vh[:rank]
        residual = float(torch.linalg.norm(delta - lora_b @ lora_a) / torch.linalg.norm(delta))
        worst = max(worst, residual)
        module = key.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = lora_b.contiguous()
        modules.add(module.rsplit(".", 1)[-1])
    if not tensors:
        raise ConfigError(f"{tuned} equals {start}: nothing to extract")
    if worst > max_residual:
        raise ConfigError(f"rank {rank} leaves a relative residual of {worst:.2e} (> {max_residual:g}): the difference is not a "
                          f"rank-{rank} update of this start model")
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
              "target_modules": sorted(modules), "bias": "none", "fan_in_fan_out": False, "use_dora": False,
              "use_rslora": False, "base_model_name_or_path": str(start), "inference_mode": True}
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"weights": len(tensors) // 2, "target_modules": sorted(modules), "rank": rank, "max_relative_residual": worst}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.lora_extract", description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", required=True, help="the model the fine-tune started from (a directory of safetensors)")
    parser.add_argument("--tuned", required=True, help="the merged fine-tuned model")
    parser.add_argument("--rank", type=int, required=True, help="the LoRA rank it was trained with")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-residual", type=float, default=1e-3)
    args = parser.parse_args(argv)
    print(json.dumps(extract_lora(args.start, args.tuned, args.out, rank=args.rank, max_residual=args.max_residual)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
