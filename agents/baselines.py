"""Model-free baselines: what an agent scores with no medical knowledge at all.

Why these exist: a question-asking agent is only interesting if it beats (a) answering at once, (b) asking a
generic history-taking checklist and (c) asking checklist questions in random order. None of these agents
knows anything about the case, so when they must answer they use a fixed, documented letter (default
``"A"``), never a hidden guess. Randomness appears only where the user asks for it with a seed, and then
it is reproducible. The benchmark's majority-letter baseline (the most common gold letter of a data set) is
a separate thing: pass that letter as ``letter=`` / ``answer_letter=`` to get it.

All three record the usual ``AgentStep.info`` keys: ``decision``, ``intermediate_answer`` (the letter they
would answer now), ``confidence`` (None: they have none), ``raw`` (None: no model) and ``fallback``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from agents.base import AgentStep
from mediq_env import DialogueState
from mediq_env.errors import ConfigError

__all__ = [
    "CHECKLIST",
    "PREGNANCY_QUESTION",
    "AnswerNowAgent",
    "ChecklistAgent",
    "RandomQuestionAgent",
    "checklist_for",
    "next_unasked",
]

PREGNANCY_QUESTION = "Is there any chance you could be pregnant?"

# One question per entry: the patient's question-form gate turns away several questions in one action.
CHECKLIST: tuple[str, ...] = (
    "When did this problem first begin?",
    "Has it been getting better, worse, or staying the same?",
    "Have you noticed any other symptoms with it, such as fever, pain, nausea, or weight change?",
    "What illnesses, operations, or hospital stays have you had in the past?",
    "Which medicines, supplements, or home remedies are you taking at the moment?",
    "Are you allergic to any medicines or foods?",
    "Has anyone in your family had a similar problem or another serious illness?",
    "Do you smoke, drink alcohol, or use any recreational drugs?",
    "Have you travelled anywhere recently?",
    PREGNANCY_QUESTION,
    "What work do you do?",
    "Have you had any tests or scans for this, and what did they show?",
)
"""A generic history-taking checklist (onset, severity, associated symptoms, past history, medications,
allergies, family history, social history, travel, pregnancy, work, tests so far), in our own words."""

_MALE = re.compile(r"\b(?:man|men|male|boy|gentleman|he|him|his|husband|father|son)\b", re.I)
_FEMALE = re.compile(r"\b(?:woman|women|female|girl|lady|she|her|hers|wife|mother|daughter|pregnan\w*)\b", re.I)
_SPACE = re.compile(r"\s+")


def checklist_for(state: DialogueState, pool: Sequence[str] = CHECKLIST) -> list[str]:
    """``pool`` without the pregnancy question when the case describes only a male patient.

    The rule is deliberately simple and visible: the initial information and extras mention male words and
    no female ones. Anything less clear keeps the question (asking is safer than assuming).
    """
    text = " ".join([state.initial_info, *state.extra.values()])
    if _MALE.search(text) and not _FEMALE.search(text):
        return [q for q in pool if q != PREGNANCY_QUESTION]
    return list(pool)


def _norm(question: str) -> str:
    return _SPACE.sub(" ", question).strip().lower()


def next_unasked(state: DialogueState, pool: Sequence[str]) -> list[str]:
    """The questions of ``pool`` not yet asked in ``state`` (compared ignoring case and spacing), in order."""
    asked = {_norm(turn.question) for turn in state.turns}
    return [q for q in pool if _norm(q) not in asked]


def _answer_letter(state: DialogueState, letter: str) -> tuple[str, str | None]:
    """``letter`` if the case offers it, else the case's first letter (with the reason, for ``fallback``)."""
    if letter in state.options:
        return letter, None
    first = next(iter(state.options))
    return first, f"letter {letter!r} is not an option of this case; answered the first option {first!r}"


def _check_letter(letter: str) -> str:
    if not isinstance(letter, str) or len(letter.strip()) != 1 or not letter.strip().isalpha():
        raise ConfigError(f"an answer letter must be a single letter, got {letter!r}")
    return letter.strip().upper()


def _state_rng(seed: int, state: DialogueState, salt: int) -> np.random.Generator:
    """A generator for one decision, derived from the seed, the case and the turn.

    Deriving it per decision (rather than drawing from one shared stream) makes an episode's draws the same
    whether it runs alone or in a batch, in any order.
    """
    entropy = [seed, zlib.crc32(state.case_id.encode("utf-8")), state.questions_asked, salt]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _answer_step(letter: str, fallback: str | None, **extra: Any) -> AgentStep:
    info: dict[str, Any] = {
        "decision": "answer",
        "intermediate_answer": letter,
        "confidence": None,
        "raw": None,
        "fallback": fallback,
    }
    info.update(extra)
    return AgentStep({"answer": letter}, info)


def _ask_step(question: str, letter: str, fallback: str | None, **extra: Any) -> AgentStep:
    info: dict[str, Any] = {
        "decision": "ask",
        "intermediate_answer": letter,
        "confidence": None,
        "raw": None,
        "fallback": fallback,
    }
    info.update(extra)
    return AgentStep({"question": question}, info)


class AnswerNowAgent:
    """Answers at once, asking nothing.

    With no knowledge it answers a fixed ``letter`` (default ``"A"``; a letter the case lacks falls back to
    the case's first option, recorded in ``info["fallback"]``). ``letter=None`` with a ``seed`` answers a
    uniformly drawn option instead, reproducibly (a random-guess baseline).
    """

    def __init__(self, letter: str | None = "A", *, seed: int | None = None) -> None:
        if letter is None and seed is None:
            raise ConfigError("AnswerNowAgent needs a letter, or letter=None together with a seed")
        self.letter = None if letter is None else _check_letter(letter)
        self.seed = seed
        self.name = f"answer-now({self.letter})" if self.letter else f"answer-now(random, seed={seed})"

    def act(self, states: Sequence[DialogueState]) -> list[AgentStep]:
        steps = []
        for state in states:
            if self.letter is None:
                assert self.seed is not None
                letters = state.letters()
                letter, fallback = letters[int(_state_rng(self.seed, state, 0).integers(len(letters)))], None
            else:
                letter, fallback = _answer_letter(state, self.letter)
            steps.append(_answer_step(letter, fallback))
        return steps


class ChecklistAgent:
    """Asks a fixed history-taking checklist, one question per turn, then answers a fixed letter.

    It asks the first checklist question not yet asked in the dialogue (the pregnancy question is skipped for
    cases that describe only a male patient, see :func:`checklist_for`), until the checklist or the question
    budget ends or the env forces an answer; then it answers ``answer_letter`` (default ``"A"``).
    """

    def __init__(self, checklist: Sequence[str] = CHECKLIST, *, answer_letter: str = "A") -> None:
        if not checklist or any(not isinstance(q, str) or not q.strip() for q in checklist):
            raise ConfigError("the checklist must be a non-empty list of non-empty questions")
        self.checklist = tuple(checklist)
        self.answer_letter = _check_letter(answer_letter)
        self.name = f"checklist({self.answer_letter})"

    def act(self, states: Sequence[DialogueState]) -> list[AgentStep]:
        steps = []
        for state in states:
            letter, fallback = _answer_letter(state, self.answer_letter)
            remaining = next_unasked(state, checklist_for(state, self.checklist))
            if state.must_answer or state.questions_left <= 0 or not remaining:
                steps.append(_answer_step(letter, fallback))
            else:
                steps.append(_ask_step(remaining[0], letter, fallback))
        return steps


class RandomQuestionAgent:
    """Asks checklist questions in a random order (without repeats), then answers.

    Draws come from numpy Generators derived from ``seed``, the case id and the turn, so a run is
    reproducible and independent of batching. It answers ``answer_letter`` (default ``"A"``), or with
    ``answer_letter=None`` a seeded uniform draw among the options.
    """

    def __init__(self, seed: int, *, pool: Sequence[str] = CHECKLIST, answer_letter: str | None = "A") -> None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if not pool or any(not isinstance(q, str) or not q.strip() for q in pool):
            raise ConfigError("the question pool must be a non-empty list of non-empty questions")
        self.seed = int(seed)
        self.pool = tuple(pool)
        self.answer_letter = None if answer_letter is None else _check_letter(answer_letter)
        self.name = f"random(seed={self.seed})"

    def _letter(self, state: DialogueState) -> tuple[str, str | None]:
        if self.answer_letter is not None:
            return _answer_letter(state, self.answer_letter)
        letters = state.letters()
        # Salt 1 keeps the answer draw independent of the question draw (salt 0) at the same turn.
        return letters[int(_state_rng(self.seed, state, 1).integers(len(letters)))], None

    def act(self, states: Sequence[DialogueState]) -> list[AgentStep]:
        steps = []
        for state in states:
            letter, fallback = self._letter(state)
            remaining = next_unasked(state, checklist_for(state, self.pool))
            if state.must_answer or state.questions_left <= 0 or not remaining:
                steps.append(_answer_step(letter, fallback))
            else:
                pick = int(_state_rng(self.seed, state, 0).integers(len(remaining)))
                steps.append(_ask_step(remaining[pick], letter, fallback))
        return steps
