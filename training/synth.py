"""Attribute-specific preference pairs from real clinician questions: the ALFA data pipeline.

ALFA (Li et al., 2025, arXiv 2502.14860) learns each question-quality attribute from *counterfactual* pairs:
take a real clinician's follow-up question, have a strong model rewrite it to be better on one attribute
only (``enhanced``) and worse on that attribute only (``corrupted``), keep everything else fixed, and train
on the resulting pairs. Because the two sides differ (ideally) in one attribute, a reward model or DPO
policy trained on them learns that attribute rather than length, style or topic.

Pipeline, per batch of (question, attribute) *units*::

    load questions ──► rewrite (generator, one call) ──► parse ──► filters ──► judge (one call) ──► log
                                                                                                     │
    stats.json/.md ◄── pairs/*.jsonl, hf/pairs (train/eval by post) ◄── finalize from units.jsonl ◄─┘

* **Input**: the r/AskDocs question format (``qid``/``id_post``/``post``/``question``/
  ``prev_additional_contexts``/``final_diagnosis``) or a plain JSONL for users' own data, one object per
  line: ``{"id", "post", "question", "history": [[q, a], ...]?, "diagnosis"?, "post_id"?, "title"?}``
  (``post_id`` defaults to a hash of the post text, so questions on the same post share a split). A bad
  record raises :class:`~mediq_env.errors.CaseFormatError`, one line ``file:line: field: problem``.
* **Parsing** (:func:`parse_rewrite`) is strict: the first line of the reply, minus lead-ins ("Here is the
  rewritten question:"), labels, bullets, markdown and quotes, must be one non-empty doctor turn; refusals,
  comments about the question, echoed prompts and several candidate questions on separate lines are
  dropped with the reason recorded.
* **Filters** (:func:`check_rewrite`), all thresholds in :class:`SynthConfig`: near-duplicates of the
  original (token Jaccard or character ratio at or above a threshold — the rewrite changed nothing), a
  statement where the original was a question, text copied from the post or the prompt, and,
  for the general attributes only, *changed medical content*: numbers, or medical words (a built-in
  lexicon, common medical suffixes and upper-case acronyms) that appear in the rewrite but nowhere in the
  post, the earlier turns or the original question. The clinical attributes are exempt because changing
  the medical content is what they are about. Crude on purpose: it sees words, not meaning, and errs on
  the side of letting paraphrases through (a word counts as known when a known word starts with its stem).
* **Verification**: each candidate pair (``enhanced>corrupted``, ``enhanced>original``,
  ``original>corrupted``) goes to :class:`mediq_env.scoring.PairwiseJudge` on its attribute, shown in both
  orders. It is kept when every verdict parsed and the intended winner's win rate is at least
  ``judge_min_win`` (default 0.75: both orders agree, or one agrees and the other is a tie). A judge that
  always picks the first slot therefore keeps nothing — position bias is filtered, not learned.
* **Resume**: ``units.jsonl`` in the output folder gets one line per finished unit (raw generations,
  parses, filter reasons, verdicts), appended and fsynced per batch. A rerun skips logged units, cuts off
  a torn last line, and refuses a different unit-affecting config (:data:`SynthConfig.RESUMABLE_CHANGES`
  lists what may change). ``cache_dir`` adds the sqlite response cache, so a crashed batch is redone for
  free.
* **Output**, rebuilt from ``units.jsonl`` at the end of every run: TRL's conversational preference format
  (``prompt`` = system + user messages from :func:`training.synth_prompts.asker_chat`; ``chosen`` /
  ``rejected`` = one assistant message) plus ``attribute``, ``source_attribute``, ``source_id``,
  ``post_id``, ``pair_kind``, ``uses_diagnosis`` and ``judge_win_rate``; as JSONL (``pairs/train.jsonl``,
  ``pairs/eval.jsonl``) and as a ``datasets.DatasetDict`` (``hf/pairs``). Splits are by patient post
  (:func:`split_of`, a seeded hash), so no post is in both. ``pairs_overall`` / ``hf/pairs_overall`` pool
  every attribute's pairs under ``attribute="overall"``: the single-attribute baseline ALFA compares the
  decomposed attributes against. ``stats.json`` / ``stats.md`` report pairs per attribute and kind, drop
  rates and reasons, judge position bias and lengths.

trl and datasets are imported only where a dataset is written, never at ``import training``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from mediq_env.attributes import ALFA_ATTRIBUTES, CLINICAL_ATTRIBUTES, RUBRIC_LEVELS, get_attribute
from mediq_env.backends.base import Backend, Chat, Generation, SamplingParams
from mediq_env.errors import BackendError, CaseFormatError, ConfigError, MissingDependencyError
from training.synth_prompts import PROMPT_VERSION, asker_chat, rewrite_chat

__all__ = [
    "PAIR_KINDS",
    "PAIR_KIND_SIDES",
    "ParsedRewrite",
    "SourceQuestion",
    "SynthConfig",
    "SynthResult",
    "char_ratio",
    "check_rewrite",
    "compute_stats",
    "context_copy",
    "load_questions",
    "medical_terms",
    "new_medical_terms",
    "new_numbers",
    "numbers",
    "overall_rows",
    "pair_rows",
    "parse_rewrite",
    "preference_features",
    "read_unit_log",
    "run_synth",
    "save_splits",
    "split_of",
    "stats_markdown",
    "synthesize",
    "token_jaccard",
    "unit_key",
]

PAIR_KINDS: tuple[str, ...] = ("enhanced>corrupted", "enhanced>original", "original>corrupted")
"""Every pair kind: which version is chosen (left) over which (right)."""

PAIR_KIND_SIDES: Mapping[str, tuple[str, str]] = {
    "enhanced>corrupted": ("enhanced", "corrupted"),
    "enhanced>original": ("enhanced", "original"),
    "original>corrupted": ("original", "corrupted"),
}

InputFormat = Literal["auto", "askdocs", "plain"]
_INPUT_FORMATS = ("auto", "askdocs", "plain")

UNITS_FILE = "units.jsonl"
MANIFEST_FILE = "manifest.json"


# ---------------------------------------------------------------------------------------------------
# Config


@dataclass
class SynthConfig:
    """Everything that decides what a synthesis run produces (TRL-style: validated on construction).

    Backends are specs for :func:`mediq_env.backends.factory.make_backend` (``smollm2``, ``hf:<id>``,
    ``vllm:<id>``, ``openai:<model>``, ``scripted``); :func:`synthesize` also takes backend objects.
    ``judge=None`` reuses the generator's backend (one model in memory); ``verify=False`` skips the judge
    and keeps every filtered pair (marked ``judge_win_rate=None``). ``content_check_attributes=None`` means
    every attribute of the ``general`` group. ``diagnosis_attributes`` are the attributes whose enhanced
    rewrite sees the thread's final diagnosis when ``use_diagnosis`` is on (hindsight helps the clinical
    attributes; for clarity it would only tempt the generator to leak the answer).
    """

    input: str | Path
    out_dir: str | Path
    generator: str | None = None
    judge: str | None = None
    verify: bool = True
    attributes: tuple[str, ...] = ALFA_ATTRIBUTES
    pair_kinds: tuple[str, ...] = PAIR_KINDS
    input_format: InputFormat = "auto"
    limit: int | None = None
    batch_size: int = 16
    use_diagnosis: bool = False
    diagnosis_attributes: tuple[str, ...] = CLINICAL_ATTRIBUTES
    content_check_attributes: tuple[str, ...] | None = None
    enhance_level: int = 5
    corrupt_level: int = 2
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    judge_samples: int = 1
    judge_min_win: float = 0.75
    judge_require_all_parsed: bool = True
    judge_format_examples: bool = False
    max_token_jaccard: float = 0.9
    max_char_ratio: float = 0.95
    min_rewrite_chars: int = 8
    max_rewrite_chars: int = 500
    max_new_numbers: int = 0
    max_new_medical_terms: int = 0
    max_context_copy: float = 0.5
    max_post_chars: int = 4000
    eval_fraction: float = 0.1
    split_seed: int = 0
    cache_dir: str | Path | None = None
    generator_options: dict[str, Any] = field(default_factory=dict)
    judge_options: dict[str, Any] = field(default_factory=dict)
    save_hf_dataset: bool = True
    write_sft: bool = True
    sft_only: bool = False

    #: Settings that change speed, scope or packaging but not a unit's content: a resumed run may change them.
    RESUMABLE_CHANGES = (
        "input", "out_dir", "attributes", "input_format", "limit", "batch_size", "eval_fraction", "split_seed",
        "cache_dir", "generator_options", "judge_options", "save_hf_dataset", "write_sft", "sft_only",
    )

    def __post_init__(self) -> None:
        if not str(self.input):
            raise ConfigError("input: give the questions file (askdocs or plain JSONL)")
        if not str(self.out_dir):
            raise ConfigError("out_dir: give the output folder")
        self.input = Path(self.input).expanduser()
        self.out_dir = Path(self.out_dir).expanduser()
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir).expanduser()
        if self.input_format not in _INPUT_FORMATS:
            raise ConfigError(f"input_format must be one of {_INPUT_FORMATS}, got {self.input_format!r}")
        self.attributes = _names(self.attributes, "attributes")
        self.diagnosis_attributes = _names(self.diagnosis_attributes, "diagnosis_attributes", allow_empty=True)
        if self.content_check_attributes is not None:
            self.content_check_attributes = _names(
                self.content_check_attributes, "content_check_attributes", allow_empty=True
            )
        self.pair_kinds = tuple(self.pair_kinds)
        bad = [k for k in self.pair_kinds if k not in PAIR_KIND_SIDES]
        if bad or not self.pair_kinds or len(set(self.pair_kinds)) != len(self.pair_kinds):
            raise ConfigError(f"pair_kinds must be distinct values from {PAIR_KINDS}, got {list(self.pair_kinds)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 or None, got {self.limit}")
        for name in ("batch_size", "max_new_tokens", "judge_samples", "min_rewrite_chars", "max_post_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_rewrite_chars < self.min_rewrite_chars:
            raise ConfigError("max_rewrite_chars must be >= min_rewrite_chars")
        for name in ("max_new_numbers", "max_new_medical_terms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        for name in ("max_token_jaccard", "max_char_ratio", "max_context_copy"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.5 < self.judge_min_win <= 1:
            raise ConfigError(
                f"judge_min_win must be in (0.5, 1] (0.5 would keep pairs the judge is indifferent to), got "
                f"{self.judge_min_win}"
            )
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.enhance_level not in RUBRIC_LEVELS or self.corrupt_level not in RUBRIC_LEVELS:
            raise ConfigError(f"enhance_level and corrupt_level must be rubric levels {RUBRIC_LEVELS}")
        if self.corrupt_level >= self.enhance_level:
            raise ConfigError("corrupt_level must be below enhance_level")
        for name in ("generator_options", "judge_options"):
            opts = getattr(self, name)
            if not isinstance(opts, Mapping) or not all(isinstance(k, str) for k in opts):
                raise ConfigError(f"{name} must be a mapping of option names to values")
            setattr(self, name, dict(opts))
        if self.sft_only and not self.write_sft:
            raise ConfigError("sft_only with write_sft=False would write nothing")
        for spec_name in ("generator", "judge"):
            spec = getattr(self, spec_name)
            if spec is not None and (not isinstance(spec, str) or not spec.strip()):
                raise ConfigError(f"{spec_name} must be a backend spec string or None")

    @property
    def checked_attributes(self) -> tuple[str, ...]:
        """The attributes whose rewrites must keep the medical content (see the class docstring)."""
        if self.content_check_attributes is not None:
            return self.content_check_attributes
        return tuple(a for a in self.attributes if get_attribute(a).group == "general")

    @property
    def directions(self) -> tuple[str, ...]:
        """The rewrites the chosen pair kinds need (``enhanced``, ``corrupted`` or both)."""
        needed = {side for k in self.pair_kinds for side in PAIR_KIND_SIDES[k]} - {"original"}
        return tuple(d for d in ("enhanced", "corrupted") if d in needed)

    def unit_settings(self) -> dict[str, Any]:
        """The settings a logged unit depends on; a resumed run must match them."""
        out = {
            f.name: _jsonable(getattr(self, f.name))
            for f in fields(self)
            if f.name not in self.RESUMABLE_CHANGES
        }
        out["prompt_version"] = PROMPT_VERSION
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def _names(values: Iterable[str] | str, what: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    names = tuple(values)
    if not names and not allow_empty:
        raise ConfigError(f"{what}: give at least one attribute")
    for n in names:
        get_attribute(n)  # ConfigError listing the known names
    if len(set(names)) != len(names):
        raise ConfigError(f"{what}: repeated names in {list(names)}")
    return names


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# ---------------------------------------------------------------------------------------------------
# Input


@dataclass(frozen=True)
class SourceQuestion:
    """One real clinician question with what the clinician saw before asking it."""

    id: str
    post_id: str
    post: str
    question: str
    history: tuple[tuple[str, str], ...] = ()
    title: str | None = None
    diagnosis: str | None = None
    source: str = ""  # "file:line", for messages

    def chat(self, max_post_chars: int = 4000) -> Chat:
        """The asker prompt for this question (the ``prompt`` of its SFT example and preference pairs)."""
        return asker_chat(self.post, self.history, title=self.title, max_post_chars=max_post_chars)


_MISSING_TEXT = {"", "none", "null", "nan", "n/a", "na"}


def _maybe_json(value: Any) -> Any:
    """Decode a field that the AskDocs export sometimes stores as a JSON (or Python-literal) string."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[{":
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                import ast

                try:
                    return ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    return value
    return value


def _text(rec: Mapping[str, Any], key: str, where: tuple[str, int], *, required: bool) -> str | None:
    value = rec.get(key)
    if value is None or (isinstance(value, str) and value.strip().lower() in _MISSING_TEXT and not required):
        if required:
            raise CaseFormatError(where[0], where[1], key, "missing (a non-empty string is required)")
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("id"):
        value = str(value)  # ids may be numbers in users' files
    if not isinstance(value, str):
        raise CaseFormatError(where[0], where[1], key, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise CaseFormatError(where[0], where[1], key, "is empty")
    return value.strip() or None


def _history_plain(value: Any, where: tuple[str, int]) -> tuple[tuple[str, str], ...]:
    value = _maybe_json(value)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise CaseFormatError(where[0], where[1], "history", f"must be a list of [question, answer] pairs, got {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        if isinstance(turn, Mapping):
            turn = [turn.get("question"), turn.get("answer", turn.get("patient_answer"))]
        if (
            not isinstance(turn, (list, tuple))
            or len(turn) != 2
            or not isinstance(turn[0], str)
            or not turn[0].strip()
            or not (turn[1] is None or isinstance(turn[1], str))
        ):
            raise CaseFormatError(where[0], where[1], f"history[{i}]", "must be [question, answer] with a non-empty question string")
        out.append((turn[0].strip(), (turn[1] or "").strip()))
    return tuple(out)


def _history_askdocs(value: Any, where: tuple[str, int]) -> tuple[tuple[str, str], ...]:
    value = _maybe_json(value)
    if value is None or value == "":
        return ()
    if not isinstance(value, list):
        raise CaseFormatError(where[0], where[1], "prev_additional_contexts", f"must be a list, got {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        field_name = f"prev_additional_contexts[{i}]"
        if not isinstance(turn, Mapping) or not isinstance(turn.get("question"), str) or not turn["question"].strip():
            raise CaseFormatError(where[0], where[1], field_name, "must be an object with a non-empty 'question'")
        answer = turn.get("patient_answer")
        if answer is not None and not isinstance(answer, str):
            raise CaseFormatError(where[0], where[1], field_name, "'patient_answer' must be a string or null")
        out.append((turn["question"].strip(), (answer or "").strip()))
    return tuple(out)


def _post_hash(post: str) -> str:
    norm = " ".join(post.lower().split())
    return "post-" + hashlib.sha256(norm.encode("utf-8")).hexdigest()[:16]


def _record_format(rec: Mapping[str, Any]) -> str:
    return "askdocs" if "qid" in rec and "id_post" in rec else "plain"


def _parse_record(rec: Mapping[str, Any], fmt: str, where: tuple[str, int]) -> SourceQuestion:
    src = f"{where[0]}:{where[1]}"
    if fmt == "askdocs":
        qid = _text(rec, "qid", where, required=True)
        post_id = _text(rec, "id_post", where, required=True)
        post = _text(rec, "post", where, required=True)
        question = _text(rec, "question", where, required=True)
        title = _text(rec, "title", where, required=False)
        diagnosis = _text(rec, "final_diagnosis", where, required=False)
        history = _history_askdocs(rec.get("prev_additional_contexts"), where)
    else:
        qid = _text(rec, "id", where, required=True)
        post = _text(rec, "post", where, required=True)
        question = _text(rec, "question", where, required=True)
        title = _text(rec, "title", where, required=False)
        diagnosis = _text(rec, "diagnosis", where, required=False)
        history = _history_plain(rec.get("history"), where)
        assert post is not None
        post_id = _text(rec, "post_id", where, required=False) or _post_hash(post)
    assert qid is not None and post_id is not None and post is not None and question is not None
    return SourceQuestion(qid, post_id, post, question, history, title, diagnosis, src)


def load_questions(
    path: str | Path, input_format: InputFormat = "auto", *, limit: int | None = None
) -> list[SourceQuestion]:
    """Read clinician questions from a JSONL file (askdocs or plain; ``auto`` decides from the first record).

    Blank lines are skipped. Anything else that is wrong — bad JSON, a missing or non-string field, a
    malformed history, a repeated id — raises :class:`CaseFormatError` naming ``file:line: field``: a
    training set built from a silently half-read file is worse than no training set. ``limit`` keeps the
    first ``limit`` questions (after validating only those lines).
    """
    p = Path(path)
    if input_format not in _INPUT_FORMATS:
        raise ConfigError(f"input_format must be one of {_INPUT_FORMATS}, got {input_format!r}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CaseFormatError(str(p), None, None, "file not found") from None
    except UnicodeDecodeError as err:
        raise CaseFormatError(str(p), None, None, f"not UTF-8 text ({err.reason})") from None
    fmt: str | None = None if input_format == "auto" else input_format
    out: list[SourceQuestion] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = (str(p), lineno)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise CaseFormatError(str(p), lineno, None, f"invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(rec, dict):
            raise CaseFormatError(str(p), lineno, None, f"expected a JSON object, got {type(rec).__name__}")
        if fmt is None:
            fmt = _record_format(rec)
        q = _parse_record(rec, fmt, where)
        if q.id in seen:
            key = "qid" if fmt == "askdocs" else "id"
            raise CaseFormatError(str(p), lineno, key, f"duplicate id {q.id!r} (first on line {seen[q.id]})")
        seen[q.id] = lineno
        out.append(q)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise CaseFormatError(str(p), None, None, "no records")
    return out


# ---------------------------------------------------------------------------------------------------
# Parsing generator output


@dataclass(frozen=True)
class ParsedRewrite:
    """A parsed generator reply: the question, or None and the reason it was unusable."""

    question: str | None
    reason: str | None = None
    trailing_lines: int = 0


_FENCE = re.compile(r"^\s*```\w*\s*$")
_LEAD_IN = re.compile(
    r"^(?:sure|okay|ok|certainly|of course|absolutely|here(?:'s| is| are)|below is|"
    r"(?:the |a |my )?(?:rewritten|revised|edited|improved|enhanced|corrupted|modified|new|worse|better|"
    r"clearer|updated)\b)",
    re.I,
)
_LABEL = re.compile(
    r"^(?:(?:rewritten|revised|edited|improved|enhanced|corrupted|modified|new|worse|better|final|updated|"
    r"clearer|doctor'?s?|the)\s+)*(?:question|version|rewrite|doctor|q|output|answer)\s*\d*\s*[:：]\s*",
    re.I,
)
_BULLET = re.compile(r"^(?:[-*•>]+|\d+[.)]|\(\d+\))\s+")
_REFUSAL = re.compile(
    r"^(?:i(?:'m| am) sorry|sorry[,.!]|i cannot|i can(?:'|no)t|i(?:'m| am) (?:not able|unable)|as an ai)", re.I
)
_ECHO = re.compile(
    r"^(?:attribute|scale|(?:the )?patient'?s post|title|earlier exchanges|conversation so far|task|reply with)\s*:", re.I
)
_META = re.compile(
    r"\b(?:original|rewritten|revised|edited|doctor's) question\b|\bthis (?:question|rewrite|version)\b|"
    r"\bthe question (?:is|was|asks)\b|\bon (?:the )?(?:scale|rubric)\b|\bscores? (?:a )?[1-5]\b",
    re.I,
)
_QUOTES = "\"'“”‘’`«»"


def _clean_line(line: str) -> str:
    line = " ".join(line.split())
    for _ in range(3):
        before = line
        line = line.strip().strip("*_").strip()
        line = _BULLET.sub("", line)
        line = _LABEL.sub("", line)
        if len(line) >= 2 and line[0] in _QUOTES:
            line = line[1:]
            # Drop the matching closing quote, possibly before final punctuation the model put outside it.
            m = re.search(r"[\"'“”‘’`«»]([?.!]?)$", line)
            if m:
                line = line[: m.start()] + m.group(1)
        if line == before:
            break
    return line.strip()


def parse_rewrite(text: str, *, min_chars: int = 8, max_chars: int = 500) -> ParsedRewrite:
    """The rewritten question in a generator reply, or the reason there is none.

    Takes the first content line after dropping code fences and lead-in lines ending in a colon ("Sure!
    Here is a clearer version:"); a lead-in followed by the question on the same line ("Rewritten
    question: Do you ...?") keeps what follows the colon. Strips bullets, labels, markdown emphasis and
    surrounding quotes. Reasons: ``empty``, ``refusal``, ``echoed_prompt``, ``meta_comment`` (a remark
    about the question instead of a question), ``multiple_candidates`` (another line that is itself a
    question: the model offered alternatives), ``too_short``, ``too_long``. Later lines that are not
    questions (an explanation) are ignored and counted in ``trailing_lines``.
    """
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip() and not _FENCE.match(ln)]
    while lines:
        head = lines[0].strip("*_ ")
        if _ECHO.match(head):
            return ParsedRewrite(None, "echoed_prompt")  # the model started copying its prompt
        if head.endswith(":") and (_LEAD_IN.match(head) or not _clean_line(head[:-1]) or "?" not in head):
            lines.pop(0)
            continue
        break
    if not lines:
        return ParsedRewrite(None, "empty")
    first = lines[0]
    if _LEAD_IN.match(first.strip("*_ ")) and ":" in first:
        first = first.split(":", 1)[1]
    question = _clean_line(first)
    rest = lines[1:]
    if not question or not any(ch.isalpha() for ch in question):
        return ParsedRewrite(None, "empty")
    if _REFUSAL.match(question):
        return ParsedRewrite(None, "refusal")
    if _ECHO.match(first.strip("*_ ")):
        return ParsedRewrite(None, "echoed_prompt")
    if _META.search(question):
        return ParsedRewrite(None, "meta_comment")
    if any(_clean_line(ln).endswith("?") for ln in rest):
        return ParsedRewrite(None, "multiple_candidates")
    if len(question) < min_chars:
        return ParsedRewrite(None, "too_short")
    if len(question) > max_chars:
        return ParsedRewrite(None, "too_long")
    return ParsedRewrite(question, None, trailing_lines=len(rest))


# ---------------------------------------------------------------------------------------------------
# Filters

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def token_jaccard(a: str, b: str) -> float:
    """Jaccard overlap of the lower-cased word sets (stop words included: 'is' vs 'was' is a change)."""
    sa, sb = set(_words(a)), set(_words(b))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def char_ratio(a: str, b: str) -> float:
    """difflib's similarity ratio of the whitespace- and case-normalised strings (1.0 = identical)."""
    na, nb = " ".join(a.lower().split()), " ".join(b.lower().split())
    return difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()


_NUMBER_WORDS = {
    "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
    "ten": "10", "eleven": "11", "twelve": "12", "fifteen": "15", "twenty": "20", "thirty": "30",
    "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000", "twice": "2", "thrice": "3",
}  # "one" is left out: "which one", "no one" are not quantities.
_DIGITS = re.compile(r"\d+(?:[.,]\d+)?")


def numbers(text: str) -> set[str]:
    """The numbers in ``text``, normalised (``2,5`` → ``2.5``, ``two`` → ``2``)."""
    out = set()
    for m in _DIGITS.findall(text):
        n = m.replace(",", ".")
        if "." in n:
            n = n.rstrip("0").rstrip(".")
        out.add(n)
    out.update(_NUMBER_WORDS[w] for w in _words(text) if w in _NUMBER_WORDS)
    return out


def new_numbers(rewrite: str, source: str) -> list[str]:
    """Numbers in ``rewrite`` that ``source`` does not contain."""
    return sorted(numbers(rewrite) - numbers(source))


# A deliberately plain lexicon: symptoms, anatomy, tests, drugs and conditions a patient forum talks about.
_MEDICAL_LEXICON = """
    pain ache aching fever cough nausea vomiting vomit diarrhea diarrhoea constipation rash itch itching fatigue
    tired dizziness dizzy headache migraine bleeding blood bruise bruising swelling swollen lump numbness
    tingling weakness seizure fainting faint palpitations wheeze wheezing sweats sweating chills insomnia
    discharge cramp cramps stiffness tremor jaundice anxiety depression breathless breathlessness
    head neck chest back abdomen stomach belly bowel bowels bladder kidney kidneys liver lung lungs heart brain
    skin throat ear ears eye eyes nose mouth tooth teeth gum gums tongue arm arms leg legs knee knees hip hips
    shoulder elbow wrist ankle foot feet hand hands finger fingers toe toes joint joints muscle muscles bone
    bones spine pelvis groin breast breasts testicle testicles penis vagina vulva uterus ovary ovaries
    prostate thyroid gland glands lymph node nodes vein veins artery colon rectum anus stool stools urine
    mri ct xray ultrasound biopsy ecg ekg eeg cbc urinalysis scan scans bloodwork endoscopy colonoscopy
    hemoglobin haemoglobin ferritin glucose cholesterol tsh a1c psa platelets
    medication medications medicine medicines drug drugs pill pills tablet tablets dose dosage antibiotic
    antibiotics steroid steroids insulin aspirin ibuprofen paracetamol acetaminophen tylenol advil opioid
    opioids antidepressant antidepressants antihistamine supplement supplements vitamin vitamins vaccine
    vaccination injection inhaler contraceptive contraception birth
    diabetes diabetic cancer tumor tumour infection infections virus viral bacteria bacterial allergy
    allergies allergic asthma hypertension stroke ulcer hernia fracture sprain cyst std sti hiv herpes covid
    flu influenza pneumonia pregnancy pregnant period periods menstruation menstrual
    surgery operation transplant chemotherapy radiotherapy physiotherapy therapy
    smoke smoking smoker alcohol
    """
_MEDICAL_WORDS = frozenset(_MEDICAL_LEXICON.split())
_MEDICAL_SUFFIX = re.compile(
    r"(?:itis|osis|emia|aemia|oma|omas|pathy|ectomy|otomy|ostomy|oscopy|ography|plasty|algia|uria|cillin|"
    r"mycin|cycline|azole|pril|sartan|olol|statin|prazole|tidine|dipine|zepam|zolam|oxetine|triptan|"
    r"olone|asone)$"
)
_ACRONYM = re.compile(r"\b[A-Z]{2,6}s?\b")
_ACRONYM_STOPLIST = "OK OKAY AM PM TV USA US UK EU OP ID ASAP FYI IMO IMHO TL DR TLDR EDIT PS AKA DIY ETA LOL OMG NSFW"
_NOT_MEDICAL_ACRONYMS = frozenset(_ACRONYM_STOPLIST.split())


def _norm_medical(text: str) -> str:
    return re.sub(r"\bx[- ]ray", "xray", text, flags=re.I)


def medical_terms(text: str) -> set[str]:
    """Words in ``text`` the content filter treats as medical: the lexicon, the suffixes, acronyms.

    Lower-cased; acronyms (``CBC``, ``TSH``) count whatever they are, minus a short stop list (``OK``,
    ``TL;DR``), because in a clinical question an unexplained upper-case abbreviation is nearly always a
    test, a drug or a condition.
    """
    text = _norm_medical(text)
    out = {w for w in _words(text) if w in _MEDICAL_WORDS or (len(w) >= 6 and _MEDICAL_SUFFIX.search(w))}
    for m in _ACRONYM.findall(text):
        acr = m[:-1] if m.endswith("s") and m[:-1].isupper() and len(m) > 2 else m
        if acr not in _NOT_MEDICAL_ACRONYMS:
            out.add(acr.lower())
    return out


def new_medical_terms(rewrite: str, source: str) -> list[str]:
    """Medical words of ``rewrite`` that ``source`` does not mention.

    A word counts as mentioned when the source has a word with the same stem, or a word that starts with
    the word's stem ("blood" is known from "bloodwork", "diabetes" from "diabetic"). That leniency is on
    purpose: the filter should catch invented content, not penalise paraphrase.
    """
    from mediq_env.patient import tokenize

    src = _norm_medical(source)
    src_words = set(_words(src))
    src_stems = set(tokenize(src)) | src_words
    out = []
    for term in sorted(medical_terms(rewrite)):
        stems = set(tokenize(term)) | {term}
        if stems & src_stems:
            continue
        if any(len(s) >= 3 and any(w.startswith(s) for w in src_words) for s in stems):
            continue
        out.append(term)
    return out


def _ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def context_copy(rewrite: str, source: str, original: str = "", *, min_ngrams: int = 3) -> float | None:
    """Share of the rewrite's word 4-grams (those not already in ``original``) that occur in ``source``.

    None when the rewrite has fewer than ``min_ngrams`` such 4-grams (too short to tell). A real question
    quotes a phrase of the post now and then; a rewrite that is mostly post text is the model echoing its
    prompt.
    """
    grams = _ngrams(rewrite) - _ngrams(original)
    if len(grams) < min_ngrams:
        return None
    return len(grams & _ngrams(source)) / len(grams)


def check_rewrite(
    original: str,
    rewrite: str,
    source: str,
    *,
    check_content: bool,
    config: SynthConfig,
    prompt: str = "",
) -> tuple[str | None, dict[str, Any]]:
    """Filter one parsed rewrite against the original question; ``(reason, detail)`` — reason None = kept.

    Reasons, in the order checked: ``identical`` (same text up to case and spacing), ``near_duplicate``
    (token Jaccard >= ``max_token_jaccard`` or char ratio >= ``max_char_ratio``), ``copied_context`` (more
    than ``max_context_copy`` of the rewrite's new word 4-grams are copied from ``source`` or from the
    generator's ``prompt``: the model reproduced its input instead of writing a question),
    ``not_a_question`` (the original has a question mark and the rewrite has none: a statement or a
    fragment; originals without one, such as "Would be helpful to know your CBC values.", impose nothing),
    and with ``check_content``: ``new_numbers`` / ``new_medical_terms`` (more than
    ``max_new_numbers`` / ``max_new_medical_terms`` numbers or medical words absent from ``source``, the
    post + earlier turns + original question).
    """
    jac, ratio = token_jaccard(original, rewrite), char_ratio(original, rewrite)
    detail: dict[str, Any] = {"token_jaccard": round(jac, 4), "char_ratio": round(ratio, 4)}
    if " ".join(original.lower().split()) == " ".join(rewrite.lower().split()):
        return "identical", detail
    if jac >= config.max_token_jaccard or ratio >= config.max_char_ratio:
        return "near_duplicate", detail
    copied = context_copy(rewrite, f"{source}\n{prompt}" if prompt else source, original)
    if copied is not None:
        detail["context_copy"] = round(copied, 4)
        if copied > config.max_context_copy:
            return "copied_context", detail
    if "?" in original and "?" not in rewrite:
        return "not_a_question", detail
    if check_content:
        nums = new_numbers(rewrite, source)
        terms = new_medical_terms(rewrite, source)
        detail["new_numbers"] = nums
        detail["new_medical_terms"] = terms
        if len(nums) > config.max_new_numbers:
            return "new_numbers", detail
        if len(terms) > config.max_new_medical_terms:
            return "new_medical_terms", detail
    return None, detail


# ---------------------------------------------------------------------------------------------------
# Splits


def split_of(post_id: str, eval_fraction: float, seed: int = 0) -> Literal["train", "eval"]:
    """``"eval"`` for a seeded-hash share ``eval_fraction`` of posts, else ``"train"``.

    A function of the post id alone, so every question, pair and SFT example of one patient post lands in
    the same split in every run and every output (pairs, the overall variant, SFT): no post leaks.
    """
    digest = hashlib.sha256(f"{seed}\x00{post_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if u < eval_fraction else "train"


# ---------------------------------------------------------------------------------------------------
# The resume log


def read_unit_log(path: str | Path, *, repair: bool = False) -> dict[str, dict[str, Any]]:
    """The finished units in ``path`` by key (first occurrence wins); missing file → ``{}``.

    A last line that is not valid JSON or has no newline is a write cut short by a crash: it and anything
    after it are ignored, and with ``repair`` cut off the file so the next append starts on a clean line.
    """
    p = Path(path)
    if not p.exists():
        return {}
    raw = p.read_bytes()
    done: dict[str, dict[str, Any]] = {}
    good_end = pos = 0
    for line in raw.split(b"\n"):
        end = pos + len(line) + 1
        if line.strip():
            if end > len(raw):
                break  # no newline: the write did not finish
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(rec, dict) or "key" not in rec:
                break
            done.setdefault(rec["key"], rec)
        good_end = min(end, len(raw))
        pos = end
    if repair and good_end < len(raw):
        with p.open("r+b") as fh:
            fh.truncate(good_end)
    return done


def _append_units(path: Path, units: Sequence[dict[str, Any]]) -> None:
    if not units:
        return
    payload = "".join(json.dumps(u, ensure_ascii=False) + "\n" for u in units)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def unit_key(source_id: str, attribute: str) -> str:
    """The resume key of one (question, attribute) unit."""
    return f"{source_id}::{attribute}"


# ---------------------------------------------------------------------------------------------------
# Running


@dataclass
class SynthResult:
    """What :func:`synthesize` wrote, and its statistics."""

    out_dir: Path
    stats: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


class _Replay:
    """A backend that hands back pre-computed generations, so several :class:`PairwiseJudge` objects (one
    per attribute) can share one real ``generate`` call and still do their own parsing."""

    def __init__(self, model_id: str, gens: list[Generation]) -> None:
        self.model_id = model_id
        self._gens = gens

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        if len(chats) != len(self._gens):
            raise BackendError(f"internal: {len(chats)} judge chats for {len(self._gens)} generations")
        return self._gens


def _judge_context(q: SourceQuestion) -> Any:
    from mediq_env.dialogue import DialogueState
    from mediq_env.patient import Turn

    info = f"{q.title}\n{q.post}" if q.title else q.post
    return DialogueState(
        case_id=q.id,
        initial_info=info,
        question="",
        options={},
        turns=tuple(Turn(question=a, reply=b or "(no answer)") for a, b in q.history),
    )


def _judge_many(backend: Backend, requests: Sequence[tuple[str, Any]], config: SynthConfig) -> list[Any]:
    """Pairwise results for ``(attribute, PairItem)`` requests, with one backend call for all attributes."""
    from mediq_env.scoring import PairwiseJudge

    if not requests:
        return []
    order: dict[str, list[int]] = {}
    for i, (attr, _) in enumerate(requests):
        order.setdefault(attr, []).append(i)
    kw: dict[str, Any] = {
        "samples": config.judge_samples,
        "format_examples": config.judge_format_examples,
        "max_context_chars": config.max_post_chars,
    }
    chats: list[Chat] = []
    spans: dict[str, tuple[int, int]] = {}
    params: SamplingParams | None = None
    for attr, idx in order.items():
        judge = PairwiseJudge(backend, attr, **kw)
        params = judge.params
        start = len(chats)
        chats += judge.chats([requests[i][1] for i in idx])
        spans[attr] = (start, len(chats))
    assert params is not None
    gens = backend.generate(chats, params)
    if len(gens) != len(chats):
        raise BackendError(f"{backend.model_id}: returned {len(gens)} generations for {len(chats)} judge chats")
    results: list[Any] = [None] * len(requests)
    for attr, idx in order.items():
        start, end = spans[attr]
        replay = PairwiseJudge(_Replay(backend.model_id, list(gens[start:end])), attr, params=params, **kw)
        for i, res in zip(idx, replay.compare([requests[i][1] for i in idx]), strict=True):
            results[i] = res
    return results


def _judge_decision(result: Any, config: SynthConfig) -> str | None:
    """None when the judge confirms the intended order; otherwise the drop reason."""
    if result.n_unscored and (config.judge_require_all_parsed or math.isnan(result.p_a)):
        return "judge_unparsed"
    if result.p_a < 0.5:
        return "judge_prefers_rejected"
    if result.p_a < config.judge_min_win:
        return "judge_undecided"  # ties, or the orders disagree (position bias)
    return None


def _source_text(q: SourceQuestion) -> str:
    parts = [q.title or "", q.post, q.question]
    parts += [f"{a} {b}" for a, b in q.history]
    return "\n".join(parts)


def _process_batch(
    batch: Sequence[tuple[SourceQuestion, str]],
    generator: Backend,
    judge: Backend | None,
    config: SynthConfig,
    counters: Counter[str],
) -> list[dict[str, Any]]:
    """Rewrite, parse, filter and verify one batch of units; return their log records."""
    directions = config.directions
    chats: list[Chat] = []
    uses_dx: list[bool] = []
    for q, attr_name in batch:
        attr = get_attribute(attr_name)
        keep = attr_name in config.checked_attributes
        for d in directions:
            dx = (
                q.diagnosis
                if d == "enhanced" and config.use_diagnosis and attr_name in config.diagnosis_attributes
                else None
            )
            uses_dx.append(dx is not None)
            level = config.enhance_level if d == "enhanced" else config.corrupt_level
            chats.append(
                rewrite_chat(
                    attr, d, q.question, q.post, q.history,  # type: ignore[arg-type]
                    title=q.title, diagnosis=dx, keep_medical_content=keep, target_level=level,
                    max_post_chars=config.max_post_chars,
                )
            )
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)
    t0 = time.perf_counter()
    gens = generator.generate(chats, params)
    counters["generate_calls"] += 1
    counters["generate_chats"] += len(chats)
    counters["generate_ms"] += int(1000 * (time.perf_counter() - t0))
    if len(gens) != len(chats):
        raise BackendError(f"{generator.model_id}: returned {len(gens)} generations for {len(chats)} chats")

    from mediq_env.scoring import PairItem

    units: list[dict[str, Any]] = []
    requests: list[tuple[str, Any]] = []
    pending: list[tuple[dict[str, Any], int]] = []  # (pair record, request index)
    pos = 0
    for q, attr_name in batch:
        source = _source_text(q)
        rewrites: dict[str, dict[str, Any]] = {}
        for d in directions:
            gen, conditioned = gens[pos], uses_dx[pos]
            pos += 1
            parsed = parse_rewrite(gen.text, min_chars=config.min_rewrite_chars, max_chars=config.max_rewrite_chars)
            rec: dict[str, Any] = {"raw": gen.text, "text": None, "drop": parsed.reason, "uses_diagnosis": conditioned}
            if parsed.question is not None:
                reason, detail = check_rewrite(
                    q.question, parsed.question, source,
                    check_content=attr_name in config.checked_attributes, config=config,
                    prompt=chats[pos - 1][-1]["content"],
                )
                rec.update(text=parsed.question, drop=reason, detail=detail, trailing_lines=parsed.trailing_lines)
            rewrites[d] = rec
        texts = {"original": q.question}
        texts.update({d: r["text"] for d, r in rewrites.items() if r["drop"] is None})
        pairs: list[dict[str, Any]] = []
        for kind in config.pair_kinds:
            win, lose = PAIR_KIND_SIDES[kind]
            pair: dict[str, Any] = {"kind": kind, "chosen": texts.get(win), "rejected": texts.get(lose)}
            missing = [s for s in (win, lose) if s not in texts]
            if missing:
                pair.update(status="dropped", drop=f"{missing[0]}_unusable")
            elif win != "original" and lose != "original" and (
                token_jaccard(texts[win], texts[lose]) >= config.max_token_jaccard
                or char_ratio(texts[win], texts[lose]) >= config.max_char_ratio
            ):
                pair.update(status="dropped", drop="pair_near_duplicate")
            elif judge is None:
                pair.update(status="kept", drop=None, judge=None)
            else:
                pair.update(status="pending")
                pending.append((pair, len(requests)))
                requests.append((attr_name, PairItem(_judge_context(q), texts[win], texts[lose])))
            pairs.append(pair)
        units.append(
            {
                "key": unit_key(q.id, attr_name),
                "source_id": q.id,
                "post_id": q.post_id,
                "attribute": attr_name,
                "original": q.question,
                "content_checked": attr_name in config.checked_attributes,
                "prompt": q.chat(config.max_post_chars),
                "rewrites": rewrites,
                "pairs": pairs,
            }
        )
    if judge is not None and requests:
        t0 = time.perf_counter()
        results = _judge_many(judge, requests, config)
        counters["judge_calls"] += 1
        counters["judge_chats"] += 2 * config.judge_samples * len(requests)
        counters["judge_ms"] += int(1000 * (time.perf_counter() - t0))
        for pair, i in pending:
            res = results[i]
            reason = _judge_decision(res, config)
            pair.update(status="kept" if reason is None else "dropped", drop=reason, judge=_judge_record(res))
    return units


def _judge_record(res: Any) -> dict[str, Any]:
    d = res.to_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items() if k != "attribute"}


def _make_backends(
    config: SynthConfig, generator: Backend | None, judge: Backend | None
) -> tuple[Backend, Backend | None]:
    from mediq_env.backends.factory import CACHE_FILE, make_backend

    def wrap(b: Backend) -> Backend:
        if config.cache_dir is None:
            return b
        from mediq_env.backends.cache import CachedBackend

        return CachedBackend(b, Path(config.cache_dir) / CACHE_FILE)

    if generator is not None:
        gen = wrap(generator)
    elif config.generator:
        gen = make_backend(config.generator, cache_dir=config.cache_dir, **config.generator_options)
    else:
        raise ConfigError("no generator: set SynthConfig.generator (e.g. 'smollm2', 'openai:<model>') or pass one")
    if not config.verify:
        return gen, None
    if judge is not None:
        return gen, wrap(judge)
    if (config.judge and config.judge != config.generator) or (generator is None and config.judge_options):
        spec = config.judge or config.generator
        assert spec is not None
        return gen, make_backend(spec, cache_dir=config.cache_dir, **config.judge_options)
    return gen, gen


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("mediq-env", "transformers", "torch", "trl", "datasets", "vllm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(out: Path, config: SynthConfig, gen: Backend, judge: Backend | None, *, has_units: bool) -> None:
    """Record the run's settings; refuse settings that differ from those of the units already logged."""
    settings = config.unit_settings()
    settings["generator_model"] = gen.model_id
    settings["judge_model"] = judge.model_id if judge is not None else None
    path = out / MANIFEST_FILE
    if path.exists() and has_units:
        old = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff[:4])
            raise ConfigError(
                f"{out} holds units made with other settings ({shown}{', ...' if len(diff) > 4 else ''}); "
                "resume with the same settings or use another output folder"
            )
    manifest = {
        "settings": settings,
        "config": config.to_dict(),
        "input_sha256": _file_sha256(Path(config.input)),
        "versions": _versions(),
        "command": sys.argv,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def synthesize(
    config: SynthConfig,
    *,
    generator: Backend | None = None,
    judge: Backend | None = None,
    progress: Callable[[str], None] | None = None,
) -> SynthResult:
    """Run (or resume) the pair synthesis of ``config`` and write every output; see the module docstring.

    ``generator`` / ``judge`` override the config's specs with ready backend objects (tests, or a vLLM
    engine built with custom options). Each batch of ``config.batch_size`` units costs one generator call
    and one judge call, and is logged before the next starts.
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    questions = load_questions(config.input, config.input_format, limit=config.limit)
    gen, jdg = _make_backends(config, generator, judge)
    log_path = out / UNITS_FILE
    done = read_unit_log(log_path, repair=True)
    _write_manifest(out, config, gen, jdg, has_units=bool(done))
    wanted = [(q, a) for q in questions for a in config.attributes]
    todo = [(q, a) for q, a in wanted if unit_key(q.id, a) not in done]
    say = progress or (lambda _msg: None)
    say(f"{len(wanted)} units ({len(questions)} questions x {len(config.attributes)} attributes); "
        f"{len(wanted) - len(todo)} already done, {len(todo)} to go")
    counters: Counter[str] = Counter()
    t0 = time.perf_counter()
    finished = 0
    for batch in _chunks(todo, config.batch_size):
        units = _process_batch(batch, gen, jdg, config, counters)
        _append_units(log_path, units)
        for u in units:
            done.setdefault(u["key"], u)
        finished += len(units)
        rate = finished / max(time.perf_counter() - t0, 1e-9)
        say(f"  {finished}/{len(todo)} units ({rate * 60:.1f}/min)")
    run_info: dict[str, Any] = {
        "seconds": round(time.perf_counter() - t0, 2),
        "units_this_run": finished,
        "units_resumed": len(wanted) - len(todo),
        "generator": gen.model_id,
        "judge": jdg.model_id if jdg is not None else None,
        **{k: int(v) for k, v in counters.items()},
    }
    for name, b in (("generator_cache", gen), ("judge_cache", jdg)):
        if b is not None and hasattr(b, "hits"):
            run_info[name] = {"hits": int(getattr(b, "hits", 0)), "misses": int(getattr(b, "misses", 0))}
    selected_keys = {unit_key(q.id, a) for q, a in wanted}
    units = [done[k] for k in (unit_key(q.id, a) for q, a in wanted)]
    run_info["log_units_outside_selection"] = sum(1 for k in done if k not in selected_keys)
    return _finalize(config, out, questions, units, run_info)


def _finalize(
    config: SynthConfig,
    out: Path,
    questions: Sequence[SourceQuestion],
    units: Sequence[Mapping[str, Any]],
    run_info: dict[str, Any],
) -> SynthResult:
    rows = pair_rows(units)
    overall, n_contradictory = overall_rows(rows)
    paths: dict[str, Path] = {}
    split_counts: dict[str, Any] = {}
    for name, data in (("pairs", rows), ("pairs_overall", overall)):
        written = save_splits(
            data, out / name, out / "hf" / name if config.save_hf_dataset else None,
            features=preference_features(), eval_fraction=config.eval_fraction, seed=config.split_seed,
        )
        paths[name] = out / name
        if config.save_hf_dataset:
            paths[f"hf_{name}"] = out / "hf" / name
        split_counts[name] = written
    run_info["overall_contradictory_dropped"] = n_contradictory
    stats = compute_stats(units, config, run_info=run_info, splits=split_counts, n_questions=len(questions))
    _atomic_write(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    _atomic_write(out / "stats.md", stats_markdown(stats))
    paths["stats"] = out / "stats.json"
    paths["units"] = out / UNITS_FILE
    return SynthResult(out, stats, paths)


def run_synth(
    config: SynthConfig,
    *,
    generator: Backend | None = None,
    judge: Backend | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """What ``mediq synth`` does: the preference pairs (unless ``sft_only``) and the SFT data (if
    ``write_sft``). Returns ``{"pairs": SynthResult | None, "sft": {split: count} | None}``."""
    result: dict[str, Any] = {"pairs": None, "sft": None}
    if not config.sft_only:
        result["pairs"] = synthesize(config, generator=generator, judge=judge, progress=progress)
    if config.write_sft:
        from training.sft_data import write_sft_data  # sft_data imports this module

        result["sft"] = write_sft_data(config)
    return result


# ---------------------------------------------------------------------------------------------------
# Rows and datasets


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def pair_rows(units: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The kept pairs of logged units as rows in TRL's conversational preference format (plus metadata)."""
    rows = []
    for u in units:
        enhanced_dx = bool(u["rewrites"].get("enhanced", {}).get("uses_diagnosis"))
        for p in u["pairs"]:
            if p.get("status") != "kept":
                continue
            judge = p.get("judge") or {}
            rows.append(
                {
                    "prompt": [dict(m) for m in u["prompt"]],
                    "chosen": _assistant(p["chosen"]),
                    "rejected": _assistant(p["rejected"]),
                    "attribute": u["attribute"],
                    "source_attribute": u["attribute"],
                    "source_id": u["source_id"],
                    "post_id": u["post_id"],
                    "pair_kind": p["kind"],
                    "uses_diagnosis": enhanced_dx and p["kind"].startswith("enhanced"),
                    "judge_win_rate": judge.get("p_a"),
                }
            )
    return rows


def overall_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Every attribute's pairs pooled as one coarse ``overall`` preference set; ``(rows, n_contradictory)``.

    This is the single-attribute baseline: the same preference signal with the attribute labels thrown
    away. Identical pairs (same question, chosen and rejected) are kept once; a pair whose mirror image
    also occurs (A > B for one attribute, B > A for another) says nothing overall and both are dropped.
    """
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["source_id"], r["chosen"][0]["content"], r["rejected"][0]["content"])
        if key not in seen:
            seen[key] = {**r, "attribute": "overall"}
    contradictory = {k for k in seen if (k[0], k[2], k[1]) in seen}
    return [r for k, r in seen.items() if k not in contradictory], len(contradictory)


def _message_feature() -> Any:
    from datasets import List, Value

    return List({"role": Value("string"), "content": Value("string")})


def preference_features() -> Any:
    """The ``datasets.Features`` of a preference dataset (explicit, so an empty split keeps its schema)."""
    try:
        from datasets import Features, Value
    except ImportError as err:
        raise MissingDependencyError("datasets", "train", "writing Hugging Face datasets") from err
    return Features(
        {
            "prompt": _message_feature(),
            "chosen": _message_feature(),
            "rejected": _message_feature(),
            "attribute": Value("string"),
            "source_attribute": Value("string"),
            "source_id": Value("string"),
            "post_id": Value("string"),
            "pair_kind": Value("string"),
            "uses_diagnosis": Value("bool"),
            "judge_win_rate": Value("float64"),
        }
    )


def save_splits(
    rows: Sequence[Mapping[str, Any]],
    jsonl_dir: Path,
    hf_dir: Path | None,
    *,
    features: Any | Callable[[], Any] | None,
    eval_fraction: float,
    seed: int,
) -> dict[str, dict[str, int]]:
    """Split ``rows`` by ``post_id`` (:func:`split_of`) and write ``train.jsonl`` / ``eval.jsonl`` under
    ``jsonl_dir`` and, if ``hf_dir``, a ``DatasetDict`` with ``save_to_disk``. Both are written to a
    temporary path and moved into place, so a reader never sees a half-written dataset.

    Returns ``{split: {"rows": n, "posts": n}}``.
    """
    by_split: dict[str, list[Mapping[str, Any]]] = {"train": [], "eval": []}
    for r in rows:
        by_split[split_of(str(r["post_id"]), eval_fraction, seed)].append(r)
    jsonl_dir.mkdir(parents=True, exist_ok=True)
    for split, data in by_split.items():
        _atomic_write(jsonl_dir / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
    if hf_dir is not None:
        try:
            from datasets import Dataset, DatasetDict
        except ImportError as err:
            raise MissingDependencyError("datasets", "train", "writing Hugging Face datasets") from err
        feats = features() if callable(features) else features
        dd = DatasetDict(
            {
                split: Dataset.from_dict({k: [r[k] for r in data] for k in feats}, features=feats)
                if feats is not None
                else Dataset.from_list([dict(r) for r in data])
                for split, data in by_split.items()
            }
        )
        tmp = hf_dir.with_name(hf_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        _save_quietly(dd, tmp)
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        os.replace(tmp, hf_dir)
    return {s: {"rows": len(d), "posts": len({r["post_id"] for r in d})} for s, d in by_split.items()}


def _save_quietly(dd: Any, path: Path) -> None:
    """``save_to_disk`` without a progress bar per split (restoring the caller's setting afterwards)."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        dd.save_to_disk(str(path))
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------------
# Statistics


def _length_stats(texts: Sequence[str]) -> dict[str, float] | None:
    if not texts:
        return None
    chars = [len(t) for t in texts]
    words = [len(t.split()) for t in texts]
    return {
        "n": len(texts),
        "chars_mean": round(statistics.mean(chars), 1),
        "chars_median": float(statistics.median(chars)),
        "words_mean": round(statistics.mean(words), 1),
    }


def compute_stats(
    units: Sequence[Mapping[str, Any]],
    config: SynthConfig,
    *,
    run_info: Mapping[str, Any] | None = None,
    splits: Mapping[str, Any] | None = None,
    n_questions: int | None = None,
) -> dict[str, Any]:
    """Pairs per attribute and kind, drop rates with reasons, judge behaviour and lengths, from the log."""
    per_attr: dict[str, Any] = {}
    totals_kind: Counter[str] = Counter()
    totals_reason: Counter[str] = Counter()
    for attr in config.attributes:
        mine = [u for u in units if u["attribute"] == attr]
        rewrites: dict[str, Any] = {}
        lengths: dict[str, Any] = {"original": _length_stats([u["original"] for u in mine])}
        for d in config.directions:
            recs = [u["rewrites"][d] for u in mine if d in u["rewrites"]]
            reasons = Counter(r["drop"] for r in recs if r["drop"] is not None)
            totals_reason.update({f"{d}:{k}": v for k, v in reasons.items()})
            kept = [r["text"] for r in recs if r["drop"] is None]
            rewrites[d] = {
                "generated": len(recs),
                "kept": len(kept),
                "drop_rate": round(1 - len(kept) / len(recs), 4) if recs else None,
                "dropped": dict(reasons.most_common()),
            }
            lengths[d] = _length_stats(kept)
        pairs: dict[str, Any] = {}
        judged = consistent = 0
        first_rates: list[float] = []
        for kind in config.pair_kinds:
            recs = [p for u in mine for p in u["pairs"] if p["kind"] == kind]
            reasons = Counter(p["drop"] for p in recs if p["status"] != "kept")
            totals_reason.update({f"pair:{k}": v for k, v in reasons.items()})
            kept_n = sum(p["status"] == "kept" for p in recs)
            candidates = sum(not str(p.get("drop") or "").endswith("_unusable") for p in recs)
            pairs[kind] = {
                "possible": len(recs),
                "candidates": candidates,
                "kept": kept_n,
                "keep_rate": round(kept_n / len(recs), 4) if recs else None,
                "dropped": dict(reasons.most_common()),
            }
            totals_kind[kind] += kept_n
            for p in recs:
                j = p.get("judge")
                if j:
                    judged += 1
                    consistent += bool(j.get("position_consistent"))
                    if j.get("first_position_rate") is not None:
                        first_rates.append(float(j["first_position_rate"]))
        kept_total = sum(v["kept"] for v in pairs.values())
        possible = sum(v["possible"] for v in pairs.values())
        per_attr[attr] = {
            "units": len(mine),
            "rewrites": rewrites,
            "pairs": pairs,
            "pairs_kept": kept_total,
            "pair_keep_rate": round(kept_total / possible, 4) if possible else None,
            "judge": {
                "pairs_judged": judged,
                "position_consistent_rate": round(consistent / judged, 4) if judged else None,
                "first_position_rate_mean": round(statistics.mean(first_rates), 4) if first_rates else None,
            },
            "lengths": lengths,
        }
    return {
        "questions": n_questions,
        "posts": len({u["post_id"] for u in units}),
        "units": len(units),
        "attributes": list(config.attributes),
        "pair_kinds": list(config.pair_kinds),
        "pairs_kept": sum(a["pairs_kept"] for a in per_attr.values()),
        "pairs_by_kind": dict(totals_kind),
        "drop_reasons": dict(totals_reason.most_common()),
        "per_attribute": per_attr,
        "splits": dict(splits or {}),
        "run": dict(run_info or {}),
        "settings": config.unit_settings(),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def stats_markdown(stats: Mapping[str, Any]) -> str:
    """The statistics as a Markdown report (``stats.md``)."""
    kinds = stats["pair_kinds"]
    lines = [
        "# Preference-pair synthesis",
        "",
        f"{stats.get('questions')} questions from {stats['posts']} posts, {stats['units']} (question, attribute) "
        f"units, **{stats['pairs_kept']} pairs kept**.",
        "",
        "## Pairs per attribute",
        "",
        "| attribute | units | enhanced kept | corrupted kept | " + " | ".join(kinds) + " | pairs kept / possible |",
        "|---|---:|---:|---:|" + "---:|" * len(kinds) + "---:|",
    ]
    for attr, a in stats["per_attribute"].items():
        rw = a["rewrites"]

        def kept(d: str, rw: Mapping[str, Any] = rw) -> str:
            return f"{rw[d]['kept']}/{rw[d]['generated']}" if d in rw else "–"

        cells = [str(a["pairs"][k]["kept"]) for k in kinds]
        possible = sum(a["pairs"][k]["possible"] for k in kinds)
        lines.append(
            f"| {attr} | {a['units']} | {kept('enhanced')} | {kept('corrupted')} | " + " | ".join(cells)
            + f" | {a['pairs_kept']}/{possible} ({_pct(a['pair_keep_rate'])}) |"
        )
    lines += ["", "## Why rewrites and pairs were dropped", "", "| attribute | stage | reason | count |", "|---|---|---|---:|"]
    for attr, a in stats["per_attribute"].items():
        for d, r in a["rewrites"].items():
            for reason, n in r["dropped"].items():
                lines.append(f"| {attr} | {d} rewrite | {reason} | {n} |")
        for kind, p in a["pairs"].items():
            for reason, n in p["dropped"].items():
                lines.append(f"| {attr} | {kind} pair | {reason} | {n} |")
    lines += [
        "",
        "## Judge",
        "",
        "| attribute | pairs judged | both orders agree | first-position rate (0.5 = unbiased) |",
        "|---|---:|---:|---:|",
    ]
    for attr, a in stats["per_attribute"].items():
        j = a["judge"]
        fpr = j["first_position_rate_mean"]
        lines.append(
            f"| {attr} | {j['pairs_judged']} | {_pct(j['position_consistent_rate'])} | "
            f"{'–' if fpr is None else f'{fpr:.2f}'} |"
        )
    lines += ["", "## Lengths of kept questions (characters, mean / median; words, mean)", "",
              "| attribute | original | enhanced | corrupted |", "|---|---|---|---|"]
    for attr, a in stats["per_attribute"].items():
        cells = []
        for d in ("original", "enhanced", "corrupted"):
            s = a["lengths"].get(d)
            cells.append("–" if not s else f"{s['chars_mean']:.0f} / {s['chars_median']:.0f}; {s['words_mean']:.1f} w (n={s['n']})")
        lines.append(f"| {attr} | " + " | ".join(cells) + " |")
    if stats.get("splits"):
        lines += ["", "## Splits (by patient post)", "", "| dataset | train rows | train posts | eval rows | eval posts |",
                  "|---|---:|---:|---:|---:|"]
        for name, s in stats["splits"].items():
            tr, ev = s.get("train", {}), s.get("eval", {})
            lines.append(f"| {name} | {tr.get('rows', 0)} | {tr.get('posts', 0)} | {ev.get('rows', 0)} | {ev.get('posts', 0)} |")
    run = stats.get("run") or {}
    if run:
        lines += ["", "## Run", ""]
        lines += [f"- {k}: {v}" for k, v in run.items()]
    return "\n".join(lines) + "\n"
