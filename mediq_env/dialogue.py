"""The doctor's view of an episode, and how it is rendered as the text observation.

:class:`DialogueState` is everything an agent may see (never the hidden facts or the answer); the env puts
it in ``info["state"]`` and renders it with :func:`render_observation` as the Text observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mediq_env.patient import Turn

__all__ = ["DialogueState", "Turn", "render_observation"]

ANSWER_INSTRUCTIONS = "Ask the patient one question, or give your final answer as 'ANSWER: <letter>'."
FORCED_INSTRUCTIONS = "You have no questions left. Give your final answer now as 'ANSWER: <letter>'."


@dataclass(frozen=True)
class DialogueState:
    """What the doctor knows at one point of an episode."""

    case_id: str
    initial_info: str
    question: str
    options: Mapping[str, str]
    turns: tuple[Turn, ...] = ()
    questions_left: int = 0
    must_answer: bool = False
    # Free-form extras an agent may use (e.g. demographics shown up front); never hidden facts.
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def questions_asked(self) -> int:
        return len(self.turns)

    def letters(self) -> list[str]:
        return list(self.options)


def render_observation(state: DialogueState) -> str:
    """The Text observation: initial information, question, options, dialogue so far, what to do next."""
    lines = [f"Initial information: {state.initial_info}", f"Question: {state.question}", "Options:"]
    lines += [f"{letter}: {text}" for letter, text in state.options.items()]
    if state.turns:
        lines.append("Dialogue so far:")
        for turn in state.turns:
            lines.append(f"Doctor: {turn.question}")
            lines.append(f"Patient: {turn.reply}")
    if state.must_answer:
        lines.append(FORCED_INSTRUCTIONS)
    else:
        lines.append(f"Questions left: {state.questions_left}. {ANSWER_INSTRUCTIONS}")
    return "\n".join(lines)
