"""Batched rollouts: run many episodes with one agent call and one patient call per turn for all of them.

Slots of a :class:`~mediq_env.BatchedEnv` are refilled as episodes finish (continuous batching), so a slow
episode never holds the others back. A failure is data: if the agent raises, the episodes it was acting
for are recorded with ``error`` set and counted, and the run goes on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.base import Agent
from mediq_env import BatchedEnv, DialogueState

__all__ = ["EpisodeRecord", "EpisodeSpec", "TurnRecord", "rollout"]


@dataclass
class TurnRecord:
    action: Any
    action_type: str
    reply: str | None
    revealed: list[int]
    new_facts: list[int]
    reward: float
    reward_components: dict[str, float]
    invalid_action: str | None = None
    # The agent's AgentStep.info for this turn, as given: intermediate answer, confidence, raw outputs and,
    # for model-driven agents, ``fallback`` / ``fallback_kinds`` (see agents.base.FALLBACK_KINDS).
    agent: dict[str, Any] = field(default_factory=dict)
    # Per-question attribute/proxy scores when a scoring reward wrapper is used (NaN = unscored).
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class EpisodeSpec:
    """Which episode to run: a case id (None: drawn by the env from ``seed``), a seed, and a label."""

    case_id: str | None
    seed: int | None = None
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = f"{self.case_id}#{self.seed}"


@dataclass
class EpisodeRecord:
    key: str
    case_id: str
    seed: int | None
    turns: list[TurnRecord] = field(default_factory=list)
    answer: str | None = None
    answer_original: str | None = None
    correct: bool = False
    correct_answer: str | None = None
    confidence: float | None = None
    forced: bool = False
    truncated: bool = False
    questions_asked: int = 0
    n_facts_revealed: int = 0
    n_facts: int = 0
    # Facts already stated at reset (known before any question); None when the env does not report it.
    n_facts_known: int | None = None
    total_reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    option_order: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeRecord:
        data = dict(data)
        data["turns"] = [TurnRecord(**t) for t in data.get("turns", [])]
        return cls(**data)


def _grading(record: EpisodeRecord, info: dict[str, Any]) -> None:
    """Copy the grading fields (fact counts, original lettering) when ``info`` has them.

    The env gives them only with the step that ends an episode (the doctor must not see them earlier);
    older envs gave them at reset. Reading them wherever they appear serves both.
    """
    if "n_facts" in info:
        record.n_facts = info["n_facts"]
    if "n_facts_known" in info:
        record.n_facts_known = info["n_facts_known"]
    if info.get("option_order") is not None:
        record.option_order = list(info["option_order"])


def _start(record: EpisodeRecord, info: dict[str, Any]) -> None:
    record.case_id = info["case_id"]
    _grading(record, info)


def _absorb(record: EpisodeRecord, action: Any, agent_info: dict[str, Any], reward: float, info: dict[str, Any]) -> None:
    components = {k: float(v) for k, v in info["reward_components"].items()}
    record.turns.append(
        TurnRecord(
            action=action,
            action_type=info["action_type"],
            reply=info.get("reply"),
            revealed=list(info["state"].turns[-1].revealed) if info["action_type"] == "question" else [],
            new_facts=list(info["new_facts"]),
            reward=float(reward),
            reward_components=components,
            invalid_action=info.get("invalid_action"),
            agent=agent_info,
            scores={k: float(v) for k, v in (info.get("scores") or {}).items()},
        )
    )
    record.total_reward += float(reward)
    for k, v in components.items():
        record.reward_components[k] = record.reward_components.get(k, 0.0) + v
    record.questions_asked = info["questions_asked"]
    record.n_facts_revealed = info["n_facts_revealed"]


def _finish(record: EpisodeRecord, info: dict[str, Any], truncated: bool) -> None:
    _grading(record, info)
    record.answer = info.get("answer")
    record.answer_original = info.get("answer_original")
    record.correct = bool(info.get("correct"))
    record.correct_answer = info.get("correct_answer")
    record.confidence = info.get("confidence")
    record.forced = bool(info.get("forced"))
    record.truncated = truncated


def rollout(
    agent: Agent,
    envs: BatchedEnv,
    episodes: Sequence[EpisodeSpec],
) -> Iterator[EpisodeRecord]:
    """Run ``episodes`` through ``envs`` (as many at a time as it has slots); yield each record when done.

    Records come out in completion order; match them to specs by ``key``.
    """
    queue = list(reversed(episodes))
    slots: list[tuple[EpisodeRecord, float] | None] = [None] * len(envs)
    states: dict[int, DialogueState] = {}

    def fill() -> None:
        for i in range(len(envs)):
            if slots[i] is None and queue:
                spec = queue.pop()
                record = EpisodeRecord(key=spec.key, case_id=spec.case_id or "", seed=spec.seed)
                try:
                    _, info = envs.reset_at(i, seed=spec.seed, case_id=spec.case_id)
                except Exception as exc:  # a bad case id is a failed episode, not a crashed run
                    record.error = f"reset failed: {exc}"
                    slots[i] = (record, time.perf_counter())
                    continue
                _start(record, info)
                states[i] = info["state"]
                slots[i] = (record, time.perf_counter())

    fill()
    while any(s is not None for s in slots):
        # Episodes that failed at reset are reported straight away.
        for i, slot in enumerate(slots):
            if slot is not None and slot[0].error is not None and i not in states:
                slots[i] = None
                yield slot[0]
        active = envs.active
        if not active:
            fill()
            if not envs.active and not any(s is not None for s in slots):
                break
            continue
        try:
            steps = agent.act([states[i] for i in active])
            if len(steps) != len(active):
                raise RuntimeError(f"agent returned {len(steps)} actions for {len(active)} states")
        except Exception as exc:
            error = f"agent failed: {type(exc).__name__}: {exc}"
            trace = traceback.format_exc(limit=3)
            for i in active:
                slot = slots[i]
                assert slot is not None
                record, t0 = slot
                record.error = error
                record.turns.append(TurnRecord(None, "error", None, [], [], 0.0, {}, agent={"traceback": trace}))
                record.seconds = time.perf_counter() - t0
                envs.abandon(i)
                states.pop(i, None)
                slots[i] = None
                yield record
            fill()
            continue
        results = envs.step([s.action for s in steps])
        for i, step, result in zip(active, steps, results, strict=True):
            slot = slots[i]
            assert slot is not None
            record, t0 = slot
            _absorb(record, step.action, step.info, result.reward, result.info)
            states[i] = result.info["state"]
            if result.done:
                _finish(record, result.info, result.truncated)
                record.seconds = time.perf_counter() - t0
                states.pop(i, None)
                slots[i] = None
                yield record
        fill()
