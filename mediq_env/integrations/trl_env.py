"""MediQ for TRL's ``GRPOTrainer(environment_factory=...)``: the patient as two tools.

TRL 1.16 builds one environment per rollout with ``environment_factory()``, calls its ``reset(**row)``
with the dataset row (the returned text is appended to the row's last user message), exposes its public
methods as tools the model calls with the chat template's tool-call syntax, and — when the class has a
``get_reward()`` — uses it as a reward source (weight 1). :func:`make_environment_factory` returns such a
factory; its environment exposes exactly two tools:

* ``ask_patient(question)`` — one question to the simulated patient; returns the reply and the budget;
* ``give_answer(letter)`` — the final answer; ends the episode;

and ``get_reward()`` returns the episode's return: the sum of the rewards :class:`~mediq_env.MediQEnv`
gave (per-question costs or attribute rewards, and correctness), with the same patient, reward and option
shuffling as the rest of the project. An episode the model ends without calling ``give_answer`` is scored
as the env scores a forced-answer turn that passes unanswered (incorrect).

Use it with :func:`episode_dataset` (one row per ``(case, seed)``, so that every rollout of a GRPO group
plays the same case with the same option order)::

    from trl import GRPOConfig, GRPOTrainer
    from mediq_env.integrations.trl_env import episode_dataset, make_environment_factory

    trainer = GRPOTrainer(
        model="Qwen/Qwen3-0.6B",
        args=GRPOConfig(max_completion_length=1024, num_generations=4, ...),
        train_dataset=episode_dataset(seeds_per_case=4),
        environment_factory=make_environment_factory(max_questions=5),
    )

The model's chat template must support tool calling (TRL checks it). Reward components and the outcome
are available to extra reward functions through the ``environments`` keyword TRL passes them (see
:func:`component_reward`). ``trl`` is never imported here: this module only describes the environment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mediq_env.errors import ConfigError, EnvStateError
from mediq_env.integrations import (
    CasesArg,
    Episode,
    EpisodeSummary,
    RewardArg,
    build_env,
    load_case_list,
    shared_patient,
)
from mediq_env.patient import Patient

__all__ = ["MediQToolEnv", "component_reward", "episode_dataset", "make_environment_factory", "opening_text"]

TOOL_INSTRUCTIONS = (
    "You are a doctor talking to a patient. Ask the patient one question at a time with the ask_patient tool "
    "(you may ask up to {n} questions). When you are confident, call give_answer with the letter of the "
    "correct option. Only give_answer ends the consultation."
)


def opening_text(state: Any, max_questions: int) -> str:
    """The first user message of an episode: the instructions, then the case as the doctor sees it."""
    lines = [TOOL_INSTRUCTIONS.format(n=max_questions), "", f"Initial information: {state.initial_info}", f"Question: {state.question}", "Options:"]
    lines += [f"{letter}: {text}" for letter, text in state.options.items()]
    return "\n".join(lines)


class MediQToolEnv:
    """One MediQ episode at a time, as TRL's environment protocol wants it.

    Every public *method* of this class is a tool for TRL (it lists ``inspect.isfunction`` members other
    than ``reset`` and ``get_reward``), so everything else is a property or private.
    """

    def __init__(self, make_env: Callable[[], Any], max_questions: int) -> None:
        self._episode = Episode(make_env())
        self._max_questions = max_questions

    def reset(self, **row: Any) -> str:
        """Start an episode: the row's ``case_id`` and ``seed`` when given (see :func:`episode_dataset`),
        else a case drawn with the env's RNG. Returns the text TRL appends to the prompt."""
        case_id, seed = row.get("case_id"), row.get("seed")
        self._episode.reset(case_id=case_id, seed=seed)
        return opening_text(self._episode.state, self._max_questions)

    def ask_patient(self, question: str) -> str:
        """Ask the patient one question about their history, symptoms or examination.

        Args:
            question: The question, in plain words, e.g. "Do you have a fever?".

        Returns:
            The patient's reply, and how many questions are left.
        """
        self._check_open()
        # A dict action is always a question: a bare "B" asked through this tool must not count as an answer.
        self._episode.step({"question": str(question)})
        if self._episode.done:
            return "No questions were left, so the consultation ended without an answer."
        return self._episode.message(tools=True)

    def give_answer(self, letter: str) -> str:
        """Give the final answer to the clinical question; this ends the consultation.

        Args:
            letter: The letter of the chosen option, e.g. "B".

        Returns:
            A confirmation that the answer was recorded.
        """
        self._check_open()
        self._episode.step({"answer": str(letter)})
        if not self._episode.done:
            # An answer naming no option is an invalid action: it used a turn and the episode goes on.
            return self._episode.message(tools=True)
        return "Answer recorded. The consultation is over."

    def get_reward(self) -> float:
        """The episode's return (every step's env reward, summed); closes an unfinished episode first."""
        return self._episode.finish().reward

    @property
    def summary(self) -> EpisodeSummary:
        """The finished episode's summary (correct, questions asked, facts found, reward components)."""
        return self._episode.finish()

    @property
    def episode(self) -> Episode:
        return self._episode

    def _check_open(self) -> None:
        if self._episode.done:
            # TRL turns a tool's exception into {"error": ...} for the model and counts a tool failure.
            raise EnvStateError("the consultation is over: no more questions or answers")


def make_environment_factory(
    cases: CasesArg = None,
    *,
    max_questions: int = 5,
    reward: RewardArg = None,
    scorer: Any = None,
    patient: Patient | str | None = None,
    shuffle_options: bool = True,
) -> Callable[[], MediQToolEnv]:
    """The ``environment_factory`` for ``trl.GRPOTrainer``: each call builds a :class:`MediQToolEnv`.

    Args:
        cases: built-in cases (None), a list of :class:`~mediq_env.Case` or a cases file.
        max_questions: questions before the forced-answer turn (as :class:`~mediq_env.MediQEnv`).
        reward: a :class:`~mediq_env.rewards.RewardFunction` (default ``CorrectnessReward()``) or a
            :class:`~mediq_env.wrappers.RewardConfig` for per-question attribute rewards (see
            :func:`mediq_env.integrations.build_env`).
        scorer: the question scorer for a ``RewardConfig`` (default: the environment proxies it weights).
        patient: a patient or its short name; one is built and shared by every env of the factory.
        shuffle_options: re-letter options at every reset (with the row's seed).
    """
    if max_questions < 0:
        raise ConfigError(f"max_questions must be >= 0, got {max_questions}")
    loaded: dict[str, Any] = {}

    def make_env() -> Any:
        # Built on first use and shared: TRL makes one env per rollout of a batch, and the cases and patient
        # (models, caches) are the same for all of them.
        if not loaded:
            loaded["cases"] = load_case_list(cases)
            loaded["patient"] = shared_patient(patient)
            if loaded["patient"] is None:
                from mediq_env.patient import default_patient

                loaded["patient"] = default_patient()
        return build_env(
            loaded["cases"], max_questions=max_questions, reward=reward, scorer=scorer, patient=loaded["patient"], shuffle_options=shuffle_options
        )

    def factory() -> MediQToolEnv:
        return MediQToolEnv(make_env, max_questions)

    return factory


def episode_dataset(cases: CasesArg = None, *, seeds_per_case: int = 1, case_ids: Sequence[str] | None = None) -> Any:
    """A ``datasets.Dataset`` with one row per ``(case, seed)``: ``prompt`` (an empty user message, which
    ``reset`` fills with the instructions and the case), ``case_id`` and ``seed``.

    TRL repeats each row ``num_generations`` times, and every rollout of the row resets with its seed, so a
    GRPO group compares episodes of one case with one option order; more seeds give more option orders.
    """
    import datasets

    if seeds_per_case < 1:
        raise ConfigError(f"seeds_per_case must be >= 1, got {seeds_per_case}")
    loaded = load_case_list(cases)
    ids = list(case_ids) if case_ids is not None else [c.id for c in loaded]
    rows = [{"prompt": [{"role": "user", "content": ""}], "case_id": cid, "seed": seed} for cid in ids for seed in range(seeds_per_case)]
    return datasets.Dataset.from_list(rows)


def component_reward(name: str) -> Callable[..., list[float | None]]:
    """A TRL reward function reporting one summed reward component (e.g. ``"question_cost"`` or
    ``"proxy:info_gain"``) of each rollout's episode; pass it with weight 0 to log it, as training/grpo.py does."""

    def reward(environments: list[Any] | None = None, **kwargs: Any) -> list[float | None]:
        return [e.summary.components.get(name, 0.0) if isinstance(e, MediQToolEnv) else None for e in environments or []]

    reward.__name__ = name.replace(":", "_")
    return reward
