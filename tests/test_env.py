"""MediQEnv: the Gymnasium API, the episode protocol, determinism and the batched form."""

from __future__ import annotations

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import mediq_env
from mediq_env import CANNOT_ANSWER, BatchedEnv, CorrectnessReward, EnvStateError, MediQEnv, builtin_cases
from mediq_env.errors import ConfigError
from mediq_env.question_gate import ASK_ONE_QUESTION


@pytest.fixture(scope="module")
def cases():
    return builtin_cases()


def test_check_env_passes(cases):
    env = MediQEnv(cases, max_questions=3)
    check_env(env, skip_render_check=True)


def test_gymnasium_make_and_fever_question():
    env = gymnasium.make(mediq_env.ENV_ID)
    obs, info = env.reset(seed=0)
    assert "Initial information:" in obs and info["turn"] == 0
    obs, _, terminated, truncated, info = env.step("Do you have a fever?")
    assert isinstance(info["reply"], str) and info["reply"]
    assert "Doctor: Do you have a fever?" in obs and f"Patient: {info['reply']}" in obs
    assert (terminated, truncated) == (False, False)


def test_reset_by_case_id_and_correct_answer(cases):
    env = MediQEnv(cases, shuffle_options=False)
    case = cases[3]
    _, info = env.reset(options={"case_id": case.id})
    assert info["case_id"] == case.id and info["options"] == case.options
    _, reward, terminated, truncated, info = env.step(f"ANSWER: {case.answer}")
    assert terminated and not truncated and reward == 1.0 and info["correct"]
    assert info["reward_components"] == {"correctness": 1.0}
    with pytest.raises(EnvStateError, match="finished episode"):
        env.step("Anything else?")


def test_step_before_reset_raises(cases):
    with pytest.raises(EnvStateError, match="before reset"):
        MediQEnv(cases, shuffle_options=False).step("hello?")


def test_wrong_answer_and_unknown_case(cases):
    env = MediQEnv(cases, shuffle_options=False)
    case = cases[0]
    env.reset(options={"case_id": case.id})
    wrong = next(letter for letter in case.options if letter != case.answer)
    _, reward, terminated, _, info = env.step({"answer": wrong})
    assert terminated and reward == 0.0 and info["correct"] is False
    with pytest.raises(ConfigError, match="no case with id"):
        env.reset(options={"case_id": "nope"})


def test_questions_reveal_facts_and_budget_forces_an_answer(cases):
    case = cases[0]
    env = MediQEnv(cases, max_questions=2, reward_fn=CorrectnessReward(question_cost=0.1), shuffle_options=False)
    env.reset(options={"case_id": case.id})
    _, r1, *_ , info = env.step("How old are you?")
    assert r1 == pytest.approx(-0.1)
    assert info["questions_left"] == 1 and info["questions_asked"] == 1
    _, _, term, trunc, info = env.step("")  # invalid: explained, and uses a turn
    assert info["invalid_action"] == "the action is empty" and not (term or trunc)
    assert info["must_answer"] and info["questions_left"] == 0
    obs = env.render() if env.render_mode else env._last_obs
    assert "no questions left" in obs.lower()
    # A question on the forced-answer turn ends the episode unanswered.
    _, reward, term, trunc, info = env.step("One more question?")
    assert trunc and not term and info["answer"] is None and info["correct"] is False and info["forced"]
    assert reward == 0.0


def test_forced_turn_answer_terminates(cases):
    case = cases[1]
    env = MediQEnv(cases, max_questions=0, shuffle_options=False)
    env.reset(options={"case_id": case.id})
    _, reward, term, trunc, info = env.step(f"ANSWER: {case.answer}")
    assert term and not trunc and info["forced"] and reward == 1.0


def test_unanswerable_question_gets_fixed_reply(cases):
    env = MediQEnv(cases, shuffle_options=False)
    env.reset(options={"case_id": cases[0].id})
    *_, info = env.step("Tell me everything about your whole life.")
    assert info["reply"] == ASK_ONE_QUESTION and info["new_facts"] == []  # not one question: the gate
    *_, info = env.step("Have you ever been to Antarctica on a research ship?")
    assert info["reply"] == CANNOT_ANSWER and info["new_facts"] == []  # no fact answers: abstains


def test_same_seed_same_episode(cases):
    def run(seed):
        env = MediQEnv(cases, shuffle_options=True)
        obs, _ = env.reset(seed=seed)
        trace = [obs]
        for q in ["How old are you?", "Do you smoke?", "Any medicines?"]:
            obs, *_ = env.step(q)
            trace.append(obs)
        return trace, env.grader.option_order

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_shuffled_options_keep_the_answer(cases):
    env = MediQEnv(cases, shuffle_options=True)
    for seed in range(10):
        _, info = env.reset(seed=seed)
        case = env.grader.case
        original = next(c for c in cases if c.id == case.id)
        assert case.answer_text == original.answer_text
        *_, info = env.step(f"ANSWER: {case.answer}")
        assert info["correct"] and info["answer_original"] == original.answer


def test_observation_charset_admits_clinical_text(cases):
    env = MediQEnv(cases, shuffle_options=False)
    text = "Temp 38.5 °C, 5 µg/mL, café-au-lait spots, patient’s “worst” pain ≥ 8/10 — naïve"
    assert env.observation_space.contains(text)
    assert env.action_space.contains("Any fever ≥ 38 °C?")


def test_info_is_structured(cases):
    env = MediQEnv(cases, shuffle_options=False)
    _, info = env.reset(seed=1)
    for key in ["turn", "questions_left", "case_id", "options", "new_facts", "n_facts_revealed", "reward_components", "state"]:
        assert key in info
    assert info["state"].initial_info in env._last_obs


def test_batched_env_calls_the_patient_once_per_turn(cases):
    calls = []

    class CountingPatient(mediq_env.FactLookupPatient):
        def reply_batch(self, queries):
            calls.append(len(queries))
            return super().reply_batch(queries)

    batch = BatchedEnv(4, cases, patient=CountingPatient(), shuffle_options=False)
    batch.reset(case_ids=[c.id for c in cases[:4]])
    results = batch.step(["How old are you?", "Do you smoke?", f"ANSWER: {cases[2].answer}", "Any allergies?"])
    assert calls == [3]
    assert results[2].terminated and results[2].info["correct"]
    assert batch.active == [0, 1, 3]
    batch.step(["ANSWER: A", "ANSWER: B", "ANSWER: C"])
    assert batch.active == []
    with pytest.raises(EnvStateError):
        batch.step([])


def test_batched_matches_single(cases):
    questions = ["How old are you?", "Do you take any medication?", "Any family history of illness?"]
    single = []
    for c in cases[:3]:
        env = MediQEnv(cases, shuffle_options=False)
        env.reset(options={"case_id": c.id})
        single.append([env.step(q)[0] for q in questions])
    batch = BatchedEnv(3, cases, shuffle_options=False)
    batch.reset(case_ids=[c.id for c in cases[:3]])
    batched = [[], [], []]
    for q in questions:
        for i, r in enumerate(batch.step([q] * 3)):
            batched[i].append(r.observation)
    assert batched == single


# -- reset options are validated before anything changes (issues 14 and 15) --------------------------------


def test_refused_reset_changes_nothing(cases):
    env = MediQEnv(cases)
    env.reset(seed=3)
    before = (env.grader, env.np_random.bit_generator.state)
    with pytest.raises(ConfigError, match="no case with id"):
        env.reset(seed=99, options={"case_id": "nope"})
    assert (env.grader, env.np_random.bit_generator.state) == before
    env.step("Do you smoke?")  # the running episode goes on


def test_env_made_by_gymnasium_survives_a_refused_reset_with_the_checker_off():
    env = gymnasium.make(mediq_env.ENV_ID, disable_env_checker=True)
    with pytest.raises(ConfigError):
        env.reset(options={"case_id": "nope"})
    env.reset(seed=0)
    *_, info = env.step("Do you have a fever?")
    assert isinstance(info["reply"], str)


def test_env_made_by_gymnasium_survives_a_refused_first_reset():
    env = gymnasium.make(mediq_env.ENV_ID)
    with pytest.raises(ConfigError):
        env.reset(options={"case_id": "nope"})
    env.reset(seed=0)
    *_, info = env.step("Do you have a fever?")
    assert isinstance(info["reply"], str)


def test_case_index_selects_exactly(cases):
    env = MediQEnv(cases)
    _, info = env.reset(options={"case_index": 2})
    assert info["case_id"] == cases[2].id
    import numpy as np

    _, info = env.reset(options={"case_index": np.int64(4)})
    assert info["case_id"] == cases[4].id


# -- the doctor sees only what a doctor may see (issue 17) ---------------------------------------------------

GRADING_KEYS = {"option_order", "n_facts", "n_facts_known", "facts_revealed", "correct", "correct_answer", "answer_original"}


def test_shuffling_is_the_default():
    import inspect

    assert inspect.signature(MediQEnv).parameters["shuffle_options"].default is True
    env = gymnasium.make(mediq_env.ENV_ID)
    assert env.unwrapped.shuffle_options is True  # type: ignore[attr-defined]
    orders = set()
    for seed in range(8):
        env.reset(seed=seed, options={"case_index": 0})
        orders.add(env.unwrapped.grader.option_order)  # type: ignore[attr-defined]
    assert len(orders) > 1


def test_info_before_the_end_carries_no_grading_data(cases):
    env = MediQEnv(cases, max_questions=2)
    _, info = env.reset(seed=0)
    assert GRADING_KEYS.isdisjoint(info)
    *_, info = env.step("Do you smoke?")
    assert GRADING_KEYS.isdisjoint(info)
    grader = env.grader
    *_, terminated, _, info = env.step(f"ANSWER: {grader.case.answer}")
    assert terminated and info["correct"] and list(grader.option_order) == info["option_order"]
    assert info["n_facts"] == grader.n_facts and info["n_facts_known"] == len(grader.known_facts)


def test_grader_view(cases):
    env = MediQEnv(cases)
    with pytest.raises(EnvStateError):
        _ = env.grader
    env.reset(seed=5)
    g = env.grader
    assert "must not" in (type(g).__doc__ or "")
    assert g.original_case.id == g.case.id and g.case.answer_text == g.original_case.answer_text
    assert g.original_case.options[g.option_order[0]] == g.case.options["A"]
    assert g.known_facts == g.original_case.known_facts and g.revealed == ()
    with pytest.raises(AttributeError):
        g.revealed = (1,)  # type: ignore[misc]
    with pytest.warns(DeprecationWarning, match="env.grader.case"):
        assert env.case == g.case


def test_known_facts_are_never_new_and_not_counted(cases):
    case = cases[0]
    assert 0 in case.known_facts  # "The patient is 41 years old." is in the opening
    env = MediQEnv(cases, shuffle_options=False)
    env.reset(options={"case_id": case.id})
    *_, info = env.step("How old are you?")
    assert info["reply"] != mediq_env.CANNOT_ANSWER and info["new_facts"] == [] and info["n_facts_revealed"] == 0
    *_, info = env.step(f"ANSWER: {case.answer}")
    assert info["n_facts_known"] == len(case.known_facts) and info["n_facts_revealed"] == 0
    assert 0 not in env.grader.revealed


def test_batched_env_knows_the_opening_facts_too(cases):
    case = cases[0]
    batch = BatchedEnv(2, cases, shuffle_options=False)
    _, infos = batch.reset(case_ids=[case.id, cases[1].id])
    assert all(GRADING_KEYS.isdisjoint(i) for i in infos)
    results = batch.step(["How old are you?", "How old are you?"])
    assert results[0].info["new_facts"] == [] and results[0].info["n_facts_revealed"] == 0
    results = batch.step([f"ANSWER: {case.answer}", f"ANSWER: {cases[1].answer}"])
    assert results[0].info["n_facts_known"] == len(case.known_facts)
