"""The agent protocol: a batch of dialogue states in, one action per state out.

Agents see :class:`mediq_env.DialogueState` (never hidden facts). Each decision comes with a record of how
it was made (``AgentStep.info``): the intermediate answer and confidence at that turn, the raw model
output, and any parsing fallback — so that benchmarks can plot accuracy against questions asked and audit
every decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from mediq_env import DialogueState

__all__ = ["FALLBACK_KINDS", "Agent", "AgentStep", "FallbackKind"]

FallbackKind = Literal["decision_unparsed", "question_missing", "answer_missing"]
FALLBACK_KINDS: tuple[FallbackKind, ...] = ("decision_unparsed", "question_missing", "answer_missing")
"""Why a model-driven agent's action did not come from the model's own output on a turn:

* ``decision_unparsed`` — no ASK:/ANSWER: line (or no confidence) decided the turn; the agent asked;
* ``question_missing`` — it asked but wrote no usable question; a checklist question was asked instead;
* ``answer_missing`` — it had to answer but no option letter parsed; a fixed letter was answered.
"""


@dataclass
class AgentStep:
    """One decision. ``action`` follows the env's grammar (``"ANSWER: C"``, ``{"answer": "C"}`` or a question).

    Conventional ``info`` keys: ``decision`` ("ask" | "answer"), ``intermediate_answer`` (letter or None),
    ``confidence`` (float in [0, 1] or None), ``raw`` (model outputs), ``fallback``.

    Model-driven agents record ``fallback`` as one of :data:`FALLBACK_KINDS` (the first that happened this
    turn) or None when the model's own output made the action, ``fallback_kinds`` (every kind that happened
    this turn, in stage order; its presence marks a turn whose fallbacks are counted by the benchmark) and
    ``fallback_detail`` (the human-readable reasons, including minor ones that did not change the action).
    Model-free baselines record ``fallback`` as a free-text reason or None and no ``fallback_kinds``.
    """

    action: str | dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Agent(Protocol):
    name: str

    def act(self, states: Sequence[DialogueState]) -> list[AgentStep]: ...
