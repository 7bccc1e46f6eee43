"""Thin adapters that put the MediQ environment inside other stacks, each an optional extra:

* :mod:`mediq_env.integrations.trl_env` — TRL's ``GRPOTrainer(environment_factory=...)`` (``[train]``):
  ``ask_patient`` / ``give_answer`` tools backed by :class:`~mediq_env.MediQEnv`.
* :mod:`mediq_env.integrations.inspect_task` — an ``inspect_ai`` task (``[inspect]``):
  ``inspect eval mediq_env/integrations/inspect_task.py --model <provider/model>``.
* :mod:`mediq_env.integrations.verifiers_env` — a ``verifiers`` multi-turn environment whose rubric is the
  env's reward (``[verifiers]``).

None of them is imported here, and this module imports nothing beyond ``mediq_env`` itself: importing
``mediq_env`` (or this package) must not cost the seconds of torch/trl/inspect/verifiers imports.

What the three share lives here, so that they play an episode exactly alike: :func:`build_env` (the
same env, patient, reward and option shuffling as the rest of the project) and :class:`Episode`, which
steps it, sums the return and its components, and closes an episode the model left unanswered the way the
env closes a forced-answer turn that passes without an answer (scored as incorrect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediq_env.case import Case
from mediq_env.dialogue import ANSWER_INSTRUCTIONS, FORCED_INSTRUCTIONS, DialogueState
from mediq_env.env import MediQEnv
from mediq_env.errors import ConfigError, EnvStateError
from mediq_env.patient import Patient, make_patient
from mediq_env.rewards import RewardFunction, StepEvent
from mediq_env.wrappers import AttributeReward, RewardConfig

__all__ = ["Episode", "EpisodeSummary", "build_env", "load_case_list", "shared_patient"]

CasesArg = Sequence[Case] | str | Path | None
RewardArg = RewardFunction | RewardConfig | None


def load_case_list(cases: CasesArg) -> list[Case]:
    """The cases as a list: built-in (None), a cases file in any MediQ variant, or the given cases."""
    if cases is None:
        from mediq_env.cases import builtin_cases

        return builtin_cases()
    if isinstance(cases, (str, Path)):
        from mediq_env.case import load_cases

        return load_cases(cases)
    return list(cases)


def shared_patient(patient: Patient | str | None) -> Patient | None:
    """A patient object from a patient or its short name (``faithful``, ``bm25``, …); None keeps the env's
    default. Adapters build it once and share it between all their envs: a patient holds models and caches,
    and it is stateless across episodes (the env passes it the case and the dialogue on every call)."""
    if patient is None or not isinstance(patient, str):
        return patient
    return make_patient(patient)


def build_env(
    cases: CasesArg = None,
    *,
    max_questions: int = 5,
    reward: RewardArg = None,
    scorer: Any = None,
    patient: Patient | None = None,
    shuffle_options: bool = True,
) -> Any:
    """One MediQ env as the adapters use it.

    ``reward`` is a :class:`~mediq_env.rewards.RewardFunction` (e.g. ``CorrectnessReward(question_cost=0.05)``,
    the default being ``CorrectnessReward()``) or a :class:`~mediq_env.wrappers.RewardConfig`, which wraps the
    env in :class:`~mediq_env.wrappers.AttributeReward` with ``scorer`` — by default the environment proxies
    the config weights (as ``mediq train-rl --scorer environment`` does), so per-question rewards work offline.
    """
    if isinstance(reward, RewardConfig):
        env = MediQEnv(cases, patient=patient, max_questions=max_questions, shuffle_options=shuffle_options)
        return AttributeReward(env, scorer if scorer is not None else _proxy_scorer(reward), reward)
    if scorer is not None:
        raise ConfigError("a scorer needs a RewardConfig saying how to weight its scores: pass reward=RewardConfig(...)")
    return MediQEnv(cases, patient=patient, max_questions=max_questions, reward_fn=reward, shuffle_options=shuffle_options)


def _proxy_scorer(config: RewardConfig) -> Any:
    from mediq_env.scoring import EnvironmentScorer

    proxies = [k for k in config.weights if k.startswith("proxy_")]
    if len(proxies) != len(config.weights):
        raise ConfigError("RewardConfig weights rubric attributes: pass the scorer that scores them (scorer=...)")
    # Same choice as training.rl_common: only weighted proxies are computed; MiniLM only if relevance is one.
    return EnvironmentScorer(proxies or ["proxy_answerable"], embedder="auto" if "proxy_relevance" in proxies else None)


@dataclass
class EpisodeSummary:
    """How one episode went, in plain values (JSON-ready), for rewards, scorers and logs."""

    case_id: str
    correct: bool
    answer: str | None
    correct_answer: str | None
    questions_asked: int
    facts_found: int
    n_facts: int
    reward: float
    components: dict[str, float] = field(default_factory=dict)
    #: "answered", "forced" (answered on the forced-answer turn), "truncated" (the env ended it unanswered)
    #: or "unfinished" (the model stopped before the env ended it; scored as incorrect).
    outcome: str = "answered"

    def as_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "correct": self.correct,
            "answer": self.answer,
            "correct_answer": self.correct_answer,
            "questions_asked": self.questions_asked,
            "facts_found": self.facts_found,
            "n_facts": self.n_facts,
            "reward": self.reward,
            "components": dict(self.components),
            "outcome": self.outcome,
        }


class Episode:
    """One episode of an env built by :func:`build_env`: steps it and keeps the return and its components.

    The return is the sum of every step's reward, exactly the rewards the env reports; an episode the model
    leaves before the env ends it (no answer, a length limit) is closed with the correctness component the
    env gives a forced-answer turn that passes unanswered.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.base: MediQEnv = env.unwrapped
        self.reward = 0.0
        self.components: dict[str, float] = {}
        self.done = False
        self.info: dict[str, Any] = {}
        self.case_id: str | None = None
        self.seed: int | None = None
        self._summary: EpisodeSummary | None = None

    def reset(self, case_id: str | None = None, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        options = None if case_id is None else {"case_id": str(case_id)}
        obs, info = self.env.reset(seed=None if seed is None else int(seed), options=options)
        self.reward, self.components, self.done, self.info, self._summary = 0.0, {}, False, info, None
        self.case_id, self.seed = info["case_id"], seed
        return obs, info

    @property
    def state(self) -> DialogueState:
        return self.base.state()

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.done:
            raise EnvStateError("the episode is over: no more questions or answers")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._add(float(reward), info["reward_components"])
        self.done = bool(terminated or truncated)
        self.info = info
        return obs, float(reward), terminated, truncated, info

    def _add(self, reward: float, components: dict[str, float]) -> None:
        self.reward += reward
        for k, v in components.items():
            self.components[k] = self.components.get(k, 0.0) + float(v)

    def message(self, *, tools: bool = False) -> str:
        """What the doctor is told after the last step: the patient's reply (or why the action was invalid)
        and what to do next — in the env's words, or (``tools=True``) naming the TRL tools instead of the
        ``ANSWER: <letter>`` grammar."""
        if self.done:
            return "The consultation is over."
        state = self.state
        text = state.turns[-1].reply if state.turns else ""
        if state.must_answer:
            hint = "You have no questions left: call give_answer now." if tools else FORCED_INSTRUCTIONS
        elif tools:
            hint = f"Questions left: {state.questions_left}. Ask another question with ask_patient, or call give_answer."
        else:
            hint = f"Questions left: {state.questions_left}. {ANSWER_INSTRUCTIONS}"
        return f"{text}\n{hint}".strip()

    def finish(self) -> EpisodeSummary:
        """The episode's summary; closes it first (as incorrect) if the env has not ended it."""
        if self._summary is not None:
            return self._summary
        outcome = "unfinished"
        if self.done:
            outcome = "truncated" if self.info.get("answer") is None else ("forced" if self.info.get("forced") else "answered")
        else:
            self._add(*self._timeout_reward())
            self.done = True
        case = self.base.grader.case
        info = self.info if outcome != "unfinished" else {}
        self._summary = EpisodeSummary(
            case_id=case.id,
            correct=bool(info.get("correct", False)),
            answer=info.get("answer"),
            correct_answer=case.answer,
            questions_asked=int(self.info.get("questions_asked", 0)),
            facts_found=len(self.base.revealed_facts),
            n_facts=len(case.facts),
            reward=self.reward,
            components=dict(self.components),
            outcome=outcome,
        )
        return self._summary

    def _timeout_reward(self) -> tuple[float, dict[str, float]]:
        # The reward a forced-answer turn without an answer gets: from the RewardConfig of an attribute-reward
        # wrapper, else from the env's own reward function with the env's timeout event.
        config = getattr(self.env, "config", None)
        if isinstance(config, RewardConfig):
            components = {"correctness": float(config.incorrect)}
        else:
            case = self.base.grader.case
            event = StepEvent("timeout", case, self.info.get("turn", 0) + 1, "", correct=False, forced=True)
            components = dict(self.base.reward_fn(event))
        return float(sum(components.values())), components
