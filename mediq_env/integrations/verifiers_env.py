"""MediQ as a ``verifiers`` multi-turn environment, its rubric the env's reward.

Built on verifiers' classic ``MultiTurnEnv`` / ``Rubric`` API (0.1.x–0.3.x: ``import verifiers as vf``).
verifiers 0.4 removed that API in favour of its v1 stack (tasksets, harnesses, agents), which is why the
``[verifiers]`` extra pins ``verifiers<0.4``.

* **Dataset**: one row per ``(case, seed)``; ``prompt`` is the env's first observation, ``info`` holds the
  ``case_id`` and ``seed`` the rollout resets with (so every rollout of a row plays the same opening).
* **Interaction** (:class:`MediQVerifiersEnv`): each model message is the env action (a question, or
  ``ANSWER: <letter>``); the patient's reply comes back as a user message; the rollout stops when the env
  ends the episode (the forced-answer turn included).
* **Rubric**: ``mediq_reward`` (weight 1) is the episode's return — every step's env reward summed, so
  per-question costs and attribute rewards count — and ``correct``, ``questions_asked``, ``facts_found``
  are metrics (weight 0). A rollout that stops before the env ends it (an error, a length limit) is scored
  as unanswered.

Usage::

    import verifiers as vf
    from openai import AsyncOpenAI
    from mediq_env.integrations.verifiers_env import load_environment

    env = load_environment(max_questions=5, seeds_per_case=2)
    results = env.evaluate_sync(client=AsyncOpenAI(base_url=..., api_key=...), model="...", rollouts_per_example=4)

This module imports ``verifiers`` (the ``[verifiers]`` extra); ``mediq_env`` never imports it.
"""

from __future__ import annotations

import itertools
from typing import Any

from mediq_env.errors import MissingDependencyError

try:
    import verifiers as vf
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("verifiers", "verifiers", "The verifiers environment") from exc

if getattr(vf, "MultiTurnEnv", None) is None:
    # verifiers >= 0.4 ships only its v1 stack (`verifiers.v1`); `vf.MultiTurnEnv` would be an AttributeError
    # at the class statement below, which names neither the cause nor the fix.
    raise ImportError(
        f"verifiers {getattr(vf, '__version__', '?')} has no classic MultiTurnEnv/Rubric API (verifiers 0.4 removed "
        "it), which mediq_env.integrations.verifiers_env is built on: install 'verifiers<0.4' "
        "(pip install 'mediq-env[verifiers]', in its own environment)"
    )

from mediq_env.integrations import CasesArg, Episode, RewardArg, build_env, load_case_list, shared_patient
from mediq_env.patient import FactLookupPatient, Patient

__all__ = ["MediQVerifiersEnv", "load_environment", "mediq_dataset", "mediq_rubric"]

STATE_KEY = "mediq"


def mediq_dataset(cases: CasesArg = None, *, max_questions: int = 5, seeds_per_case: int = 1, shuffle_options: bool = True) -> Any:
    """A ``datasets.Dataset`` of openings: ``prompt`` (the first observation), ``info`` (case id, seed)."""
    import datasets

    loaded = load_case_list(cases)
    # The patient plays no part in an opening: a lookup patient avoids loading any model here.
    env = build_env(loaded, max_questions=max_questions, patient=FactLookupPatient(), shuffle_options=shuffle_options)
    rows = []
    for case in loaded:
        for seed in range(seeds_per_case):
            obs, _ = env.reset(seed=seed, options={"case_id": case.id})
            rows.append({"prompt": [{"role": "user", "content": obs}], "info": {"case_id": case.id, "seed": seed}})
    return datasets.Dataset.from_list(rows)


def mediq_reward(state: Any, **kwargs: Any) -> float:
    """The episode's return: the sum of the rewards the env gave its steps."""
    return float(state[STATE_KEY]["reward"])


def correct(state: Any, **kwargs: Any) -> float:
    return 1.0 if state[STATE_KEY]["correct"] else 0.0


def questions_asked(state: Any, **kwargs: Any) -> float:
    return float(state[STATE_KEY]["questions_asked"])


def facts_found(state: Any, **kwargs: Any) -> float:
    return float(state[STATE_KEY]["facts_found"])


def mediq_rubric() -> Any:
    """The env's return as the reward (weight 1); correctness, questions and facts as metrics (weight 0)."""
    rubric = vf.Rubric(funcs=[mediq_reward], weights=[1.0])
    for metric in (correct, questions_asked, facts_found):
        rubric.add_metric(metric)
    return rubric


class MediQVerifiersEnv(vf.MultiTurnEnv):
    """Plays each rollout's episode through :class:`~mediq_env.MediQEnv` (see the module docstring)."""

    def __init__(
        self,
        cases: CasesArg = None,
        *,
        max_questions: int = 5,
        reward: RewardArg = None,
        scorer: Any = None,
        patient: Patient | str | None = None,
        seeds_per_case: int = 1,
        shuffle_options: bool = True,
        **kwargs: Any,
    ) -> None:
        self._cases = load_case_list(cases)
        self._env_args = {"max_questions": max_questions, "reward": reward, "scorer": scorer, "shuffle_options": shuffle_options}
        self._patient_spec = patient
        self._patient: Patient | None = None
        # Live episodes by rollout: env objects stay out of the state, which verifiers serialises.
        self._episodes: dict[str, Episode] = {}
        self._ids = itertools.count()
        dataset = mediq_dataset(self._cases, max_questions=max_questions, seeds_per_case=seeds_per_case, shuffle_options=shuffle_options)
        # The env ends every episode within max_questions + 1 model turns; the spare turn lets the last
        # action reach env_response before verifiers' own turn limit would stop the loop.
        super().__init__(dataset=dataset, eval_dataset=dataset, rubric=mediq_rubric(), max_turns=max_questions + 2, **kwargs)

    def _episode(self, state: Any) -> Episode:
        return self._episodes[state["mediq_id"]]

    async def setup_state(self, state: Any) -> Any:
        if self._patient is None:
            self._patient = shared_patient(self._patient_spec)
            if self._patient is None:
                from mediq_env.patient import default_patient

                self._patient = default_patient()
        episode = Episode(build_env(self._cases, patient=self._patient, **self._env_args))
        info = state["info"]
        episode.reset(case_id=info["case_id"], seed=info["seed"])
        state["mediq_id"] = str(next(self._ids))
        self._episodes[state["mediq_id"]] = episode
        return state

    async def env_response(self, messages: Any, state: Any, **kwargs: Any) -> Any:
        episode = self._episode(state)
        last = messages[-1]
        content = last.get("content") if isinstance(last, dict) else getattr(last, "content", "")
        episode.step(content if isinstance(content, str) else str(content or ""))
        reply = [vf.UserMessage(content=episode.message())]
        if episode.done:
            # verifiers' signal that the environment ended the rollout (its has_final_env_response stop).
            state["final_env_response"] = reply
        return reply

    @vf.cleanup
    async def finish_episode(self, state: Any) -> None:
        # Runs at the end of every rollout, before scoring: the summary (plain values) goes into the state
        # for the rubric, and an episode the rollout left unfinished is closed as unanswered.
        episode = self._episodes.pop(state.get("mediq_id", ""), None)
        if episode is not None:
            state[STATE_KEY] = episode.finish().as_dict()
        else:
            state[STATE_KEY] = {"reward": 0.0, "correct": False, "questions_asked": 0, "facts_found": 0}


def load_environment(
    cases: CasesArg = None,
    max_questions: int = 5,
    seeds_per_case: int = 1,
    patient: Patient | str | None = None,
    reward: RewardArg = None,
    **kwargs: Any,
) -> MediQVerifiersEnv:
    """verifiers' entry point (``vf.load_environment`` convention): the MediQ multi-turn environment."""
    return MediQVerifiersEnv(cases, max_questions=max_questions, seeds_per_case=seeds_per_case, patient=patient, reward=reward, **kwargs)
