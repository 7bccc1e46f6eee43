"""How the environment reads an action. The grammar is strict and documented, so nothing is guessed.

An action is a ``str`` or a ``dict``:

* ``{"answer": "C"}`` or ``{"answer": "<option text>"}`` — a final answer (an optional ``"confidence"``,
  a finite number, is recorded); ``{"question": "..."}`` — a question.
* A string starting with ``ANSWER:`` (any case; ``FINAL ANSWER:`` too) followed by a letter, a letter and
  its text (``C) Sleep paralysis``) or an option text — a final answer.
* A bare option letter (``C``, ``(C)``, ``C) <its text>``) or a string equal to one option's text
  (ignoring case, spacing and a final full stop) — a final answer.
* Any other non-empty string — a question (a leading ``QUESTION:`` is removed).

Invalid actions (counted as a turn, answered with a clear message, flagged in ``info["invalid_action"]``):
an empty string, a string longer than the env's ``max_action_chars``, a question with no letter or digit
(e.g. only control characters or punctuation), an answer that names no option, a confidence that is not a
finite number (NaN and infinity are refused, not treated as missing: a NaN would poison calibration
metrics unseen), a dict without exactly one of ``answer``/``question``, or any other type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ParsedAction", "normalise_option_text", "parse_action", "question_text", "resolve_option"]

_ANSWER_PREFIX = re.compile(r"^\s*(?:final\s+)?answer\s*[:=]\s*", re.I)
_QUESTION_PREFIX = re.compile(r"^\s*question\s*[:=]\s*", re.I)
# A letter alone, or followed by ")", "." or ":" and optionally the option text: "C", "(C)", "C) text".
_LETTER = re.compile(r"^\(?([A-Ja-j])\)?(?:\s*[).:\-]\s*(.*))?\s*$", re.S)
_SPACE = re.compile(r"\s+")


def question_text(action: Any) -> str:
    """The question of a question action as recorded (the string itself, or a dict's ``question`` field):
    what replaying an interview steps again."""
    if isinstance(action, Mapping):
        return str(action.get("question", ""))
    return str(action)


def normalise_option_text(text: str) -> str:
    return _SPACE.sub(" ", text).strip().rstrip(".").strip().lower()


def resolve_option(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter that ``text`` names exactly (a letter, ``C) text`` or the option text), else None.

    A letter followed by text must agree with that option's text, so ``"B) Stroke"`` is refused when
    option B is something else.
    """
    text = text.strip()
    if not text:
        return None
    match = _LETTER.match(text)
    if match:
        letter = match.group(1).upper()
        rest = (match.group(2) or "").strip()
        if letter in options and (not rest or normalise_option_text(rest) == normalise_option_text(options[letter])):
            return letter
        # "a" or "I" can start an option text; fall through to the text comparison.
    wanted = normalise_option_text(text)
    for letter, option in options.items():
        if normalise_option_text(option) == wanted:
            return letter
    return None


@dataclass(frozen=True)
class ParsedAction:
    kind: Literal["question", "answer", "invalid"]
    text: str = ""
    letter: str | None = None
    confidence: float | None = None
    error: str | None = None


def parse_action(action: Any, options: Mapping[str, str], max_chars: int) -> ParsedAction:
    """Classify an action according to the grammar in this module's docstring."""
    if isinstance(action, Mapping):
        return _parse_dict(action, options, max_chars)
    if not isinstance(action, str):
        return ParsedAction("invalid", error=f"an action must be a string or a dict, got {type(action).__name__}")
    if len(action) > max_chars:
        return ParsedAction("invalid", text=action[:max_chars], error=f"the action is longer than {max_chars} characters")
    text = action.strip()
    if not text:
        return ParsedAction("invalid", error="the action is empty")
    prefix = _ANSWER_PREFIX.match(text)
    if prefix:
        body = text[prefix.end() :]
        letter = resolve_option(body, options)
        if letter is None:
            return ParsedAction("invalid", text=text, error=f"the answer {body.strip()!r} names none of the options {', '.join(options)}")
        return ParsedAction("answer", text=text, letter=letter)
    letter = resolve_option(text, options)
    if letter is not None:
        return ParsedAction("answer", text=text, letter=letter)
    question = _QUESTION_PREFIX.sub("", text, count=1).strip()
    if not question:
        return ParsedAction("invalid", text=text, error="the question is empty")
    return _question(question)


def _question(text: str) -> ParsedAction:
    # "\x00\x01\x02" or "???" is not a question a patient could answer; it must not pass as one.
    if not any(ch.isalnum() for ch in text):
        return ParsedAction("invalid", text=text, error="the question has no letters or digits")
    return ParsedAction("question", text=text)


def _parse_dict(action: Mapping[str, Any], options: Mapping[str, str], max_chars: int) -> ParsedAction:
    keys = {"answer", "question"} & set(action)
    if len(keys) != 1:
        return ParsedAction("invalid", error="a dict action needs exactly one of 'answer' or 'question'")
    key = keys.pop()
    value = action[key]
    if not isinstance(value, str):
        return ParsedAction("invalid", error=f"'{key}' must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        return ParsedAction("invalid", text=value[:max_chars], error=f"the action is longer than {max_chars} characters")
    confidence = action.get("confidence")
    if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, (int, float))):
        return ParsedAction("invalid", error="'confidence' must be a number")
    if confidence is not None and not math.isfinite(confidence):
        return ParsedAction("invalid", text=value, error=f"'confidence' must be a finite number, got {confidence!r}")
    if key == "question":
        if not value.strip():
            return ParsedAction("invalid", error="the question is empty")
        return _question(value.strip())
    letter = resolve_option(value, options)
    if letter is None:
        return ParsedAction("invalid", text=value, error=f"the answer {value.strip()!r} names none of the options {', '.join(options)}")
    return ParsedAction("answer", text=value, letter=letter, confidence=None if confidence is None else float(confidence))
