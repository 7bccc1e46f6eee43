"""The SFT demonstrations of the offline doctor: gate-clean questions, correct letters, train cases only."""

from __future__ import annotations

import re

import pytest

from agents.parsing import parse_answer_letter, parse_decision
from benchmarks.probes import load_probe_cases, split_of
from mediq_env import make_patient
from mediq_env.question_gate import check_question
from training.demos import build_demos, demo_records, doctor_split, sample_records

_OPTION_LINE = re.compile(r"^  ([A-Z])\) (.*)$")


def _shown_options(user_message: str) -> dict[str, str]:
    """The lettered options exactly as the prompt shows them (the shuffled lettering)."""
    return {m.group(1): m.group(2) for line in user_message.splitlines() if (m := _OPTION_LINE.match(line))}


def test_doctor_split() -> None:
    assert doctor_split("builtin", "bi-002") == "train"
    assert doctor_split("builtin", "bi-044") == "train"
    assert doctor_split("builtin", "bi-001") == "heldout"
    assert doctor_split("builtin", "bi-043") == "heldout"
    for cid in ("t_cg6uht7-0", "t_cgm1ytc-0", "0", "1", "2"):
        source = "medqa" if cid.isdigit() else "askdocs"
        assert doctor_split(source, cid) == ("train" if split_of(source, cid) == "calibration" else "heldout")


@pytest.fixture(scope="module")
def builtin_demos() -> list:
    # BM25 patient: what is checked here (questions, letters, split) does not depend on the patient, and
    # it keeps the test free of the MiniLM load; the shipped demos use the default faithful patient.
    return build_demos(["builtin"], budgets=(3, 5), seed=0, patient=make_patient("bm25"))


def test_demos_use_train_cases_only(builtin_demos: list) -> None:
    assert builtin_demos
    assert {e.source for e in builtin_demos} == {"builtin"}
    assert all(doctor_split(e.source, e.case_id) == "train" for e in builtin_demos)
    # Every even built-in with at least two usable probe questions shows up, under both budgets.
    assert len({e.case_id for e in builtin_demos}) >= 15
    assert {e.max_questions for e in builtin_demos} == {3, 5}


def test_every_demo_question_passes_the_gate(builtin_demos: list) -> None:
    for episode in builtin_demos:
        assert 2 <= len(episode.questions) <= min(5, episode.max_questions)
        for question, reply in zip(episode.questions, episode.replies, strict=True):
            options = _shown_options(episode.examples[0]["prompt"][-1]["content"])
            assert check_question(question, options).ok, question
            assert "Could you ask me one specific question" not in reply


def test_answers_are_the_correct_shown_letters(builtin_demos: list) -> None:
    cases = load_probe_cases("builtin")
    shuffled = 0
    for episode in builtin_demos:
        assert episode.correct
        case = cases[episode.case_id]
        shown = _shown_options(episode.examples[-1]["prompt"][-1]["content"])
        # The letter answered names, in the shown lettering, the option text the case file marks correct.
        assert shown[episode.answer] == case.options[case.answer]
        shuffled += episode.answer != case.answer
    assert shuffled > 0  # the lettering really was shuffled, so the model cannot learn the file's letters


def test_examples_parse_back_with_the_agents_parsers(builtin_demos: list) -> None:
    records = demo_records(builtin_demos)
    kinds = {r["kind"] for r in records}
    assert kinds == {"ask", "answer", "forced", "intermediate"}
    for r in records:
        target = r["completion"][0]["content"]
        options = _shown_options(r["prompt"][-1]["content"])
        if r["kind"] == "ask":
            parsed = parse_decision(target, options)
            assert parsed.kind == "ask" and parsed.question == target.removeprefix("ASK: ")
        elif r["kind"] == "answer":
            parsed = parse_decision(target, options)
            assert parsed.kind == "answer" and parsed.letter == target.removeprefix("ANSWER: ")
        else:
            assert parse_answer_letter(target, options).letter == target.removeprefix("ANSWER: ")
        # The prompt is the agent's: system + user, the user message holding the whole case.
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]


def test_sample_is_seeded_and_keeps_kinds(builtin_demos: list) -> None:
    records = demo_records(builtin_demos)
    per_kind = {"ask": 10, "answer": 3, "forced": 3, "intermediate": 4}
    a = sample_records(records, per_kind, seed=0)
    assert a == sample_records(records, per_kind, seed=0)
    assert len(a) == 20 and {r["kind"] for r in a} == set(per_kind)
