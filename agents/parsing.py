"""Strict parsers for what a doctor model writes: an answer letter, a confidence, a question, a decision.

Why strict: a benchmark that reads "not" as option N, "eyes" as option E or "B or C" as B credits the model
with answers it never gave. Every parser here either finds an unambiguous value or returns ``None`` with a
short ``fallback`` reason that the agent records; none of them ever guesses or draws a random value. What
to do with a ``None`` (ask anyway, use the intermediate answer, ...) is the agent's documented policy, not
the parser's.

Accepted forms, in brief:

* answer letter — the whole text naming one option (``C``, ``(C)``, ``C) its text``, the exact option
  text); a marked answer anywhere (``ANSWER: C``, ``Final answer: (C)``, ``The answer is C``, ``I would
  choose option C``, or a marker followed by an option's text); a first line that starts with a delimited
  letter (``C. ...``); a single parenthesised letter ``(C)``. Refused: letters inside words
  (``not``, ``eyes``, ``C-section``), hedges naming two options (``B or C``), declines (``I don't know``),
  and markers that disagree.
* confidence — ``binary`` YES/NO (1/0), ``numeric`` a probability in [0, 1] or a percentage in [0, 100]
  (``80%`` is 0.8), ``likert`` an integer 1-5 (``4``, ``4/5``, ``CONFIDENCE: 4``) or a rating phrase
  (``very confident`` is 5, ``not confident`` is 1). Out-of-range numbers are refused, not clipped.
* question — one question with prefixes (``Question:``, ``ASK:``, list markers), quotes and preambles
  (``Sure, here is my question:``) removed; the first question when several are given.
* decision (the implicit strategy) — a line ``ASK: <question>`` or ``ANSWER: <letter>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mediq_env.actions import normalise_option_text, resolve_option

__all__ = [
    "MAX_QUESTION_CHARS",
    "AnswerParse",
    "ConfidenceKind",
    "ConfidenceParse",
    "DecisionParse",
    "QuestionParse",
    "parse_answer_letter",
    "parse_confidence",
    "parse_decision",
    "parse_question",
    "question_key",
]

ConfidenceKind = Literal["binary", "numeric", "likert"]

MAX_QUESTION_CHARS = 300
"""Longer "questions" are refused: they are almost always a model rambling, not one question to a patient."""

LIKERT_MIN = 1
LIKERT_MAX = 5


@dataclass(frozen=True)
class AnswerParse:
    """An option letter, or ``None`` and why (``fallback``)."""

    letter: str | None
    fallback: str | None = None

    @property
    def ok(self) -> bool:
        return self.letter is not None


@dataclass(frozen=True)
class ConfidenceParse:
    """A confidence on its own scale (binary 0/1, numeric [0, 1], likert 1-5), or ``None`` and why.

    ``unit`` maps the value to [0, 1] so that confidences from different scales can be recorded and plotted
    together; decisions compare ``value`` with a threshold on the scale itself.
    """

    value: float | None
    kind: ConfidenceKind
    fallback: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None

    @property
    def unit(self) -> float | None:
        if self.value is None:
            return None
        if self.kind == "likert":
            return (self.value - LIKERT_MIN) / (LIKERT_MAX - LIKERT_MIN)
        return self.value


@dataclass(frozen=True)
class QuestionParse:
    """One clean question, or ``None`` and why."""

    question: str | None
    fallback: str | None = None

    @property
    def ok(self) -> bool:
        return self.question is not None


@dataclass(frozen=True)
class DecisionParse:
    """The implicit strategy's choice.

    ``kind`` is ``"ask"``, ``"answer"`` or ``None`` (no decision found). A decision can be recognised while
    its payload is not: ``kind == "ask"`` with ``question is None``, or ``kind == "answer"`` with
    ``letter is None``; ``fallback`` then says what failed.
    """

    kind: Literal["ask", "answer"] | None
    question: str | None = None
    letter: str | None = None
    fallback: str | None = None


# ---------------------------------------------------------------------------------------------------
# Answer letters

# Capital letters that are also English words: "A pulmonary embolism", "I think". After a marker these count
# as a letter only when delimited ("A)", "A.", end of text) or followed by that option's own text.
_WORD_LETTERS = frozenset({"A", "I"})

# Marker tiers: a higher tier (lower number) wins over a lower one, so "Option B is wrong; the answer is C"
# reads as C. Within the winning tier every marker must name the same option.
_MARKERS: tuple[tuple[int, re.Pattern[str]], ...] = (
    (0, re.compile(r"\b(?:final\s+|correct\s+|best\s+)?answer\s*(?:\*\*)?\s*[:=]\s*", re.I)),
    (1, re.compile(r"\b(?:answer|option|choice)\s+(?:is|would\s+be|will\s+be|should\s+be|must\s+be)\s*:?\s*", re.I)),
    (
        2,
        re.compile(
            r"\b(?:i\s+(?:would\s+|will\s+|'d\s+)?(?:choose|pick|select|go\s+with)\s+(?:option\s+|choice\s+)?"
            r"|(?:option|choice)\s+(?=\(?[A-Ja-j]\b))",
            re.I,
        ),
    ),
)
_LEAD_NOISE = re.compile(r"^[\s*_`\"'“”‘’>#]+")
_HEDGE = re.compile(
    r"(?<![\w'])\(?([A-J])\)?\s*(?:,|/|(?i:\bor\b|\band/or\b|\band\b|\bvs\.?|\bversus\b))\s*\(?([A-J])\)?(?![\w'])"
)
_PAREN_LETTER = re.compile(r"\(([A-J])\)")
_DECLINE = re.compile(
    r"\b(?:i\s+(?:do\s*n[o'’]?t|dont)\s+know|not\s+sure|unsure|uncertain|can(?:'|’|no)?t\s+(?:tell|say|determine|decide|answer)"
    r"|cannot\s+(?:tell|say|determine|decide|answer)|unable\s+to\s+(?:tell|say|determine|decide|answer)"
    r"|no\s+idea|insufficient\s+information|not\s+enough\s+information)\b",
    re.I,
)
_BOUNDARY = frozenset(" ,.;:!?)")


def _option_prefix(body: str, options: Mapping[str, str]) -> str | None:
    """The option whose full text starts ``body`` (at a word boundary); the longest wins, ties refuse."""
    norm = normalise_option_text(body)
    best: list[tuple[int, str]] = []
    for letter, text in options.items():
        opt = normalise_option_text(text)
        if opt and (norm == opt or (norm.startswith(opt) and norm[len(opt)] in _BOUNDARY)):
            best.append((len(opt), letter))
    if not best:
        return None
    best.sort(reverse=True)
    if len(best) > 1 and best[0][0] == best[1][0]:
        return None
    return best[0][1]


def _letter_at(body: str, options: Mapping[str, str], *, require_delimiter: bool) -> tuple[str | None, str | None]:
    """A letter at the start of ``body``: ``(letter, None)``, ``(None, reason)`` or ``(None, None)`` if none.

    ``require_delimiter`` (used without a marker) accepts only ``C)``, ``(C)``, ``C.``, ``C:`` or a lone
    ``C``, never ``C because ...``.
    """
    body = _LEAD_NOISE.sub("", body)
    m = re.match(r"(\()?([A-Za-z])(\))?", body)
    if not m:
        return None, None
    raw = m.group(2)
    letter = raw.upper()
    if letter not in options:
        return None, None
    after = body[m.end() :]
    rest = after.lstrip(" \t*_`\"'”’")
    parens = bool(m.group(1) or m.group(3))
    if m.group(1) and not m.group(3):
        return None, None  # "(C" without its closing parenthesis
    if not parens:
        if after[:1].isalnum() or after[:1] in {"'", "’"} or re.match(r"-\w", after):
            return None, None  # a letter inside a word: "not", "eyes", "C-section"
        delim = re.match(r"\s*(?:[.:,;!?]|-\s|–|—)", after)
        lone = not after.strip(" \t.,:;!?*_`\"'”’")
        if delim and not lone:
            rest = after[delim.end() :].strip()
        # Lower-case letters ("a. ...") and, without a delimiter, "A"/"I" or any letter where a delimiter is
        # required are too often ordinary words: they count only when the option's own text follows.
        needs_text = not lone and (raw.islower() or (not delim and (require_delimiter or letter in _WORD_LETTERS)))
        if needs_text and _option_prefix(rest, options) != letter:
            return None, None
    else:
        rest = after.lstrip(" .:-")
    # "C) <text>" where the text is another option's text: the model contradicts itself.
    named = _option_prefix(rest, options) if rest.strip() else None
    if named is not None and named != letter:
        return None, f"letter {letter} and text {rest.strip()[:40]!r} name different options"
    return letter, None


def parse_answer_letter(text: str, options: Mapping[str, str]) -> AnswerParse:
    """The one option ``text`` names, or ``None`` and why. See the module docstring for accepted forms."""
    if not isinstance(text, str) or not text.strip():
        return AnswerParse(None, "empty answer")
    if not options:
        return AnswerParse(None, "no options to choose from")
    stripped = text.strip()
    whole = resolve_option(_LEAD_NOISE.sub("", stripped).rstrip(" .*_`\"'”’"), options)
    if whole is not None:
        return AnswerParse(whole)

    # Marked answers: "ANSWER: C", "The answer is (C)", "I would choose option C". Each marker gives a
    # letter or a refusal (a hedge, a self-contradiction); the strongest tier with any outcome decides.
    found: dict[int, list[AnswerParse]] = {}
    for tier, pattern in _MARKERS:
        for m in pattern.finditer(stripped):
            outcome = _marked(stripped[m.end() :].split("\n", 1)[0], options)
            if outcome is not None:
                found.setdefault(tier, []).append(outcome)
    if found:
        outcomes = found[min(found)]
        refused = next((o for o in outcomes if o.letter is None), None)
        if refused is not None:
            return refused
        letters = list(dict.fromkeys(o.letter for o in outcomes if o.letter is not None))
        if len(letters) > 1:
            return AnswerParse(None, f"conflicting answers: {', '.join(letters)}")
        return AnswerParse(letters[0])

    hedge = _hedge(stripped, options)
    if hedge:
        return AnswerParse(None, hedge)
    if _DECLINE.search(stripped):
        return AnswerParse(None, "declined to answer")

    # No marker: the first line may be the answer ("C) text", "C. because ...").
    first = next((line for line in stripped.splitlines() if line.strip()), "")
    letter = resolve_option(_LEAD_NOISE.sub("", first).rstrip(" .*_`\"'”’"), options)
    if letter is None:
        letter, reason = _letter_at(first, options, require_delimiter=True)
        if reason:
            return AnswerParse(None, reason)
    parens = [p for p in _PAREN_LETTER.findall(stripped) if p in options]
    if letter is not None:
        others = sorted(set(parens) - {letter})
        if others:
            return AnswerParse(None, f"several options named: {', '.join([letter, *others])}")
        return AnswerParse(letter)

    if len(set(parens)) == 1:
        return AnswerParse(parens[0])
    if len(set(parens)) > 1:
        return AnswerParse(None, f"several options named: {', '.join(dict.fromkeys(parens))}")
    return AnswerParse(None, "no option named")


def _marked(body: str, options: Mapping[str, str]) -> AnswerParse | None:
    """What the text after an answer marker says: a letter, a refusal, or ``None`` when it names nothing."""
    hedge = _hedge(body, options)
    if hedge:
        return AnswerParse(None, hedge)
    letter, reason = _letter_at(body, options, require_delimiter=False)
    if reason:
        return AnswerParse(None, reason)
    if letter is None:
        letter = _option_prefix(_LEAD_NOISE.sub("", body), options)
    return None if letter is None else AnswerParse(letter)


def _hedge(text: str, options: Mapping[str, str]) -> str | None:
    for m in _HEDGE.finditer(text):
        a, b = m.group(1), m.group(2)
        if a != b and a in options and b in options:
            return f"hedge between options {a} and {b}"
    return None


# ---------------------------------------------------------------------------------------------------
# Confidence

_NUMBER = r"(?<![\w.])(-\s?)?([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?![0-9]*\.[0-9])"
_NUM = re.compile(_NUMBER + r"(\s*(?:%|percent\b))?", re.I)
_CONF_MARKER = re.compile(
    r"\b(?:confidence|confident|probability|certainty|likelihood|rating|score|level)\b[^0-9\n\-.]{0,40}?(?=-?\.?[0-9])",
    re.I,
)
_BIN_MARKER = re.compile(
    r"\b(?:confident|confidence|decision|verdict|ready|answer)\s*(?:\*\*)?\s*[:=]\s*(?:\*\*)?\s*(yes|no)\b", re.I
)
_BIN_FIRST = re.compile(r"^[\s*_`\"'“”>#]*(yes|no)\b", re.I)
_BIN_BOTH = re.compile(r"^\W*(?:yes|no)\W*(?:/|or|and|\W)\s*(?:yes|no)\b", re.I)
_HAS_LETTER = re.compile(r"[^\W\d_]")
_LABEL_OR_SCALE = re.compile(r"\s*(?:[-–—:=(]|/\s*[0-9]|out\s+of\b)", re.I)
_OUT_OF = re.compile(r"\s*(?:/|out\s+of)\s*([0-9]+)\b", re.I)

# Rating phrases, longest first so "not very confident" is not read as "very confident".
_LIKERT_PHRASES: tuple[tuple[str, int], ...] = (
    (r"not\s+at\s+all\s+(?:confident|sure)", 1),
    (r"not\s+(?:confident|sure)\s+at\s+all", 1),
    (r"neither\s+(?:sure|confident)\s+nor\s+(?:unsure|unconfident)", 3),
    (r"very\s+(?:unsure|unconfident|uncertain)", 1),
    (r"completely\s+(?:unsure|uncertain)", 1),
    (r"no\s+confidence", 1),
    (r"not\s+very\s+(?:confident|sure)", 2),
    (r"(?:somewhat|slightly|a\s+little|rather)\s+(?:unsure|unconfident|uncertain)", 2),
    (r"(?:slightly|a\s+little)\s+confident", 2),
    (r"low\s+confidence", 2),
    (r"not\s+(?:confident|sure|certain)", 1),
    (r"(?:somewhat|moderately)\s+confident", 3),
    (r"moderate\s+confidence|neutral", 3),
    (r"(?:very|extremely|completely|highly|totally|absolutely|fully)\s+(?:confident|sure|certain)", 5),
    (r"very\s+high\s+confidence", 5),
    (r"(?:fairly|quite|reasonably|pretty)\s+(?:confident|sure)", 4),
    (r"high\s+confidence", 4),
    (r"(?:unsure|unconfident|uncertain)", 2),
    (r"certain", 5),
    (r"confident", 4),
)
_LIKERT_WORDS = re.compile("|".join(rf"\b(?P<p{i}>{p})\b" for i, (p, _) in enumerate(_LIKERT_PHRASES)), re.I)


def parse_confidence(text: str, kind: ConfidenceKind) -> ConfidenceParse:
    """A confidence of the given ``kind`` from ``text``, or ``None`` and why (never clipped, never guessed).

    A marked value (``CONFIDENCE: 0.7``, ``CONFIDENT: YES``) wins over unmarked text, and the last marker
    wins over earlier ones, so a rationale written before the decision does not confuse the parser.
    """
    if kind not in ("binary", "numeric", "likert"):
        raise ValueError(f"unknown confidence kind {kind!r}")
    if not isinstance(text, str) or not text.strip():
        return ConfidenceParse(None, kind, "empty confidence")
    if kind == "binary":
        return _parse_binary(text)
    if kind == "numeric":
        return _parse_numeric(text)
    return _parse_likert(text)


def _parse_binary(text: str) -> ConfidenceParse:
    marks = _BIN_MARKER.findall(text)
    word = marks[-1] if marks else None
    if word is None:
        if _BIN_BOTH.match(text):
            return ConfidenceParse(None, "binary", "both YES and NO")
        first = _BIN_FIRST.match(text)
        word = first.group(1) if first else None
    if word is None:
        return ConfidenceParse(None, "binary", "no YES/NO decision")
    return ConfidenceParse(1.0 if word.lower() == "yes" else 0.0, "binary")


def _number(m: re.Match[str]) -> tuple[float, bool]:
    value = float(m.group(2))
    if m.group(1):
        value = -value
    return value, bool(m.group(3))


def _parse_numeric(text: str) -> ConfidenceParse:
    marks = list(_CONF_MARKER.finditer(text))
    candidates: list[tuple[float, bool]] = []
    if marks:
        m = _NUM.match(text, marks[-1].end())
        if m:
            candidates = [_number(m)]
    if not candidates:
        candidates = [_number(m) for m in _NUM.finditer(text)]
        if not candidates:
            return ConfidenceParse(None, "numeric", "no number")
        # Without a marker the reply must be just the number: "The answer is: 1" is not a probability.
        if _HAS_LETTER.search(_NUM.sub(" ", text)):
            return ConfidenceParse(None, "numeric", "a number among other words without a CONFIDENCE: marker")
    values = []
    for value, percent in candidates:
        if percent:
            if not 0 <= value <= 100:
                return ConfidenceParse(None, "numeric", f"percentage {value:g}% out of range")
            value /= 100
        elif not 0 <= value <= 1:
            return ConfidenceParse(None, "numeric", f"{value:g} is not a probability in [0, 1]")
        values.append(value)
    if max(values) - min(values) > 1e-9:
        return ConfidenceParse(None, "numeric", "several different numbers")
    return ConfidenceParse(values[0], "numeric")


def _likert_value(m: re.Match[str], text: str) -> ConfidenceParse:
    value, percent = _number(m)
    if percent:
        return ConfidenceParse(None, "likert", "a percentage is not a 1-5 rating")
    out_of = _OUT_OF.match(text, m.end())
    if out_of and int(out_of.group(1)) != LIKERT_MAX:
        return ConfidenceParse(None, "likert", f"a rating out of {out_of.group(1)} is not on the 1-5 scale")
    if value != int(value):
        return ConfidenceParse(None, "likert", f"{value:g} is not a whole number on the 1-5 scale")
    if not LIKERT_MIN <= value <= LIKERT_MAX:
        return ConfidenceParse(None, "likert", f"{value:g} is outside the 1-5 scale")
    return ConfidenceParse(float(value), "likert")


def _parse_likert(text: str) -> ConfidenceParse:
    marks = list(_CONF_MARKER.finditer(text))
    if marks:
        m = _NUM.match(text, marks[-1].end())
        if m:
            return _likert_value(m, text)
    stripped = text.strip()
    lead = _NUM.match(stripped)
    # Without a marker a leading number counts only as the whole reply ("4", "4/5") or before a label
    # ("4 - fairly confident"), never as the start of a sentence ("3 findings point to ...").
    if lead and (not _HAS_LETTER.search(stripped[lead.end() :]) or _LABEL_OR_SCALE.match(stripped, lead.end())):
        return _likert_value(lead, stripped)
    out_of = re.search(r"(?<![\w.])([0-9]+)\s*(?:/|out\s+of)\s*5\b", text, re.I)
    if out_of:
        m = _NUM.search(text, out_of.start())
        if m:
            return _likert_value(m, text)
    values = set()
    for m in _LIKERT_WORDS.finditer(text):
        index = int(next(k for k, v in m.groupdict().items() if v is not None)[1:])
        values.add(_LIKERT_PHRASES[index][1])
    if len(values) == 1:
        return ConfidenceParse(float(values.pop()), "likert")
    if len(values) > 1:
        return ConfidenceParse(None, "likert", "several different ratings")
    return ConfidenceParse(None, "likert", "no 1-5 rating")


# ---------------------------------------------------------------------------------------------------
# Questions

_Q_PREFIX = re.compile(
    r"^\s*(?:[-*•>#]+\s*|\d+[.)]\s+)?(?:\*\*|__)?\s*"
    r"(?:(?:my\s+|next\s+|follow[- ]?up\s+)?question(?:\s*\d+)?\s*(?:\*\*|__)?\s*[:\-–]"
    r"|(?:q(?:\s*\d+)?|ask|doctor|dr\.?)\s*(?:\*\*|__)?\s*:)\s*(?:\*\*|__)?\s*",
    re.I,
)
_LIST_MARK = re.compile(r"^\s*(?:[-*•>#]+|\d+[.)])\s+")
_QUOTES = "\"'“”‘’`*_ \t"
_ABBREVIATIONS = frozenset({"e.g", "i.e", "dr", "mr", "mrs", "ms", "vs", "etc", "approx", "no", "st", "mg", "ml"})
_SPLIT = re.compile(r"[ \t]*\n\s*|(?<=[.!])\s+|:\s+")
_REQUEST_START = re.compile(
    r"^(?:please|tell|describe|list|explain|could|can|would|will|do|does|did|have|has|had|are|is|was|were|"
    r"when|where|what|which|who|whom|whose|why|how|any)\b",
    re.I,
)
_STARTS_AS_ANSWER = re.compile(r"^\W*(?:final\s+)?answer\s*[:=]", re.I)


def _clean(text: str) -> str:
    text = text.strip().strip(_QUOTES).strip()
    while True:
        stripped = _Q_PREFIX.sub("", text, count=1)
        stripped = _LIST_MARK.sub("", stripped, count=1).strip().strip(_QUOTES).strip()
        if stripped == text:
            return text
        text = stripped


def _last_sentence(text: str) -> str:
    """The last sentence of ``text`` (the question itself), skipping splits after abbreviations."""
    start = 0
    for m in _SPLIT.finditer(text):
        before = text[start : m.start()].rstrip(".!").split()
        if text[m.start() - 1 : m.start()] == "." and before and before[-1].lower().rstrip(".") in _ABBREVIATIONS:
            continue
        # A line break splits only between sentences, not inside a question wrapped over two lines.
        if "\n" in m.group() and not (text[m.start() - 1 : m.start()] in {".", "!", ":", "?"} or text[m.end() : m.end() + 1].isupper()
                                      or text[m.end() : m.end() + 1] in {'"', "“", "*", "-", "#"}):
            continue
        if m.end() < len(text):
            start = m.end()
    return text[start:]


def parse_question(text: str, max_chars: int = MAX_QUESTION_CHARS) -> QuestionParse:
    """One clean question from ``text``, or ``None`` and why (empty, an answer, none found, too long)."""
    if not isinstance(text, str) or not text.strip():
        return QuestionParse(None, "empty question")
    text = text.replace("```", "\n").strip()
    if _STARTS_AS_ANSWER.match(text):
        return QuestionParse(None, "an answer, not a question")
    text = _clean(text)
    if "?" in text:
        head = text[: text.index("?") + 1]
        question = _clean(_last_sentence(head))
    else:
        first = next((line for line in text.splitlines() if line.strip()), "")
        first = _clean(re.split(r"(?<=[.!])\s+", first, maxsplit=1)[0])
        if not _REQUEST_START.match(first):
            return QuestionParse(None, "no question found")
        question = first
    question = re.sub(r"\s+", " ", question).strip()
    if not re.search(r"[^\W\d_]", question):
        return QuestionParse(None, "no question found")
    if len(question) > max_chars:
        return QuestionParse(None, f"question longer than {max_chars} characters")
    return QuestionParse(question)


# ---------------------------------------------------------------------------------------------------
# Implicit decision

_DECISION_LINE = re.compile(
    r"^[\s*_#>\-]*(?:\*\*|__)?\s*(ask|question|(?:final\s+)?answer)\s*(?:\*\*|__)?\s*[:=]", re.I | re.M
)
_DECISION_ANY = re.compile(r"\b(ask|question|(?:final\s+)?answer)\s*(?:\*\*|__)?\s*[:=]", re.I)


def parse_decision(text: str, options: Mapping[str, str] | None = None) -> DecisionParse:
    """Read ``ASK: <question>`` or ``ANSWER: <letter>``; markers at a line start win over inline ones.

    With ``options`` the answer's letter is resolved with :func:`parse_answer_letter`; without them only
    the kind is read. Both an ASK and an ANSWER marker is no decision (``kind=None``).
    """
    if not isinstance(text, str) or not text.strip():
        return DecisionParse(None, fallback="empty decision")
    marks = list(_DECISION_LINE.finditer(text)) or list(_DECISION_ANY.finditer(text))
    if not marks:
        return DecisionParse(None, fallback="no ASK: or ANSWER: line")
    kinds = {"answer" if m.group(1).lower().endswith("answer") else "ask" for m in marks}
    if len(kinds) > 1:
        return DecisionParse(None, fallback="both ASK and ANSWER given")
    if "answer" in kinds:
        if options is None:
            return DecisionParse("answer")
        # Every ANSWER line must name the same option, so all of them go to the answer parser together.
        bodies = [text[m.end() :].split("\n", 1)[0].strip() for m in marks]
        parsed = parse_answer_letter("\n".join(f"ANSWER: {b}" for b in bodies), options)
        return DecisionParse("answer", letter=parsed.letter, fallback=parsed.fallback)
    q = parse_question(text[marks[0].end() :])
    return DecisionParse("ask", question=q.question, fallback=q.fallback)


def question_key(question: str) -> str:
    """A question's words, lower-cased, without punctuation: two questions with the same key restate each other
    word for word (what the agent's repeat redraws and the held-out repeat count compare)."""
    return " ".join(re.findall(r"[a-z0-9]+", question.lower()))
