"""Supervised fine-tuning of a question generator with TRL's ``SFTTrainer``.

Data: next-question examples in TRL's conversational prompt–completion format, one JSON object a line::

    {"prompt": [{"role": "system", "content": ...}, {"role": "user", "content": <the case so far>}],
     "completion": [{"role": "assistant", "content": "How long have you had the cough?"}]}

(plain strings are accepted too, as TRL's standard format). The loss is on the completion only: the model
should learn which question to ask, not to reproduce the case text it is given. Build the prompts with
:func:`agents.prompts.question_chat` so the fine-tuned model sees at training time the very prompt the
:class:`~agents.llm_agent.LLMAgent` sends it at benchmark time.

The saved checkpoint (LoRA merged by default) is a plain transformers directory with the tokenizer and its
chat template, so ``mediq bench --agent hf:<dir>`` runs it as is.

    mediq train sft --model smollm2 --data sft.jsonl --out runs/sft --steps 200 --lr 2e-5
"""

from __future__ import annotations

import argparse
import logging
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
from training.config import SFTTrainConfig, add_common_arguments, common_kwargs_from_args

__all__ = ["add_arguments", "main", "prepare_sft_records", "run_from_args", "train_sft"]

logger = logging.getLogger(__name__)


def prepare_sft_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check and normalise prompt–completion examples; keep only ``prompt`` and ``completion``.

    A conversational prompt must not end with an assistant message (the completion is that turn), and the
    completion must consist of assistant messages. Both strings (standard format) or both chats
    (conversational format) are accepted, not a mix within one dataset: TRL decides the format from the
    first example.
    """
    if not records:
        raise ConfigError("no SFT examples")
    out: list[dict[str, Any]] = []
    conversational: bool | None = None
    for i, record in enumerate(records):
        where = f"example {i}"
        if "prompt" not in record or "completion" not in record:
            raise ConfigError(f"{where}: needs 'prompt' and 'completion' (got keys {sorted(record)})")
        prompt, completion = record["prompt"], record["completion"]
        is_chat = not (isinstance(prompt, str) and isinstance(completion, str))
        if conversational is None:
            conversational = is_chat
        elif conversational != is_chat:
            raise ConfigError(f"{where}: mixes plain-text and chat examples; use one format for the whole dataset")
        if not is_chat:
            if not completion.strip():
                raise ConfigError(f"{where}: empty completion")
            out.append({"prompt": prompt, "completion": completion})
            continue
        prompt_msgs = normalise_messages(prompt, default_role="user", where=f"{where}.prompt")
        completion_msgs = normalise_messages(completion, default_role="assistant", where=f"{where}.completion")
        if prompt_msgs[-1]["role"] == "assistant":
            raise ConfigError(f"{where}.prompt: ends with an assistant message; the completion is that turn")
        if any(m["role"] != "assistant" for m in completion_msgs):
            raise ConfigError(f"{where}.completion: must hold assistant messages only")
        if not any(m["content"].strip() for m in completion_msgs):
            raise ConfigError(f"{where}.completion: empty")
        out.append({"prompt": prompt_msgs, "completion": completion_msgs})
    return out


def train_sft(config: SFTTrainConfig, records: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Fine-tune ``config.model`` on ``records`` (default: read from ``config.data``); return the output dir.

    The checkpoint in ``config.output_dir`` holds the model (safetensors), the tokenizer with its chat
    template, and ``mediq_training.json`` (config, example count, final training metrics).
    """
    if records is None:
        if config.data is None:
            raise ConfigError("give SFT examples: config.data or records=")
        records = load_records(config.data)
    rows = prepare_sft_records(records)
    import_trl("SFT training")
    from datasets import Dataset
    from trl import SFTTrainer

    args = config.to_trl()
    model_path = resolve_model(config.model)
    model, tokenizer = load_causal_lm(
        model_path, dtype=config.resolved_model_dtype(), trust_remote_code=config.trust_remote_code
    )
    if isinstance(rows[0]["prompt"], list) and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer of {model_path} has no chat template; conversational SFT needs one")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=config.lora.to_peft("CAUSAL_LM") if config.lora else None,
    )
    result = trainer.train()
    out = save_trained_model(
        trainer.model, tokenizer, config.output_dir, merge_lora=config.lora is None or config.lora.merge
    )
    write_metadata(out, "sft", config, base_model=model_path, examples=len(rows), metrics=dict(result.metrics))
    logger.info("SFT checkpoint saved to %s", out)
    return out


# ---------------------------------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``mediq train sft``."""
    add_common_arguments(p, lr=2e-5, max_length=1024)
    p.add_argument("--full-loss", action="store_true", help="train on prompt tokens too (default: completion only)")
    p.add_argument("--packing", action="store_true", help="pack several examples into one sequence")


def run_from_args(args: argparse.Namespace) -> int:
    config = SFTTrainConfig(
        **common_kwargs_from_args(args), completion_only_loss=not args.full_loss, packing=args.packing
    )
    out = train_sft(config)
    print(f"SFT checkpoint: {out}\nbenchmark it with: mediq bench --agent hf:{out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.sft", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
