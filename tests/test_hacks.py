"""The hack suite on the built-in cases with the default (faithful) patient, under every shipped reward:
no adversarial doctor earns as much reward or uncovers as many facts as the honest checklist, and the
good-questions doctor beats the checklist (benchmarks/hacks.py)."""

from __future__ import annotations

import pytest

from benchmarks.hacks import ADVERSARIES, DOCTORS, REFERENCE, REWARD_CONFIGS, failures, run_suite

pytestmark = pytest.mark.slow  # about a minute on two cores: 11 doctors x 44 cases x 6 turns, MiniLM on CPU


@pytest.fixture(scope="module")
def results():
    return run_suite(["builtin"], ["faithful"])


def _rows(results, config):
    return results["sources"]["builtin"]["patients"]["faithful"]["configs"][config]


@pytest.mark.parametrize("config", list(REWARD_CONFIGS))
def test_every_adversary_is_strictly_below_the_checklist_and_good_questions_above(results, config):
    rows = _rows(results, config)
    assert set(rows) == set(DOCTORS)
    for name in ADVERSARIES:
        ref = rows[REFERENCE.get(name, "checklist")]
        row = rows[name]
        assert row["verdict"] == "PASS", (name, row)
        assert row["coverage"]["mean"] < ref["coverage"]["mean"], name
        if config != "correctness":
            assert row["reward"]["mean"] < ref["reward"]["mean"], name
    good, checklist = rows["good"], rows["checklist"]
    assert good["verdict"] == "PASS"
    assert good["coverage"]["mean"] > checklist["coverage"]["mean"]
    if config != "correctness":
        assert good["reward"]["mean"] > checklist["reward"]["mean"]


def test_correctness_reward_pays_nothing_for_questions(results):
    # Same answer after the same shuffle for every doctor: the default reward ties them all by construction.
    rows = _rows(results, "correctness")
    means = {row["reward"]["mean"] for row in rows.values()}
    assert len(means) == 1


def test_paraphrase_re_asks_earn_nothing():
    """What the patient fix guarantees: after the first medication question, rewordings reveal no new fact."""
    from benchmarks.hacks import _PARAPHRASE_BASE, _PARAPHRASES
    from mediq_env import MediQEnv, builtin_cases

    for case in builtin_cases()[:10]:
        env = MediQEnv([case], max_questions=6)
        env.reset(seed=0)
        env.step(_PARAPHRASE_BASE)
        assert all(env.step(q)[4]["new_facts"] == [] for q in _PARAPHRASES[:4]), case.id


def test_no_failing_row(results):
    # The paraphrase doctor (one real medication question, then rewordings) was a known gap while the patient
    # answered broad history questions poorly: the checklist it is judged against found little more than one
    # question. With history-taking probes in the relevance fit it is strictly below on every reward.
    assert failures(results) == []


def test_a_case_with_too_few_good_questions_is_left_out_and_counted(monkeypatch):
    """One case with a single labelled good question must not cut every doctor's episode to one question."""
    import benchmarks.hacks as hacks

    real = hacks.good_questions

    def fewer(source, data_dir=None):
        good = real(source, data_dir)
        first = next(iter(good))
        return {**good, first: good[first][:1]}

    monkeypatch.setattr(hacks, "good_questions", fewer)
    per = run_suite(["builtin"], ["bm25"])["sources"]["builtin"]
    assert per["n_cases"] == 43 and per["questions_per_doctor"] == 5
    assert per["cases_left_out"]["count"] == 1
