"""The agent protocol: a batch of dialogue states in, one action per state out.

Agents see :class:`mediq_env.DialogueState` (never hidden facts). Each decision comes with a record of how
it was made (``AgentStep.info``): the intermediate answer and confidence at that turn, the raw model
output, and any parsing fallback — so that benchmarks can plot accuracy against questions asked and audit
every decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mediq_env import DialogueState

__all__ = ["Agent", "AgentStep"]


@dataclass
class AgentStep:
    """One decision. ``action`` follows the env's grammar (``"ANSWER: C"``, ``{"answer": "C"}`` or a question).

    Conventional ``info`` keys: ``decision`` ("ask" | "answer"), ``intermediate_answer`` (letter or None),
    ``confidence`` (float in [0, 1] or None), ``raw`` (model outputs), ``fallback`` (why a documented
    fallback was used, or None).
    """

    action: str | dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Agent(Protocol):
    name: str

    def act(self, states: Sequence[DialogueState]) -> list[AgentStep]: ...
