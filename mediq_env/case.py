"""Clinical cases: the ``Case`` model and a loader for every public MediQ file variant.

A case holds what the doctor sees first (``initial_info``), the hidden atomic ``facts`` only the patient
knows, and a multiple-choice clinical ``question``. Public MediQ releases disagree on field names and
shapes; :func:`load_cases` normalises them all and reports every problem as one line
``file:line: field: problem`` (a :class:`~mediq_env.errors.CaseFormatError`).

Hostile or broken input never becomes a traceback or a silently accepted case: files that are not regular
files (directories, FIFOs, devices, symlink loops) are refused before they are opened; JSON nested too
deeply or with integers too long to convert is one error line; text must be valid Unicode (no lone
surrogates) and within the size limits below. Keys that no MediQ release uses are reported as warnings
(``LoadReport.warnings``, printed by ``mediq validate``) rather than errors: a typo such as ``key_fact``
must not pass unseen, but one extra metadata key should not make a whole file unloadable. The keys MediQ's
own files carry beside the case (``usage``, ``original_post``, ``explanation``, ``facts_old``, ``patient``,
``context_len``) are accepted silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from mediq_env.errors import CaseFormatError

__all__ = [
    "Case",
    "Demographics",
    "LoadReport",
    "content_words",
    "derive_initial_info",
    "derive_opening",
    "initial_info_overlap",
    "load_cases",
    "read_cases",
    "stated_facts",
    "text_problem",
]

LETTERS = string.ascii_uppercase[:10]

# Size limits (documented in the Case docstring). The public data is far below them (longest question
# 424 characters, longest fact 550, most facts 94, longest context 8.8k, largest file 3.4 MB); they exist
# so that a broken or hostile file fails with one line instead of exhausting memory or the patient's index.
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_ID_CHARS = 200
MAX_TEXT_CHARS = 5_000  # one fact, option, question, initial_info, specialty or source
MAX_CONTEXT_CHARS = 100_000  # all context strings of a case together
MAX_FACTS = 500
InitialInfoMode = Literal["given", "derived", "auto"]

# A fact or option numbered like "1. The patient ..." or bulleted like "- The patient ..." in some releases.
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•])\s+")
_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _strip_marker(text: str) -> str:
    return _clean(_LIST_MARKER.sub("", text, count=1))


def text_problem(text: str, limit: int) -> str | None:
    """Why ``text`` cannot be case text (a lone surrogate, or longer than ``limit``), or None."""
    if len(text) > limit:
        return f"is {len(text):,} characters long, more than the limit of {limit:,}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # json.loads turns "\\ud800" into a lone surrogate, which no encoder (hashing, saving) accepts.
        return f"contains a lone surrogate {text[exc.start]!r} at character {exc.start}: not valid Unicode text"
    return None


def _texts(case: Case) -> Iterator[tuple[str, str, int]]:
    """Every text of a case with its public field name and size limit."""
    yield "id", case.id, MAX_ID_CHARS
    yield "initial_info", case.initial_info, MAX_TEXT_CHARS
    yield "question", case.question, MAX_TEXT_CHARS
    for i, fact in enumerate(case.facts):
        yield f"atomic_facts[{i}]", fact, MAX_TEXT_CHARS
    for letter, option in case.options.items():
        yield f"options.{letter}", option, MAX_TEXT_CHARS
    for i, ctx in enumerate(case.context):
        yield f"context[{i}]", ctx, MAX_CONTEXT_CHARS
    yield "context", "".join(case.context), MAX_CONTEXT_CHARS
    for name in ("specialty", "source"):
        value = getattr(case, name)
        if value is not None:
            yield name, value, MAX_TEXT_CHARS
    if case.demographics is not None:
        for name in ("age", "sex"):
            value = getattr(case.demographics, name)
            if value is not None:
                yield f"demographics.{name}", value, MAX_ID_CHARS


class Demographics(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    age: str | None = None
    sex: str | None = None

    @field_validator("age", "sex")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave it out instead)")
        return value


class Case(BaseModel):
    """One interactive clinical case.

    ``answer`` is the letter of the correct option; ``options`` maps consecutive letters from ``A`` to
    their text. ``key_facts`` (optional) lists indices of the facts the answer depends on; built-in cases
    carry it, public data does not. ``known_facts`` lists indices of the facts the initial information
    already states (set by the loader: the facts a derived opening was built from, or the facts a given
    opening repeats); the environment treats them as known from the start.

    Limits (module constants): ids up to ``MAX_ID_CHARS`` characters; each fact, option, question,
    initial_info, specialty and source up to ``MAX_TEXT_CHARS``; context up to ``MAX_CONTEXT_CHARS`` in
    all; at most ``MAX_FACTS`` facts; files up to ``MAX_FILE_BYTES``. Every text must be valid Unicode
    (a lone surrogate such as ``"\\ud800"`` is refused) and specialty/source, when given, non-empty.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    initial_info: str
    facts: tuple[str, ...]
    question: str
    options: dict[str, str]
    answer: str
    context: tuple[str, ...] = ()
    demographics: Demographics | None = None
    specialty: str | None = None
    source: str | None = None
    key_facts: tuple[int, ...] = ()
    known_facts: tuple[int, ...] = ()

    @field_validator("id", "initial_info", "question")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        value = _clean(value)
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("specialty", "source")
    @classmethod
    def _optional_non_empty(cls, value: str | None) -> str | None:
        if value is not None:
            value = _clean(value)
            if not value:
                raise ValueError("must not be empty (leave it out instead)")
        return value

    @field_validator("facts")
    @classmethod
    def _facts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(_strip_marker(f) for f in value)
        if not cleaned:
            raise ValueError("needs at least one fact")
        if len(cleaned) > MAX_FACTS:
            raise ValueError(f"{len(cleaned)} facts, more than the limit of {MAX_FACTS}")
        for i, fact in enumerate(cleaned):
            if not fact:
                raise ValueError(f"fact {i} is empty")
        return cleaned

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, str]) -> dict[str, str]:
        if not 2 <= len(value) <= 10:
            raise ValueError(f"needs 2 to 10 options, got {len(value)}")
        letters = [k.strip().upper() for k in value]
        if letters != list(LETTERS[: len(value)]):
            raise ValueError(f"keys must be consecutive letters from A, got {sorted(value)}")
        cleaned = {k: _clean(str(v)) for k, v in zip(letters, value.values(), strict=True)}
        for letter, text in cleaned.items():
            if not text:
                raise ValueError(f"option {letter} is empty")
        if len({t.lower() for t in cleaned.values()}) != len(cleaned):
            raise ValueError("two options have the same text")
        return cleaned

    @model_validator(mode="after")
    def _answer_in_options(self) -> Case:
        if self.answer not in self.options:
            raise ValueError(f"answer letter {self.answer!r} is not among the options {sorted(self.options)}")
        for name in ("key_facts", "known_facts"):
            for i in getattr(self, name):
                if not 0 <= i < len(self.facts):
                    raise ValueError(f"{name} index {i} is out of range (case has {len(self.facts)} facts)")
        for fld, text, limit in _texts(self):
            problem = text_problem(text, limit)
            if problem:
                raise ValueError(f"{fld} {problem}")
        return self

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]

    def with_options_permuted(self, order: Sequence[str]) -> Case:
        """A copy whose option texts are re-lettered: ``order[i]`` is the old letter now shown as letter i."""
        if sorted(order) != sorted(self.options):
            raise ValueError(f"order {list(order)} is not a permutation of {sorted(self.options)}")
        new_options = {LETTERS[i]: self.options[old] for i, old in enumerate(order)}
        new_answer = LETTERS[list(order).index(self.answer)]
        return self.model_copy(update={"options": new_options, "answer": new_answer})

    def fingerprint(self) -> str:
        """A stable hash of the case content (used to key caches and to check resumed runs)."""
        # An empty known_facts is left out so that cases without known facts keep their earlier hashes.
        exclude = None if self.known_facts else {"known_facts"}
        blob = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Initial information: the public MediQ-AskDocs release has initial_info strings that belong to other
# cases, so we can measure agreement with the case and derive a replacement from the case itself.

_STOP = frozenset(
    ["a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with", "from", "about", "as", "is", "are", "was", "were", "be", "been", "being", "am", "i", "i'm", "i’ve", "i've", "me", "my", "mine", "you", "your", "he", "him", "his", "she", "her", "they", "them", "their", "it", "its", "this", "that", "these", "those", "have", "has", "had", "having", "do", "does", "did", "not", "no", "yes", "so", "very", "really", "just", "also", "than", "then", "there", "here", "what", "which", "who", "whom", "when", "where", "why", "how", "can", "could", "would", "should", "will", "may", "might", "must", "been", "into", "out", "up", "down", "over", "under", "again", "further", "once", "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "only", "own", "same", "too", "s", "t", "don", "now", "patient", "patients", "reports", "report", "reported", "states", "stated", "feel", "feels", "felt", "feeling", "like", "get", "got", "getting", "past", "last", "days", "day", "week", "weeks", "month", "months", "year", "years", "time", "recently", "ago", "since", "persistent", "ongoing", "constant", "worried", "worry", "worse", "worsening", "getting", "better", "improve", "improving", "serious", "something", "causing", "cause", "concerned", "concern", "experiencing", "experience", "dealing", "seems", "seem", "lately", "couple", "two", "three", "few", "several", "occasional", "occasionally", "daily", "away", "counter", "over-the-counter", "won't", "isn't", "aren't", "it's", "i'm", "i’m", "it’s", "that’s", "that's", "what's", "symptom", "symptoms", "issue", "issues"]
)
_WORD = re.compile(r"[a-z][a-z'’]+")


def content_words(text: str) -> set[str]:
    """Lower-cased content words with a crude suffix strip; enough to compare topics, not to retrieve."""
    words = set()
    for w in _WORD.findall(text.lower()):
        if w in _STOP or len(w) < 3:
            continue
        for suffix in ("ing", "ness", "es", "ed", "s"):
            if w.endswith(suffix) and len(w) - len(suffix) >= 4:
                w = w[: -len(suffix)]
                break
        words.add(w)
    return words


_PLACEHOLDER = re.compile(r"\[[^\]]{3,}\]|^i[’']m sorry\b|\bcould you (?:please )?provide\b", re.I)


def initial_info_overlap(case: Case) -> float:
    """Share of the initial information's content words that appear anywhere else in the case (0..1).

    Complaint filler ("persistent", "worried", "getting worse") is ignored, and a template placeholder such
    as "[describe symptom]" scores 0.
    """
    if _PLACEHOLDER.search(case.initial_info):
        return 0.0
    info = content_words(case.initial_info)
    if not info:
        return 1.0
    rest = content_words(" ".join((*case.facts, *case.context, case.question)))
    return len(info & rest) / len(info)


_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
    )
}
_NUM = r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")"
# The patient's own age, stated in the present tense: "The patient is 23 years old", "is a 6-month-old
# girl", "aged 40". "Diagnosed when they were 10 years old" or "since age 12" is not the patient's age.
_AGE_FACT = re.compile(
    r"\b(?:is|am|aged?)\s+(?:an?\s+|about\s+|approximately\s+|around\s+)?" + _NUM
    + r"(?:[- ](years?|yrs?|months?)[- ]old\b|\s*(?:years?|yrs?)\b|(?=[.,]?\s*$))",
    re.I,
)
_SEX_FACT = re.compile(r"\b(female|male|woman|man|girl|boy)\b", re.I)
_SEX_NORMAL = {"female": "female", "woman": "female", "girl": "female", "male": "male", "man": "male", "boy": "male"}
# Facts about someone else: their age or sex is not the patient's, and they are not the complaint.
_OTHER_PERSON = re.compile(
    r"\b(?:son|daughter|mother|mom|mum|father|dad|child|children|kid|baby|infant|toddler|husband|wife|"
    r"partner|boyfriend|girlfriend|brother|sister|sibling|grand(?:mother|father|ma|pa|child)|aunt|uncle|"
    r"cousin|friend|roommate|parent|parents|fianc[ée]e?|spouse|caregiver|doctor|physician|neurosurgeon|"
    r"surgeon|nurse|people|someone|others?)\b",
    re.I,
)
_PATIENT_SUBJECT = re.compile(r"^\s*(?:the\s+)?patient\s+(?:is|was|identifies)\b", re.I)
# Body measurements and origin: facts, but never a presenting complaint.
_NOT_A_COMPLAINT = re.compile(
    r"\b(?:height|weight|bmi)\b[^.]*?\b(?:is|was|of|around|about|approximately)\b[^.]*?\d"
    r"|\bweighs?\b[^.]*?\d|\d[^.]*\btall\b|\btall\b"
    r"|\b(?:caucasian|white|black|asian|hispanic|latin[oax]|african|european|american|indian|arab|ethnicity|"
    r"race|racial|nationality|citizen|located|lives|living|resides?)\b",
    re.I,
)
# About the conversation rather than the body: what the doctor asked, forum disclaimers, prior posts.
_META = re.compile(
    r"\b(?:doctor|physician)\s+asked\b|\bposted\b|\breddit\b|\bthrowaway\b|\bmobile\b|\bformatting\b|\bpost\b"
    r"|\bresponses?\b|\bwriting\b|\bnot a doctor\b|\bthanks?\b|\bedit\b|\btl;?dr\b",
    re.I,
)
# The patient's beliefs, questions and wishes: used only when no fact describes a symptom or finding.
_BELIEF = re.compile(
    r"\b(?:believes?|wonders?|asks?|asking|questions?|wants?|hopes?|hoping|would like|seeking|seeks|"
    r"concerned|worried|worries|fears?|afraid|thinks?|considers?|researching|curious|mentions?|references?|"
    r"discussing|attributes?|suspects?|recognizes?|read|heard|suggested|is unsure|uncertain|notes? that)\b",
    re.I,
)
_HEALTHY = re.compile(
    r"\b(?:healthy|no (?:known|notable|significant|other|prior|major)\b|no (?:medical|health)\b|"
    r"feel(?:s|ing)? (?:good|fine|well)\b|otherwise)",
    re.I,
)
_SYMPTOM = re.compile(
    r"\b(?:pain|painful|ache|aches|aching|hurts?|sore|itch\w*|rash|swell\w*|swollen|lump|bump|numb\w*|"
    r"tingl\w*|dizz\w*|nause\w*|vomit\w*|fever\w*|cough\w*|bleed\w*|blood\w*|discharge|fatigue\w*|tired\w*|"
    r"weak\w*|headaches?|migraines?|cramp\w*|diarrh\w*|constipat\w*|burn\w*|breath\w*|wheez\w*|palpitat\w*|"
    r"faint\w*|seizures?|confus\w*|insomnia|sleep\w*|anxi\w*|depress\w*|worthless|panic|lesions?|spots?|"
    r"moles?|cysts?|infect\w*|twitch\w*|stiff\w*|injur\w*|sprain\w*|fractur\w*|broke|bruis\w*|urinat\w*|pee|"
    r"poop|stool|bowel|period|menstru\w*|vision|blurr\w*|hearing|ringing|drunk|lost|loss|gained|"
    r"experienc\w*|complains?|suffer\w*|diagnosed|symptoms?|problems?|issues?|condition|disease|disorder|"
    r"cannot|can't|unable|difficulty|trouble|shak\w*|tremor\w*|chills?|sweat\w*|cold|flu|sick|ill|"
    r"abnormal|irregular|inflam\w*|ulcer\w*|pus|wound|scar\w*|nerve|damage|hair|skin|eye|eyes|chest|"
    r"stomach|abdominal|abdomen|throat|back|knee|neck|head|penis|testic\w*|vagina\w*|vulva|breast|nipple)\b",
    re.I,
)


def _option_named(fact: str, options: Mapping[str, str]) -> str | None:
    """The letter of an option whose whole text the fact states (a leak of the answer), else None.

    Options are compared as whole words, ignoring case, punctuation, surrounding quotes and a plural "s":
    "The patient believes it was sleep paralysis" names option "Sleep paralysis".
    """
    words = " ".join(re.findall(r"[a-z0-9]+", fact.lower()))
    for letter, option in options.items():
        opt = " ".join(re.findall(r"[a-z0-9]+", option.lower()))
        # Very short options ("a", "No") occur inside any sentence; only real option texts can leak.
        if len(opt) >= 4 and re.search(rf"(?<![a-z0-9]){re.escape(opt)}s?(?![a-z0-9])", words):
            return letter
    return None


def _patient_age(fact: str) -> str | None:
    """The patient's age stated by a fact ("23", or "6-month" for infants), else None."""
    if _OTHER_PERSON.search(fact) and not _PATIENT_SUBJECT.match(fact):
        return None
    m = _AGE_FACT.search(fact)
    if m is None:
        return None
    number = _NUMBER_WORDS.get(m.group(1).lower(), m.group(1))
    unit = (m.group(2) or "").lower()
    return f"{number}-month" if unit.startswith("month") else number


def _patient_sex(fact: str) -> str | None:
    """The patient's sex from a short demographic fact about the patient, else None."""
    if len(fact.split()) > 10 or _OTHER_PERSON.search(fact) or not _PATIENT_SUBJECT.match(fact):
        return None
    m = _SEX_FACT.search(fact)
    return _SEX_NORMAL[m.group(1).lower()] if m else None


def _is_demographic(fact: str) -> bool:
    short = len(fact.split()) <= 8
    return short and bool(_AGE_FACT.search(fact) or _SEX_FACT.search(fact))


def derive_opening(case: Case) -> tuple[str, tuple[int, ...]]:
    """An initial presentation built from the case itself, and the indices of the facts it states.

    The opening is the patient's age and sex and one chief complaint: the first fact that describes a
    symptom or finding. Body measurements, ethnicity, nationality or residence, remarks about the
    conversation (what the doctor asked, forum disclaimers) and facts about other people are never the
    complaint; the patient's beliefs, questions and wishes are used only when no fact describes a symptom.
    A fact that names an option's text is never used (it would give the answer away), and an age stated
    about a child, parent or partner is not the patient's.
    """
    demo_age = case.demographics.age if case.demographics else None
    demo_sex = case.demographics.sex if case.demographics else None
    age_at = sex_at = None
    age, sex = demo_age, demo_sex
    for i, fact in enumerate(case.facts):
        fact_age = _patient_age(fact)
        if age_at is None and fact_age is not None and (demo_age is None or _digits(demo_age) == _digits(fact_age)):
            age_at, age = i, age or fact_age
        fact_sex = _patient_sex(fact)
        if sex_at is None and fact_sex is not None and (demo_sex is None or demo_sex.lower() == fact_sex):
            sex_at, sex = i, sex or fact_sex
    complaint_at = _pick_complaint(case, skip={age_at, sex_at})
    known = tuple(sorted(i for i in (age_at, sex_at, complaint_at) if i is not None))
    age_text = None
    if age:
        age_text = f"{age}-old" if age.endswith("-month") else f"{_digits(age)}-year-old"
    who = " ".join(p for p in (age_text, (sex or "").lower() or None) if p)
    if not who:
        opening = "A patient."
    else:
        article = "An" if who[0] in "aeiou8" or who.startswith(("11-", "18-")) else "A"
        opening = f"{article} {who} patient."
    if complaint_at is not None:
        opening += f" {case.facts[complaint_at]}"
    return opening, known


def _pick_complaint(case: Case, skip: set[int | None]) -> int | None:
    # Priority: the first symptom or finding; else the first other clinical fact; else a belief or wish.
    other = belief = None
    for i, fact in enumerate(case.facts):
        if i in skip or _option_named(fact, case.options) or _NOT_A_COMPLAINT.search(fact) or _META.search(fact):
            continue
        if _patient_age(fact) is not None or _patient_sex(fact) is not None or _is_demographic(fact):
            continue
        if _BELIEF.search(fact) or _OTHER_PERSON.search(fact):
            belief = i if belief is None else belief
        elif _SYMPTOM.search(fact) and not _HEALTHY.search(fact):
            return i
        elif other is None and not _HEALTHY.search(fact):
            other = i
    return other if other is not None else belief


def derive_initial_info(case: Case) -> str:
    """Build an initial presentation from the case itself (see :func:`derive_opening`).

    Used where a file's ``initial_info`` does not belong to its case. Only one complaint is disclosed, so
    the doctor still has to ask for everything else.
    """
    return derive_opening(case)[0]


_SAME_WORD = {"man": "male", "men": "male", "boy": "male", "woman": "female", "women": "female", "girl": "female"}


def _statement_tokens(text: str) -> set[str]:
    words = {_SAME_WORD.get(w, w) for w in content_words(text)}
    return words | set(re.findall(r"\d+(?:\.\d+)?", text))


def stated_facts(initial_info: str, facts: Sequence[str]) -> tuple[int, ...]:
    """Indices of the facts whose content the opening already states (conservative).

    A fact counts when every one of its content words and numbers appears in the opening, or — for facts
    of four or more content words — all but one word and every number do. Facts with no content word
    ("The patient is unsure.") never count, nor facts of one content word without a number, unless that
    word is the patient's sex.
    """
    opening = _statement_tokens(initial_info)
    known = []
    for i, fact in enumerate(facts):
        tokens = _statement_tokens(fact)
        words = {t for t in tokens if not t[0].isdigit()}
        # One content word is too little evidence ("She feels well" vs "a well-child visit"), unless it
        # is the patient's sex or comes with a number (an age).
        if not words or (len(words) == 1 and words.isdisjoint({"male", "female"}) and words == tokens):
            continue
        missing = tokens - opening
        if not missing or (len(words) >= 4 and len(missing) == 1 and not next(iter(missing))[0].isdigit()):
            known.append(i)
    return tuple(known)


def _digits(age: str) -> str:
    m = re.search(r"\d+", age)
    return m.group(0) if m else age


# ---------------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadReport:
    """What :func:`read_cases` found in one file: the valid cases and every problem, one line each."""

    path: str
    records: int = 0
    cases: list[Case] = field(default_factory=list)
    errors: list[CaseFormatError] = field(default_factory=list)
    # Notes on data quirks that were repaired (the case still loaded), e.g. a replaced initial_info.
    notes: list[str] = field(default_factory=list)
    # How many records showed each known format quirk (numbered facts, integer ids, ...).
    quirks: Counter[str] = field(default_factory=Counter)
    # Problems that did not stop a case from loading, one ``file:line: field: problem`` line each: unknown
    # keys, facts that name an option's text (a leak of the answer), options with stray quote characters.
    warnings: list[str] = field(default_factory=list)


_ID_KEYS = ("id", "case_id", "qid")
_FACT_KEYS = ("atomic_facts", "facts")
# Every key a MediQ release or our own format uses; anything else is reported as a warning.
KNOWN_KEYS = frozenset(
    {*_ID_KEYS, *_FACT_KEYS, "context", "initial_info", "question", "options", "answer", "answer_idx",
     "demographics", "patient", "specialty", "source", "key_facts",
     # MediQ's own metadata beside the case: kept out of the Case, accepted without a word.
     "usage", "original_post", "explanation", "facts_old", "context_len"}
)
_QUOTES = "\"'“”‘’„«»`"


def _record_to_fields(
    raw: Mapping[str, Any],
    where: str,
    line: int | None,
    quirks: Counter[str] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """Normalise one raw record of any MediQ variant into :class:`Case` fields.

    Raises CaseFormatError naming the offending field; pydantic validates the rest. Problems that do not
    stop the case from loading (unknown keys, a fact that names an option, stray quotes around an option)
    are appended to ``warnings`` as ``file:line: field: problem`` lines.
    """

    def fail(fld: str, msg: str) -> CaseFormatError:
        return CaseFormatError(where, line, fld, msg)

    def warn(fld: str, msg: str) -> None:
        if warnings is not None:
            warnings.append(str(CaseFormatError(where, line, fld, msg)))

    def text(fld: str, value: str, limit: int = MAX_TEXT_CHARS) -> str:
        problem = text_problem(value, limit)
        if problem:
            raise fail(fld, problem)
        return value

    if not isinstance(raw, Mapping):
        raise fail("record", f"expected a JSON object, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    unknown = sorted(str(k) for k in raw if k not in KNOWN_KEYS)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        warn("record", f"unknown key{'s' if len(unknown) > 1 else ''} {shown} ignored")

    id_key = next((k for k in _ID_KEYS if k in raw), None)
    if id_key is None:
        raise fail("id", "missing (expected 'id')")
    case_id = raw[id_key]
    if isinstance(case_id, bool) or not isinstance(case_id, (str, int)):
        raise fail(id_key, f"must be a string or an integer, got {type(case_id).__name__}")
    if isinstance(case_id, int) and abs(case_id) >= 10**MAX_ID_CHARS:
        raise fail(id_key, f"integer id has more than {MAX_ID_CHARS} digits")
    out["id"] = text(id_key, str(case_id), MAX_ID_CHARS)
    quirks = quirks if quirks is not None else Counter()
    if isinstance(case_id, int):
        quirks["integer id"] += 1

    fact_key = next((k for k in _FACT_KEYS if k in raw), None)
    if fact_key is None:
        raise fail("atomic_facts", "missing (expected 'atomic_facts' or 'facts')")
    facts = raw[fact_key]
    if isinstance(facts, str):
        facts = [f for f in text(fact_key, facts, MAX_CONTEXT_CHARS).splitlines() if f.strip()]
    if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
        raise fail(fact_key, "must be a list of strings")
    if len(facts) > MAX_FACTS:
        raise fail(fact_key, f"{len(facts)} facts, more than the limit of {MAX_FACTS}")
    for i, f in enumerate(facts):
        text(f"{fact_key}[{i}]", f)
    if fact_key == "facts":
        quirks["'facts' instead of 'atomic_facts'"] += 1
    if any(_LIST_MARKER.match(f) for f in facts):
        quirks["numbered or bulleted facts (markers stripped)"] += 1
    # Blank facts are dropped; kept[j] is the file index of the j-th fact kept, so that key_facts (which
    # count positions in the file) can be re-indexed instead of silently pointing at the next fact.
    kept = [i for i, f in enumerate(facts) if _strip_marker(f)]
    if len(kept) < len(facts):
        quirks["blank facts dropped"] += 1
    out["facts"] = [facts[i] for i in kept]
    if not out["facts"]:
        raise fail(fact_key, "no facts (empty list): the patient would have nothing to tell")

    context = raw.get("context", [])
    if context is None:
        context = []
    if isinstance(context, str):
        quirks["context given as one string"] += 1
        context = [c for c in (s.strip() for s in text("context", context, MAX_CONTEXT_CHARS).split("\n")) if c]
    if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
        raise fail("context", "must be a string or a list of strings")
    if sum(len(c) for c in context) > MAX_CONTEXT_CHARS:
        raise fail("context", f"longer than the limit of {MAX_CONTEXT_CHARS:,} characters in all")
    out["context"] = [_clean(text(f"context[{i}]", c, MAX_CONTEXT_CHARS)) for i, c in enumerate(context) if _clean(c)]

    initial = raw.get("initial_info")
    if initial is not None and not isinstance(initial, str):
        raise fail("initial_info", f"must be a string, got {type(initial).__name__}")
    if initial is None or not initial.strip():
        if not out["context"]:
            raise fail("initial_info", "missing, and there is no context to take a first sentence from")
        quirks["no initial_info (first context sentence used)"] += 1
        initial = _first_sentence(out["context"][0])
    out["initial_info"] = text("initial_info", initial.strip().strip("\"“”").strip())

    if "question" not in raw:
        raise fail("question", "missing")
    if not isinstance(raw["question"], str):
        raise fail("question", f"must be a string, got {type(raw['question']).__name__}")
    out["question"] = text("question", raw["question"])

    options = raw.get("options")
    if options is None:
        raise fail("options", "missing")
    if isinstance(options, list):
        if len(options) > len(LETTERS):
            raise fail("options", f"at most {len(LETTERS)} options, got {len(options)}")
        options = {LETTERS[i]: o for i, o in enumerate(options)}
    if not isinstance(options, Mapping) or not all(isinstance(v, str) for v in options.values()):
        raise fail("options", "must be an object mapping letters to option texts")
    if len(options) > len(LETTERS):
        raise fail("options", f"at most {len(LETTERS)} options, got {len(options)}")
    out["options"] = {text("options", str(k), 10).strip().upper(): text(f"options.{k}", v) for k, v in options.items()}

    letter = raw.get("answer_idx")
    answer_text = raw.get("answer")
    if letter is None:
        # Our own format may give only a letter in "answer".
        if isinstance(answer_text, str) and answer_text.strip().upper() in out["options"]:
            letter, answer_text = answer_text.strip().upper(), None
        else:
            raise fail("answer_idx", "missing (expected the letter of the correct option)")
    if isinstance(letter, int) and not isinstance(letter, bool):
        letter = LETTERS[letter] if 0 <= letter < len(LETTERS) else str(letter)[:20]
    if not isinstance(letter, str):
        raise fail("answer_idx", f"must be a letter, got {type(letter).__name__}")
    letter = text("answer_idx", letter, 20).strip().upper()
    if letter not in out["options"]:
        raise fail("answer_idx", f"{letter!r} is not among the options {sorted(out['options'])}")
    if answer_text is not None:
        if not isinstance(answer_text, str):
            raise fail("answer", f"must be a string, got {type(answer_text).__name__}")
        text("answer", answer_text)
        if _clean(answer_text).lower() != _clean(out["options"][letter]).lower():
            raise fail("answer", f"{answer_text!r} does not match option {letter} ({out['options'][letter]!r})")
    out["answer"] = letter

    demo_key = "demographics" if "demographics" in raw else "patient"
    demo = raw.get(demo_key)
    if isinstance(demo, Mapping):
        age = _demographic_value(demo, ("age",), f"{demo_key}.age", fail)
        sex = _demographic_value(demo, ("sex", "gender"), f"{demo_key}.sex", fail)
        out["demographics"] = {"age": age, "sex": sex.lower() if sex else None}
        spec = demo.get("gpt_specialty")
        # MediQ's generated specialty is metadata: a blank one is simply absent.
        if isinstance(spec, str) and spec.strip():
            out["specialty"] = text(f"{demo_key}.gpt_specialty", spec)
    elif demo is not None:
        raise fail(demo_key, "must be an object with 'age' and 'sex'")

    for key in ("specialty", "source"):
        if key in raw and raw[key] is not None:
            if not isinstance(raw[key], str):
                raise fail(key, f"must be a string, got {type(raw[key]).__name__}")
            if not raw[key].strip():
                raise fail(key, "must not be empty (leave it out instead)")
            out[key] = text(key, raw[key])
    if "key_facts" in raw:
        kf = raw["key_facts"]
        if not isinstance(kf, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in kf):
            raise fail("key_facts", "must be a list of fact indices")
        position = {file_index: j for j, file_index in enumerate(kept)}
        remapped = []
        for i in kf:
            if not 0 <= i < len(facts):
                raise fail("key_facts", f"index {i} is out of range ({fact_key} has {len(facts)} entries)")
            if i not in position:
                raise fail("key_facts", f"index {i} points at a blank fact ({fact_key}[{i}] is empty)")
            remapped.append(position[i])
        if len(set(remapped)) != len(remapped):
            raise fail("key_facts", "lists a fact more than once")
        out["key_facts"] = remapped

    for file_index in kept:
        named = _option_named(facts[file_index], out["options"])
        if named is not None:
            what = "the answer: a leak" if named == out["answer"] else "a hint at a distractor"
            warn(f"{fact_key}[{file_index}]", f"names option {named} {json.dumps(out['options'][named], ensure_ascii=False)} ({what})")
    for k, v in out["options"].items():
        stripped = v.strip()
        if stripped and (stripped[0] in _QUOTES or stripped[-1] in _QUOTES):
            warn(f"options.{k}", f"stray quote character in {stripped!r}")
    return out


def _demographic_value(
    demo: Mapping[str, Any], keys: tuple[str, ...], fld: str, fail: Any
) -> str | None:
    """Age or sex as text; numbers are allowed for age, lists, NaN and other shapes are refused."""
    value = next((demo[k] for k in keys if k in demo), None)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(fld, f"must be a string or a number, got {type(value).__name__}")
    if isinstance(value, (int, float)):
        if fld.endswith(".sex"):
            raise fail(fld, f"must be a string, got {type(value).__name__}")
        if not math.isfinite(value) or not 0 <= value <= 150:
            raise fail(fld, f"must be an age between 0 and 150, got {value!r}")
        return str(int(value)) if float(value).is_integer() else str(value)
    problem = text_problem(value, MAX_ID_CHARS)
    if problem:
        raise fail(fld, problem)
    return value.strip()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"“])")


def _first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def _read_text(path: Path) -> str:
    """The file's text, or CaseFormatError for anything that is not a readable regular UTF-8 file.

    The file type is checked before reading, and the file is opened non-blocking: opening a FIFO for
    reading would otherwise wait forever for a writer.
    """
    where = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CaseFormatError(where, None, None, "file not found") from None
    except (OSError, ValueError) as exc:  # a symlink loop (ELOOP), a NUL byte in the name, ...
        raise CaseFormatError(where, None, None, f"cannot read the file ({_os_reason(exc)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise CaseFormatError(where, None, None, "is a directory, not a cases file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "a device"
        raise CaseFormatError(where, None, None, f"is {kind}, not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise CaseFormatError(where, None, None, f"is {info.st_size:,} bytes, more than the limit of {MAX_FILE_BYTES:,}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CaseFormatError(where, None, None, f"cannot read the file ({_os_reason(exc)})") from None
    with os.fdopen(fd, "rb") as fh:
        # Checked again on the open file: the path may have been replaced since the stat above.
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise CaseFormatError(where, None, None, "is not a regular file")
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise CaseFormatError(where, None, None, f"is more than the limit of {MAX_FILE_BYTES:,} bytes")
    try:
        # Decoding bytes keeps a stray carriage return inside its line instead of starting a new line.
        # utf-8-sig drops a leading byte-order mark (Excel and Notepad write one), which JSON refuses.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaseFormatError(where, None, None, f"not UTF-8 text ({exc.reason})") from None


def _os_reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _json_loads(text: str) -> Any:
    """json.loads, with the errors a hostile file can provoke turned into JSONDecodeError-like messages."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ValueError(str(exc).split(";")[0]) from None


def _iter_records(path: Path) -> Iterator[tuple[int | None, Any | CaseFormatError]]:
    """Yield (line number, record) pairs; a record that is not valid JSON is yielded as its error."""
    where = str(path)
    text = _read_text(path)
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith("["):
        try:
            data = _json_loads(text)
        except json.JSONDecodeError as exc:
            yield exc.lineno, CaseFormatError(where, exc.lineno, "json", f"invalid JSON ({exc.msg})")
            return
        except ValueError as exc:
            yield None, CaseFormatError(where, None, "json", f"invalid JSON ({exc})")
            return
        if isinstance(data, Mapping):
            # Some releases store {id: record}.
            data = [{"id": k, **v} if isinstance(v, Mapping) and "id" not in v else v for k, v in data.items()]
        if not isinstance(data, list):
            yield None, CaseFormatError(where, None, "json", "expected a list of case objects")
            return
        # Line numbers of each top-level object, so errors still point at a line in a pretty-printed file.
        lines = _object_start_lines(text)
        for i, rec in enumerate(data):
            yield (lines[i] if i < len(lines) else None), rec
        return
    # split on newlines only: str.splitlines() also splits on \x1c-\x1e and \u2028, which JSON strings may hold.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = _json_loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, CaseFormatError(where, lineno, "json", f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except ValueError as exc:
            yield lineno, CaseFormatError(where, lineno, "json", f"invalid JSON ({exc})")
            continue
        yield lineno, record


def _object_start_lines(text: str) -> list[int]:
    """1-based line of each top-level object in a JSON array (cheap scan that respects strings)."""
    starts: list[int] = []
    depth, line, in_str, esc = 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            if depth == 1 and ch == "{":
                starts.append(line)
            depth += 1
        elif ch in "]}":
            depth -= 1
    return starts


def _pydantic_error(where: str, line: int | None, exc: ValidationError) -> CaseFormatError:
    err = exc.errors()[0]
    fld = ".".join(str(p) for p in err["loc"]) or "record"
    msg = str(err["msg"]).removeprefix("Value error, ")
    # Keep the public field names: model-level checks have no location of their own.
    if fld == "record":
        if "answer letter" in msg:
            fld = "answer_idx"
        elif re.match(r"^[a-z_]+(?:\[\d+\]|\.\w+)?\s", msg):
            # "key_facts index 9 is out of range", "atomic_facts[3] contains a lone surrogate ..."
            fld, msg = msg.split(" ", 1)
    elif fld == "facts":
        fld = "atomic_facts"
    return CaseFormatError(where, line, fld, msg)


def read_cases(
    path: str | Path,
    *,
    initial_info: InitialInfoMode = "auto",
    min_overlap: float = 0.5,
    source: str | None = None,
) -> LoadReport:
    """Read every case in a JSON or JSONL file and collect every problem instead of stopping at the first.

    ``initial_info``: ``"given"`` keeps the file's string; ``"derived"`` always rebuilds it with
    :func:`derive_initial_info`; ``"auto"`` (default) rebuilds it where fewer than ``min_overlap`` of its
    content words appear elsewhere in the case (a sign it belongs to another case), noting each repair — and
    for every case of the file when at least half of them fail that check (the public MediQ-AskDocs
    release is such a file: nearly all its initial_info strings are generic complaints from other cases).
    """
    p = Path(path)
    report = LoadReport(path=str(p))
    seen: dict[str, int | None] = {}
    lines: list[int | None] = []
    src = source or p.stem
    for line, raw in _iter_records(p):
        report.records += 1
        if isinstance(raw, CaseFormatError):
            report.errors.append(raw)
            continue
        try:
            fields = _record_to_fields(raw, str(p), line, report.quirks, report.warnings)
            fields.setdefault("source", src)
            case = Case(**fields)
        except CaseFormatError as exc:
            report.errors.append(exc)
            continue
        except ValidationError as exc:
            report.errors.append(_pydantic_error(str(p), line, exc))
            continue
        if case.id in seen:
            first = seen[case.id]
            report.errors.append(
                CaseFormatError(str(p), line, "id", f"duplicate id {case.id!r} (first seen on line {first})")
            )
            continue
        seen[case.id] = line
        report.cases.append(case)
        lines.append(line)
    derived: set[int] = set()
    if initial_info != "given" and report.cases:
        derived = _repair_initial_info(report, lines, initial_info, min_overlap)
    for i, case in enumerate(report.cases):
        if i not in derived:
            report.cases[i] = case.model_copy(update={"known_facts": stated_facts(case.initial_info, case.facts)})
    if report.records == 0:
        report.errors.append(CaseFormatError(str(p), None, None, "no cases in file"))
    return report


def _repair_initial_info(report: LoadReport, lines: list[int | None], mode: InitialInfoMode, min_overlap: float) -> set[int]:
    """Derive the initial information of mismatched cases; returns the indices of the cases it rebuilt."""
    overlaps = [initial_info_overlap(c) for c in report.cases]
    bad = [i for i, o in enumerate(overlaps) if o < min_overlap]
    if mode == "derived" or len(bad) >= 0.5 * len(report.cases):
        # When most strings of a file belong to other cases, none of them can be trusted.
        if mode == "auto":
            report.notes.append(
                f"{report.path}: initial_info: {len(bad)} of {len(report.cases)} do not match their case "
                f"(content-word overlap < {min_overlap}); derived every initial_info from the facts instead"
            )
        bad = list(range(len(report.cases)))
    else:
        for i in bad:
            report.notes.append(
                f"{report.path}:{lines[i]}: initial_info: does not match its case "
                f"(overlap {overlaps[i]:.2f}); derived from the facts instead"
            )
    for i in bad:
        case = report.cases[i]
        opening, known = derive_opening(case)
        report.cases[i] = case.model_copy(update={"initial_info": opening, "known_facts": known})
    return set(bad)


def load_cases(
    paths: str | Path | Iterable[str | Path],
    *,
    initial_info: InitialInfoMode = "auto",
    strict: bool = True,
) -> list[Case]:
    """Load cases from one or more files, raising on the first problem when ``strict`` (the default).

    With ``strict=False`` invalid records are left out; use :func:`read_cases` to see them, or
    ``mediq validate`` on the command line. Ids must be unique across all files.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for path in paths:
        report = read_cases(path, initial_info=initial_info)
        if strict and report.errors:
            extra = len(report.errors) - 1
            err = report.errors[0]
            if extra:
                err = CaseFormatError(err.path, err.line, err.field, f"{err.message} (+{extra} more problems; run `mediq validate {path}`)")
            raise err
        for case in report.cases:
            if case.id in seen:
                raise CaseFormatError(str(path), None, "id", f"id {case.id!r} already loaded from {seen[case.id]}")
            seen[case.id] = str(path)
            cases.append(case)
    return cases
