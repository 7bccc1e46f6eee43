"""Many episodes at once, with one patient call per turn for all of them.

``gymnasium.vector.AsyncVectorEnv`` with its default shared memory corrupts Text observations, and
``SyncVectorEnv`` would call the patient once per episode; an LLM patient must see the whole batch in
one generation call. :class:`BatchedEnv` keeps ``n`` :class:`MediQEnv` instances that share one patient,
steps the active ones together and answers all their questions with a single ``patient.reply_batch``.
Finished episodes stay finished (no auto-reset) so that a benchmark runs each case exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mediq_env.case import Case
from mediq_env.env import MediQEnv
from mediq_env.errors import ConfigError, EnvStateError
from mediq_env.patient import Patient, default_patient

__all__ = ["BatchedEnv", "StepResult"]


@dataclass
class StepResult:
    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class BatchedEnv:
    """``n`` environments stepped together. ``step`` takes one action per *active* episode, in index order.

    Example::

        batch = BatchedEnv(4, max_questions=5)
        obs, infos = batch.reset(seeds=[0, 1, 2, 3])
        while batch.active:
            actions = [my_agent(infos[i]["state"]) for i in batch.active]
            results = batch.step(actions)          # one patient call for all questions
            for i, r in zip(batch.active_before_step, results): infos[i] = r.info
    """

    def __init__(
        self,
        n: int,
        cases: Sequence[Case] | None = None,
        *,
        patient: Patient | None = None,
        **env_kwargs: Any,
    ) -> None:
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        self.patient: Patient = patient if patient is not None else default_patient()
        self.envs = [MediQEnv(cases, patient=self.patient, **env_kwargs) for _ in range(n)]
        self._done = [True] * n
        self.active_before_step: list[int] = []

    def __len__(self) -> int:
        return len(self.envs)

    @property
    def active(self) -> list[int]:
        """Indices of episodes still running."""
        return [i for i, d in enumerate(self._done) if not d]

    def reset(
        self,
        *,
        seeds: Sequence[int | None] | None = None,
        case_ids: Sequence[str | None] | None = None,
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Start an episode in every env; ``case_ids[i]`` names env i's case (None: drawn with its seed)."""
        n = len(self.envs)
        seeds = list(seeds) if seeds is not None else [None] * n
        case_ids = list(case_ids) if case_ids is not None else [None] * n
        if len(seeds) != n or len(case_ids) != n:
            raise ConfigError(f"give exactly {n} seeds and case ids")
        observations, infos = [], []
        for i, env in enumerate(self.envs):
            opts = {"case_id": case_ids[i]} if case_ids[i] is not None else None
            obs, info = env.reset(seed=seeds[i], options=opts)
            observations.append(obs)
            infos.append(info)
            self._done[i] = False
        return observations, infos

    def reset_at(self, index: int, *, seed: int | None = None, case_id: str | None = None) -> tuple[str, dict[str, Any]]:
        """Start a new episode in env ``index`` only (continuous batching: refill a finished slot)."""
        obs, info = self.envs[index].reset(seed=seed, options={"case_id": case_id} if case_id is not None else None)
        self._done[index] = False
        return obs, info

    def abandon(self, index: int) -> None:
        """Mark env ``index`` finished without stepping it (its episode failed outside the env)."""
        self._done[index] = True

    def step(self, actions: Sequence[Any]) -> list[StepResult]:
        """Step every active episode; ``actions[j]`` goes to the j-th active env."""
        active = self.active
        if not active:
            raise EnvStateError("no active episode: call reset() first")
        if len(actions) != len(active):
            raise ConfigError(f"expected {len(active)} actions (one per active episode), got {len(actions)}")
        pendings = [self.envs[i]._begin(a) for i, a in zip(active, actions, strict=True)]
        queries = [p.query for p in pendings if p.query is not None]
        replies = iter(self.patient.reply_batch(queries) if queries else [])
        results = []
        for i, pending in zip(active, pendings, strict=True):
            reply = next(replies) if pending.query is not None else None
            obs, reward, terminated, truncated, info = self.envs[i]._finish(pending, reply)
            self._done[i] = terminated or truncated
            results.append(StepResult(obs, reward, terminated, truncated, info))
        self.active_before_step = active
        return results
