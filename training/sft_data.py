"""Supervised examples from real clinician threads: the patient's post and earlier turns in, the clinician's
next question out.

Why beside the preference pairs: SFT is the step before DPO or reward-model training, and the two must use
the *same prompt* (:func:`training.synth_prompts.asker_chat`) and the *same post-level split*
(:func:`training.synth.split_of` with the same seed) — otherwise a DPO eval post could have been an SFT
training post. Each example is in TRL's conversational prompt–completion format, which ``SFTTrainer``
trains on with the loss on the completion only::

    {"prompt": [system, user], "completion": [{"role": "assistant", "content": question}],
     "source_id": ..., "post_id": ...}

Written by ``mediq synth`` (``--sft-only`` to skip the preference pairs) under ``<out>/sft/`` (JSONL per
split) and ``<out>/hf/sft/`` (a ``datasets.DatasetDict``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from training.synth import SourceQuestion, SynthConfig, load_questions, save_splits

__all__ = ["sft_example", "sft_features", "sft_rows", "write_sft_data"]


def sft_example(question: SourceQuestion, *, max_post_chars: int = 4000) -> dict[str, Any]:
    """One prompt–completion example: what the clinician saw, and the question they asked."""
    return {
        "prompt": [dict(m) for m in question.chat(max_post_chars)],
        "completion": [{"role": "assistant", "content": question.question}],
        "source_id": question.id,
        "post_id": question.post_id,
    }


def sft_rows(questions: Iterable[SourceQuestion], *, max_post_chars: int = 4000) -> list[dict[str, Any]]:
    """Examples for every question, dropping exact repeats (same post, same earlier turns, same question):
    forum threads quote each other, and a repeated target only up-weights one example."""
    seen: set[tuple[str, str, str]] = set()
    rows = []
    for q in questions:
        row = sft_example(q, max_post_chars=max_post_chars)
        key = (q.post_id, row["prompt"][-1]["content"], " ".join(q.question.lower().split()))
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def sft_features() -> Any:
    """The ``datasets.Features`` of an SFT dataset (explicit, so an empty split keeps its schema)."""
    from datasets import Features, List, Value

    msg = List({"role": Value("string"), "content": Value("string")})
    return Features({"prompt": msg, "completion": msg, "source_id": Value("string"), "post_id": Value("string")})


def write_sft_data(config: SynthConfig) -> Mapping[str, dict[str, int]]:
    """Write the SFT data of ``config.input`` under ``config.out_dir``; returns ``{split: counts}``."""
    questions = load_questions(config.input, config.input_format, limit=config.limit)
    rows = sft_rows(questions, max_post_chars=config.max_post_chars)
    out = Path(config.out_dir)
    return save_splits(
        rows,
        out / "sft",
        out / "hf" / "sft" if config.save_hf_dataset else None,
        features=sft_features if config.save_hf_dataset else None,
        eval_fraction=config.eval_fraction,
        seed=config.split_seed,
    )
