"""The doctor-side prompts: one function per model call, each turning a DialogueState into a chat.

Why a module of its own: the parsers in :mod:`agents.parsing` read exactly the formats these prompts ask for
(``ASK:``/``ANSWER:``, ``CONFIDENT: YES|NO``, ``CONFIDENCE: <number>``), so the two are kept side by side and
changed together. The wording is this project's own. Every chat is a system message followed by one user
message that holds the whole case, so a backend never needs multi-turn state and identical states give
identical chats (which makes response caching and scripted tests exact).
"""

from __future__ import annotations

from typing import Literal

from mediq_env import DialogueState
from mediq_env.backends.base import Chat

__all__ = [
    "LIKERT_LABELS",
    "SYSTEM_PROMPT",
    "Strategy",
    "answer_chat",
    "decision_chat",
    "format_case",
    "question_chat",
]

Strategy = Literal["implicit", "binary", "numeric", "likert"]

SYSTEM_PROMPT = (
    "You are a careful physician interviewing a patient in order to settle a multiple-choice clinical "
    "question. You know only what is written in the case summary and what the patient has told you in the "
    "interview. At each turn you may put one short question to the patient or commit to one of the lettered "
    "options. Good questions ask about a single thing the patient can answer and that would help you tell "
    "the options apart; do not repeat questions that were already answered."
)

LIKERT_LABELS: tuple[str, ...] = (
    "1 = very unsure",
    "2 = somewhat unsure",
    "3 = neither sure nor unsure",
    "4 = fairly confident",
    "5 = very confident",
)
"""The 1-5 rating scale shown to the model; :func:`agents.parsing.parse_confidence` reads the same words."""


def format_case(state: DialogueState) -> str:
    """The case as the doctor knows it: summary, question, lettered options, and the interview so far."""
    lines = [f"Case summary: {state.initial_info.strip()}"]
    lines += [f"{key.replace('_', ' ').capitalize()}: {value}" for key, value in state.extra.items()]
    lines += ["", f"Clinical question: {state.question.strip()}", "Options:"]
    lines += [f"  {letter}) {text}" for letter, text in state.options.items()]
    lines.append("")
    if state.turns:
        lines.append("Interview so far:")
        for n, turn in enumerate(state.turns, 1):
            lines.append(f"  Doctor ({n}): {turn.question}")
            lines.append(f"  Patient: {turn.reply}")
    else:
        lines.append("Interview so far: no questions asked yet.")
    lines.append(f"Questions you may still ask: {max(state.questions_left, 0)}")
    return "\n".join(lines)


def _chat(user: str) -> Chat:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _letters(state: DialogueState) -> str:
    return ", ".join(state.options)


def _finish(rationale: bool, form: str) -> str:
    """The output instruction: the decision line alone, or a short reasoning line first."""
    if rationale:
        return (
            "First write one line that starts with 'REASONING:' and says briefly what the findings so far "
            f"suggest and what is still unknown. Then, on a new line, write {form}"
        )
    return f"Reply with a single line: {form}"


def question_chat(state: DialogueState) -> Chat:
    """Ask for the next question to put to the patient (the question generator's only job)."""
    task = (
        "Write the one question you would now ask the patient to learn the most useful missing fact for "
        "choosing between the options. Ask about one thing only, in plain words a patient understands, and "
        "do not ask again about something already answered. Reply with the question alone, on one line."
    )
    return _chat(f"{format_case(state)}\n\n{task}")


def answer_chat(state: DialogueState) -> Chat:
    """Ask for the best option now: the intermediate answer every turn, and the final one when forced."""
    task = (
        "Based only on the information above, which option is most likely correct? "
        f"Reply with a single line: 'ANSWER: <letter>', where the letter is one of {_letters(state)}."
    )
    return _chat(f"{format_case(state)}\n\n{task}")


def decision_chat(state: DialogueState, strategy: Strategy, *, rationale: bool = False) -> Chat:
    """The chat that decides between asking and answering under one of MediQ's four strategies.

    ``implicit``: the model asks (``ASK: <question>``) or answers (``ANSWER: <letter>``) in one reply.
    ``binary``: is the information enough to answer now (``CONFIDENT: YES|NO``)?
    ``numeric``: the probability that an answer given now would be right (``CONFIDENCE: <0-1>``).
    ``likert``: a 1-5 rating of that confidence (``CONFIDENCE: <1-5>``).
    ``rationale`` asks for a one-line assessment before the decision line.
    """
    case = format_case(state)
    if strategy == "implicit":
        task = (
            "Decide whether you already know enough to choose the correct option, or whether you should "
            "first ask the patient something. If an important fact that could change your choice is still "
            "missing, ask about it. "
            + _finish(
                rationale,
                "either 'ASK: <one question for the patient>' or "
                f"'ANSWER: <letter>' with a letter from {_letters(state)}.",
            )
        )
    elif strategy == "binary":
        task = (
            "Are you confident enough to choose the correct option now, without asking the patient anything "
            "more? " + _finish(rationale, "'CONFIDENT: YES' or 'CONFIDENT: NO'.")
        )
    elif strategy == "numeric":
        task = (
            "How likely is it that you would choose the correct option if you had to answer now, with only the "
            "information above? Give a probability between 0 and 1. "
            + _finish(rationale, "'CONFIDENCE: <number between 0 and 1>'.")
        )
    elif strategy == "likert":
        task = (
            "How confident are you that you could choose the correct option now, with only the information "
            f"above? Use this scale: {'; '.join(LIKERT_LABELS)}. "
            + _finish(rationale, "'CONFIDENCE: <whole number from 1 to 5>'.")
        )
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return _chat(f"{case}\n\n{task}")
