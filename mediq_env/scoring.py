"""Scoring follow-up questions: attribute scores from judges and reward models, and model-free proxies.

One protocol, :class:`Scorer`: ``score(items) -> records``, one :class:`ScoreRecord` per
:class:`ScoreItem`, always a whole batch at a time so that a model-backed scorer makes one generation (or
forward) call for everything it is given. Implementations:

* :class:`JudgeScorer` — an LLM rates each question on each attribute's 1–5 rubric
  (:mod:`mediq_env.attributes`), through any :class:`~mediq_env.backends.base.Backend`.
* :class:`PairwiseJudge` — an LLM says which of two questions is better on one attribute, shown in both
  orders so that position bias is measured rather than baked in.
* :class:`RewardModelScorer` — Hugging Face sequence-classification reward models, one per attribute or
  one multi-head model (ALFA trains attribute-specific reward models; this runs them).
* :class:`EnvironmentScorer` — no model: what the environment itself can observe about a question
  (facts revealed, repetition, compound questions). These are *proxies*, named ``proxy_*`` so they are
  never mistaken for the rubric attributes they only loosely track.
* :class:`CompositeScorer` — several scorers as one (e.g. a judge plus the proxies).

Unscored is never zero: a score that could not be obtained (an unparseable judge reply, a proxy that needs
a patient reply when there is none) is ``NaN`` in :attr:`ScoreRecord.scores`, with the reason or raw model
output kept in :attr:`ScoreRecord.raw`.

Items and what the scorer may see: :attr:`ScoreItem.context` is the doctor's view *before* the question
was asked. ``case`` (hidden facts, answer) and ``reply`` (what the patient said) are optional: judges and
reward models never use them — they rate the question as asked, as a clinician would, and must also work on
real clinician questions that have no simulated case — while the environment proxies need them and score
``NaN`` without them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from mediq_env.attributes import ALFA_ATTRIBUTES, RUBRIC_LEVELS, Attribute, get_attribute
from mediq_env.backends.base import Backend, Chat, SamplingParams
from mediq_env.dialogue import DialogueState
from mediq_env.errors import BackendError, ConfigError, MissingDependencyError
from mediq_env.prompts import judge_pairwise_chat, judge_pointwise_chat

if TYPE_CHECKING:
    from mediq_env.case import Case
    from mediq_env.patient import PatientReply

__all__ = [
    "PROXIES",
    "CompositeScorer",
    "EnvironmentScorer",
    "JudgeScorer",
    "PairItem",
    "PairwiseJudge",
    "PairwiseResult",
    "RewardModelScorer",
    "ScoreItem",
    "ScoreRecord",
    "Scorer",
    "Verdict",
    "earlier_questions",
    "focus_features",
    "is_repeat",
    "is_repeat_step",
    "known_before",
    "parse_rubric_score",
    "parse_verdict",
    "render_context",
    "render_reward_input",
    "repeat_signals",
]

NAN = float("nan")
INVALID_PREFIX = "[Invalid action"
"""How the env marks the reply of an invalid-action turn (those turns are not questions)."""


# ---------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ScoreItem:
    """One question to score: the question, the doctor's view before it, and optionally case and reply."""

    question: str
    context: DialogueState
    case: Case | None = None
    reply: PatientReply | None = None


@dataclass
class ScoreRecord:
    """Scores of one item from one scorer.

    ``scores`` maps a score name (an attribute name, or ``proxy_*``) to a float; ``NaN`` means unscored,
    and ``raw`` says why (the judge's output, the missing input). ``bounds`` gives the range of each
    bounded score (rubric scores: ``(1, 5)``) so that rewards can normalise them; unbounded scores (reward
    model logits, counts) are absent from it.
    """

    scores: dict[str, float]
    scorer: str
    raw: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def unscored(self) -> list[str]:
        """Names whose score is NaN."""
        return [k for k, v in self.scores.items() if math.isnan(v)]


@runtime_checkable
class Scorer(Protocol):
    """Scores a batch of questions in one call; returns one record per item, in order.

    ``name`` identifies the scorer in records and reports. Implementations here also expose ``keys``
    (the score names they produce), which the reward wrapper uses to check its weights early.
    """

    name: str

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreRecord]: ...


# ---------------------------------------------------------------------------------------------------
# Rendering the doctor's view for judges and reward models


def render_context(state: DialogueState, max_chars: int = 4000) -> str:
    """The doctor's view as plain text for a judge: initial information, the clinical question and options
    (when there are any), and the question-and-reply turns so far (invalid actions left out).

    Very long initial information (real patient posts) is cut to ``max_chars`` characters, keeping its
    beginning, where posts usually state the problem.
    """
    info = state.initial_info.strip()
    if len(info) > max_chars:
        info = info[:max_chars].rstrip() + " [...]"
    lines = [f"Patient's initial information: {info}"]
    if state.question.strip():
        lines.append(f"Clinical question the doctor must answer: {state.question.strip()}")
    if state.options:
        lines.append("Options: " + "; ".join(f"{k}: {v}" for k, v in state.options.items()))
    turns = [t for t in state.turns if not t.reply.startswith(INVALID_PREFIX)]
    if turns:
        lines.append("Dialogue:")
        for t in turns:
            lines.append(f"Doctor: {t.question}")
            lines.append(f"Patient: {t.reply}")
    else:
        lines.append("(No questions asked yet.)")
    return "\n".join(lines)


def render_reward_input(item: ScoreItem, max_chars: int = 4000) -> str:
    """The text a reward model scores: the rendered context, then the question last (truncation drops the
    start of the context, never the question). Training code should build its inputs with this too."""
    return f"{render_context(item.context, max_chars)}\n\nDoctor's next question: {item.question.strip()}"


# ---------------------------------------------------------------------------------------------------
# Parsing judge outputs


_SCORE_PREFIX = re.compile(r"^(?:score|rating)\s*[:=]?\s*", re.I)
_SCORE_LINE = re.compile(r"^([1-5])(?:\s*/\s*5)?\.?(?:\s+[-–—:]\s+.*)?$")


def parse_rubric_score(text: str) -> int | None:
    """A 1–5 integer from a judge reply, or None.

    Strict on purpose: only the first non-empty line counts, and it must be the digit itself — optionally
    written ``Score: 4``, ``**4**``, ``4/5`` or ``4.`` and optionally followed by `` - explanation``.
    ``3.5``, ``45``, ``0``, ``6``, ``four``, ``3 or 4`` and an empty reply are all unparseable: guessing a
    number out of a rambling reply would turn noise into a score.
    """
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.strip("*_`\"' ")
    line = _SCORE_PREFIX.sub("", line).strip("*_`\"' ")
    m = _SCORE_LINE.match(line)
    return int(m.group(1)) if m else None


Verdict = Literal["A", "B", "TIE"]
_VERDICT_PREFIX = re.compile(r"^(?:verdict|answer|better|winner)\s*[:=]?\s*", re.I)
_VERDICT = re.compile(r"^(?:question\s+)?(a|b|tie)\.?$", re.I)


def parse_verdict(text: str) -> Verdict | None:
    """``"A"``, ``"B"`` or ``"TIE"`` from the first non-empty line of a pairwise reply, or None.

    Accepts ``A``, ``Question B``, ``Verdict: TIE``, ``**A**``, ``B.``; anything else (``A or B``,
    ``both``, an explanation without a verdict) is unparseable.
    """
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _VERDICT_PREFIX.sub("", line.strip("*_`\"' ")).strip("*_`\"' ")
    m = _VERDICT.match(line)
    if not m:
        return None
    v = m.group(1).upper()
    return "TIE" if v == "TIE" else ("A" if v == "A" else "B")


# ---------------------------------------------------------------------------------------------------
# Judges


def _resolve_attributes(attributes: Sequence[str | Attribute]) -> tuple[Attribute, ...]:
    resolved = tuple(a if isinstance(a, Attribute) else get_attribute(a) for a in attributes)
    if not resolved:
        raise ConfigError("give at least one attribute")
    names = [a.name for a in resolved]
    if len(set(names)) != len(names):
        raise ConfigError(f"attributes are repeated: {names}")
    return resolved


def _check_generations(n_expected: int, gens: Sequence[Any], who: str) -> None:
    if len(gens) != n_expected:
        raise BackendError(f"{who}: the backend returned {len(gens)} generations for {n_expected} chats")


class JudgeScorer:
    """Rubric scores (1–5) per attribute from an LLM judge, for a whole batch in one ``generate`` call.

    Each item × attribute × sample is one chat (:func:`mediq_env.prompts.judge_pointwise_chat`). A reply
    is parsed with :func:`parse_rubric_score`; an item's score for an attribute is the mean of its parsed
    samples, ``NaN`` when none parsed. ``raw[attribute]`` keeps every output and its parsed value.

    ``samples > 1`` only helps with sampling: the default params then use temperature 0.7 (greedy
    decoding would return the same reply ``samples`` times). ``format_examples`` prepends two worked
    exchanges (:data:`mediq_env.prompts.JUDGE_POINTWISE_EXAMPLES`) that teach tiny models the reply format;
    they can also anchor them, so leave it off for capable judges.
    """

    def __init__(
        self,
        backend: Backend,
        attributes: Sequence[str | Attribute] = ALFA_ATTRIBUTES,
        *,
        samples: int = 1,
        params: SamplingParams | None = None,
        name: str | None = None,
        max_context_chars: int = 4000,
        format_examples: bool = False,
    ) -> None:
        if samples < 1:
            raise ConfigError(f"samples must be >= 1, got {samples}")
        self.backend = backend
        self.format_examples = format_examples
        self.attributes = _resolve_attributes(attributes)
        self.samples = samples
        self.params = params or SamplingParams(
            max_new_tokens=8, temperature=0.0 if samples == 1 else 0.7, seed=0, stop=("\n",)
        )
        self.name = name or f"judge:{getattr(backend, 'model_id', type(backend).__name__)}"
        self.max_context_chars = max_context_chars

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def chats(self, items: Sequence[ScoreItem]) -> list[Chat]:
        """The chats one :meth:`score` call sends, item-major, then attribute, then sample."""
        out = []
        for item in items:
            context = render_context(item.context, self.max_context_chars)
            for attr in self.attributes:
                chat = judge_pointwise_chat(
                    attr.title, attr.definition, attr.rubric_text(), context, item.question, examples=self.format_examples
                )
                out.extend([chat] * self.samples)
        return out

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreRecord]:
        if not items:
            return []
        chats = self.chats(items)
        gens = self.backend.generate(chats, self.params)
        _check_generations(len(chats), gens, self.name)
        records = []
        pos = 0
        lo, hi = float(RUBRIC_LEVELS[0]), float(RUBRIC_LEVELS[-1])
        for _ in items:
            scores: dict[str, float] = {}
            raw: dict[str, Any] = {}
            for attr in self.attributes:
                outputs = [g.text for g in gens[pos : pos + self.samples]]
                pos += self.samples
                parsed = [parse_rubric_score(t) for t in outputs]
                valid = [p for p in parsed if p is not None]
                scores[attr.name] = float(np.mean(valid)) if valid else NAN
                raw[attr.name] = {"outputs": outputs, "parsed": parsed}
            records.append(
                ScoreRecord(scores, self.name, raw, bounds={a.name: (lo, hi) for a in self.attributes})
            )
        return records


@dataclass(frozen=True)
class PairItem:
    """Two candidate questions for the same doctor's view."""

    context: DialogueState
    question_a: str
    question_b: str


@dataclass
class PairwiseResult:
    """The outcome of comparing question A with question B on one attribute.

    ``verdicts_ab`` (A shown first) and ``verdicts_ba`` (B shown first) are *normalised to the un-swapped
    labels*: ``"A"`` always means question A won. ``None`` marks an unparseable reply, kept next to its raw
    output in ``raw_ab``/``raw_ba``. ``p_a`` is A's win probability over every parsed verdict of both
    orders, ties counting half (``NaN`` when none parsed).
    """

    attribute: str
    p_a: float
    verdicts_ab: list[Verdict | None]
    verdicts_ba: list[Verdict | None]
    raw_ab: list[str]
    raw_ba: list[str]

    @staticmethod
    def _p(verdicts: Sequence[Verdict | None]) -> float:
        parsed = [v for v in verdicts if v is not None]
        if not parsed:
            return NAN
        return sum(1.0 if v == "A" else 0.5 if v == "TIE" else 0.0 for v in parsed) / len(parsed)

    @property
    def p_a_ab(self) -> float:
        """A's win probability when A was shown first."""
        return self._p(self.verdicts_ab)

    @property
    def p_a_ba(self) -> float:
        """A's win probability when B was shown first."""
        return self._p(self.verdicts_ba)

    @property
    def n_unscored(self) -> int:
        return sum(v is None for v in (*self.verdicts_ab, *self.verdicts_ba))

    @property
    def position_consistent(self) -> bool | None:
        """Whether both orders lean the same way (A better, B better, or even); None if an order has no
        parsed verdict. A judge that always picks whichever question comes first is inconsistent."""
        ab, ba = self.p_a_ab, self.p_a_ba
        if math.isnan(ab) or math.isnan(ba):
            return None
        return bool(np.sign(ab - 0.5) == np.sign(ba - 0.5))

    @property
    def first_position_rate(self) -> float:
        """Share of decisive (non-tie) verdicts that chose the question shown first; NaN if none.

        0.5 for an order-blind judge on any pair; 1.0 for one that always prefers the first slot.
        """
        first = [v == "A" for v in self.verdicts_ab if v in ("A", "B")]
        first += [v == "B" for v in self.verdicts_ba if v in ("A", "B")]
        return float(np.mean(first)) if first else NAN

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "p_a": self.p_a,
            "p_a_ab": self.p_a_ab,
            "p_a_ba": self.p_a_ba,
            "position_consistent": self.position_consistent,
            "first_position_rate": self.first_position_rate,
            "verdicts_ab": self.verdicts_ab,
            "verdicts_ba": self.verdicts_ba,
            "raw_ab": self.raw_ab,
            "raw_ba": self.raw_ba,
        }


_SWAP: dict[Verdict, Verdict] = {"A": "B", "B": "A", "TIE": "TIE"}


class PairwiseJudge:
    """Compare two questions on one attribute, in both presentation orders, ``samples`` times each.

    All pairs × 2 orders × samples go to the backend in one ``generate`` call. A verdict given with B
    shown first is swapped back, so every recorded verdict refers to the caller's A and B.
    """

    def __init__(
        self,
        backend: Backend,
        attribute: str | Attribute = "overall",
        *,
        samples: int = 1,
        params: SamplingParams | None = None,
        name: str | None = None,
        max_context_chars: int = 4000,
        format_examples: bool = False,
    ) -> None:
        if samples < 1:
            raise ConfigError(f"samples must be >= 1, got {samples}")
        self.backend = backend
        self.format_examples = format_examples
        self.attribute = _resolve_attributes([attribute])[0]
        self.samples = samples
        self.params = params or SamplingParams(
            max_new_tokens=6, temperature=0.0 if samples == 1 else 0.7, seed=0, stop=("\n",)
        )
        self.name = name or f"pairwise:{getattr(backend, 'model_id', type(backend).__name__)}"
        self.max_context_chars = max_context_chars

    def chats(self, pairs: Sequence[PairItem]) -> list[Chat]:
        """Per pair: ``samples`` chats with A first, then ``samples`` with B first."""
        a = self.attribute
        out: list[Chat] = []
        for pair in pairs:
            ctx = render_context(pair.context, self.max_context_chars)
            ex = self.format_examples
            out += [judge_pairwise_chat(a.title, a.definition, ctx, pair.question_a, pair.question_b, examples=ex)] * self.samples
            out += [judge_pairwise_chat(a.title, a.definition, ctx, pair.question_b, pair.question_a, examples=ex)] * self.samples
        return out

    def compare(self, pairs: Sequence[PairItem]) -> list[PairwiseResult]:
        if not pairs:
            return []
        chats = self.chats(pairs)
        gens = self.backend.generate(chats, self.params)
        _check_generations(len(chats), gens, self.name)
        k = self.samples
        results = []
        for j in range(len(pairs)):
            block = [g.text for g in gens[2 * k * j : 2 * k * (j + 1)]]
            raw_ab, raw_ba = block[:k], block[k:]
            v_ab = [parse_verdict(t) for t in raw_ab]
            v_ba: list[Verdict | None] = []
            for t in raw_ba:
                v = parse_verdict(t)
                v_ba.append(None if v is None else _SWAP[v])
            p_a = PairwiseResult._p([*v_ab, *v_ba])
            results.append(PairwiseResult(self.attribute.name, p_a, v_ab, v_ba, raw_ab, raw_ba))
        return results


# ---------------------------------------------------------------------------------------------------
# Reward models


class RewardModelScorer:
    """Scores from Hugging Face ``AutoModelForSequenceClassification`` reward models.

    ``models`` is either ``{attribute: path}`` — one single-output model per attribute — or one path to a
    multi-head model whose ``num_labels`` equals the number of attributes (named by ``attributes``, or by
    the model config's ``id2label`` when those labels are registered attribute names). The input text is
    :func:`render_reward_input` (context, then the question); the score is the raw head output, so it is
    unbounded and has the scale the model was trained to (Bradley–Terry reward models give logits).

    torch and transformers are imported here, in the constructor, so importing mediq_env stays light.
    """

    def __init__(
        self,
        models: Mapping[str, str | Path] | str | Path,
        *,
        attributes: Sequence[str] | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        device: str = "cpu",
        name: str | None = None,
        max_context_chars: int = 4000,
    ) -> None:
        try:
            import torch
        except ImportError as err:
            raise MissingDependencyError("torch", "hf", "RewardModelScorer") from err
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as err:
            raise MissingDependencyError("transformers", "hf", "RewardModelScorer") from err
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self._torch = torch
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.max_context_chars = max_context_chars
        # Each entry: (path, model, tokenizer, attribute names of its heads in order).
        self._models: list[tuple[str, Any, Any, tuple[str, ...]]] = []

        def load(path: str | Path) -> tuple[Any, Any]:
            tok = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForSequenceClassification.from_pretrained(str(path))
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "right"
            tok.truncation_side = "left"  # keep the question, which comes last
            if getattr(model.config, "pad_token_id", None) is None:
                model.config.pad_token_id = tok.pad_token_id
            model.to(device).eval()
            return model, tok

        if isinstance(models, Mapping):
            if attributes is not None:
                raise ConfigError("with one model per attribute, the mapping's keys name the attributes")
            if not models:
                raise ConfigError("give at least one reward model")
            for attr, path in models.items():
                get_attribute(attr)
                model, tok = load(path)
                if model.config.num_labels != 1:
                    raise ConfigError(
                        f"reward model for {attr!r} at {path} has {model.config.num_labels} outputs; a per-attribute "
                        "model needs exactly 1 (pass one path instead for a multi-head model)"
                    )
                self._models.append((str(path), model, tok, (attr,)))
        else:
            model, tok = load(models)
            n = model.config.num_labels
            if attributes is None:
                labels = [model.config.id2label[i] for i in range(n)]
                unknown = [lab for lab in labels if lab not in _registered_names()]
                if unknown:
                    raise ConfigError(
                        f"the model's labels {labels} are not all attribute names; pass attributes=[...] ({n} names)"
                    )
                attributes = labels
            names = tuple(a.name for a in _resolve_attributes(attributes))
            if len(names) != n:
                raise ConfigError(f"the model at {models} has num_labels={n} but {len(names)} attributes were given")
            self._models.append((str(models), model, tok, names))
        all_names = [a for *_, names in self._models for a in names]
        self.name = name or "reward_model"
        self._keys = tuple(all_names)

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreRecord]:
        if not items:
            return []
        torch = self._torch
        texts = [render_reward_input(item, self.max_context_chars) for item in items]
        columns: dict[str, list[float]] = {}
        for _path, model, tok, names in self._models:
            outs: list[np.ndarray] = []
            for start in range(0, len(texts), self.batch_size):
                enc = tok(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                with torch.no_grad():
                    logits = model(**enc).logits.float().cpu().numpy()
                outs.append(logits.reshape(len(enc["input_ids"]), -1))
            values = np.concatenate(outs, axis=0)
            for j, attr in enumerate(names):
                columns[attr] = [float(v) if np.isfinite(v) else NAN for v in values[:, j]]
        paths = {attr: path for path, _m, _t, names in self._models for attr in names}
        return [
            ScoreRecord({a: columns[a][i] for a in self._keys}, self.name, {"models": paths}) for i in range(len(items))
        ]


def _registered_names() -> set[str]:
    from mediq_env.attributes import ATTRIBUTES

    return set(ATTRIBUTES)


# ---------------------------------------------------------------------------------------------------
# Environment proxies

PROXIES: Mapping[str, str] = {
    "proxy_answerable": "1 if the patient's reply revealed at least one case fact not already known (known: revealed "
    "by an earlier turn, or stated in the opening — the case's known_facts), else 0 (needs a reply).",
    "proxy_info_gain": "How many case facts the reply revealed that were not already known (not revealed by an earlier "
    "turn, not stated in the opening); a count; needs a reply.",
    "proxy_key_fact": "1 if the reply newly revealed one of the case's key facts, else 0 (needs a reply and a "
    "case with key_facts).",
    "proxy_repeat": "1 if the question repeats what is already known, else 0: by meaning, its reply revealed facts and "
    "every one of them was already known (an earlier turn or the opening); or by words, the same normalised text as "
    "an earlier question or a content-word Jaccard overlap >= the threshold.",
    "proxy_focus": "0 for an action the question-form gate rejects (keyword list, catch-all, statement, several "
    "questions, a guess at the options, gibberish) and for a repeat (as proxy_repeat judges it: re-asking what is "
    "known is focused on nothing new); otherwise 1 for a single question of 3..30 words, 0.5 for a single one outside "
    "that length, 0 for a compound question (several question marks, or 'and/or' joining a second interrogative "
    "clause).",
    "proxy_relevance": "Highest cosine similarity between a fact the reply revealed and the correct option's text, "
    "with the MiniLM embedder (NaN without an embedder, a case or a revealed fact).",
}
"""The model-free proxies and what each measures. They are cheap signals from the environment that only
loosely track the rubric attributes (answerability, diagnostic relevance, focus): a question can be
answerable yet reveal nothing in a case whose facts happen not to cover it."""

_NORMALISE = re.compile(r"[^a-z0-9 ]+")
_INTERROGATIVE = (
    r"do|does|did|are|is|was|were|have|has|had|can|could|would|will|should|when|what|where|how|why|which|who"
)
_COMPOUND = re.compile(rf"\b(?:and|or)\s+(?:{_INTERROGATIVE})\b", re.I)


def _normalise_text(text: str) -> str:
    return " ".join(_NORMALISE.sub(" ", text.lower()).split())


def earlier_questions(state: DialogueState) -> list[str]:
    """The questions asked so far (invalid-action turns excluded)."""
    return [t.question for t in state.turns if not t.reply.startswith(INVALID_PREFIX)]


def is_repeat(question: str, earlier: Sequence[str], threshold: float = 0.6) -> bool:
    """Whether ``question`` repeats one of ``earlier``: the same text after lower-casing and dropping
    punctuation, or a Jaccard overlap of stemmed content words of at least ``threshold``
    ("Does ibuprofen bring on your wheezing?" repeats "Does taking ibuprofen or aspirin bring on your
    wheezing?" at 0.6; "Do you smoke cigarettes?" after "Do you smoke?", at 0.5, does not). Crude on purpose:
    it sees words, not meaning, and is cheap enough for every step."""
    from mediq_env.patient import tokenize

    norm = _normalise_text(question)
    tokens = set(tokenize(question))
    for prev in earlier:
        if _normalise_text(prev) == norm:
            return True
        prev_tokens = set(tokenize(prev))
        if tokens and prev_tokens and len(tokens & prev_tokens) / len(tokens | prev_tokens) >= threshold:
            return True
    return False


def known_before(context: DialogueState, case: Case | None = None) -> set[int]:
    """Facts the doctor already has before the question: those revealed by earlier turns, plus those the opening
    states (``case.known_facts``; read with ``getattr`` so cases of any version work)."""
    known = {i for t in context.turns for i in t.revealed}
    if case is not None:
        known.update(getattr(case, "known_facts", ()) or ())
    return known


def repeat_signals(
    question: str,
    context: DialogueState,
    case: Case | None = None,
    reply: PatientReply | None = None,
    threshold: float = 0.6,
) -> dict[str, bool]:
    """Why a question counts as a repeat: ``meaning`` — its reply revealed facts, all of them already known
    (a paraphrase or an echo of the opening is caught however it is worded); ``words`` — :func:`is_repeat`
    against the earlier questions. Either one makes it a repeat (:func:`is_repeat_step`).

    A reply that reveals nothing is not a repeat by meaning: abstaining says nothing about what was asked.
    """
    by_meaning = reply is not None and bool(reply.revealed) and set(reply.revealed) <= known_before(context, case)
    by_words = is_repeat(question, earlier_questions(context), threshold)
    return {"meaning": bool(by_meaning), "words": by_words}


def is_repeat_step(
    question: str,
    context: DialogueState,
    case: Case | None = None,
    reply: PatientReply | None = None,
    threshold: float = 0.6,
) -> bool:
    """Whether a question repeats what is already known, by meaning or by words (see :func:`repeat_signals`);
    the rule behind both ``proxy_repeat`` and the reward wrapper's repeat penalty."""
    return any(repeat_signals(question, context, case, reply, threshold).values())


def focus_features(question: str, options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What :data:`proxy_focus <PROXIES>` looks at: the question-form gate's verdict (``options``: the case's
    answer options, so that guesses at an option's text are caught), word count, question marks,
    compound-ness, and the score.

    The gate comes first because form alone was gameable: a keyword list or "Tell me everything." is short,
    has no second question mark and so scored a full 1.
    """
    from mediq_env.question_gate import check_question

    q = question.strip()
    words = len(q.split())
    marks = q.count("?")
    compound = marks >= 2 or _COMPOUND.search(q) is not None
    gate = check_question(q, options).reason
    score = 0.0 if gate != "ok" or compound else (1.0 if 3 <= words <= 30 else 0.5)
    return {"gate": gate, "words": words, "question_marks": marks, "compound": compound, "score": score}


class EnvironmentScorer:
    """Model-free proxies computed from the dialogue, the case and the patient's reply (see :data:`PROXIES`).

    ``embedder``: ``"auto"`` loads MiniLM (:func:`mediq_env.patient.load_embedder`) the first time
    ``proxy_relevance`` is needed, and leaves it NaN if the model is not installed; ``None`` never embeds;
    any object with ``encode(list[str]) -> array`` is used as is.
    """

    def __init__(
        self,
        proxies: Sequence[str] | None = None,
        *,
        embedder: Any = "auto",
        repeat_threshold: float = 0.6,
        name: str = "environment",
    ) -> None:
        chosen = tuple(PROXIES) if proxies is None else tuple(proxies)
        unknown = [p for p in chosen if p not in PROXIES]
        if unknown:
            raise ConfigError(f"unknown proxies {unknown}; known: {sorted(PROXIES)}")
        if not 0 < repeat_threshold <= 1:
            raise ConfigError(f"repeat_threshold must be in (0, 1], got {repeat_threshold}")
        self.proxies = chosen
        self.repeat_threshold = repeat_threshold
        self.name = name
        self._embedder_spec = embedder
        self._embedder: Any = None if isinstance(embedder, str) or embedder is None else embedder
        self._embedder_error: str | None = None if embedder is not None else "no embedder configured"

    @property
    def keys(self) -> tuple[str, ...]:
        return self.proxies

    def _get_embedder(self) -> Any:
        if self._embedder is None and self._embedder_spec == "auto" and self._embedder_error is None:
            from mediq_env.patient import load_embedder

            try:
                self._embedder = load_embedder()
            except MissingDependencyError as err:
                self._embedder_error = str(err)
        return self._embedder

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreRecord]:
        records = [self._score_one(item) for item in items]
        if "proxy_relevance" in self.proxies:
            self._relevance(items, records)
        return records

    def _score_one(self, item: ScoreItem) -> ScoreRecord:
        scores: dict[str, float] = {}
        raw: dict[str, Any] = {}
        bounds: dict[str, tuple[float, float]] = {}
        reply, case = item.reply, item.case
        # Known = revealed by earlier turns or stated in the opening: re-revealing either is no information,
        # so it must pay neither answerable nor info gain (otherwise echoing the opening is rewarded).
        known = known_before(item.context, case)
        new = list(dict.fromkeys(i for i in reply.revealed if i not in known)) if reply is not None else []
        signals = repeat_signals(item.question, item.context, case, reply, self.repeat_threshold)
        for p in self.proxies:
            if p == "proxy_repeat":
                scores[p] = float(any(signals.values()))
                raw[p] = signals
                bounds[p] = (0.0, 1.0)
            elif p == "proxy_focus":
                options = case.options if case is not None else item.context.options
                feats = focus_features(item.question, options)
                feats["repeat"] = any(signals.values())
                # Form alone must not pay a repeat: asked five times, one good question otherwise earned
                # focus on every re-ask, more than the repeat penalty takes back (benchmarks/hacks.py).
                scores[p] = 0.0 if feats["repeat"] else feats.pop("score")
                feats.pop("score", None)
                raw[p] = feats
                bounds[p] = (0.0, 1.0)
            elif p == "proxy_relevance":
                scores[p] = NAN  # filled in by _relevance, batched over items
            elif reply is None:
                scores[p] = NAN
                raw[p] = "no patient reply"
            elif p == "proxy_answerable":
                scores[p] = float(bool(new))
                raw[p] = {"revealed": list(reply.revealed), "new_facts": new}
                bounds[p] = (0.0, 1.0)
            elif p == "proxy_info_gain":
                scores[p] = float(len(new))
                raw[p] = {"new_facts": new, "n_facts": len(case.facts) if case is not None else None}
            elif p == "proxy_key_fact":
                if case is None or not case.key_facts:
                    scores[p] = NAN
                    raw[p] = "no case" if case is None else "the case has no key_facts"
                else:
                    hits = sorted(set(new) & set(case.key_facts))
                    scores[p] = float(bool(hits))
                    raw[p] = {"key_facts_revealed": hits}
                    bounds[p] = (0.0, 1.0)
        return ScoreRecord(scores, self.name, raw, bounds)

    def _relevance(self, items: Sequence[ScoreItem], records: list[ScoreRecord]) -> None:
        todo = []
        for j, item in enumerate(items):
            why = (
                "no patient reply"
                if item.reply is None
                else "no case"
                if item.case is None
                else "no fact revealed"
                if not item.reply.revealed
                else None
            )
            if why is not None:
                records[j].raw["proxy_relevance"] = why
            else:
                todo.append(j)
        if not todo:
            return
        embedder = self._get_embedder()
        if embedder is None:
            for j in todo:
                records[j].raw["proxy_relevance"] = self._embedder_error or "no embedder"
            return
        texts: list[str] = []
        index: dict[str, int] = {}

        def slot(text: str) -> int:
            if text not in index:
                index[text] = len(texts)
                texts.append(text)
            return index[text]

        plan = []
        for j in todo:
            item = items[j]
            assert item.case is not None and item.reply is not None
            facts = [slot(item.case.facts[i]) for i in item.reply.revealed]
            options = {k: slot(v) for k, v in item.case.options.items()}
            plan.append((j, facts, options, item.case.answer))
        emb = np.asarray(embedder.encode(texts), dtype=np.float32)  # one encode call for the batch
        emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        for j, facts, options, answer in plan:
            sims = {k: float(max(emb[f] @ emb[o] for f in facts)) for k, o in options.items()}
            records[j].scores["proxy_relevance"] = sims[answer]
            others = [v for k, v in sims.items() if k != answer]
            records[j].raw["proxy_relevance"] = {
                "similarity_by_option": sims,
                "margin_over_best_other": sims[answer] - max(others) if others else None,
            }
            records[j].bounds["proxy_relevance"] = (-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------


class CompositeScorer:
    """Several scorers as one: each is called once per :meth:`score` call and their scores are merged.

    Score names must not collide (two scorers both producing ``clarity`` would silently overwrite one
    another); ``raw`` is keyed by each scorer's name.
    """

    def __init__(self, *scorers: Scorer, name: str | None = None) -> None:
        if not scorers:
            raise ConfigError("CompositeScorer needs at least one scorer")
        self.scorers = scorers
        self.name = name or "+".join(s.name for s in scorers)
        seen: dict[str, str] = {}
        for s in scorers:
            for key in getattr(s, "keys", ()):
                if key in seen:
                    raise ConfigError(f"score {key!r} is produced by both {seen[key]!r} and {s.name!r}")
                seen[key] = s.name

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for s in self.scorers for k in getattr(s, "keys", ()))

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreRecord]:
        if not items:
            return []
        merged = [ScoreRecord({}, self.name, {}) for _ in items]
        for s in self.scorers:
            records = s.score(items)
            if len(records) != len(items):
                raise ConfigError(f"scorer {s.name!r} returned {len(records)} records for {len(items)} items")
            for out, rec in zip(merged, records, strict=True):
                clash = set(out.scores) & set(rec.scores)
                if clash:
                    raise ConfigError(f"scorer {s.name!r} produced scores already given by another: {sorted(clash)}")
                out.scores.update(rec.scores)
                out.bounds.update(rec.bounds)
                out.raw[s.name] = rec.raw
        return merged
