"""Clinical cases: the ``Case`` model and a loader for every public MediQ file variant.

A case holds what the doctor sees first (``initial_info``), the hidden atomic ``facts`` only the patient
knows, and a multiple-choice clinical ``question``. Public MediQ releases disagree on field names and
shapes; :func:`load_cases` normalises them all and reports every problem as one line
``file:line: field: problem`` (a :class:`~mediq_env.errors.CaseFormatError`).
"""

from __future__ import annotations

import hashlib
import json
import re
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
    "initial_info_overlap",
    "load_cases",
    "read_cases",
]

LETTERS = string.ascii_uppercase[:10]
InitialInfoMode = Literal["given", "derived", "auto"]

# A fact or option numbered like "1. The patient ..." or bulleted like "- The patient ..." in some releases.
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•])\s+")
_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _strip_marker(text: str) -> str:
    return _clean(_LIST_MARKER.sub("", text, count=1))


class Demographics(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    age: str | None = None
    sex: str | None = None


class Case(BaseModel):
    """One interactive clinical case.

    ``answer`` is the letter of the correct option; ``options`` maps consecutive letters from ``A`` to
    their text. ``key_facts`` (optional) lists indices of the facts the answer depends on; built-in cases
    carry it, public data does not.
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

    @field_validator("id", "initial_info", "question")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        value = _clean(value)
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("facts")
    @classmethod
    def _facts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(_strip_marker(f) for f in value)
        if not cleaned:
            raise ValueError("needs at least one fact")
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
        for i in self.key_facts:
            if not 0 <= i < len(self.facts):
                raise ValueError(f"key_facts index {i} is out of range (case has {len(self.facts)} facts)")
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
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
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


_AGE_FACT = re.compile(r"\b(\d{1,3})[- ]?(?:years?|yrs?)[- ]?old\b|\bage(?:d)?\s*(?:is\s*)?(\d{1,3})\b", re.I)
_SEX_FACT = re.compile(r"\b(female|male|woman|man|girl|boy)\b", re.I)
_SEX_NORMAL = {"female": "female", "woman": "female", "girl": "female", "male": "male", "man": "male", "boy": "male"}


def _is_demographic(fact: str) -> bool:
    short = len(fact.split()) <= 8
    return short and bool(_AGE_FACT.search(fact) or _SEX_FACT.search(fact))


def derive_initial_info(case: Case) -> str:
    """Build an initial presentation from the case itself: age and sex, then the first clinical fact.

    Used where a file's ``initial_info`` does not belong to its case. Only the first non-demographic fact
    is disclosed, so the doctor still has to ask for everything else.
    """
    age = case.demographics.age if case.demographics else None
    sex = case.demographics.sex if case.demographics else None
    for fact in case.facts:
        if age is None and (m := _AGE_FACT.search(fact)):
            age = m.group(1) or m.group(2)
        if sex is None and _is_demographic(fact) and (m := _SEX_FACT.search(fact)):
            sex = _SEX_NORMAL[m.group(1).lower()]
    complaint = next((f for f in case.facts if not _is_demographic(f)), case.facts[0])
    who = " ".join(p for p in (f"{_digits(age)}-year-old" if age else None, (sex or "").lower() or None) if p)
    if not who:
        return f"A patient. {complaint}"
    article = "An" if who[0] in "aeiou8" or who.startswith(("11-", "18-")) else "A"
    return f"{article} {who} patient. {complaint}"


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


_ID_KEYS = ("id", "case_id", "qid")
_FACT_KEYS = ("atomic_facts", "facts")


def _record_to_fields(
    raw: Mapping[str, Any], where: str, line: int | None, quirks: Counter[str] | None = None
) -> dict[str, Any]:
    """Normalise one raw record of any MediQ variant into :class:`Case` fields.

    Raises CaseFormatError naming the offending field; pydantic validates the rest.
    """

    def fail(fld: str, msg: str) -> CaseFormatError:
        return CaseFormatError(where, line, fld, msg)

    if not isinstance(raw, Mapping):
        raise fail("record", f"expected a JSON object, got {type(raw).__name__}")
    out: dict[str, Any] = {}

    id_key = next((k for k in _ID_KEYS if k in raw), None)
    if id_key is None:
        raise fail("id", "missing (expected 'id')")
    case_id = raw[id_key]
    if isinstance(case_id, bool) or not isinstance(case_id, (str, int)):
        raise fail(id_key, f"must be a string or an integer, got {type(case_id).__name__}")
    out["id"] = str(case_id)
    quirks = quirks if quirks is not None else Counter()
    if isinstance(case_id, int):
        quirks["integer id"] += 1

    fact_key = next((k for k in _FACT_KEYS if k in raw), None)
    if fact_key is None:
        raise fail("atomic_facts", "missing (expected 'atomic_facts' or 'facts')")
    facts = raw[fact_key]
    if isinstance(facts, str):
        facts = [f for f in facts.splitlines() if f.strip()]
    if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
        raise fail(fact_key, "must be a list of strings")
    if fact_key == "facts":
        quirks["'facts' instead of 'atomic_facts'"] += 1
    if any(_LIST_MARKER.match(f) for f in facts):
        quirks["numbered or bulleted facts (markers stripped)"] += 1
    out["facts"] = [f for f in facts if _strip_marker(f)]
    if not out["facts"]:
        raise fail(fact_key, "no facts (empty list): the patient would have nothing to tell")

    context = raw.get("context", [])
    if context is None:
        context = []
    if isinstance(context, str):
        quirks["context given as one string"] += 1
        context = [c for c in (s.strip() for s in context.split("\n")) if c]
    if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
        raise fail("context", "must be a string or a list of strings")
    out["context"] = [_clean(c) for c in context if _clean(c)]

    initial = raw.get("initial_info")
    if initial is not None and not isinstance(initial, str):
        raise fail("initial_info", f"must be a string, got {type(initial).__name__}")
    if initial is None or not initial.strip():
        if not out["context"]:
            raise fail("initial_info", "missing, and there is no context to take a first sentence from")
        quirks["no initial_info (first context sentence used)"] += 1
        initial = _first_sentence(out["context"][0])
    out["initial_info"] = initial.strip().strip("\"“”").strip()

    if "question" not in raw:
        raise fail("question", "missing")
    if not isinstance(raw["question"], str):
        raise fail("question", f"must be a string, got {type(raw['question']).__name__}")
    out["question"] = raw["question"]

    options = raw.get("options")
    if options is None:
        raise fail("options", "missing")
    if isinstance(options, list):
        if len(options) > len(LETTERS):
            raise fail("options", f"at most {len(LETTERS)} options, got {len(options)}")
        options = {LETTERS[i]: o for i, o in enumerate(options)}
    if not isinstance(options, Mapping) or not all(isinstance(v, str) for v in options.values()):
        raise fail("options", "must be an object mapping letters to option texts")
    out["options"] = {str(k).strip().upper(): v for k, v in options.items()}

    letter = raw.get("answer_idx")
    text = raw.get("answer")
    if letter is None:
        # Our own format may give only a letter in "answer".
        if isinstance(text, str) and text.strip().upper() in out["options"]:
            letter, text = text.strip().upper(), None
        else:
            raise fail("answer_idx", "missing (expected the letter of the correct option)")
    if isinstance(letter, int) and not isinstance(letter, bool):
        letter = LETTERS[letter] if 0 <= letter < len(LETTERS) else str(letter)
    if not isinstance(letter, str):
        raise fail("answer_idx", f"must be a letter, got {type(letter).__name__}")
    letter = letter.strip().upper()
    if letter not in out["options"]:
        raise fail("answer_idx", f"{letter!r} is not among the options {sorted(out['options'])}")
    if text is not None:
        if not isinstance(text, str):
            raise fail("answer", f"must be a string, got {type(text).__name__}")
        if _clean(text).lower() != _clean(out["options"][letter]).lower():
            raise fail("answer", f"{text!r} does not match option {letter} ({out['options'][letter]!r})")
    out["answer"] = letter

    demo = raw.get("demographics", raw.get("patient"))
    if isinstance(demo, Mapping):
        age = demo.get("age")
        sex = demo.get("sex", demo.get("gender"))
        out["demographics"] = {
            "age": str(age).strip() if age not in (None, "") else None,
            "sex": str(sex).strip().lower() if sex not in (None, "") else None,
        }
        spec = demo.get("gpt_specialty")
        if isinstance(spec, str):
            out["specialty"] = spec
    elif demo is not None:
        raise fail("demographics", "must be an object with 'age' and 'sex'")

    for key in ("specialty", "source"):
        if key in raw and raw[key] is not None:
            if not isinstance(raw[key], str):
                raise fail(key, f"must be a string, got {type(raw[key]).__name__}")
            out[key] = raw[key]
    if "key_facts" in raw:
        kf = raw["key_facts"]
        if not isinstance(kf, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in kf):
            raise fail("key_facts", "must be a list of fact indices")
        out["key_facts"] = kf
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"“])")


def _first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def _iter_records(path: Path) -> Iterator[tuple[int | None, Any | CaseFormatError]]:
    """Yield (line number, record) pairs; a record that is not valid JSON is yielded as its error."""
    where = str(path)
    try:
        # newline="" keeps a stray carriage return inside its line instead of starting a new line.
        with path.open(encoding="utf-8", newline="") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise CaseFormatError(where, None, None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise CaseFormatError(where, None, None, f"not UTF-8 text ({exc.reason})") from None
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield exc.lineno, CaseFormatError(where, exc.lineno, "json", f"invalid JSON ({exc.msg})")
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
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, CaseFormatError(where, lineno, "json", f"invalid JSON ({exc.msg} at column {exc.colno})")


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
    # Keep the public field names in messages about the answer.
    if fld == "record" and "answer letter" in msg:
        fld = "answer_idx"
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
            fields = _record_to_fields(raw, str(p), line, report.quirks)
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
    if initial_info != "given" and report.cases:
        _repair_initial_info(report, lines, initial_info, min_overlap)
    if report.records == 0:
        report.errors.append(CaseFormatError(str(p), None, None, "no cases in file"))
    return report


def _repair_initial_info(report: LoadReport, lines: list[int | None], mode: InitialInfoMode, min_overlap: float) -> None:
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
        report.cases[i] = case.model_copy(update={"initial_info": derive_initial_info(case)})


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
