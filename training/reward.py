"""Attribute reward models (Bradley–Terry) with TRL's ``RewardTrainer``: one model per attribute.

ALFA trains one reward model per question attribute (clarity, focus, ..., plus a coarse ``overall``) on
preference pairs that differ in that attribute. Here each attribute's pairs (``record["attribute"]``) train
one sequence-classification model with a single output, saved in ``<out>/<attribute>`` with
``id2label = {0: <attribute>}``, and ``<out>/reward_models.json`` maps attribute → directory, so

    RewardModelScorer(json.load(open("<out>/reward_models.json")))

scores questions with all of them (:class:`mediq_env.scoring.RewardModelScorer`).

**Train = serve.** The scorer feeds a model the text :func:`mediq_env.scoring.render_reward_input` (the
doctor's view, then ``Doctor's next question: ...``), tokenized with left truncation to ``max_length`` tokens
and no EOS appended. Training builds exactly the same token ids itself (TRL would append an EOS and
apply the chat template), and reads the score at the same position. The doctor's view comes from the pair:
a ``state``/``context`` field holding the :class:`~mediq_env.dialogue.DialogueState` fields, or else the
prompt, parsed back with :func:`state_from_prompt` (the forum-thread prompts of the synthesised data, or
the agent's case prompts). Pairs whose prompt cannot be parsed fall back to the prompt's last user message
as the context and are counted in the metadata and logged: the scorer will see differently formatted
text for them.

    mediq train reward --model smollm2 --data pairs.jsonl --out runs/rm --steps 300
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mediq_env.attributes import get_attribute
from mediq_env.dialogue import DialogueState, Turn
from mediq_env.errors import ConfigError
from mediq_env.scoring import ScoreItem, render_reward_input
from training.common import import_trl, load_records, resolve_model, save_trained_model, write_metadata
from training.config import RewardTrainConfig, add_common_arguments, common_kwargs_from_args

__all__ = [
    "INDEX_FILE",
    "add_arguments",
    "main",
    "pair_texts",
    "run_from_args",
    "select_pairs",
    "state_from_prompt",
    "state_from_record",
    "train_reward_model",
    "train_reward_models",
]

logger = logging.getLogger(__name__)

INDEX_FILE = "reward_models.json"
"""``{attribute: checkpoint directory}`` written in the output directory; RewardModelScorer takes it as is."""

_CASE = "Case summary: "
_OPTION = re.compile(r"^  (\S+)\) (.*)$")
_DOCTOR = re.compile(r"(?:^|\n)  Doctor \(\d+\): ")
_LEFT = re.compile(r"\nQuestions you may still ask: (-?\d+)")
_TITLE = "Title: "
_POST = "Patient's post:\n"
_EXCHANGES = "\n\nEarlier exchanges:\n"
_FORUM_DOCTOR = re.compile(r"(?:^|\n)Doctor: ")


# ---------------------------------------------------------------------------------------------------
# From a pair to the scorer's text


def _last_user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        for message in reversed(prompt):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return str(message.get("content", ""))
    return ""


def state_from_prompt(prompt: str | Sequence[Mapping[str, Any]]) -> DialogueState | None:
    """The doctor's view written into a prompt, recovered from the prompt's last user message, or None.

    Two layouts are understood, the two prompt formats of this project:

    * a forum thread (:func:`training.synth_prompts.format_thread`, the prompt of the synthesised SFT and
      preference data): ``Title:``, ``Patient's post:``, ``Earlier exchanges:``, then one instruction
      paragraph. The state is the one the synthesis judge saw: ``initial_info`` = title + newline + post,
      no clinical question or options, the exchanges as turns;
    * a MediQ case (:func:`agents.prompts.format_case`, what :class:`~agents.llm_agent.LLMAgent` sends):
      summary, clinical question, lettered options, interview, questions left. Case ``extra`` lines, if
      any, end up in ``initial_info`` (the layout does not delimit them).

    Anything else gives None.
    """
    text = _last_user_text(prompt)
    if text.startswith(_CASE):
        return _state_from_case_text(text)
    if text.startswith((_TITLE, _POST)):
        return _state_from_thread_text(text)
    return None


def _state_from_thread_text(text: str) -> DialogueState | None:
    title = ""
    if text.startswith(_TITLE):
        first, sep, text = text.partition("\n")
        if not sep:
            return None
        title = first[len(_TITLE) :].strip()
    if not text.startswith(_POST):
        return None
    body, sep, _instruction = text[len(_POST) :].rpartition("\n\n")
    if not sep:
        return None
    post, sep, exchanges = body.rpartition(_EXCHANGES)
    if not sep:
        post, exchanges = body, ""
    turns: list[Turn] = []
    if exchanges:
        chunks = _FORUM_DOCTOR.split(exchanges)
        if chunks[0] != "":
            return None
        for chunk in chunks[1:]:
            asked, sep, reply = chunk.partition("\nPatient: ")
            if not sep:
                return None
            turns.append(Turn(asked, reply))
    info = f"{title}\n{post}" if title else post
    return DialogueState(case_id="", initial_info=info, question="", options={}, turns=tuple(turns))


def _state_from_case_text(text: str) -> DialogueState | None:
    head, sep, rest = text.partition("\n\nClinical question: ")
    if not sep:
        return None
    question, sep, rest = rest.partition("\nOptions:\n")
    if not sep:
        return None
    lines = rest.split("\n")
    options: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].startswith("  "):
        m = _OPTION.match(lines[i])
        if m is None:
            return None
        options[m.group(1)] = m.group(2)
        i += 1
    if i >= len(lines) or lines[i] != "":
        return None
    remainder = "\n".join(lines[i + 1 :])
    left = _LEFT.search(remainder)
    if left is None:
        return None
    interview = remainder[: left.start()]
    turns: list[Turn] = []
    if interview == "Interview so far: no questions asked yet.":
        pass
    elif interview.startswith("Interview so far:\n"):
        chunks = _DOCTOR.split(interview[len("Interview so far:\n") :])
        if chunks[0] != "":
            return None
        for chunk in chunks[1:]:
            asked, sep, reply = chunk.partition("\n  Patient: ")
            if not sep:
                return None
            turns.append(Turn(asked, reply))
    else:
        return None
    return DialogueState(
        case_id="",
        initial_info=head[len(_CASE) :],
        question=question,
        options=options,
        turns=tuple(turns),
        questions_left=int(left.group(1)),
    )


def state_from_record(record: Mapping[str, Any]) -> DialogueState | None:
    """The doctor's view of a pair: its ``state`` (or ``context``) field when it holds the
    :class:`DialogueState` fields (``initial_info``, ``question``, ``options``, ``turns`` as
    ``{"question", "reply"}``), else :func:`state_from_prompt` of its prompt."""
    for key in ("state", "context"):
        value = record.get(key)
        if isinstance(value, Mapping) and "initial_info" in value:
            turns = tuple(
                Turn(str(t["question"]), str(t["reply"]), tuple(t.get("revealed", ()))) for t in value.get("turns", ())
            )
            return DialogueState(
                case_id=str(value.get("case_id", "")),
                initial_info=str(value["initial_info"]),
                question=str(value.get("question", "")),
                options=dict(value.get("options", {})),
                turns=turns,
                questions_left=int(value.get("questions_left", 0)),
            )
    return state_from_prompt(record.get("prompt", ""))


def _question(value: Any, where: str) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, Mapping):
        text = str(value.get("content", ""))
    elif isinstance(value, Sequence):
        text = "\n".join(str(m.get("content", "")) for m in value if isinstance(m, Mapping) and m.get("role") == "assistant")
    else:
        text = ""
    if not text.strip():
        raise ConfigError(f"{where}: no question text")
    return text


def pair_texts(record: Mapping[str, Any], max_context_chars: int = 4000) -> tuple[str, str, bool]:
    """``(chosen_text, rejected_text, exact)``: the texts the reward model is trained on.

    ``exact`` says whether they are exactly what :class:`~mediq_env.scoring.RewardModelScorer` would feed
    for the same question (the doctor's view was recovered) or the fallback (last user message + question).
    """
    where = f"pair {record.get('source_id', record.get('post_id', '?'))}"
    chosen = _question(record.get("chosen"), f"{where}.chosen")
    rejected = _question(record.get("rejected"), f"{where}.rejected")
    state = state_from_record(record)
    if state is not None:
        return (
            render_reward_input(ScoreItem(chosen, state), max_context_chars),
            render_reward_input(ScoreItem(rejected, state), max_context_chars),
            True,
        )
    context = _last_user_text(record.get("prompt", "")).strip()
    if len(context) > max_context_chars:
        context = context[:max_context_chars].rstrip() + " [...]"
    return (
        f"{context}\n\nDoctor's next question: {chosen.strip()}",
        f"{context}\n\nDoctor's next question: {rejected.strip()}",
        False,
    )


def select_pairs(records: Sequence[Mapping[str, Any]], attribute: str, *, pool_overall: bool = False) -> list[Mapping[str, Any]]:
    """The pairs that train ``attribute``'s model: those labelled with it; for ``overall`` with
    ``pool_overall``, every pair (deduplicated), when none is labelled ``overall``."""
    chosen = [r for r in records if r.get("attribute") == attribute]
    if chosen or not (attribute == "overall" and pool_overall):
        return chosen
    seen: set[str] = set()
    pooled = []
    for r in records:
        key = json.dumps([r.get("prompt"), r.get("chosen"), r.get("rejected")], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            pooled.append(r)
    return pooled


# ---------------------------------------------------------------------------------------------------
# Training


def train_reward_model(config: RewardTrainConfig, attribute: str, pairs: Sequence[Mapping[str, Any]], out_dir: str | Path) -> Path:
    """Train one single-output reward model for ``attribute`` on ``pairs`` (already selected) into ``out_dir``."""
    get_attribute(attribute)
    if not pairs:
        raise ConfigError(f"no preference pairs for attribute {attribute!r}")
    import_trl("reward model training")
    import torch
    import transformers
    from datasets import Dataset
    from trl import RewardTrainer

    from mediq_env.backends.hf import dtype_kwarg

    model_path = resolve_model(config.model)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_path, trust_remote_code=config.trust_remote_code)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=1,
            id2label={0: attribute},
            label2id={attribute: 0},
            trust_remote_code=config.trust_remote_code,
            **{dtype_kwarg(transformers): getattr(torch, config.resolved_model_dtype())},
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"could not load {model_path!r} as a reward model: {err}") from err
    # The scorer's tokenizer settings (RewardModelScorer.__init__): pad = EOS when missing, left truncation.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id

    rows: list[dict[str, Any]] = []
    fallback = 0
    with_margin = all(isinstance(p.get("margin"), (int, float)) for p in pairs)
    for pair in pairs:
        chosen, rejected, exact = pair_texts(pair, config.max_context_chars)
        fallback += not exact
        row: dict[str, Any] = {
            "chosen_ids": tokenizer(chosen, truncation=True, max_length=config.max_length)["input_ids"],
            "rejected_ids": tokenizer(rejected, truncation=True, max_length=config.max_length)["input_ids"],
        }
        if with_margin:
            row["margin"] = float(pair["margin"])
        rows.append(row)
    if fallback:
        logger.warning(
            "%s: %d of %d pairs have no recoverable dialogue state; their context is the prompt's last user "
            "message, which the scorer will not see in that form", attribute, fallback, len(rows)
        )

    trainer = RewardTrainer(
        model=model,
        args=config.to_trl(),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=config.lora.to_peft("SEQ_CLS") if config.lora else None,
    )
    result = trainer.train()
    out = save_trained_model(trainer.model, tokenizer, out_dir, merge_lora=config.lora is None or config.lora.merge)
    write_metadata(
        out, "reward", config, attribute=attribute, base_model=model_path, pairs=len(rows),
        pairs_rendered_exactly=len(rows) - fallback, metrics=dict(result.metrics),
    )  # fmt: skip
    return out


def train_reward_models(config: RewardTrainConfig, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """One reward model per attribute of ``config.attributes`` (None: every attribute found in the data),
    each in ``output_dir/<attribute>``; writes :data:`INDEX_FILE` and returns ``{attribute: dir}``."""
    if records is None:
        if config.data is None:
            raise ConfigError("give preference pairs: config.data or records=")
        records = load_records(config.data)
    if not records:
        raise ConfigError("no preference pairs")
    attributes = config.attributes
    if attributes is None:
        attributes = tuple(dict.fromkeys(str(r.get("attribute")) for r in records if r.get("attribute")))
        if not attributes:
            raise ConfigError("the pairs carry no 'attribute' field; name the attributes to train")
    selected = {a: select_pairs(records, a, pool_overall=config.pool_overall) for a in attributes}
    empty = [a for a, pairs in selected.items() if not pairs]
    if empty:
        hint = " (set pool_overall / --pool-overall to train 'overall' on all pairs)" if "overall" in empty else ""
        raise ConfigError(f"no pairs for attribute(s) {empty}{hint}")
    out_root = Path(config.output_dir)
    paths: dict[str, Path] = {}
    for attribute, pairs in selected.items():
        logger.info("reward model %s: %d pairs", attribute, len(pairs))
        paths[attribute] = train_reward_model(config, attribute, pairs, out_root / attribute)
    (out_root / INDEX_FILE).write_text(
        json.dumps({a: str(p.resolve()) for a, p in paths.items()}, indent=2) + "\n", encoding="utf-8"
    )
    return paths


# ---------------------------------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``mediq train reward``."""
    add_common_arguments(p, lr=1e-5, max_length=512)
    p.add_argument("--attributes", help="comma-separated attributes (default: every attribute in the data)")
    p.add_argument("--pool-overall", action="store_true", help="train 'overall' on all pairs when none is labelled so")
    p.add_argument("--max-context-chars", type=int, default=4000, help="as RewardModelScorer (default 4000)")
    p.add_argument("--center-rewards", type=float, help="TRL center_rewards_coefficient (e.g. 0.01)")


def run_from_args(args: argparse.Namespace) -> int:
    config = RewardTrainConfig(
        **common_kwargs_from_args(args),
        attributes=tuple(a.strip() for a in args.attributes.split(",") if a.strip()) if args.attributes else None,
        pool_overall=args.pool_overall,
        max_context_chars=args.max_context_chars,
        center_rewards_coefficient=args.center_rewards,
    )
    paths = train_reward_models(config)
    for attribute, path in paths.items():
        print(f"{attribute}: {path}")
    print(f"index: {Path(config.output_dir) / INDEX_FILE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.reward", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
