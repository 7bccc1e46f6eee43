"""MediQ as an ``inspect_ai`` task: ``inspect eval mediq_env/integrations/inspect_task.py --model <model>``.

Any of inspect's model providers plays the doctor (``openai/gpt-4o-mini``, ``hf/<model>``,
``vllm/<model>``, ``mockllm/model`` …). Task options go with ``-T``::

    inspect eval mediq_env/integrations/inspect_task.py --model openai/gpt-4o-mini \\
        -T max_questions=5 -T seeds_per_case=2 -T patient=faithful -T cases=path/to/cases.jsonl

* **Dataset**: one sample per ``(case, seed)``; its input is the env's first observation (the case with
  its options re-lettered by the seed), its target the shown letter of the answer (for the log only).
* **Solver** (:func:`mediq_doctor`): plays the episode through :class:`~mediq_env.MediQEnv`: each model
  reply is the env action (a question, or ``ANSWER: <letter>``), each patient reply goes back as a user
  message, until the env ends the episode (forced-answer turn included). A sample stopped early by one of
  inspect's limits is scored as unanswered.
* **Scorer** (:func:`mediq_scorer`): ``correct`` (accuracy, stderr), ``questions_asked``, ``facts_found``
  (facts revealed by the questions) and ``reward`` (the env's return), with the episode in the metadata.

This module imports ``inspect_ai`` (the ``[inspect]`` extra); ``mediq_env`` never imports it.
"""

from __future__ import annotations

from typing import Any

from mediq_env.errors import MissingDependencyError

try:
    from inspect_ai import Task, task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.model import ChatMessageUser
    from inspect_ai.scorer import Score, Target, accuracy, mean, scorer, stderr
    from inspect_ai.solver import Generate, Solver, TaskState, solver
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("inspect_ai", "inspect", "The inspect_ai task") from exc

from mediq_env.integrations import CasesArg, Episode, RewardArg, build_env, load_case_list, shared_patient
from mediq_env.patient import Patient

__all__ = ["mediq", "mediq_dataset", "mediq_doctor", "mediq_scorer"]

STORE_KEY = "mediq_episode"


def mediq_dataset(cases: CasesArg = None, *, max_questions: int = 5, seeds_per_case: int = 1, shuffle_options: bool = True) -> MemoryDataset:
    """One sample per ``(case, seed)``, its input the episode's first observation (which states the budget,
    so ``max_questions`` must be the solver's)."""
    loaded = load_case_list(cases)
    # The patient plays no part in an opening: a lookup patient avoids loading any model here.
    from mediq_env.patient import FactLookupPatient

    env = build_env(loaded, max_questions=max_questions, patient=FactLookupPatient(), shuffle_options=shuffle_options)
    samples = []
    for case in loaded:
        for seed in range(seeds_per_case):
            obs, _ = env.reset(seed=seed, options={"case_id": case.id})
            samples.append(
                Sample(
                    input=obs,
                    target=env.unwrapped.grader.case.answer,
                    id=f"{case.id}:{seed}",
                    metadata={"case_id": case.id, "seed": seed},
                )
            )
    return MemoryDataset(samples, name="mediq")


@solver
def mediq_doctor(
    cases: CasesArg = None,
    max_questions: int = 5,
    reward: RewardArg = None,
    scorer: Any = None,
    patient: Patient | str | None = None,
    shuffle_options: bool = True,
) -> Solver:
    """Play each sample's episode through the env with the task's model as the doctor."""
    loaded = load_case_list(cases)
    shared: dict[str, Any] = {}

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        if "patient" not in shared:
            # One patient for all samples (it holds models and caches, and keeps no episode state).
            shared["patient"] = shared_patient(patient)
        episode = Episode(
            build_env(loaded, max_questions=max_questions, reward=reward, scorer=scorer, patient=shared["patient"], shuffle_options=shuffle_options)
        )
        obs, _ = episode.reset(case_id=state.metadata["case_id"], seed=state.metadata["seed"])
        if state.input_text != obs:
            raise RuntimeError("the sample's input is not the episode's opening: build the dataset with mediq_dataset()")
        while not episode.done and not state.completed:
            state = await generate(state)
            episode.step(state.output.completion)
            if not episode.done:
                state.messages.append(ChatMessageUser(content=episode.message()))
        state.store.set(STORE_KEY, episode.finish().as_dict())
        return state

    return solve


@scorer(metrics={"correct": [accuracy(), stderr()], "questions_asked": [mean()], "facts_found": [mean()], "reward": [mean()]})
def mediq_scorer() -> Any:
    """Correctness, questions asked, facts found and the env's return, from the episode the solver played."""

    async def score(state: TaskState, target: Target) -> Score:
        episode = state.store.get(STORE_KEY)
        if episode is None:  # the solver never ran to the end (an error or a limit before it started)
            return Score(value={"correct": 0.0, "questions_asked": 0.0, "facts_found": 0.0, "reward": 0.0}, explanation="no episode")
        return Score(
            value={
                "correct": 1.0 if episode["correct"] else 0.0,
                "questions_asked": float(episode["questions_asked"]),
                "facts_found": float(episode["facts_found"]),
                "reward": float(episode["reward"]),
            },
            answer=episode["answer"],
            explanation=f"{episode['outcome']}: answered {episode['answer']}, correct {episode['correct_answer']}; "
            f"{episode['facts_found']}/{episode['n_facts']} facts found with {episode['questions_asked']} questions",
            metadata=episode,
        )

    return score


@task
def mediq(
    cases: Any = None,
    max_questions: int = 5,
    seeds_per_case: int = 1,
    patient: Any = None,
    question_cost: float = 0.0,
    shuffle_options: bool = True,
) -> Task:
    """Interactive MediQ: ask the simulated patient, then answer the multiple-choice question.

    Args:
        cases: built-in cases (None), a cases file in any MediQ variant, or a list of cases.
        max_questions: questions before the forced-answer turn.
        seeds_per_case: samples per case, each with its own option lettering.
        patient: the patient's short name (faithful, bm25, …) or a patient; default the env's.
        question_cost: subtracted from the reward per question (``CorrectnessReward``).
        shuffle_options: re-letter options with each sample's seed.
    """
    from mediq_env.rewards import CorrectnessReward

    loaded = load_case_list(cases)
    return Task(
        dataset=mediq_dataset(loaded, max_questions=max_questions, seeds_per_case=seeds_per_case, shuffle_options=shuffle_options),
        solver=mediq_doctor(
            loaded, max_questions=max_questions, reward=CorrectnessReward(question_cost=question_cost), patient=patient, shuffle_options=shuffle_options
        ),
        scorer=mediq_scorer(),
    )
