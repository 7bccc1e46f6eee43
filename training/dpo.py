"""Direct preference optimisation of the question generator with TRL's ``DPOTrainer``, per attribute or mixed.

ALFA aligns a question generator to several attributes at once in two ways, both here:

* **data mixing** (``mode="mixed"``): one DPO run on the pairs of all attributes together, optionally
  weighted — :func:`mix_pairs` resamples each attribute's pairs to its share of the mixture;
* **policy fusion** (``mode="per_attribute"``, ``fuse=True``): one DPO run per attribute, then the
  resulting models' weights are averaged (:func:`training.fusion.fuse_checkpoints`).

Data: the preference pairs in TRL's conversational format (``prompt`` = chat messages, ``chosen`` /
``rejected`` = assistant messages) with an ``attribute`` field; other fields (``source_id``, ``post_id``,
``pair_kind``) are kept in the metadata counts only. The reference model is a frozen copy of the starting
model (with LoRA, the base model with adapters disabled).

    mediq train dpo --model runs/sft --data pairs.jsonl --out runs/dpo-mixed --steps 500
    mediq train dpo --model runs/sft --data pairs.jsonl --out runs/dpo-fused --mode per-attribute --fuse
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mediq_env.errors import ConfigError
from training.common import (
    import_trl,
    load_causal_lm,
    load_records,
    normalise_messages,
    resolve_model,
    save_trained_model,
    write_metadata,
)
from training.config import DPOTrainConfig, add_common_arguments, common_kwargs_from_args, parse_weights

__all__ = ["add_arguments", "main", "mix_pairs", "prepare_pairs", "run_from_args", "train_dpo", "train_dpo_per_attribute"]

logger = logging.getLogger(__name__)


def prepare_pairs(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check and normalise preference pairs to ``{prompt, chosen, rejected, attribute}``.

    Plain-string pairs (TRL's standard format) stay strings; otherwise the prompt becomes a chat and
    ``chosen``/``rejected`` lists of assistant messages. ``attribute`` may be missing (then ``None``).
    """
    if not records:
        raise ConfigError("no preference pairs")
    out: list[dict[str, Any]] = []
    for i, r in enumerate(records):
        where = f"pair {i}"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in r]
        if missing:
            raise ConfigError(f"{where}: missing {missing}")
        attribute = r.get("attribute")
        if all(isinstance(r[k], str) for k in ("prompt", "chosen", "rejected")):
            out.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "attribute": attribute})
            continue
        prompt = normalise_messages(r["prompt"], default_role="user", where=f"{where}.prompt")
        if prompt[-1]["role"] == "assistant":
            raise ConfigError(f"{where}.prompt: ends with an assistant message")
        sides = {}
        for key in ("chosen", "rejected"):
            msgs = normalise_messages(r[key], default_role="assistant", where=f"{where}.{key}")
            if any(m["role"] != "assistant" for m in msgs):
                raise ConfigError(f"{where}.{key}: must hold assistant messages only")
            sides[key] = msgs
        if sides["chosen"] == sides["rejected"]:
            raise ConfigError(f"{where}: chosen and rejected are identical")
        out.append({"prompt": prompt, **sides, "attribute": attribute})
    kinds = {isinstance(p["prompt"], str) for p in out}
    if len(kinds) > 1:
        raise ConfigError("the pairs mix plain-text and chat prompts; use one format for the whole dataset")
    return out


def mix_pairs(
    pairs: Sequence[Mapping[str, Any]],
    weights: Mapping[str, float] | None = None,
    *,
    attributes: Sequence[str] | None = None,
    size: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One shuffled training set from the pairs of several attributes.

    Without ``weights``: every pair of the included ``attributes`` (default: all), natural proportions.
    With ``weights``: attribute ``a`` gets ``round(size * w_a / sum(w))`` examples (largest remainders make
    the counts sum to ``size``; default ``size`` = the number of pairs of the weighted attributes), drawn
    as whole shuffled passes over its pairs plus a random subset — so an up-weighted attribute repeats its
    pairs evenly instead of at random, and a down-weighted one is subsampled. A weight of 0 drops the
    attribute. Deterministic in ``seed``.
    """
    rng = random.Random(seed)
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in pairs:
        groups.setdefault(str(p.get("attribute")), []).append(dict(p))
    if attributes is not None:
        missing = [a for a in attributes if a not in groups]
        if missing:
            raise ConfigError(f"no pairs for attribute(s) {missing}; the data has {sorted(groups)}")
        groups = {a: groups[a] for a in attributes}
    if weights is None:
        mixed = [p for group in groups.values() for p in group]
        if size is not None:
            raise ConfigError("size needs weights (without them every pair is used once)")
        rng.shuffle(mixed)
        return mixed
    missing = [a for a in weights if a not in groups]
    if missing:
        raise ConfigError(f"weights name attribute(s) {missing} with no pairs; the data has {sorted(groups)}")
    active = {a: float(w) for a, w in weights.items() if w > 0}
    if not active:
        raise ConfigError("every weight is 0")
    total = size if size is not None else sum(len(groups[a]) for a in active)
    norm = sum(active.values())
    exact = {a: total * w / norm for a, w in active.items()}
    counts = {a: int(v) for a, v in exact.items()}
    for a in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[a] += 1
    mixed = []
    for a, n in counts.items():
        group = groups[a]
        full, rest = divmod(n, len(group))
        for _ in range(full):
            mixed += rng.sample(group, len(group))
        mixed += rng.sample(group, rest)
    rng.shuffle(mixed)
    return mixed


def train_dpo(config: DPOTrainConfig, records: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """One DPO run on the (mixed, see :func:`mix_pairs`) pairs of ``config.attributes``; returns the
    checkpoint directory ``config.output_dir``. ``records`` replaces reading ``config.data``."""
    if records is None:
        if config.data is None:
            raise ConfigError("give preference pairs: config.data or records=")
        records = load_records(config.data)
    pairs = prepare_pairs(records)
    attributes = config.attributes
    if attributes is None and config.weights is None and all(p["attribute"] is None for p in pairs):
        mixed = list(pairs)  # unlabelled pairs: plain DPO
        random.Random(config.seed).shuffle(mixed)
    else:
        mixed = mix_pairs(pairs, config.weights, attributes=attributes, size=config.mix_size, seed=config.seed)
    if not mixed:
        raise ConfigError("no pairs left after selecting attributes")
    counts = Counter(str(p["attribute"]) for p in mixed)
    logger.info("DPO on %d pairs: %s", len(mixed), dict(counts))

    import_trl("DPO training")
    from datasets import Dataset
    from trl import DPOTrainer

    args = config.to_trl()
    model_path = resolve_model(config.model)
    dtype = config.resolved_model_dtype()
    model, tokenizer = load_causal_lm(model_path, dtype=dtype, trust_remote_code=config.trust_remote_code)
    if not isinstance(mixed[0]["prompt"], str) and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer of {model_path} has no chat template; conversational pairs need one")
    # With LoRA the trainer uses the base model (adapters disabled) as reference; otherwise it needs an
    # explicit frozen copy, since the policy is an in-memory model.
    ref_model = None
    if config.lora is None:
        ref_model, _ = load_causal_lm(model_path, dtype=dtype, trust_remote_code=config.trust_remote_code)
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in mixed]
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=config.lora.to_peft("CAUSAL_LM") if config.lora else None,
    )
    result = trainer.train()
    out = save_trained_model(trainer.model, tokenizer, config.output_dir, merge_lora=config.lora is None or config.lora.merge)
    write_metadata(
        out, "dpo", config, base_model=model_path, pairs=len(rows), pairs_by_attribute=dict(counts),
        metrics=dict(result.metrics),
    )  # fmt: skip
    return out


def train_dpo_per_attribute(config: DPOTrainConfig, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """One DPO run per attribute, each in ``output_dir/<attribute>``; with ``config.fuse`` also their
    weight average (``config.weights``, default uniform) in ``output_dir/fused`` (key ``"fused"``)."""
    if records is None:
        if config.data is None:
            raise ConfigError("give preference pairs: config.data or records=")
        records = load_records(config.data)
    pairs = prepare_pairs(records)
    attributes = config.attributes or tuple(dict.fromkeys(str(p["attribute"]) for p in pairs if p["attribute"]))
    if not attributes:
        raise ConfigError("the pairs carry no 'attribute' field; per-attribute DPO needs it")
    if config.weights is not None:
        attributes = tuple(a for a in attributes if config.weights.get(a, 0) > 0)
    root = Path(config.output_dir)
    paths: dict[str, Path] = {}
    for attribute in attributes:
        sub = dataclasses.replace(
            config, output_dir=root / attribute, attributes=(attribute,), weights=None, mix_size=None,
            mode="mixed", fuse=False, data=None,
        )  # fmt: skip
        paths[attribute] = train_dpo(sub, [p for p in pairs if p["attribute"] == attribute])
    if config.fuse:
        from training.config import FusionConfig
        from training.fusion import fuse_checkpoints

        weights = {a: config.weights[a] for a in attributes} if config.weights else None
        paths["fused"] = fuse_checkpoints(FusionConfig(models=dict(paths), output_dir=root / "fused", weights=weights))
    return paths


# ---------------------------------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``mediq train dpo``."""
    add_common_arguments(p, lr=5e-7, max_length=1024)
    p.add_argument("--mode", choices=["mixed", "per-attribute"], default="mixed")
    p.add_argument("--attributes", help="comma-separated attributes (default: every attribute in the data)")
    p.add_argument("--weights", help="mixing (or fusion) weights, e.g. clarity=2,focus=1 (default: natural/uniform)")
    p.add_argument("--mix-size", type=int, help="examples in a weighted mixture (default: the pairs used)")
    p.add_argument("--fuse", action="store_true", help="per-attribute mode: average the models into <out>/fused")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta (default 0.1)")
    p.add_argument("--loss-type", default="sigmoid", help="TRL DPO loss (sigmoid, ipo, hinge, ...)")


def run_from_args(args: argparse.Namespace) -> int:
    config = DPOTrainConfig(
        **common_kwargs_from_args(args),
        mode="per_attribute" if args.mode == "per-attribute" else "mixed",
        attributes=tuple(a.strip() for a in args.attributes.split(",") if a.strip()) if args.attributes else None,
        weights=parse_weights(args.weights),
        mix_size=args.mix_size,
        fuse=args.fuse,
        beta=args.beta,
        loss_type=args.loss_type,
    )
    if config.mode == "mixed":
        out = train_dpo(config)
        print(f"DPO checkpoint: {out}\nbenchmark it with: mediq bench --agent hf:{out}")
    else:
        for name, path in train_dpo_per_attribute(config).items():
            print(f"{name}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.dpo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
