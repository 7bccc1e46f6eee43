"""The attribute reward: RewardConfig validation, AttributeReward, and its batched form."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest
from scoring_fakes import CountingScorer, rule_judge

import mediq_env
from mediq_env import BatchedEnv, MediQEnv, builtin_cases
from mediq_env.attributes import Attribute, register_attribute, unregister_attribute
from mediq_env.backends.scripted import ScriptedBackend
from mediq_env.errors import ConfigError, EnvStateError
from mediq_env.scoring import CompositeScorer, EnvironmentScorer, JudgeScorer, ScoreRecord
from mediq_env.wrappers import AttributeReward, BatchedAttributeReward, RewardConfig, component_name

ROOT = Path(__file__).resolve().parents[1]

WEIGHTS = {"clarity": 0.2, "focus": 0.1, "proxy_info_gain": 0.05, "proxy:key_fact": 0.3}
CONFIG = RewardConfig(weights=WEIGHTS, correct=1.0, incorrect=-0.5, question_cost=0.02, repeat_penalty=0.1, invalid_penalty=0.2)


def make_scorer() -> CountingScorer:
    judge = JudgeScorer(rule_judge(), ["clarity", "focus"])
    env = EnvironmentScorer(["proxy_info_gain", "proxy_key_fact", "proxy_repeat"], embedder=None)
    return CountingScorer(CompositeScorer(judge, env))


@pytest.fixture(scope="module")
def cases():
    return builtin_cases()


# -- RewardConfig -------------------------------------------------------------------------------------


def test_reward_config_canonicalises_weight_names():
    cfg = RewardConfig(weights={"attr:clarity": 1, "proxy:info_gain": 0.5, "proxy_repeat": -1.0})
    assert dict(cfg.weights) == {"clarity": 1.0, "proxy_info_gain": 0.5, "proxy_repeat": -1.0}
    assert component_name("clarity") == "attr:clarity" and component_name("proxy_info_gain") == "proxy:info_gain"
    with pytest.raises(TypeError):
        cfg.weights["focus"] = 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": {"clartiy": 1.0}}, "unknown score 'clartiy'"),
        ({"weights": {"proxy:nope": 1.0}}, "unknown score"),
        ({"weights": {"clarity": float("nan")}}, "finite"),
        ({"weights": {"clarity": True}}, "finite"),
        ({"weights": {"clarity": "1"}}, "finite"),
        ({"weights": {"clarity": 1.0, "attr:clarity": 2.0}}, "given twice"),
        ({"question_cost": -0.1}, "cost"),
        ({"repeat_penalty": -1}, "cost"),
        ({"invalid_penalty": -1}, "cost"),
        ({"correct": 0.0, "incorrect": 1.0}, "must be >= incorrect"),
        ({"correct": float("inf")}, "finite"),
        ({"repeat_threshold": 0.0}, "repeat_threshold"),
    ],
)
def test_reward_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RewardConfig(**kwargs)


def test_reward_config_accepts_custom_attributes_and_extra_scores():
    attr = Attribute("interest_personalisation", "custom", "Personalisation", "d", dict.fromkeys(range(1, 6), "r"))
    with pytest.raises(ConfigError):
        RewardConfig(weights={"interest_personalisation": 1.0})
    register_attribute(attr)
    try:
        assert RewardConfig(weights={"interest_personalisation": 1.0}).weights["interest_personalisation"] == 1.0
    finally:
        unregister_attribute(attr.name)
    assert RewardConfig(weights={"my_score": 2.0}, extra_scores=("my_score",)).weights == {"my_score": 2.0}


def test_wrapper_checks_that_the_scorer_produces_the_weighted_scores():
    env = MediQEnv(builtin_cases())
    with pytest.raises(ConfigError, match="does not produce"):
        AttributeReward(env, EnvironmentScorer(["proxy_focus"]), RewardConfig(weights={"clarity": 1.0}))
    with pytest.raises(ConfigError, match="wraps a MediQEnv"):
        AttributeReward(gymnasium.make("CartPole-v1"), EnvironmentScorer(["proxy_focus"]))


# -- single env ---------------------------------------------------------------------------------------


def _sum_matches(reward, info):
    assert reward == pytest.approx(sum(info["reward_components"].values()), abs=0)


def test_question_step_reports_every_component_and_the_sum(cases):
    case = cases[0]
    scorer = make_scorer()
    env = AttributeReward(MediQEnv(cases, shuffle_options=False), scorer, CONFIG)
    _, info = env.reset(options={"case_id": case.id})
    _, reward, term, trunc, info = env.step("Does ibuprofen bring on your wheezing?")
    comps = info["reward_components"]
    assert set(comps) == {"question_cost", "repeat_penalty", "attr:clarity", "attr:focus", "proxy:info_gain", "proxy:key_fact"}
    assert comps["question_cost"] == -0.02 and comps["repeat_penalty"] == 0.0
    rec = env.grader_score_record
    assert isinstance(rec, ScoreRecord)
    assert comps["attr:clarity"] == pytest.approx(0.2 * (rec.scores["clarity"] - 1) / 4)  # 1..5 -> 0..1
    assert comps["proxy:info_gain"] == pytest.approx(0.05 * len(info["new_facts"]))
    assert info["new_facts"], "this question should reveal a fact"
    expected_key = float(bool(set(info["new_facts"]) & set(case.key_facts)))
    assert comps["proxy:key_fact"] == pytest.approx(0.3 * expected_key)
    assert info["unscored"] == [] and info["scores"] == rec.scores
    assert "question_cost" in info["env_reward_components"]
    _sum_matches(reward, info)
    assert not term and not trunc and scorer.calls == [1]

    _, reward, *_, info = env.step("does ibuprofen bring on your wheezing")
    assert info["reward_components"]["repeat_penalty"] == -0.1
    assert info["reward_components"]["proxy:info_gain"] == 0.0
    _sum_matches(reward, info)

    _, reward, *_, info = env.step("ANSWER: Z")
    assert info["reward_components"] == {"question_cost": -0.02, "invalid_action": -0.2}
    assert reward == pytest.approx(-0.22)

    _, reward, term, _, info = env.step(f"ANSWER: {case.answer}")
    assert term and info["reward_components"] == {"correctness": 1.0} and reward == 1.0
    assert scorer.calls == [1, 1]  # no scorer call for invalid actions and answers


def test_wrong_answer_and_timeout_get_the_incorrect_value(cases):
    case = cases[1]
    wrong = next(k for k in case.options if k != case.answer)
    env = AttributeReward(MediQEnv(cases, shuffle_options=False), make_scorer(), CONFIG)
    env.reset(options={"case_id": case.id})
    *_, reward, _, _, info = env.step(f"ANSWER: {wrong}")
    assert info["reward_components"] == {"correctness": -0.5}
    env = AttributeReward(MediQEnv(cases, max_questions=1, shuffle_options=False), make_scorer(), CONFIG)
    env.reset(options={"case_id": case.id})
    env.step("Do you have a fever?")
    _, reward, term, trunc, info = env.step("What else?")
    assert trunc and not term and info["reward_components"] == {"correctness": -0.5} and reward == -0.5


def test_unscored_judge_output_adds_zero_and_is_reported(cases):
    env = AttributeReward(MediQEnv(cases, shuffle_options=False), make_scorer(), CONFIG)
    env.reset(seed=3)
    _, reward, *_, info = env.step("GARBLE do you smoke?")
    assert sorted(info["unscored"]) == ["clarity", "focus"]
    assert info["reward_components"]["attr:clarity"] == 0.0 and info["reward_components"]["attr:focus"] == 0.0
    assert math.isnan(info["scores"]["clarity"])
    assert env.grader_score_record is not None
    assert env.grader_score_record.raw["judge:rule-judge"]["clarity"]["outputs"] == ["I think it is quite good overall"]
    _sum_matches(reward, info)
    assert env.unscored_counts == {"clarity": 1, "focus": 1}


class _Embedder:
    """Bag-of-words vectors: enough for proxy_relevance to rank options, with no model to load."""

    def encode(self, texts):
        import numpy as np

        vocab = sorted({w for t in texts for w in t.lower().split()})
        return np.array([[t.lower().split().count(w) + 1e-3 for w in vocab] for t in texts], dtype=float)


def test_info_carries_no_grader_data_before_the_end(cases):
    # The scorer's raw record held n_facts and each option's similarity to the revealed facts; with
    # proxy_relevance's score (the answer option's similarity) a policy read the answer from info.
    scorer = EnvironmentScorer(embedder=_Embedder())
    env = AttributeReward(MediQEnv(cases, patient=mediq_env.make_patient("bm25")), scorer)
    scored = 0
    for seed in range(6):
        env.reset(seed=seed)
        *_, info = env.step("Do you have a fever, a cough or any pain?")
        assert not {"score_record", "n_facts", "option_order", "n_facts_known", "facts_revealed"} & set(info)
        assert set(info["scores"]) == set(scorer.keys)
        record = env.grader_score_record
        assert record is not None and record.scores == info["scores"]
        scored += isinstance(record.raw.get("proxy_relevance"), dict)
    assert scored, "no question revealed a fact: the test checks nothing"


def test_normalise_off_uses_raw_scores(cases):
    scorer = JudgeScorer(ScriptedBackend(["5"], cycle=True), ["clarity"])
    on = AttributeReward(MediQEnv(cases, shuffle_options=False), scorer, RewardConfig(weights={"clarity": 1.0}))
    off = AttributeReward(MediQEnv(cases, shuffle_options=False), scorer, RewardConfig(weights={"clarity": 1.0}, normalise=False))
    for env, expected in ((on, 1.0), (off, 5.0)):
        env.reset(seed=0)
        _, reward, *_, info = env.step("Do you smoke?")
        assert info["reward_components"]["attr:clarity"] == expected and reward == expected


def test_wraps_an_env_made_with_gymnasium_make():
    env = AttributeReward(gymnasium.make(mediq_env.ENV_ID), make_scorer(), CONFIG)
    env.reset(seed=0)
    _, reward, *_, info = env.step("Do you have a fever?")
    assert "attr:clarity" in info["reward_components"]
    _sum_matches(reward, info)


def test_step_before_reset_raises(cases):
    with pytest.raises(EnvStateError):
        AttributeReward(MediQEnv(cases, shuffle_options=False), make_scorer(), CONFIG).step("Do you smoke?")


# -- batched ------------------------------------------------------------------------------------------

SCRIPTS = [
    ["Do you have a fever?", "Do you smoke?", "ANSWER: A"],
    ["ANSWER: B"],
    ["GARBLE any pain?", "ANSWER: Q", "Do you take any medication?", "do you take any medication", "ANSWER: C"],
    ["How old are you?", "Have you travelled recently?", "Any weight loss?", "Do you drink alcohol?"],
]


def _run_single(cases, case_id, script, max_questions):
    env = AttributeReward(MediQEnv(cases, max_questions=max_questions, shuffle_options=False), make_scorer(), CONFIG)
    env.reset(seed=0, options={"case_id": case_id})
    out = []
    for action in script:
        _, reward, term, trunc, info = env.step(action)
        out.append((reward, info["reward_components"], info["unscored"]))
        if term or trunc:
            break
    return out


def test_batched_scores_each_turn_in_one_call_and_matches_single_envs(cases):
    case_ids = [cases[i].id for i in (0, 5, 9, 13)]
    scorer = make_scorer()
    batch = BatchedAttributeReward(BatchedEnv(4, cases, max_questions=3, shuffle_options=False), scorer, CONFIG)
    batch.reset(case_ids=case_ids)
    assert len(batch) == 4 and batch.active == [0, 1, 2, 3] and len(batch.envs) == 4
    steps = [0] * 4
    got: list[list] = [[] for _ in range(4)]
    turns_with_questions = 0
    while batch.active:
        active = batch.active
        actions = [SCRIPTS[i][steps[i]] if steps[i] < len(SCRIPTS[i]) else "ANSWER: A" for i in active]
        n_questions = sum(
            1 for i, a in zip(active, actions, strict=True)
            if not a.startswith("ANSWER") and batch.envs[i].state().questions_left > 0
        )
        before = len(scorer.calls)
        results = batch.step(actions)
        assert batch.active_before_step == active
        if n_questions:
            turns_with_questions += 1
            assert scorer.calls[before:] == [n_questions], "one scorer call per batch turn"
        else:
            assert len(scorer.calls) == before
        for i, r in zip(active, results, strict=True):
            steps[i] += 1
            _sum_matches(r.reward, r.info)
            got[i].append((r.reward, r.info["reward_components"], r.info["unscored"]))
    assert len(scorer.calls) == turns_with_questions >= 3
    assert max(scorer.calls) > 1
    for i in range(4):
        assert got[i] == _run_single(cases, case_ids[i], SCRIPTS[i] + ["ANSWER: A"] * 5, 3), f"env {i}"
    assert batch.unscored_counts == {"clarity": 1, "focus": 1}


def test_batched_reset_at_refills_a_slot(cases):
    batch = BatchedAttributeReward(BatchedEnv(2, cases), make_scorer(), CONFIG)
    batch.reset(case_ids=[cases[0].id, cases[1].id])
    batch.step(["ANSWER: A", "Do you smoke?"])
    assert batch.active == [1]
    batch.reset_at(0, case_id=cases[2].id)
    results = batch.step(["Do you smoke?", "do you smoke"])
    assert results[0].info["reward_components"]["repeat_penalty"] == 0.0  # fresh episode: not a repeat
    assert results[1].info["reward_components"]["repeat_penalty"] == -0.1
    batch.abandon(1)
    assert batch.active == [0]


# -- the example --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_example_runs_offline():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "attribute_reward.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "attr:clarity" in out.stdout and "proxy:info_gain" in out.stdout and "correctness" in out.stdout
    assert "sum of components" in out.stdout


def test_repeat_penalty_is_judged_by_meaning(cases):
    """A paraphrase whose reply re-tells only known facts, and an echo of the opening, are repeats even when
    they share no words with an earlier question (the word-overlap rule alone paid them as new questions)."""
    from mediq_env.dialogue import DialogueState
    from mediq_env.patient import PatientReply, Turn
    from mediq_env.wrappers import StepView, attribute_rewards

    case = next(c for c in cases if len(c.facts) >= 3).model_copy(update={"known_facts": (0,)})
    scorer = EnvironmentScorer(["proxy_info_gain"], embedder=None)
    config = RewardConfig(weights={"proxy_info_gain": 1.0}, repeat_penalty=0.1)

    def view(question: str, turns: tuple, revealed: tuple) -> StepView:
        before = DialogueState(case.id, case.initial_info, case.question, dict(case.options), turns, questions_left=5)
        return StepView("question", question, before, case, reply=PatientReply("...", revealed))

    earlier = (Turn("Do you smoke?", "...", (2,)),)
    paraphrase, echo, fresh, abstain = attribute_rewards(
        [
            view("Are you a tobacco user?", earlier, (2,)),
            view("So, as you said at the start?", (), (0,)),
            view("Are you a tobacco user?", earlier, (1, 2)),
            view("Any allergies at all?", earlier, ()),
        ],
        scorer,
        config,
    )
    assert paraphrase.components["repeat_penalty"] == -0.1 and paraphrase.components["proxy:info_gain"] == 0.0
    assert echo.components["repeat_penalty"] == -0.1 and echo.components["proxy:info_gain"] == 0.0
    assert fresh.components["repeat_penalty"] == 0.0 and fresh.components["proxy:info_gain"] == 1.0
    assert abstain.components["repeat_penalty"] == 0.0
