"""Shared fakes for the scoring and reward-wrapper tests: a rule-based judge, a counting scorer, a case."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from mediq_env import Case
from mediq_env.backends.base import Chat
from mediq_env.backends.scripted import ScriptedBackend
from mediq_env.scoring import ScoreItem, Scorer, ScoreRecord

_ATTR = re.compile(r"^Attribute: (.+)$", re.M)
_QUESTION = re.compile(r"^Doctor's next question: (.*)$", re.M)


def rule_judge_reply(chat: Chat) -> str:
    """A deterministic pseudo-judge: the score depends on the attribute and the question's length.

    Questions containing ``GARBLE`` get an unparseable reply, so NaN handling is exercised.
    """
    user = chat[-1]["content"]
    attr = _ATTR.search(user)
    question = _QUESTION.search(user)
    assert attr and question, user
    q = question.group(1)
    if "GARBLE" in q:
        return "I think it is quite good overall"
    return str(1 + (len(q) + len(attr.group(1))) % 5)


def rule_judge(**kw: object) -> ScriptedBackend:
    return ScriptedBackend(rule_judge_reply, model_id="rule-judge", **kw)


class CountingScorer:
    """Wraps a scorer and records the size of every ``score`` call."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[int] = []

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(getattr(self.inner, "keys", ()))

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreRecord]:
        self.calls.append(len(items))
        return self.inner.score(items)


class HashEmbedder:
    """A deterministic bag-of-words embedder (no model): similar wording gives similar vectors."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, sum(map(ord, w)) % self.dim] += 1.0
        return out + 1e-3


def small_case(**overrides: object) -> Case:
    fields: dict[str, object] = {
        "id": "t1",
        "initial_info": "A 40-year-old man who smokes has lost weight.",
        "facts": (
            "The patient is 40 years old.",
            "The patient smokes 20 cigarettes a day.",
            "The patient has lost 6 kg in three months.",
            "The patient coughs up blood in the morning.",
        ),
        "question": "What is the most likely diagnosis?",
        "options": {"A": "Asthma", "B": "Lung cancer with blood in the sputum", "C": "Pneumonia", "D": "Reflux"},
        "answer": "B",
        "key_facts": (1, 3),
    }
    fields.update(overrides)
    return Case(**fields)
