"""The action grammar: strict, documented, never guesses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediq_env.actions import parse_action, resolve_option

OPTIONS = {"A": "Stroke", "B": "Panic attack", "C": "Sleep paralysis", "D": "Seizure"}
FIVE = {**OPTIONS, "E": "Migraine with aura"}


@pytest.mark.parametrize(
    ("action", "kind", "letter"),
    [
        ("ANSWER: C", "answer", "C"),
        ("answer:c", "answer", "C"),
        ("Final answer: (C)", "answer", "C"),
        ("ANSWER: C) Sleep paralysis", "answer", "C"),
        ("ANSWER: sleep paralysis.", "answer", "C"),
        ("Sleep Paralysis", "answer", "C"),
        ("C", "answer", "C"),
        ({"answer": "B"}, "answer", "B"),
        ({"answer": "panic attack", "confidence": 0.7}, "answer", "B"),
        ("Do you have a fever?", "question", None),
        ("QUESTION: Any chest pain?", "question", None),
        ("A cough?", "question", None),
        ("I don't know", "question", None),
        ({"question": "Any numbness now?"}, "question", None),
    ],
)
def test_grammar(action, kind, letter):
    parsed = parse_action(action, OPTIONS, 500)
    assert parsed.kind == kind
    assert parsed.letter == letter


@pytest.mark.parametrize(
    ("action", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ANSWER: E", "names none of the options"),
        ("ANSWER: B) Sleep paralysis", "names none"),
        ("ANSWER: maybe a stroke or a seizure", "names none"),
        ({"answer": "C", "question": "x"}, "exactly one"),
        ({"foo": 1}, "exactly one"),
        ({"answer": 3}, "must be a string"),
        ({"answer": "C", "confidence": "high"}, "must be a number"),
        (42, "string or a dict"),
        (None, "string or a dict"),
        ("x" * 501, "longer than 500"),
        ("QUESTION:   ", "question is empty"),
    ],
)
def test_invalid_actions_explain_themselves(action, fragment):
    parsed = parse_action(action, OPTIONS, 500)
    assert parsed.kind == "invalid"
    assert parsed.error is not None and fragment in parsed.error


def test_five_options():
    assert parse_action("ANSWER: E", FIVE, 100).letter == "E"
    assert parse_action("answer: migraine with aura", FIVE, 100).letter == "E"


@pytest.mark.parametrize("text", ["not", "eyes", "I don't know", "Seizures are common", "Abdomen", "Definitely C-section", "CD"])
def test_letters_inside_words_never_count(text):
    assert resolve_option(text, OPTIONS) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_property_never_crashes_and_answers_only_real_options(text):
    parsed = parse_action(text, OPTIONS, 60)
    assert parsed.kind in {"question", "answer", "invalid"}
    if parsed.kind == "answer":
        assert parsed.letter in OPTIONS
    if parsed.kind == "invalid":
        assert parsed.error


@settings(max_examples=200, deadline=None)
@given(letter=st.sampled_from(list(OPTIONS)), prefix=st.sampled_from(["ANSWER:", "answer :", "Final Answer:", "answer="]), pad=st.text(alphabet=" \t", max_size=3))
def test_property_answer_prefix_with_any_spacing(letter, prefix, pad):
    assert parse_action(f"{pad}{prefix}{pad}{letter}{pad}", OPTIONS, 100).letter == letter


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40))
def test_property_a_question_is_passed_through_unchanged(text):
    parsed = parse_action(text, OPTIONS, 100)
    if parsed.kind == "question":
        assert parsed.text in text
