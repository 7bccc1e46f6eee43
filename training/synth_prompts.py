"""Prompts of the ALFA-style data pipeline: the question-asker's prompt and the generator's rewrite requests.

Why a module of its own: :func:`asker_chat` is the *training* prompt format — the prompt of every SFT
example, every DPO/reward pair, and therefore the prompt a model trained on them must be given at inference.
SFT, DPO and reward-model data are built from this one function so they can never drift apart. The rewrite
prompts are separate because they are the generator's instructions, not something a trained model sees.

All wording is this project's own; it is built from each attribute's definition and rubric
(:mod:`mediq_env.attributes`) so that a user-registered attribute gets rewrite prompts for free. Bump
:data:`PROMPT_VERSION` whenever a prompt's text changes: a resumed synthesis run refuses to mix outputs of
two prompt versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from mediq_env.attributes import Attribute
from mediq_env.backends.base import Chat

__all__ = [
    "ASKER_SYSTEM",
    "PROMPT_VERSION",
    "REWRITE_SYSTEM",
    "Direction",
    "asker_chat",
    "format_thread",
    "rewrite_chat",
]

PROMPT_VERSION = "synth-v1"

Direction = Literal["enhanced", "corrupted"]

ASKER_SYSTEM = (
    "You are a physician replying to a patient who has asked for medical advice in an online forum. Before "
    "giving advice you gather what you still need to know. Ask the patient exactly one follow-up question: "
    "the one whose answer would help you most at this point, in words the patient understands, about "
    "something they have not already told you. Reply with the question alone."
)

REWRITE_SYSTEM = (
    "You edit follow-up questions that doctors ask patients, to build a dataset that teaches models what "
    "makes a question good or bad. Each request names one quality attribute. You change the question on "
    "that attribute only and keep every other aspect of it as it was. You reply with the edited question "
    "alone, on a single line, with no quotation marks, label or explanation."
)


def _truncate(text: str, max_chars: int) -> str:
    text = text.strip()
    if len(text) > max_chars:
        # Keep the beginning: patient posts state the problem first and add background later.
        return text[:max_chars].rstrip() + " [...]"
    return text


def format_thread(
    post: str, history: Sequence[tuple[str, str]] = (), *, title: str | None = None, max_post_chars: int = 4000
) -> str:
    """The patient's post (with its title) and the earlier doctor–patient exchanges, as plain text.

    Shared by the asker prompt and the rewrite prompts, so the generator sees the conversation exactly as
    the trained model will.
    """
    lines = []
    if title and title.strip():
        lines.append(f"Title: {title.strip()}")
    lines.append(f"Patient's post:\n{_truncate(post, max_post_chars)}")
    if history:
        lines.append("")
        lines.append("Earlier exchanges:")
        for q, a in history:
            lines.append(f"Doctor: {q.strip()}")
            lines.append(f"Patient: {a.strip() if a and a.strip() else '(no answer)'}")
    return "\n".join(lines)


def asker_chat(
    post: str, history: Sequence[tuple[str, str]] = (), *, title: str | None = None, max_post_chars: int = 4000
) -> Chat:
    """The question-asker's prompt: system + one user message holding the post and earlier turns.

    One user message (not alternating turns) because the earlier exchanges are between the patient and
    *other* doctors in a forum thread, and because a single-message prompt renders identically under every
    chat template, which keeps TRL's prompt/completion token boundary clean.
    """
    user = (
        f"{format_thread(post, history, title=title, max_post_chars=max_post_chars)}\n\n"
        "Write the one question you would ask this patient next."
    )
    return [{"role": "system", "content": ASKER_SYSTEM}, {"role": "user", "content": user}]


def rewrite_chat(
    attribute: Attribute,
    direction: Direction,
    question: str,
    post: str,
    history: Sequence[tuple[str, str]] = (),
    *,
    title: str | None = None,
    diagnosis: str | None = None,
    keep_medical_content: bool = True,
    target_level: int | None = None,
    max_post_chars: int = 4000,
) -> Chat:
    """Ask the generator for an ``enhanced`` (better on ``attribute``) or ``corrupted`` (worse) rewrite.

    ``target_level`` names the rubric level to aim for (default 5 when enhancing, 2 when corrupting: a
    plausible but clearly worse question teaches more than an absurd one). ``keep_medical_content`` asks for
    the medical content to stay verbatim (right for the general attributes; the clinical ones *are* the
    medical content). ``diagnosis`` (enhanced only) shows the thread's eventual diagnosis as hindsight,
    with an instruction not to name it, so the better question is better for the right reason.
    """
    if direction not in ("enhanced", "corrupted"):
        raise ValueError(f"direction must be 'enhanced' or 'corrupted', got {direction!r}")
    level = target_level if target_level is not None else (5 if direction == "enhanced" else 2)
    name = attribute.title.lower()
    keep = (
        "Keep its medical content exactly as it is: do not add, drop or change any symptom, body part, test, "
        "drug, condition or number."
        if keep_medical_content
        else f"Change its medical content only as far as {name} requires."
    )
    if direction == "enhanced":
        task = (
            f"Rewrite the doctor's question so that it is better on {name}, aiming for level {level}: "
            f'"{attribute.rubric[level]}" Keep what it asks about, its tone and roughly its length. {keep}'
        )
        if diagnosis:
            task += (
                f"\nHindsight, for you only: this patient's problem turned out to be: {diagnosis.strip()}. Use "
                "this to judge what would really help, but do not name or hint at this diagnosis in the question."
            )
    else:
        task = (
            f"Rewrite the doctor's question so that it is worse on {name}, aiming for level {level}: "
            f'"{attribute.rubric[level]}" It must still read like something a doctor could ask, and be as '
            f"good as before on every other aspect. Keep what it asks about, its tone and roughly its length. "
            f"{keep}"
        )
    user = (
        f"Attribute: {attribute.title}\n{attribute.definition}\n\n"
        f"Scale:\n{attribute.rubric_text()}\n\n"
        f"{format_thread(post, history, title=title, max_post_chars=max_post_chars)}\n\n"
        f"Doctor's question: {question.strip()}\n\n"
        f"{task}\n\nReply with the rewritten question only, on one line."
    )
    return [{"role": "system", "content": REWRITE_SYSTEM}, {"role": "user", "content": user}]
