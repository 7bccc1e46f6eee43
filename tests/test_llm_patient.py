"""The LLM patient in both modes, batched, with strict parsing and recorded fallbacks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediq_env import CANNOT_ANSWER, BatchedEnv, PatientQuery, builtin_cases
from mediq_env.backends.scripted import ScriptedBackend
from mediq_env.errors import ConfigError
from mediq_env.llm_patient import LLMPatient, parse_fact_numbers


@pytest.fixture(scope="module")
def case():
    return builtin_cases()[0]


def test_select_mode_reveals_the_named_facts(case):
    backend = ScriptedBackend(["2, 5", "NONE", "nothing useful"])
    patient = LLMPatient(backend, mode="select", k=2)
    replies = patient.reply_batch([PatientQuery(case, "q1"), PatientQuery(case, "q2"), PatientQuery(case, "q3")])
    assert len(backend.calls) == 1 and len(backend.calls[0][0]) == 3  # one batched call
    assert replies[0].revealed == (1, 4) and replies[0].text == f"{case.facts[1]} {case.facts[4]}"
    assert replies[1].text == CANNOT_ANSWER and replies[1].meta["fallback"] is None
    assert replies[2].text == CANNOT_ANSWER and "no fact number" in replies[2].meta["fallback"]
    # The prompt numbers every fact and carries the question.
    prompt = backend.calls[0][0][0][-1]["content"]
    assert f"1. {case.facts[0]}" in prompt and "q1" in prompt


def test_freeform_mode_maps_reply_back_to_facts(case):
    age_fact = next(i for i, f in enumerate(case.facts) if "years old" in f)
    reply_text = case.facts[age_fact].replace("The patient is", "I am")
    patient = LLMPatient(ScriptedBackend([reply_text, "Sorry, I can't answer that."]), mode="freeform")
    first, second = patient.reply_batch([PatientQuery(case, "How old are you?"), PatientQuery(case, "Favourite film?")])
    assert first.text == reply_text and age_fact in first.revealed
    assert second.text == CANNOT_ANSWER and second.revealed == ()


def test_greedy_by_default_and_separate_params():
    patient = LLMPatient(ScriptedBackend(["NONE"]))
    assert patient.params.greedy and patient.params.seed == 0
    with pytest.raises(ConfigError):
        LLMPatient(ScriptedBackend(["x"]), mode="chatty")  # type: ignore[arg-type]


def test_batched_env_makes_one_patient_call_per_turn():
    cases = builtin_cases()[:4]
    backend = ScriptedBackend(["10"], cycle=True)  # fact 9: hidden at reset in every built-in case
    batch = BatchedEnv(4, cases, patient=LLMPatient(backend))
    batch.reset(case_ids=[c.id for c in cases])
    results = batch.step(["How old are you?"] * 4)
    assert len(backend.calls) == 1 and len(backend.calls[0][0]) == 4
    assert all(9 not in c.known_facts for c in cases)
    assert all(r.info["new_facts"] == [9] for r in results)


@given(st.text(max_size=40), st.integers(1, 30), st.integers(1, 4))
def test_parse_fact_numbers_only_returns_valid_indices(text, n, k):
    revealed, problem = parse_fact_numbers(text, n, k)
    assert len(revealed) <= k and all(0 <= i < n for i in revealed)
    assert len(set(revealed)) == len(revealed)
    assert problem is None or revealed == ()


def test_parse_fact_numbers_examples():
    assert parse_fact_numbers("3, 1, 3, 99", 5, 3) == ((2, 0), None)
    assert parse_fact_numbers("None of them.", 5, 2) == ((), None)
    assert parse_fact_numbers("Fact 12", 5, 2)[0] == ()
