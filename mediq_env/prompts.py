"""Prompt templates for the model roles that live in mediq_env: the LLM patient and the judges.

Written for this project (facts from the MediQ and ALFA papers carry over; their prompt text does not).
The doctor-side prompts are in :mod:`agents.prompts`.
"""

from __future__ import annotations

from collections.abc import Sequence

from mediq_env.backends.base import Chat

__all__ = ["patient_freeform_chat", "patient_select_chat"]

PATIENT_FREEFORM_SYSTEM = (
    "You are role-playing a patient talking to a doctor. You know only the facts listed below about "
    "yourself. Answer the doctor's question in the first person, in one or two short sentences, using only "
    "facts that answer that exact question. Do not volunteer anything else, do not guess, and never invent "
    "a detail that is not in the list. If no fact answers the question, say exactly: "
    "\"Sorry, I can't answer that.\""
)

PATIENT_SELECT_SYSTEM = (
    "You help simulate a patient. Below is a numbered list of facts about the patient and a question from "
    "a doctor. Reply with the numbers of the facts that directly answer the question, separated by commas "
    "(at most {k}), most relevant first. If none of the facts answers it, reply NONE. Reply with numbers "
    "or NONE only."
)


def _numbered(facts: Sequence[str]) -> str:
    return "\n".join(f"{i + 1}. {fact}" for i, fact in enumerate(facts))


def patient_freeform_chat(facts: Sequence[str], question: str, history: Sequence[tuple[str, str]] = ()) -> Chat:
    chat: Chat = [{"role": "system", "content": f"{PATIENT_FREEFORM_SYSTEM}\n\nYour facts:\n{_numbered(facts)}"}]
    for q, a in history:
        chat.append({"role": "user", "content": q})
        chat.append({"role": "assistant", "content": a})
    chat.append({"role": "user", "content": question})
    return chat


def patient_select_chat(facts: Sequence[str], question: str, k: int) -> Chat:
    return [
        {"role": "system", "content": PATIENT_SELECT_SYSTEM.format(k=k)},
        {"role": "user", "content": f"Facts:\n{_numbered(facts)}\n\nDoctor's question: {question}\n\nFact numbers:"},
    ]


# ---------------------------------------------------------------------------------------------------
# Judges: rate one follow-up question on one attribute (pointwise), or compare two (pairwise).
# Used by mediq_env.scoring. The judge sees what the doctor saw (never the hidden facts or the answer),
# so it rates the question as asked, not its outcome; outcomes are measured by the model-free proxies.

JUDGE_POINTWISE_SYSTEM = (
    "You assess the quality of follow-up questions that a doctor asks a patient. You rate one question on "
    "one attribute only, using the 1-5 scale given, and ignore every other aspect of the question. "
    "Reply with a single digit from 1 to 5 and nothing else."
)

JUDGE_PAIRWISE_SYSTEM = (
    "You compare two follow-up questions that a doctor could ask a patient at the same point of a "
    "conversation. Judge them on one attribute only and ignore every other aspect. The order in which they "
    "are shown means nothing. Reply with exactly one word: A if question A is better on this attribute, B "
    "if question B is better, or TIE if neither is better."
)


_EXAMPLE_CONTEXT = "Patient's initial information: I have had a cough for a week.\n(No questions asked yet.)"

#: Two worked exchanges shown before the real request when ``examples=True``. They teach the reply
#: *format* to small models that otherwise answer in prose; a strong judge does not need them. Caveat:
#: tiny models tend to copy an example's answer, which the reliability benchmark makes visible.
JUDGE_POINTWISE_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Do you have a fever?", "5"),
    ("And the thing, when did it?", "2"),
)
JUDGE_PAIRWISE_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("And the thing, when?", "Do you have a fever?", "B"),
    ("Is your cough dry?", "Is it a dry cough?", "TIE"),
)


def _pointwise_user(title: str, definition: str, rubric: str, context: str, question: str) -> str:
    return (
        f"Attribute: {title}\n{definition}\n\nScale:\n{rubric}\n\n"
        f"Conversation so far:\n{context}\n\n"
        f"Doctor's next question: {question}\n\n"
        f"Rate the doctor's next question on {title.lower()} (1-5). Score:"
    )


def judge_pointwise_chat(
    title: str, definition: str, rubric: str, context: str, question: str, *, examples: bool = False
) -> Chat:
    """One rating request: attribute ``title``/``definition``/``rubric`` (lines "5: ..." to "1: ...").

    ``examples`` inserts :data:`JUDGE_POINTWISE_EXAMPLES` (rated on clarity) as earlier turns."""
    chat: Chat = [{"role": "system", "content": JUDGE_POINTWISE_SYSTEM}]
    if examples:
        for q, score in JUDGE_POINTWISE_EXAMPLES:
            chat.append({"role": "user", "content": f"Attribute: Clarity\n\nConversation so far:\n{_EXAMPLE_CONTEXT}\n\n"
                         f"Doctor's next question: {q}\n\nRate the doctor's next question on clarity (1-5). Score:"})
            chat.append({"role": "assistant", "content": score})
    chat.append({"role": "user", "content": _pointwise_user(title, definition, rubric, context, question)})
    return chat


def judge_pairwise_chat(
    title: str, definition: str, context: str, question_a: str, question_b: str, *, examples: bool = False
) -> Chat:
    """One comparison request; the caller shows each pair in both orders to measure position bias.

    ``examples`` inserts :data:`JUDGE_PAIRWISE_EXAMPLES` (compared on clarity) as earlier turns."""
    chat: Chat = [{"role": "system", "content": JUDGE_PAIRWISE_SYSTEM}]
    if examples:
        for qa, qb, verdict in JUDGE_PAIRWISE_EXAMPLES:
            chat.append({"role": "user", "content": f"Attribute: Clarity\n\nConversation so far:\n{_EXAMPLE_CONTEXT}\n\n"
                         f"Question A: {qa}\nQuestion B: {qb}\n\nWhich question is better on clarity? Answer A, B or TIE. Verdict:"})
            chat.append({"role": "assistant", "content": verdict})
    user = (
        f"Attribute: {title}\n{definition}\n\n"
        f"Conversation so far:\n{context}\n\n"
        f"Question A: {question_a}\n"
        f"Question B: {question_b}\n\n"
        f"Which question is better on {title.lower()}? Answer A, B or TIE. Verdict:"
    )
    chat.append({"role": "user", "content": user})
    return chat


__all__ += [  # appended so the patient prompts above stay untouched
    "JUDGE_PAIRWISE_EXAMPLES",
    "JUDGE_PAIRWISE_SYSTEM",
    "JUDGE_POINTWISE_EXAMPLES",
    "JUDGE_POINTWISE_SYSTEM",
    "judge_pairwise_chat",
    "judge_pointwise_chat",
]
