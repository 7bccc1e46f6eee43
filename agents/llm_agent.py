"""A doctor agent driven by a language model, with MediQ's four ways of deciding when to stop asking.

Each call to :meth:`LLMAgent.act` runs up to three stages, each as batched backend calls over all the
states given (never one call per state):

1. **answer** — one call: the best option now for every state. This is the *intermediate answer* recorded
   every turn (for accuracy-against-questions curves), and the final answer when the agent answers under a
   confidence strategy or when the env forces an answer (``state.must_answer``).
2. **decision** — one call per self-consistency sample, for the states not forced to answer:
   ``implicit`` (the model writes ``ASK: <question>`` or ``ANSWER: <letter>``), ``binary`` (YES/NO: enough
   to answer?), ``numeric`` (probability of being right; answer when the mean is >= ``threshold``, default
   0.8) or ``likert`` (1-5; answer when the mean is >= ``threshold``, default 4). ``rationale=True`` asks for
   a one-line assessment before the decision. With ``self_consistency=k`` the decision is sampled k times
   (temperature > 0, seeds derived from the base seed so reruns repeat exactly): the majority of the votes
   decides (a tie asks), and the confidence is the mean of the parsed confidences.
3. **question** — one call, for the states that ask and still need a question: from ``question_backend``
   when given (ALFA swaps only the question generator), else from the same backend. Under ``implicit``
   without a ``question_backend`` the question written in the decision is used when it parses.

``decision_backend`` moves stage 2 to another model and leaves every answer with ``backend``: the decision
model says whether to ask (and, under ``implicit``, writes the question), and when it chooses to answer,
the letter is ``backend``'s intermediate answer. This judges a policy trained on decisions only (question-
level GRPO rewards questions and never answers) with the answers of the model it started from.

Fallbacks (documented, never random). Every turn records ``info["fallback"]``: None when the model's own
output made the action, else the kind (:data:`agents.base.FALLBACK_KINDS`); ``info["fallback_kinds"]``
lists every kind of the turn and ``info["fallback_detail"]`` the reasons in words:

* ``decision_unparsed`` — the decision did not parse (no ASK/ANSWER line, or no confidence in any sample),
  or the unparsed self-consistency votes (counted as ask) swung it → ask (a forced state always answers);
* ``question_missing`` — no usable question → the first checklist question
  (:data:`agents.baselines.CHECKLIST`) not yet asked;
* ``answer_missing`` — no letter parsed in the decision nor in the intermediate answer → the fixed
  ``fallback_letter`` (default ``"A"``; the case's first option if it has no such letter).

Partial slips that leave the model's own output in charge (one unparsed sample out of three that did not
change the vote; an implicit ``ANSWER:`` without a letter, answered with the model's intermediate answer)
are noted in ``fallback_detail`` only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agents.base import AgentStep, FallbackKind
from agents.baselines import CHECKLIST, checklist_for, next_unasked
from agents.parsing import (
    AnswerParse,
    parse_answer_letter,
    parse_confidence,
    parse_decision,
    parse_question,
    question_key,
)
from agents.prompts import Strategy, answer_chat, decision_chat, question_chat
from mediq_env import DialogueState
from mediq_env.backends.base import Backend, Chat, SamplingParams
from mediq_env.errors import BackendResponseError, ConfigError

__all__ = ["DEFAULT_THRESHOLDS", "STRATEGIES", "THRESHOLD_SCALES", "LLMAgent", "derive_seed"]

STRATEGIES: tuple[Strategy, ...] = ("implicit", "binary", "numeric", "likert")

THRESHOLD_SCALES: dict[str, tuple[float, float]] = {"numeric": (0.0, 1.0), "likert": (1.0, 5.0)}
"""The scale of each thresholded strategy. A threshold must lie in (low, high]: at ``low`` or below the
agent would answer on every first turn and never ask (a known flaw of a default below the scale minimum)."""

DEFAULT_THRESHOLDS: dict[str, float] = {"numeric": 0.8, "likert": 4.0}

DEFAULT_SAMPLE_TEMPERATURE = 0.7


def derive_seed(base: int, index: int) -> int:
    """A 32-bit seed for sample ``index`` of a self-consistency run, distinct per index, fixed per base."""
    state = np.random.SeedSequence([base & 0xFFFFFFFF, index]).generate_state(1, dtype=np.uint32)
    return int(state[0])


@dataclass
class _Decision:
    """What the decision stage concluded for one state."""

    ask: bool
    letter: str | None = None
    question: str | None = None
    confidence: float | None = None
    confidence_raw: float | None = None
    votes: dict[str, int] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    # Set when the fallback, not the model, settled ask-or-answer.
    unparsed: bool = False


def _majority(items: Sequence[str]) -> str | None:
    """The most common item; a tie goes to the one that appeared first (so no randomness)."""
    if not items:
        return None
    counts = Counter(items)
    best = max(counts.values())
    return next(item for item in items if counts[item] == best)


class LLMAgent:
    """A doctor agent on a :class:`~mediq_env.backends.base.Backend`; see the module docstring.

    Args:
        backend: the model that answers and decides (and asks, unless ``question_backend`` is given).
        strategy: ``"implicit"``, ``"binary"``, ``"numeric"`` or ``"likert"``.
        threshold: for ``numeric`` (default 0.8, in (0, 1]) and ``likert`` (default 4, in (1, 5]); must be
            None for ``implicit`` and ``binary``, which decide by majority vote.
        rationale: ask for a one-line assessment before the decision.
        self_consistency: number of decision samples (k >= 1).
        question_backend: a separate question generator (ALFA); the answer and decision stay with ``backend``.
        decision_backend: a separate model for the decision stage (see the module docstring); the answers
            stay with ``backend``.
        params: sampling for the answer and decision stages (default greedy, seed 0; 64 new tokens, 256 with
            a rationale). Its ``seed`` is the base seed of the self-consistency samples.
        question_params: sampling for the question stage (default greedy, 64 new tokens).
        sample_temperature: temperature of self-consistency samples when ``params`` is greedy.
        fallback_letter: the fixed letter answered when no answer parses at all.
        redraw_repeats: when the decision's question restates an earlier question of the episode word for word,
            draw the decision again, sampled at ``sample_temperature`` with seeds derived from ``params.seed``,
            up to this many times (0: never). Needs the implicit strategy and no ``question_backend``. Each
            asking turn records ``question_redraws`` and ``question_repeats`` in its info; the benchmark
            summary counts them (``question_redraws``).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        strategy: Strategy = "implicit",
        threshold: float | None = None,
        rationale: bool = False,
        self_consistency: int = 1,
        question_backend: Backend | None = None,
        decision_backend: Backend | None = None,
        params: SamplingParams | None = None,
        question_params: SamplingParams | None = None,
        answer_params: SamplingParams | None = None,
        sample_temperature: float = DEFAULT_SAMPLE_TEMPERATURE,
        fallback_letter: str = "A",
        redraw_repeats: int = 0,
        name: str | None = None,
    ) -> None:
        for role, b in (("backend", backend), ("question_backend", question_backend), ("decision_backend", decision_backend)):
            if b is not None and not (hasattr(b, "generate") and hasattr(b, "model_id")):
                raise ConfigError(f"{role} must have 'model_id' and 'generate', got {type(b).__name__}")
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if isinstance(self_consistency, bool) or not isinstance(self_consistency, int) or self_consistency < 1:
            raise ConfigError(f"self_consistency must be an integer >= 1, got {self_consistency!r}")
        if not sample_temperature > 0:
            raise ConfigError(f"sample_temperature must be > 0, got {sample_temperature}")
        if isinstance(redraw_repeats, bool) or not isinstance(redraw_repeats, int) or redraw_repeats < 0:
            raise ConfigError(f"redraw_repeats must be an integer >= 0, got {redraw_repeats!r}")
        if redraw_repeats and (strategy != "implicit" or question_backend is not None):
            raise ConfigError("redraw_repeats redraws the question written in the decision reply: it needs the implicit "
                              "strategy and no separate question model")
        if not (isinstance(fallback_letter, str) and len(fallback_letter) == 1 and fallback_letter.isalpha()):
            raise ConfigError(f"fallback_letter must be a single letter, got {fallback_letter!r}")
        self.backend = backend
        self.question_backend = question_backend
        self.decision_backend = decision_backend
        self.strategy: Strategy = strategy
        self.threshold = self._check_threshold(strategy, threshold)
        self.rationale = bool(rationale)
        self.self_consistency = self_consistency
        self.params = params or SamplingParams(max_new_tokens=256 if rationale else 64, temperature=0.0, seed=0)
        self.question_params = question_params or SamplingParams(max_new_tokens=64, temperature=0.0, seed=0)
        # The intermediate answer is one line ("ANSWER: C") and is asked for on every turn: keep it short.
        self.answer_params = answer_params or SamplingParams(max_new_tokens=24, temperature=0.0, seed=0, stop=("\n\n",))
        self.sample_temperature = float(sample_temperature)
        self.fallback_letter = fallback_letter.upper()
        self.redraw_repeats = redraw_repeats
        label = strategy + ("+rationale" if rationale else "")
        if self.threshold is not None:
            label += f"@{self.threshold:g}"
        if self_consistency > 1:
            label += f", sc={self_consistency}"
        if redraw_repeats:
            label += f", redraw_repeats={redraw_repeats}"
        if question_backend is not None:
            label += f", questions={question_backend.model_id}"
        if decision_backend is not None:
            label += f", decisions={decision_backend.model_id}"
        self.name = name or f"llm({backend.model_id}, {label})"

    @staticmethod
    def _check_threshold(strategy: Strategy, threshold: float | None) -> float | None:
        if strategy not in THRESHOLD_SCALES:
            if threshold is not None:
                raise ConfigError(f"the {strategy} strategy decides by majority vote and takes no threshold")
            return None
        if threshold is None:
            return DEFAULT_THRESHOLDS[strategy]
        low, high = THRESHOLD_SCALES[strategy]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not low < threshold <= high:
            raise ConfigError(
                f"the {strategy} threshold must lie in ({low:g}, {high:g}] so the agent can both ask and "
                f"answer, got {threshold!r}"
            )
        return float(threshold)

    # ------------------------------------------------------------------------------------------------

    def sample_params(self) -> list[SamplingParams]:
        """The sampling settings of the decision samples: ``params`` itself when k == 1; else k settings with
        temperature > 0 and seeds :func:`derive_seed` (base seed, i)."""
        if self.self_consistency == 1:
            return [self.params]
        temperature = self.params.temperature if self.params.temperature > 0 else self.sample_temperature
        base = self.params.seed if self.params.seed is not None else 0
        return [
            replace(self.params, temperature=temperature, seed=derive_seed(base, i))
            for i in range(self.self_consistency)
        ]

    @staticmethod
    def _generate(backend: Backend, chats: list[Chat], params: SamplingParams) -> list[str]:
        out = backend.generate(chats, params)
        if len(out) != len(chats):
            raise BackendResponseError(
                f"backend {backend.model_id} returned {len(out)} generations for {len(chats)} chats"
            )
        return [g.text for g in out]

    def _letter_or_fallback(self, state: DialogueState, letter: str | None) -> tuple[str, str | None]:
        """``letter``, or the fixed letter and the reason (an ``answer_missing`` fallback)."""
        if letter is not None:
            return letter, None
        fixed = self.fallback_letter if self.fallback_letter in state.options else next(iter(state.options))
        return fixed, f"no answer parsed; answered the fixed letter {fixed}"

    # ------------------------------------------------------------------------------------------------

    def act(self, states: Sequence[DialogueState]) -> list[AgentStep]:
        states = list(states)
        if not states:
            return []
        # Stage 1: the intermediate answer of every state.
        answer_texts = self._generate(self.backend, [answer_chat(s) for s in states], self.answer_params)
        answers: list[AnswerParse] = [parse_answer_letter(t, s.options) for t, s in zip(answer_texts, states, strict=True)]

        # Stage 2: the decision, for the states free to ask.
        open_idx = [i for i, s in enumerate(states) if not (s.must_answer or s.questions_left <= 0)]
        decisions: dict[int, _Decision] = {}
        decision_texts: dict[int, list[str]] = {i: [] for i in open_idx}
        if open_idx:
            chats = [decision_chat(states[i], self.strategy, rationale=self.rationale) for i in open_idx]
            for params in self.sample_params():
                for i, text in zip(open_idx, self._generate(self.decision_backend or self.backend, chats, params), strict=True):
                    decision_texts[i].append(text)
            for i in open_idx:
                decisions[i] = self._decide(states[i], decision_texts[i])
        redraws = self._redraw_repeats(states, open_idx, decisions, decision_texts) if self.redraw_repeats else {}

        # Stage 3: questions, for the states that ask and have none usable yet.
        need = [
            i
            for i in open_idx
            if decisions[i].ask and (self.question_backend is not None or decisions[i].question is None)
        ]
        question_texts: dict[int, str] = {}
        if need:
            backend = self.question_backend or self.backend
            texts = self._generate(backend, [question_chat(states[i]) for i in need], self.question_params)
            question_texts = dict(zip(need, texts, strict=True))

        steps = []
        for i, state in enumerate(states):
            raw: dict[str, Any] = {"answer": answer_texts[i]}
            fallbacks: list[str] = []
            kinds: list[FallbackKind] = []
            if answers[i].fallback:
                fallbacks.append(f"intermediate answer: {answers[i].fallback}")
            info: dict[str, Any] = {
                "strategy": self.strategy,
                "intermediate_answer": answers[i].letter,
                "confidence": None,
                "confidence_raw": None,
                "raw": raw,
            }
            decision = decisions.get(i)
            if decision is None:  # forced to answer
                letter, why = self._letter_or_fallback(state, answers[i].letter)
                if why:
                    fallbacks.append(why)
                    kinds.append("answer_missing")
                info.update(decision="answer", forced=True)
                action: dict[str, Any] = {"answer": letter}
            else:
                raw["decision"] = decision_texts[i]
                fallbacks += decision.fallbacks
                if decision.unparsed:
                    kinds.append("decision_unparsed")
                info.update(
                    forced=False,
                    confidence=decision.confidence,
                    confidence_raw=decision.confidence_raw,
                    votes=decision.votes,
                )
                if decision.ask:
                    question, source, why = self._question(state, decision, question_texts.get(i))
                    if i in question_texts:
                        raw["question"] = question_texts[i]
                    if why:
                        fallbacks.append(why)
                        kinds.append("question_missing")
                    info.update(decision="ask", question_source=source)
                    if self.redraw_repeats:
                        info["question_redraws"], info["question_repeats"] = redraws.get(i, (0, False))
                    action = {"question": question}
                else:
                    # With a separate decision model the letter is still the answering model's.
                    own = decision.letter if self.decision_backend is None else None
                    chosen = own if own is not None else answers[i].letter
                    if own is None and self.decision_backend is None and self.strategy == "implicit" and answers[i].letter is not None:
                        fallbacks.append("the decision named no option; answered the intermediate answer")
                    letter, why = self._letter_or_fallback(state, chosen)
                    if why:
                        fallbacks.append(why)
                        kinds.append("answer_missing")
                    info.update(decision="answer")
                    action = {"answer": letter}
                    if decision.confidence is not None:
                        action["confidence"] = decision.confidence
            info["fallback"] = kinds[0] if kinds else None
            info["fallback_kinds"] = kinds
            info["fallback_detail"] = "; ".join(fallbacks) if fallbacks else None
            steps.append(AgentStep(action, info))
        return steps

    def _redraw_repeats(self, states: list[DialogueState], open_idx: list[int], decisions: dict[int, _Decision],
                        decision_texts: dict[int, list[str]]) -> dict[int, tuple[int, bool]]:
        """Draw the decision again, sampled, where its question restates an earlier question of the episode word
        for word — a small model decoded greedily often copies its last question, and a repeat earns nothing.
        Up to ``redraw_repeats`` draws (temperature ``sample_temperature``, seeds derived from the decision
        seed, so runs reproduce); the first draw that asks a new question replaces the question, else the
        repeat stands. Returns, per redrawn state, (draws taken, whether the question still repeats); the
        benchmark counts both (``question_redraws`` in the summary)."""
        asked = {i: {question_key(t.question) for t in states[i].turns} for i in open_idx}
        todo = [i for i in open_idx if decisions[i].ask and question_key(decisions[i].question or "") in asked[i] - {""}]
        result = {i: (0, True) for i in todo}
        base = self.params.seed if self.params.seed is not None else 0
        chats = {i: decision_chat(states[i], self.strategy, rationale=self.rationale) for i in todo}
        for r in range(self.redraw_repeats):
            if not todo:
                break
            params = replace(self.params, temperature=self.sample_temperature, seed=derive_seed(base, 1000 + r))
            texts = self._generate(self.decision_backend or self.backend, [chats[i] for i in todo], params)
            left = []
            for i, text in zip(todo, texts, strict=True):
                decision_texts[i].append(text)
                parsed = parse_decision(text, states[i].options)
                if parsed.kind == "ask" and parsed.question and question_key(parsed.question) not in asked[i]:
                    decisions[i] = replace(decisions[i], question=parsed.question)
                    result[i] = (r + 1, False)
                else:
                    result[i] = (r + 1, True)
                    left.append(i)
            todo = left
        return result

    def _question(self, state: DialogueState, decision: _Decision, text: str | None) -> tuple[str, str, str | None]:
        """The question to ask, where it came from, and the fallback reason if the checklist supplied it."""
        if text is None and decision.question is not None:
            return decision.question, "decision", None
        parsed = parse_question(text or "")
        if parsed.question is not None:
            return parsed.question, "question_backend" if self.question_backend is not None else "backend", None
        remaining = next_unasked(state, checklist_for(state, CHECKLIST))
        question = remaining[0] if remaining else CHECKLIST[-1]
        return question, "checklist", f"question: {parsed.fallback}; asked a checklist question"

    def _decide(self, state: DialogueState, texts: list[str]) -> _Decision:
        k = len(texts)
        if self.strategy == "implicit":
            parsed = [parse_decision(t, state.options) for t in texts]
            n_answer = sum(p.kind == "answer" for p in parsed)
            n_ask = sum(p.kind == "ask" for p in parsed)
            n_none = k - n_answer - n_ask
            votes = {"ask": n_ask, "answer": n_answer, "unparsed": n_none}
            fallbacks = []
            if n_none:
                reasons = sorted({p.fallback or "" for p in parsed if p.kind is None})
                fallbacks.append(f"decision: {n_none}/{k} unparsed ({'; '.join(reasons)}); counted as ask")
            # Unparsed votes count as asking: the documented fallback of an unreadable decision. It is the
            # fallback (not the model) that decided when nothing parsed, or when the parsed votes alone would
            # have answered (n_answer > n_ask) but the unparsed ones tipped it to asking.
            unparsed = n_ask + n_answer == 0 or n_ask < n_answer <= n_ask + n_none
            if n_answer > n_ask + n_none:
                letters = [p.letter for p in parsed if p.kind == "answer" and p.letter is not None]
                if not letters:
                    reasons = sorted({p.fallback or "" for p in parsed if p.kind == "answer"})
                    fallbacks.append(f"decision's answer: {'; '.join(reasons)}")
                return _Decision(ask=False, letter=_majority(letters), votes=votes, fallbacks=fallbacks)
            question = next((p.question for p in parsed if p.kind == "ask" and p.question), None)
            return _Decision(ask=True, question=question, votes=votes, fallbacks=fallbacks, unparsed=unparsed)

        kind = self.strategy
        confs = [parse_confidence(t, kind) for t in texts]
        good = [c for c in confs if c.value is not None]
        fallbacks = []
        if len(good) < k:
            reasons = sorted({c.fallback or "" for c in confs if c.value is None})
            fallbacks.append(f"confidence: {k - len(good)}/{k} unparsed ({'; '.join(reasons)})")
        if not good:
            fallbacks[-1] += "; asked"
            return _Decision(ask=True, votes={"unparsed": k}, fallbacks=fallbacks, unparsed=True)
        values = [float(c.value) for c in good if c.value is not None]
        units = [float(c.unit) for c in good if c.unit is not None]
        mean_raw = float(np.mean(values))
        mean_unit = float(np.mean(units))
        if kind == "binary":
            yes = sum(v == 1.0 for v in values)
            no = len(values) - yes
            votes = {"yes": yes, "no": no, "unparsed": k - len(good)}
            answer = yes > no
        else:
            assert self.threshold is not None
            votes = {"parsed": len(good), "unparsed": k - len(good)}
            answer = mean_raw >= self.threshold
        return _Decision(
            ask=not answer, confidence=mean_unit, confidence_raw=mean_raw, votes=votes, fallbacks=fallbacks
        )
