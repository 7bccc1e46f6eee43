"""Property-based and adversarial tests of the strict parsers in agents.parsing."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agents.parsing import (
    MAX_QUESTION_CHARS,
    parse_answer_letter,
    parse_confidence,
    parse_decision,
    parse_question,
)
from mediq_env.actions import normalise_option_text

OPTIONS4 = {"A": "Asthma", "B": "Lung cancer", "C": "Sleep paralysis", "D": "Gastro-oesophageal reflux"}
OPTIONS5 = {**OPTIONS4, "E": "Caesarean section"}
OPTION_POOL = [
    "Asthma",
    "Lung cancer",
    "Sleep paralysis",
    "Reflux",
    "Pneumonia",
    "Migraine",
    "Appendicitis",
    "Iron deficiency anaemia",
    "Tension headache",
    "Narcolepsy",
]


@st.composite
def option_sets(draw: st.DrawFn) -> dict[str, str]:
    n = draw(st.integers(min_value=2, max_value=10))
    texts = draw(st.lists(st.sampled_from(OPTION_POOL), min_size=n, max_size=n, unique=True))
    return dict(zip("ABCDEFGHIJ", texts, strict=False))


@st.composite
def options_and_letter(draw: st.DrawFn) -> tuple[dict[str, str], str]:
    options = draw(option_sets())
    return options, draw(st.sampled_from(sorted(options)))


# ---------------------------------------------------------------------------------------------------
# Answer letters


@given(options_and_letter())
def test_marked_and_bare_forms_name_the_letter(case: tuple[dict[str, str], str]) -> None:
    options, letter = case
    forms = [
        letter,
        letter.lower(),
        f"({letter})",
        f"{letter}) {options[letter]}",
        f"{letter}. {options[letter]}",
        f"ANSWER: {letter}",
        f"answer: {letter.lower()}",
        f"Final answer: ({letter})",
        f"**ANSWER:** {letter}",
        f"The answer is {letter}.",
        f"The correct answer is ({letter}) {options[letter]}",
        f"I would choose option {letter}.",
        options[letter],
        options[letter].upper() + ".",
        f"ANSWER: {options[letter]}",
        f"Reasoning: the history fits best.\nANSWER: {letter}",
    ]
    for text in forms:
        parsed = parse_answer_letter(text, options)
        assert parsed.letter == letter, (text, parsed)
        assert parsed.fallback is None


@given(options_and_letter())
def test_marked_letter_followed_by_reasoning(case: tuple[dict[str, str], str]) -> None:
    options, letter = case
    assume(letter not in {"A", "I"})  # capital A and I are also English words, see the next test
    assert parse_answer_letter(f"ANSWER: {letter} because the history fits", options).letter == letter


def test_article_a_and_pronoun_i_after_a_marker_are_not_letters() -> None:
    options = dict(zip("ABCDEFGHIJ", OPTION_POOL, strict=True))
    assert parse_answer_letter("The answer is A pulmonary embolism", options).letter is None
    assert parse_answer_letter("ANSWER: I don't know", options).letter is None
    assert parse_answer_letter("The answer is A.", options).letter == "A"
    assert parse_answer_letter("ANSWER: I) Tension headache", options).letter == "I"
    assert parse_answer_letter("The answer is A asthma", options).letter == "A"


@pytest.mark.parametrize(
    "text",
    [
        "not",
        "eyes",
        "Not",
        "Eyes",
        "no",
        "bad",
        "Definitely C-section",
        "ANSWER: C-section",
        "Hepatitis C",
        "Vitamin B deficiency",
        "I don't know",
        "I do not know.",
        "I don’t know",
        "ANSWER: unsure",
        "Not sure, maybe (C)",
        "",
        "   ",
        "The answer is not clear",
        "A pulmonary embolism",
        "Ⓒ",
        "ANSWER: Ｃ",
        "C’s",
    ],
)
def test_adversarial_strings_name_no_option(text: str) -> None:
    parsed = parse_answer_letter(text, OPTIONS5 if "section" not in text else OPTIONS4)
    assert parsed.letter is None
    assert parsed.fallback


def test_option_text_beats_letter_inside_word() -> None:
    # "C-section" is option E's text here, not option C.
    options = {"A": "Forceps delivery", "B": "Induction", "C": "Expectant care", "D": "Tocolysis", "E": "C-section"}
    assert parse_answer_letter("ANSWER: C-section", options).letter == "E"
    assert parse_answer_letter("C-section", options).letter == "E"
    assert parse_answer_letter("Definitely C-section", options).letter is None


@given(options_and_letter(), st.data())
def test_hedges_between_two_options_are_refused(case: tuple[dict[str, str], str], data: st.DataObject) -> None:
    options, first = case
    second = data.draw(st.sampled_from(sorted(set(options) - {first})))
    joiner = data.draw(st.sampled_from([" or ", " OR ", "/", " and ", ", ", " vs "]))
    for text in (f"{first}{joiner}{second}", f"ANSWER: {first}{joiner}{second}", f"The answer is ({first}){joiner}({second})"):
        parsed = parse_answer_letter(text, options)
        assert parsed.letter is None, text
        assert parsed.fallback is not None and "hedge" in parsed.fallback


def test_five_option_case() -> None:
    assert parse_answer_letter("ANSWER: E", OPTIONS5).letter == "E"
    assert parse_answer_letter("ANSWER: E", OPTIONS4).letter is None  # E is not an option of a 4-option case
    assert parse_answer_letter("(E) Caesarean section", OPTIONS5).letter == "E"
    assert parse_answer_letter("e", OPTIONS5).letter == "E"


def test_conflicts_and_priorities() -> None:
    assert parse_answer_letter("The answer is B. No wait, the answer is C.", OPTIONS4).letter is None
    assert parse_answer_letter("Option B is wrong; the answer is C", OPTIONS4).letter == "C"
    assert parse_answer_letter("ANSWER: C) Lung cancer", OPTIONS4).letter is None  # letter and text disagree
    assert parse_answer_letter("(A) is unlikely, (C) fits", OPTIONS4).letter is None
    assert parse_answer_letter("I think (B) fits best", OPTIONS4).letter == "B"
    assert parse_answer_letter("I don't know. ANSWER: C", OPTIONS4).letter == "C"  # an explicit answer wins


@settings(max_examples=300)
@given(st.text(), option_sets())
def test_any_text_gives_an_option_or_a_reason(text: str, options: dict[str, str]) -> None:
    parsed = parse_answer_letter(text, options)
    assert (parsed.letter is None) != (parsed.fallback is None)
    assert parsed.letter is None or parsed.letter in options
    assert parse_answer_letter(text, options) == parsed  # deterministic


@given(st.text(alphabet=string.ascii_letters, min_size=2, max_size=12), option_sets())
def test_plain_words_are_never_letters(word: str, options: dict[str, str]) -> None:
    assume(normalise_option_text(word) not in {normalise_option_text(t) for t in options.values()})
    for text in (word, f"ANSWER: {word}", f"The answer is {word}", f"Definitely {word}"):
        assert parse_answer_letter(text, options).letter is None, text


# ---------------------------------------------------------------------------------------------------
# Confidence


@given(st.floats(min_value=0, max_value=1, allow_nan=False), st.sampled_from(["{}", "CONFIDENCE: {}", "Probability: {}."]))
def test_numeric_probability(x: float, template: str) -> None:
    text = template.format(f"{x:.3f}")
    parsed = parse_confidence(text, "numeric")
    assert parsed.value == pytest.approx(round(x, 3))
    assert parsed.unit == parsed.value


@given(st.integers(min_value=0, max_value=100))
def test_numeric_percentage(p: int) -> None:
    assert parse_confidence(f"{p}%", "numeric").value == pytest.approx(p / 100)
    assert parse_confidence(f"Confidence: {p} percent", "numeric").value == pytest.approx(p / 100)


@given(st.one_of(st.floats(min_value=1.001, max_value=1e6), st.floats(min_value=-1e6, max_value=-0.001)))
def test_numeric_out_of_range_is_refused_not_clipped(x: float) -> None:
    parsed = parse_confidence(f"CONFIDENCE: {x:.3f}", "numeric")
    assert parsed.value is None and parsed.fallback


@given(st.integers(min_value=101, max_value=10_000))
def test_numeric_percentage_out_of_range(p: int) -> None:
    assert parse_confidence(f"{p}%", "numeric").value is None


def test_numeric_rationale_and_ambiguity() -> None:
    assert parse_confidence("A 40-year-old man with fever.\nCONFIDENCE: 0.6", "numeric").value == 0.6
    assert parse_confidence("0.6 or 0.7", "numeric").value is None
    assert parse_confidence("0.8 (80%)", "numeric").value == pytest.approx(0.8)
    assert parse_confidence("fairly high", "numeric").value is None
    # an unmarked number among words is not read as a probability (a small model wrote exactly this)
    assert parse_confidence("The answer is: 1", "numeric").value is None
    assert parse_confidence("I would say 0.7", "numeric").value is None
    assert parse_confidence("Confidence is high, 0.9", "numeric").value == 0.9
    assert parse_confidence("٠.٨", "numeric").value is None  # non-ASCII digits are not read


@given(st.integers(min_value=1, max_value=5), st.sampled_from(["{}", "CONFIDENCE: {}", "{}/5", "{} out of 5", "Rating: {}."]))
def test_likert_numbers(n: int, template: str) -> None:
    parsed = parse_confidence(template.format(n), "likert")
    assert parsed.value == n
    assert parsed.unit == pytest.approx((n - 1) / 4)


@given(st.one_of(st.integers(min_value=6, max_value=1000), st.integers(min_value=-100, max_value=0)))
def test_likert_out_of_scale(n: int) -> None:
    assert parse_confidence(f"CONFIDENCE: {n}", "likert").value is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Very confident", 5),
        ("I am fairly confident.", 4),
        ("confident", 4),
        ("neither sure nor unsure", 3),
        ("somewhat unsure", 2),
        ("not very confident", 2),
        ("I'm not confident at all", 1),
        ("Very unsure", 1),
        ("3.5", None),
        ("3 findings point to asthma", None),
        ("4 - fairly confident", 4),
        ("I rate it 2/5", 2),
        ("8/10", None),
        ("80%", None),
        ("fairly confident but not very confident", None),
        ("no idea", None),
    ],
)
def test_likert_words_and_refusals(text: str, expected: int | None) -> None:
    assert parse_confidence(text, "likert").value == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("YES", 1.0),
        ("yes.", 1.0),
        ("No", 0.0),
        ("CONFIDENT: YES", 1.0),
        ("REASONING: no fever reported, I am not sure.\nCONFIDENT: NO", 0.0),
        ("**Confident:** yes", 1.0),
        ("yes or no", None),
        ("Not sure", None),
        ("The patient has no fever", None),
        ("eyes", None),
        ("nobody knows", None),
    ],
)
def test_binary(text: str, expected: float | None) -> None:
    assert parse_confidence(text, "binary").value == expected


@settings(max_examples=200)
@given(st.text(), st.sampled_from(["binary", "numeric", "likert"]))
def test_confidence_of_any_text_is_in_range_or_refused(text: str, kind: str) -> None:
    parsed = parse_confidence(text, kind)  # type: ignore[arg-type]
    assert (parsed.value is None) != (parsed.fallback is None)
    if parsed.unit is not None:
        assert 0.0 <= parsed.unit <= 1.0


def test_unknown_confidence_kind() -> None:
    with pytest.raises(ValueError):
        parse_confidence("0.5", "stars")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Questions

_WORD = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8)


@st.composite
def questions(draw: st.DrawFn) -> str:
    opener = draw(st.sampled_from(["Do", "Have", "When did", "How", "Is", "Are"]))
    words = draw(st.lists(_WORD, min_size=1, max_size=8))
    return f"{opener} {' '.join(words)}?"


@given(questions(), st.sampled_from(["{}", "Question: {}", '"{}"', "“{}”", "**Question:** {}", "ASK: {}", "1. {}", "- {}",
                                     "Sure! Here is my question: {}", "Q: {}", "Follow-up question: {}"]))
def test_question_wrappers_are_removed(question: str, template: str) -> None:
    assert parse_question(template.format(question)).question == question


@given(questions(), questions())
def test_first_of_several_questions(first: str, second: str) -> None:
    assert parse_question(f"{first} {second}").question == first
    assert parse_question(f"1. {first}\n2. {second}").question == first


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Have you taken ibuprofen, e.g. Advil, recently?", "Have you taken ibuprofen, e.g. Advil, recently?"),
        ("Tell me about your smoking history.", "Tell me about your smoking history."),
        ("Doctor: How long have you had the cough?\nPatient: two weeks", "How long have you had the cough?"),
        ("ANSWER: C", None),
        ("I think the answer is C", None),
        ("", None),
        ("   \n ", None),
        ("?", None),
        ("123?", None),
        ("Do you feel\n   dizzy   when standing?", "Do you feel dizzy when standing?"),
    ],
)
def test_question_examples(text: str, expected: str | None) -> None:
    parsed = parse_question(text)
    assert parsed.question == expected
    assert (parsed.question is None) == (parsed.fallback is not None)


def test_over_long_question_is_refused() -> None:
    long = "Do you " + "really " * 60 + "smoke?"
    assert len(long) > MAX_QUESTION_CHARS
    parsed = parse_question(long)
    assert parsed.question is None and parsed.fallback is not None and "longer" in parsed.fallback
    assert parse_question(long, max_chars=1000).question == long


@settings(max_examples=200)
@given(st.text())
def test_any_text_gives_a_short_question_or_a_reason(text: str) -> None:
    parsed = parse_question(text)
    assert (parsed.question is None) != (parsed.fallback is None)
    if parsed.question is not None:
        assert 0 < len(parsed.question) <= MAX_QUESTION_CHARS
        assert parsed.question == parsed.question.strip()


# ---------------------------------------------------------------------------------------------------
# Implicit decisions


@given(questions())
def test_decision_ask(question: str) -> None:
    d = parse_decision(f"ASK: {question}", OPTIONS4)
    assert (d.kind, d.question, d.fallback) == ("ask", question, None)
    d = parse_decision(f"REASONING: the smoking history is missing.\nASK: {question}", OPTIONS4)
    assert (d.kind, d.question) == ("ask", question)


@given(st.sampled_from(sorted(OPTIONS4)))
def test_decision_answer(letter: str) -> None:
    d = parse_decision(f"ANSWER: {letter}", OPTIONS4)
    assert (d.kind, d.letter, d.fallback) == ("answer", letter, None)
    assert parse_decision(f"ANSWER: {letter}").kind == "answer"  # without options only the kind is read


@pytest.mark.parametrize(
    ("text", "kind", "letter", "question"),
    [
        ("ASK: Do you smoke?\nANSWER: C", None, None, None),
        ("I would like more information.", None, None, None),
        ("", None, None, None),
        ("ANSWER: maybe", "answer", None, None),
        ("ANSWER: B or C", "answer", None, None),
        ("ANSWER: B\nANSWER: C", "answer", None, None),
        ("ASK:", "ask", None, None),
        ("**ANSWER:** B", "answer", "B", None),
        ("Final answer: (D)", "answer", "D", None),
        ("Question: Any chest pain?", "ask", None, "Any chest pain?"),
    ],
)
def test_decision_edge_cases(text: str, kind: str | None, letter: str | None, question: str | None) -> None:
    d = parse_decision(text, OPTIONS4)
    assert (d.kind, d.letter, d.question) == (kind, letter, question)
    if kind is None or (kind == "answer" and letter is None) or (kind == "ask" and question is None):
        assert d.fallback


@settings(max_examples=200)
@given(st.text())
def test_decision_of_any_text_is_consistent(text: str) -> None:
    d = parse_decision(text, OPTIONS4)
    assert d.kind in (None, "ask", "answer")
    if d.kind is None:
        assert d.fallback and d.letter is None and d.question is None
    if d.letter is not None:
        assert d.kind == "answer" and d.letter in OPTIONS4
    if d.question is not None:
        assert d.kind == "ask"
