"""Tests of the baselines, the LLM agent's strategies and fallbacks, and the agent factory.

The LLM agent runs on a small fake backend defined here: it recognises each stage's chat by comparing it
with the chats agents.prompts builds for the test states, and replies from a table the test fills in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from agents import (
    CHECKLIST,
    Agent,
    AgentStep,
    AnswerNowAgent,
    ChecklistAgent,
    LLMAgent,
    RandomQuestionAgent,
    make_agent,
)
from agents.baselines import PREGNANCY_QUESTION
from agents.llm_agent import DEFAULT_THRESHOLDS, THRESHOLD_SCALES, derive_seed
from agents.prompts import answer_chat, decision_chat, question_chat
from mediq_env import DialogueState, MediQEnv, Turn
from mediq_env.backends.base import Chat, Generation, SamplingParams
from mediq_env.errors import BackendResponseError, ConfigError

OPTIONS = {"A": "Asthma", "B": "Lung cancer", "C": "Pneumonia", "D": "Reflux"}


def make_state(
    case_id: str = "c1",
    *,
    initial_info: str | None = None,
    options: dict[str, str] | None = None,
    turns: tuple[Turn, ...] = (),
    questions_left: int = 5,
    must_answer: bool = False,
) -> DialogueState:
    # The case id is part of the text so that the fake backend can tell states apart by their chats.
    if initial_info is None:
        initial_info = f"Case {case_id}: a 58-year-old patient has had a cough for two months."
    return DialogueState(
        case_id=case_id,
        initial_info=initial_info,
        question="What is the most likely diagnosis?",
        options=OPTIONS if options is None else options,
        turns=turns,
        questions_left=questions_left,
        must_answer=must_answer,
    )


Reply = str | Callable[[SamplingParams], str]


@dataclass
class FakeBackend:
    """Replies per (stage, case_id) from ``table``; records every call with the stage of each chat."""

    states: Sequence[DialogueState]
    table: Mapping[tuple[str, str], Reply]
    strategy: str = "implicit"
    rationale: bool = False
    model_id: str = "fake"
    calls: list[tuple[list[str], list[str], SamplingParams]] = field(default_factory=list)

    def _stage(self, chat: Chat) -> tuple[str, str]:
        for s in self.states:
            if chat == answer_chat(s):
                return "answer", s.case_id
            if chat == question_chat(s):
                return "question", s.case_id
            if chat == decision_chat(s, self.strategy, rationale=self.rationale):  # type: ignore[arg-type]
                return "decision", s.case_id
        raise AssertionError(f"unrecognised chat: {chat}")

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        keys = [self._stage(c) for c in chats]
        self.calls.append(([k[0] for k in keys], [k[1] for k in keys], params))
        out = []
        for key in keys:
            reply = self.table.get(key, "")
            out.append(Generation(reply(params) if callable(reply) else reply))
        return out

    def stages(self) -> list[str]:
        """The stage of each call (every call must hold one stage only)."""
        result = []
        for stages, _, _ in self.calls:
            assert len(set(stages)) == 1, stages
            result.append(stages[0])
        return result


def run_one(table: Mapping[tuple[str, str], Reply], state: DialogueState | None = None, **kw: object) -> tuple[AgentStep, FakeBackend]:
    state = state or make_state()
    backend = FakeBackend([state], table, strategy=str(kw.get("strategy", "implicit")), rationale=bool(kw.get("rationale", False)))
    agent = LLMAgent(backend, **kw)  # type: ignore[arg-type]
    return agent.act([state])[0], backend


def assert_info_keys(step: AgentStep) -> None:
    for key in ("decision", "intermediate_answer", "confidence", "raw", "fallback"):
        assert key in step.info


# ---------------------------------------------------------------------------------------------------
# Baselines


def test_answer_now_answers_the_given_letter_without_asking() -> None:
    states = [make_state("c1"), make_state("c2", turns=(Turn("Any fever?", "No."),))]
    for agent, letter in ((AnswerNowAgent(), "A"), (AnswerNowAgent("c"), "C")):
        assert isinstance(agent, Agent)
        steps = agent.act(states)
        assert [s.action for s in steps] == [{"answer": letter}] * 2
        assert all(s.info["decision"] == "answer" and s.info["fallback"] is None for s in steps)
        assert_info_keys(steps[0])


def test_answer_now_letter_missing_from_case_falls_back_to_first_option() -> None:
    state = make_state(options={"B": "x", "C": "y"})
    step = AnswerNowAgent("A").act([state])[0]
    assert step.action == {"answer": "B"}
    assert step.info["fallback"] and "not an option" in step.info["fallback"]


def test_answer_now_random_guess_needs_a_seed_and_is_reproducible() -> None:
    with pytest.raises(ConfigError):
        AnswerNowAgent(None)
    with pytest.raises(ConfigError):
        AnswerNowAgent("AB")
    states = [make_state(f"case{i}") for i in range(40)]
    first = [s.action["answer"] for s in AnswerNowAgent(None, seed=3).act(states)]  # type: ignore[index]
    again = [s.action["answer"] for s in AnswerNowAgent(None, seed=3).act(states)]  # type: ignore[index]
    other = [s.action["answer"] for s in AnswerNowAgent(None, seed=4).act(states)]  # type: ignore[index]
    assert first == again
    assert first != other
    assert set(first) <= set(OPTIONS) and len(set(first)) > 1


def _play(agent: Agent, state: DialogueState, max_turns: int = 30) -> tuple[list[str], AgentStep]:
    """Run an agent on a hand-made episode (the patient says nothing useful); return questions and last step."""
    asked: list[str] = []
    for _ in range(max_turns):
        step = agent.act([state])[0]
        if "answer" in step.action:
            return asked, step
        question = step.action["question"]  # type: ignore[index]
        asked.append(question)
        state = make_state(
            state.case_id,
            initial_info=state.initial_info,
            turns=(*state.turns, Turn(question, "I can't answer that.")),
            questions_left=state.questions_left - 1,
            must_answer=state.questions_left - 1 <= 0,
        )
    raise AssertionError("the agent never answered")


def test_checklist_asks_in_order_then_answers_when_budget_ends() -> None:
    asked, last = _play(ChecklistAgent(), make_state(questions_left=4))
    assert asked == list(CHECKLIST[:4])
    assert last.action == {"answer": "A"}


def test_checklist_answers_when_list_ends_and_skips_pregnancy_for_men() -> None:
    asked, last = _play(ChecklistAgent(answer_letter="D"), make_state(initial_info="A 40-year-old man has a cough.", questions_left=50))
    assert PREGNANCY_QUESTION not in asked
    assert asked == [q for q in CHECKLIST if q != PREGNANCY_QUESTION]
    assert last.action == {"answer": "D"}
    asked, _ = _play(ChecklistAgent(), make_state(initial_info="A 30-year-old woman has nausea.", questions_left=50))
    assert PREGNANCY_QUESTION in asked and len(asked) == len(CHECKLIST)


def test_checklist_must_answer_and_skips_already_asked() -> None:
    agent = ChecklistAgent()
    assert agent.act([make_state(must_answer=True, questions_left=0)])[0].action == {"answer": "A"}
    state = make_state(turns=(Turn(CHECKLIST[0].upper(), "Last week."),))
    assert agent.act([state])[0].action == {"question": CHECKLIST[1]}
    with pytest.raises(ConfigError):
        ChecklistAgent([])


def test_random_agent_is_reproducible_and_never_repeats() -> None:
    state = make_state(questions_left=8)
    first, _ = _play(RandomQuestionAgent(7), state)
    again, _ = _play(RandomQuestionAgent(7), state)
    assert first == again
    assert len(first) == 8 and len(set(first)) == 8 and set(first) <= set(CHECKLIST)
    orders = {tuple(_play(RandomQuestionAgent(seed), state)[0]) for seed in range(5)}
    assert len(orders) > 1
    assert tuple(first) != tuple(CHECKLIST[:8])  # not the checklist order (fixed seed, checked once)


def test_random_agent_does_not_depend_on_batching() -> None:
    states = [make_state(f"c{i}") for i in range(6)]
    agent = RandomQuestionAgent(11)
    batched = [s.action for s in agent.act(states)]
    alone = [RandomQuestionAgent(11).act([s])[0].action for s in reversed(states)][::-1]
    assert batched == alone


def test_random_agent_answers_fixed_letter_or_seeded_draw() -> None:
    assert RandomQuestionAgent(0).act([make_state(must_answer=True)])[0].action == {"answer": "A"}
    states = [make_state(f"c{i}", must_answer=True, questions_left=0) for i in range(30)]
    letters = [s.action["answer"] for s in RandomQuestionAgent(0, answer_letter=None).act(states)]  # type: ignore[index]
    assert letters == [s.action["answer"] for s in RandomQuestionAgent(0, answer_letter=None).act(states)]  # type: ignore[index]
    assert len(set(letters)) > 1
    with pytest.raises(ConfigError):
        RandomQuestionAgent(-1)


def test_baseline_actions_are_valid_env_actions() -> None:
    for agent in (AnswerNowAgent(), ChecklistAgent(), RandomQuestionAgent(0)):
        env = MediQEnv(max_questions=3)
        _, info = env.reset(seed=0)
        done = False
        while not done:
            step = agent.act([info["state"]])[0]
            _, _, terminated, truncated, info = env.step(step.action)
            assert info["invalid_action"] is None
            done = terminated or truncated
        assert terminated


# ---------------------------------------------------------------------------------------------------
# LLMAgent: the four strategies


def test_implicit_asks_with_the_decisions_question() -> None:
    step, backend = run_one({("answer", "c1"): "ANSWER: B", ("decision", "c1"): "ASK: Do you smoke?"})
    assert step.action == {"question": "Do you smoke?"}
    assert step.info["decision"] == "ask" and step.info["question_source"] == "decision"
    assert step.info["intermediate_answer"] == "B" and step.info["fallback"] is None
    assert backend.stages() == ["answer", "decision"]  # no separate question call needed
    assert_info_keys(step)


def test_implicit_answers_when_confident() -> None:
    step, _ = run_one({("answer", "c1"): "ANSWER: B", ("decision", "c1"): "ANSWER: C"})
    assert step.action == {"answer": "C"}
    assert step.info["decision"] == "answer" and step.info["intermediate_answer"] == "B"


@pytest.mark.parametrize(
    ("decision", "asks"),
    [("CONFIDENT: NO", True), ("CONFIDENT: YES", False), ("No.", True), ("Yes", False)],
)
def test_binary(decision: str, asks: bool) -> None:
    table = {("answer", "c1"): "ANSWER: D", ("decision", "c1"): decision, ("question", "c1"): "Do you cough up blood?"}
    step, backend = run_one(table, strategy="binary")
    if asks:
        assert step.action == {"question": "Do you cough up blood?"}
        assert backend.stages() == ["answer", "decision", "question"]
        assert step.info["question_source"] == "backend"
    else:
        assert step.action == {"answer": "D", "confidence": 1.0}
        assert backend.stages() == ["answer", "decision"]
    assert step.info["confidence"] == (0.0 if asks else 1.0)


@pytest.mark.parametrize(
    ("reply", "threshold", "asks"),
    [("CONFIDENCE: 0.5", None, True), ("CONFIDENCE: 0.9", None, False), ("0.8", None, False), ("90%", 0.95, True), ("0.3", 0.25, False)],
)
def test_numeric(reply: str, threshold: float | None, asks: bool) -> None:
    table = {("answer", "c1"): "ANSWER: A", ("decision", "c1"): reply, ("question", "c1"): "Any weight loss?"}
    step, _ = run_one(table, strategy="numeric", threshold=threshold)
    assert step.info["decision"] == ("ask" if asks else "answer")
    assert step.action == ({"question": "Any weight loss?"} if asks else {"answer": "A", "confidence": step.info["confidence"]})


@pytest.mark.parametrize(("reply", "threshold", "asks"), [("CONFIDENCE: 3", None, True), ("CONFIDENCE: 4", None, False), ("5", None, False), ("4", 4.5, True)])
def test_likert(reply: str, threshold: float | None, asks: bool) -> None:
    table = {("answer", "c1"): "ANSWER: C", ("decision", "c1"): reply, ("question", "c1"): "Any fever?"}
    step, _ = run_one(table, strategy="likert", threshold=threshold)
    assert step.info["decision"] == ("ask" if asks else "answer")
    value = float(reply.split()[-1])
    assert step.info["confidence_raw"] == value
    assert step.info["confidence"] == pytest.approx((value - 1) / 4)


@pytest.mark.parametrize("strategy", ["implicit", "binary", "numeric", "likert"])
def test_rationale_variant_reads_the_final_line(strategy: str) -> None:
    decisions = {
        "implicit": "REASONING: smoking history unknown.\nASK: Do you smoke?",
        "binary": "REASONING: smoking history unknown, no answer yet.\nCONFIDENT: NO",
        "numeric": "REASONING: a 58-year-old with 2 months of cough.\nCONFIDENCE: 0.3",
        "likert": "REASONING: a 58-year-old with 2 months of cough.\nCONFIDENCE: 2",
    }
    table = {("answer", "c1"): "ANSWER: B", ("decision", "c1"): decisions[strategy], ("question", "c1"): "Do you smoke?"}
    step, backend = run_one(table, strategy=strategy, rationale=True)
    assert step.action == {"question": "Do you smoke?"}
    assert step.info["fallback"] is None
    assert "REASONING" in decision_chat(make_state(), strategy, rationale=True)[-1]["content"]  # type: ignore[arg-type]
    # The decision stage has room for the rationale; the one-line intermediate answer stays short.
    (answer_call,) = [p for stages, _, p in backend.calls if stages[0] == "answer"]
    assert answer_call.max_new_tokens <= 32
    assert all(p.max_new_tokens >= 128 for stages, _, p in backend.calls if stages[0] == "decision")


def test_must_answer_always_answers_without_deciding() -> None:
    forced = make_state(must_answer=True, questions_left=0)
    for strategy in ("implicit", "binary", "numeric", "likert"):
        table = {("answer", "c1"): "ANSWER: D", ("decision", "c1"): "ASK: Do you smoke?", ("question", "c1"): "Any fever?"}
        step, backend = run_one(table, state=forced, strategy=strategy)
        assert step.action == {"answer": "D"}
        assert step.info["decision"] == "answer" and step.info["forced"] is True
        assert backend.stages() == ["answer"]


# ---------------------------------------------------------------------------------------------------
# LLMAgent: fallbacks


def test_unparseable_decision_asks_and_is_recorded() -> None:
    table = {("answer", "c1"): "ANSWER: A", ("decision", "c1"): "Hmm, difficult.", ("question", "c1"): "Any chest pain?"}
    step, backend = run_one(table)
    assert step.action == {"question": "Any chest pain?"}
    assert step.info["fallback"] == "decision_unparsed" and step.info["fallback_kinds"] == ["decision_unparsed"]
    assert "decision" in step.info["fallback_detail"] and "counted as ask" in step.info["fallback_detail"]
    assert backend.stages() == ["answer", "decision", "question"]
    for strategy in ("binary", "numeric", "likert"):
        step, _ = run_one({**table, ("decision", "c1"): "I cannot say."}, strategy=strategy)
        assert step.action == {"question": "Any chest pain?"}
        assert step.info["fallback"] == "decision_unparsed"
        assert "confidence" in step.info["fallback_detail"] and step.info["confidence"] is None


def test_unparseable_question_uses_an_unasked_checklist_question() -> None:
    state = make_state(turns=(Turn(CHECKLIST[0], "A month ago."),))
    table = {("answer", "c1"): "ANSWER: A", ("decision", "c1"): "CONFIDENT: NO", ("question", "c1"): "ANSWER: B"}
    step, _ = run_one(table, state=state, strategy="binary")
    assert step.action == {"question": CHECKLIST[1]}
    assert step.info["question_source"] == "checklist"
    assert step.info["fallback"] == "question_missing" and step.info["fallback_kinds"] == ["question_missing"]
    assert "checklist" in step.info["fallback_detail"]
    # implicit: "ASK:" with no usable question goes to the question stage, then to the checklist
    step, backend = run_one({("answer", "c1"): "ANSWER: A", ("decision", "c1"): "ASK:", ("question", "c1"): ""}, state=state)
    assert step.action == {"question": CHECKLIST[1]}
    assert step.info["fallback"] == "question_missing"
    assert backend.stages() == ["answer", "decision", "question"]


def test_unparseable_final_answer_uses_fixed_letter_never_random() -> None:
    forced = make_state(must_answer=True, questions_left=0)
    step, _ = run_one({("answer", "c1"): "I don't know"}, state=forced)
    assert step.action == {"answer": "A"}
    assert step.info["intermediate_answer"] is None
    assert step.info["fallback"] == "answer_missing" and "fixed letter A" in step.info["fallback_detail"]
    # a case without option A answers its first option, still flagged
    other = make_state(options={"B": "x", "C": "y"}, must_answer=True, questions_left=0)
    step, _ = run_one({("answer", "c1"): "B or C"}, state=other)
    assert step.action == {"answer": "B"} and step.info["fallback"] == "answer_missing"


def test_implicit_answer_without_letter_uses_intermediate_answer() -> None:
    step, _ = run_one({("answer", "c1"): "ANSWER: C", ("decision", "c1"): "ANSWER: one of them"})
    assert step.action == {"answer": "C"}
    # The model's own (intermediate) answer made the action: noted, but not a fallback kind.
    assert step.info["fallback"] is None and "intermediate answer" in step.info["fallback_detail"]
    # Neither stage gave a letter: the fixed letter is a fallback.
    step, _ = run_one({("answer", "c1"): "no idea", ("decision", "c1"): "ANSWER: one of them"})
    assert step.action == {"answer": "A"} and step.info["fallback"] == "answer_missing"


def test_backend_returning_wrong_number_of_generations_is_an_error() -> None:
    class Broken:
        model_id = "broken"

        def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
            return []

    with pytest.raises(BackendResponseError):
        LLMAgent(Broken()).act([make_state()])


# ---------------------------------------------------------------------------------------------------
# LLMAgent: configuration


def test_default_thresholds_lie_inside_their_scales() -> None:
    for strategy, (low, high) in THRESHOLD_SCALES.items():
        agent = LLMAgent(FakeBackend([], {}), strategy=strategy)  # type: ignore[arg-type]
        assert agent.threshold == DEFAULT_THRESHOLDS[strategy]
        assert low < agent.threshold <= high
    assert LLMAgent(FakeBackend([], {}), strategy="likert").threshold == 4
    assert LLMAgent(FakeBackend([], {}), strategy="numeric").threshold == 0.8


@pytest.mark.parametrize(
    ("strategy", "threshold"),
    [("numeric", 0.0), ("numeric", 1.5), ("numeric", -0.1), ("likert", 1), ("likert", 0.5), ("likert", 6), ("binary", 0.5), ("implicit", 0.5)],
)
def test_bad_thresholds_are_refused(strategy: str, threshold: float) -> None:
    with pytest.raises(ConfigError):
        LLMAgent(FakeBackend([], {}), strategy=strategy, threshold=threshold)  # type: ignore[arg-type]


def test_other_config_errors() -> None:
    with pytest.raises(ConfigError):
        LLMAgent(FakeBackend([], {}), strategy="vibes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        LLMAgent(FakeBackend([], {}), self_consistency=0)
    with pytest.raises(ConfigError):
        LLMAgent(object())  # type: ignore[arg-type]


def test_defaults_ask_on_a_first_turn_when_the_model_is_unsure() -> None:
    """The default agent (implicit) and the numeric/likert defaults ask when the model is not confident."""
    base = {("answer", "c1"): "ANSWER: A", ("question", "c1"): "When did the cough start?"}
    assert run_one({**base, ("decision", "c1"): "ASK: When did the cough start?"})[0].info["decision"] == "ask"
    assert run_one({**base, ("decision", "c1"): "CONFIDENCE: 0.6"}, strategy="numeric")[0].info["decision"] == "ask"
    assert run_one({**base, ("decision", "c1"): "CONFIDENCE: 3"}, strategy="likert")[0].info["decision"] == "ask"
    agent = LLMAgent(FakeBackend([], {}))
    assert agent.strategy == "implicit" and agent.params.temperature == 0 and agent.self_consistency == 1


# ---------------------------------------------------------------------------------------------------
# LLMAgent: self-consistency, batching, question backend


def _by_seed(replies: Sequence[str], k: int, base: int = 0) -> Callable[[SamplingParams], str]:
    seeds = {derive_seed(base, i): reply for i, reply in enumerate(replies)}
    assert len(seeds) == k

    def reply(params: SamplingParams) -> str:
        assert params.seed is not None
        return seeds[params.seed]

    return reply


@pytest.mark.parametrize(
    ("replies", "decision"),
    [
        (["ANSWER: B", "ASK: Any fever?", "ANSWER: B"], "answer"),
        (["ASK: Any fever?", "ANSWER: B", "ASK: Do you smoke?"], "ask"),
        (["ANSWER: B", "garbled", "ASK: Any fever?"], "ask"),  # unparsed counts as ask
        (["ANSWER: B", "ANSWER: C", "ANSWER: C"], "answer"),
    ],
)
def test_self_consistency_majority_vote_implicit(replies: list[str], decision: str) -> None:
    table: dict[tuple[str, str], Reply] = {("answer", "c1"): "ANSWER: A", ("decision", "c1"): _by_seed(replies, 3)}
    step, backend = run_one(table, self_consistency=3)
    assert step.info["decision"] == decision
    if decision == "answer":
        assert step.action["answer"] == max(set(r[-1] for r in replies if r.startswith("ANSWER")), key=[r[-1] for r in replies].count)  # type: ignore[index]
    else:
        assert step.action == {"question": "Any fever?"}
    params = [p for stage, p in zip(backend.stages(), [c[2] for c in backend.calls], strict=True) if stage == "decision"]
    assert len(params) == 3
    assert [p.seed for p in params] == [derive_seed(0, i) for i in range(3)]
    assert len({p.seed for p in params}) == 3 and all(p.temperature > 0 for p in params)


def test_self_consistency_binary_majority_and_tie() -> None:
    table: dict[tuple[str, str], Reply] = {("answer", "c1"): "ANSWER: A", ("question", "c1"): "Any fever?"}
    step, _ = run_one({**table, ("decision", "c1"): _by_seed(["YES", "NO", "YES"], 3)}, strategy="binary", self_consistency=3)
    assert step.info["decision"] == "answer" and step.info["confidence"] == pytest.approx(2 / 3)
    step, _ = run_one({**table, ("decision", "c1"): _by_seed(["YES", "NO"], 2)}, strategy="binary", self_consistency=2)
    assert step.info["decision"] == "ask"  # a tie asks


def test_self_consistency_mean_confidence() -> None:
    table: dict[tuple[str, str], Reply] = {("answer", "c1"): "ANSWER: A", ("question", "c1"): "Any fever?"}
    # mean 0.7 < 0.8 though two samples are above the threshold: the mean decides, not a vote
    step, _ = run_one({**table, ("decision", "c1"): _by_seed(["0.9", "0.3", "0.9"], 3)}, strategy="numeric", self_consistency=3)
    assert step.info["decision"] == "ask" and step.info["confidence"] == pytest.approx(0.7)
    # an unparsed sample is left out of the mean and recorded
    step, _ = run_one({**table, ("decision", "c1"): _by_seed(["5", "??", "4"], 3)}, strategy="likert", self_consistency=3)
    assert step.info["decision"] == "answer" and step.info["confidence_raw"] == pytest.approx(4.5)
    assert "1/3 unparsed" in step.info["fallback_detail"] and step.info["fallback"] is None


def test_self_consistency_is_reproducible_and_seeded_from_base() -> None:
    state = make_state()
    backend = FakeBackend([state], {("answer", "c1"): "ANSWER: A", ("decision", "c1"): "ASK: Any fever?"})
    params = SamplingParams(seed=123)
    LLMAgent(backend, self_consistency=4, params=params).act([state])
    LLMAgent(backend, self_consistency=4, params=params).act([state])
    seeds = [c[2].seed for c in backend.calls if c[0][0] == "decision"]
    assert seeds[:4] == seeds[4:] == [derive_seed(123, i) for i in range(4)]
    assert len(set(seeds[:4])) == 4
    assert derive_seed(0, 0) != derive_seed(1, 0)
    agent = LLMAgent(backend, self_consistency=2, params=SamplingParams(temperature=0.3, seed=5))
    assert [p.temperature for p in agent.sample_params()] == [0.3, 0.3]


def test_one_generate_call_per_stage_for_a_batch() -> None:
    states = [
        make_state("ask"),
        make_state("answer"),
        make_state("forced", must_answer=True, questions_left=0),
        make_state("garbled"),
    ]
    table: dict[tuple[str, str], Reply] = {
        **{("answer", s.case_id): "ANSWER: B" for s in states},
        ("decision", "ask"): "CONFIDENCE: 0.2",
        ("decision", "answer"): "CONFIDENCE: 0.95",
        ("decision", "garbled"): "???",
        ("question", "ask"): "Do you smoke?",
        ("question", "garbled"): "Any fever?",
    }
    for k in (1, 3):
        backend = FakeBackend(states, table, strategy="numeric")
        steps = LLMAgent(backend, strategy="numeric", self_consistency=k).act(states)
        assert backend.stages() == ["answer"] + ["decision"] * k + ["question"]
        assert backend.calls[0][1] == ["ask", "answer", "forced", "garbled"]
        assert all(c[1] == ["ask", "answer", "garbled"] for c in backend.calls[1 : 1 + k])
        assert backend.calls[-1][1] == ["ask", "garbled"]
        assert [s.info["decision"] for s in steps] == ["ask", "answer", "answer", "ask"]
        assert steps[0].action == {"question": "Do you smoke?"} and steps[3].action == {"question": "Any fever?"}
        assert steps[2].info["forced"] is True
    assert LLMAgent(FakeBackend([], {})).act([]) == []


def test_question_backend_generates_questions_only() -> None:
    states = [make_state("c1"), make_state("c2")]
    table = {
        ("answer", "c1"): "ANSWER: A",
        ("answer", "c2"): "ANSWER: B",
        ("decision", "c1"): "ASK: Do you smoke?",
        ("decision", "c2"): "ANSWER: B",
    }
    main = FakeBackend(states, table)
    asker = FakeBackend(states, {("question", "c1"): "Question: Have you lost weight?"}, model_id="asker")
    steps = LLMAgent(main, question_backend=asker).act(states)
    assert steps[0].action == {"question": "Have you lost weight?"}  # the decision's own question is replaced
    assert steps[0].info["question_source"] == "question_backend"
    assert steps[1].action == {"answer": "B"}
    assert main.stages() == ["answer", "decision"]
    assert asker.stages() == ["question"] and asker.calls[0][1] == ["c1"]
    assert asker.calls[0][2].max_new_tokens == 64  # question_params default


def test_llm_actions_are_valid_env_actions() -> None:
    env = MediQEnv(max_questions=2)
    _, info = env.reset(seed=0)
    state = info["state"]
    table = {("answer", state.case_id): "ANSWER: A", ("decision", state.case_id): "ASK: Do you have a fever?"}
    backend = FakeBackend([state], table)
    step = LLMAgent(backend).act([state])[0]
    _, _, _, _, info = env.step(step.action)
    assert info["invalid_action"] is None and info["action_type"] == "question"


# ---------------------------------------------------------------------------------------------------
# Factory


def test_make_agent_specs() -> None:
    assert isinstance(make_agent("answer-now"), AnswerNowAgent)
    assert make_agent("answer-now:C").act([make_state()])[0].action == {"answer": "C"}
    assert isinstance(make_agent("checklist", answer_letter="B"), ChecklistAgent)
    random_agent = make_agent("random:5")
    assert isinstance(random_agent, RandomQuestionAgent) and random_agent.seed == 5
    assert make_agent("random").seed == 0  # type: ignore[attr-defined]
    for bad in ("", "oracle", "llm:", "random:x", "checklist:3"):
        with pytest.raises(ConfigError):
            make_agent(bad)


def test_decision_backend_decides_and_asks_but_every_answer_stays_with_the_main_model() -> None:
    states = [make_state("c1"), make_state("c2"), make_state("c3", questions_left=0, must_answer=True)]
    main = FakeBackend(states, {("answer", "c1"): "ANSWER: A", ("answer", "c2"): "ANSWER: B", ("answer", "c3"): "ANSWER: C",
                                ("decision", "c1"): "ANSWER: D", ("decision", "c2"): "ANSWER: D"})
    policy = FakeBackend(states, {("decision", "c1"): "ASK: Have you lost weight?", ("decision", "c2"): "ANSWER: D"},
                         model_id="policy")
    agent = LLMAgent(main, decision_backend=policy)
    steps = agent.act(states)
    assert steps[0].action == {"question": "Have you lost weight?"}  # the policy's decision and question
    assert steps[1].action == {"answer": "B"}  # the policy chose to answer; the letter is the main model's
    assert steps[2].action == {"answer": "C"} and steps[2].info["forced"]
    assert main.stages() == ["answer"] and policy.stages() == ["decision"]
    assert policy.calls[0][1] == ["c1", "c2"] and "decisions=policy" in agent.name
    assert all(s.info["fallback"] is None for s in steps)


def test_make_agent_llm_uses_the_backend_factory() -> None:
    agent = make_agent("llm:scripted", strategy="likert", backend_options={"reply": "CONFIDENCE: 2"})
    assert isinstance(agent, LLMAgent) and agent.strategy == "likert"
    step = agent.act([make_state()])[0]
    assert step.info["decision"] == "ask"  # every reply reads as confidence 2 and no question parses
    assert step.info["question_source"] == "checklist"


# ---------------------------------------------------------------------------------------------------
# LLMAgent: the fallback kind of every turn


def test_every_llm_turn_records_fallback_kind_none_when_the_model_decided() -> None:
    cases = [
        ({("answer", "c1"): "ANSWER: A", ("decision", "c1"): "ASK: Do you smoke?"}, {}),
        ({("answer", "c1"): "ANSWER: A", ("decision", "c1"): "ANSWER: B"}, {}),
        ({("answer", "c1"): "ANSWER: A", ("decision", "c1"): "CONFIDENT: NO", ("question", "c1"): "Any fever?"}, {"strategy": "binary"}),
        ({("answer", "c1"): "ANSWER: D"}, {"state": make_state(must_answer=True, questions_left=0)}),
    ]
    for table, kw in cases:
        step, _ = run_one(table, **kw)  # type: ignore[arg-type]
        assert step.info["fallback"] is None and step.info["fallback_kinds"] == [], step.info
        assert step.info["fallback_detail"] is None


def test_unparsed_decision_and_missing_question_record_both_kinds() -> None:
    table = {("answer", "c1"): "ANSWER: A", ("decision", "c1"): "Hmm.", ("question", "c1"): "ANSWER: B"}
    step, _ = run_one(table)
    assert step.action == {"question": CHECKLIST[0]}
    assert step.info["fallback"] == "decision_unparsed"
    assert step.info["fallback_kinds"] == ["decision_unparsed", "question_missing"]


@pytest.mark.parametrize(
    ("replies", "kind"),
    [
        (["ANSWER: B", "??", "??"], "decision_unparsed"),  # the parsed vote answered; unparsed votes made it ask
        (["ANSWER: B", "ANSWER: B", "??"], None),  # answered by the parsed majority
        (["ANSWER: B", "??", "ASK: Any fever?"], None),  # a tie asks with or without the unparsed vote
        (["??", "??", "??"], "decision_unparsed"),
    ],
)
def test_self_consistency_unparsed_votes_are_a_fallback_only_when_they_decide(replies: list[str], kind: str | None) -> None:
    table: dict[tuple[str, str], Reply] = {
        ("answer", "c1"): "ANSWER: A",
        ("decision", "c1"): _by_seed(replies, 3),
        ("question", "c1"): "Any fever?",
    }
    step, _ = run_one(table, self_consistency=3)
    assert step.info["fallback"] == kind


def test_rollout_records_carry_the_fallback_of_every_turn() -> None:
    from agents.rollout import EpisodeSpec, rollout
    from mediq_env import BatchedEnv, builtin_cases

    cases = builtin_cases()[:2]

    class Unreadable:
        """A model whose every output is unreadable: the agent asks checklist questions, then answers "A"."""

        model_id = "unreadable"

        def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
            return [Generation("???") for _ in chats]

    envs = BatchedEnv(2, cases, max_questions=2)
    specs = [EpisodeSpec(c.id, 0) for c in cases]
    records = list(rollout(LLMAgent(Unreadable()), envs, specs))
    assert len(records) == 2
    for record in records:
        data = record.to_dict()
        assert data["turns"], data
        for turn in data["turns"]:
            assert "fallback" in turn["agent"] and "fallback_kinds" in turn["agent"]
        # Nothing parses: every question turn is decision_unparsed (+ question_missing); the forced answer
        # is answer_missing.
        assert [t["agent"]["fallback"] for t in data["turns"]] == ["decision_unparsed", "decision_unparsed", "answer_missing"]


def test_rollout_record_keeps_facts_known_at_reset() -> None:
    from agents.rollout import EpisodeRecord, _start

    record = EpisodeRecord(key="k", case_id="", seed=0)
    _start(record, {"case_id": "c1", "n_facts": 6, "n_facts_known": 2, "option_order": ["A", "B"]})
    assert record.to_dict()["n_facts_known"] == 2
    old = EpisodeRecord(key="k", case_id="", seed=0)
    _start(old, {"case_id": "c1", "n_facts": 6, "option_order": ["A", "B"]})  # an env that does not report it
    assert old.n_facts_known is None
    assert EpisodeRecord.from_dict({k: v for k, v in record.to_dict().items() if k != "n_facts_known"}).n_facts_known is None


def test_a_question_that_restates_an_earlier_one_is_redrawn_sampled_and_counted() -> None:
    from benchmarks.metrics import redraw_summary
    from benchmarks.report import redraw_line

    asked = (Turn("What was your blood pressure?", "I'm not sure."),)
    copy, fresh, stuck = (make_state(c, turns=asked) for c in ("copy", "fresh", "stuck"))
    first = make_state("first")

    def copier(params: SamplingParams) -> str:
        # Greedy it copies its last question (new case and punctuation); the second sampled draw asks anew.
        if params.temperature == 0:
            return "ASK: what was your blood pressure"
        return "ASK: Do you have a headache?" if params.seed == derive_seed(0, 1001) else "ASK: What was your blood pressure?"

    table: dict[tuple[str, str], Reply] = {
        ("decision", "copy"): copier,
        ("decision", "fresh"): "ASK: Any chest pain?",
        ("decision", "stuck"): "ASK: What was your blood pressure?",
        ("decision", "first"): "ASK: What was your blood pressure?",
    }
    states = [copy, fresh, stuck, first]
    backend = FakeBackend(states, table)
    steps = LLMAgent(backend, redraw_repeats=3).act(states)  # type: ignore[arg-type]
    assert [s.action for s in steps] == [{"question": "Do you have a headache?"}, {"question": "Any chest pain?"},
                                         {"question": "What was your blood pressure?"}, {"question": "What was your blood pressure?"}]
    assert [(s.info["question_redraws"], s.info["question_repeats"]) for s in steps] == [(2, False), (0, False), (3, True), (0, False)]
    assert steps[0].info["raw"]["decision"][-1] == "ASK: Do you have a headache?" and steps[0].info["fallback"] is None
    # Only the repeating states are redrawn, sampled and seeded: the copier twice, the stuck one three times.
    redraw_calls = [(ids, p) for stages, ids, p in backend.calls if stages[0] == "decision" and p.temperature > 0]
    assert [ids for ids, _ in redraw_calls] == [["copy", "stuck"], ["copy", "stuck"], ["stuck"]]
    assert [p.seed for _, p in redraw_calls] == [derive_seed(0, 1000 + r) for r in range(3)]
    # The summary and the report say how many questions were not the model's first choice.
    episodes = [{"turns": [{"agent": s.info} for s in steps]}]
    summary = redraw_summary(episodes)
    assert summary == {"questions": 4, "redrawn": 2, "share": 0.5, "still_repeating": 1, "draws": 5}
    assert redraw_line({"question_redraws": summary}) is not None and "2 of 4 questions" in str(redraw_line({"question_redraws": summary}))
    # Off by default: no redraws, no field, nothing in the summary.
    plain = LLMAgent(FakeBackend(states, table)).act(states)  # type: ignore[arg-type]
    assert plain[0].action == {"question": "what was your blood pressure"} and "question_redraws" not in plain[0].info
    assert redraw_summary([{"turns": [{"agent": s.info} for s in plain]}]) is None
    with pytest.raises(ConfigError, match="implicit strategy"):
        LLMAgent(backend, strategy="binary", redraw_repeats=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="redraw_repeats must be"):
        LLMAgent(backend, redraw_repeats=-1)  # type: ignore[arg-type]
