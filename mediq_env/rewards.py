"""Reward functions: named components, summed into the scalar reward.

The env calls its reward function once per step with a :class:`StepEvent` and reports every component in
``info["reward_components"]``; the reward is their sum. Per-question attribute rewards are added by
:class:`mediq_env.wrappers.AttributeReward`, which extends the same dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from mediq_env.errors import ConfigError

if TYPE_CHECKING:
    from mediq_env.case import Case
    from mediq_env.patient import PatientReply

__all__ = ["CorrectnessReward", "RewardFunction", "StepEvent"]

StepKind = Literal["question", "answer", "invalid", "timeout"]


@dataclass(frozen=True)
class StepEvent:
    """What happened in one step. ``kind == "timeout"``: the forced-answer turn passed without an answer."""

    kind: StepKind
    case: Case
    turn: int
    action_text: str = ""
    reply: PatientReply | None = None
    new_facts: tuple[int, ...] = ()
    letter: str | None = None
    correct: bool | None = None
    forced: bool = False


class RewardFunction(Protocol):
    """Returns named reward components for one step; the env's reward is their sum."""

    def __call__(self, event: StepEvent) -> dict[str, float]: ...


@dataclass(frozen=True)
class CorrectnessReward:
    """The default reward: ``correct`` for a right final answer, ``incorrect`` for a wrong or missing one,
    minus ``question_cost`` per question and ``invalid_penalty`` per invalid action."""

    correct: float = 1.0
    incorrect: float = 0.0
    question_cost: float = 0.0
    invalid_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.question_cost < 0 or self.invalid_penalty < 0:
            raise ConfigError("question_cost and invalid_penalty are costs: give them as values >= 0")

    def __call__(self, event: StepEvent) -> dict[str, float]:
        if event.kind == "question":
            return {"question_cost": -self.question_cost}
        if event.kind == "invalid":
            return {"question_cost": -self.question_cost, "invalid_action": -self.invalid_penalty}
        # An answer, or the forced turn passing without one (scored as incorrect).
        return {"correctness": self.correct if event.correct else self.incorrect}
