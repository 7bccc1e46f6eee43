"""Rewards made of question-quality scores: :class:`RewardConfig`, :class:`AttributeReward` and its batched
form :class:`BatchedAttributeReward`.

ALFA's point is that a doctor model learns better from *which aspect* of a question was good than from one
final outcome. These wrappers give the environment such a reward: on every question step, the weighted
scores of a :class:`~mediq_env.scoring.Scorer` (rubric attributes and/or environment proxies), a
per-question cost and a repeat penalty; at the end, correctness. Every component is reported separately in
``info["reward_components"]`` and the reward is exactly their sum, so a training curve can always be
decomposed.

Component names::

    attr:<attribute>      weight × score of a rubric attribute (e.g. attr:clarity)
    proxy:<name>          weight × an environment proxy (e.g. proxy:info_gain for score proxy_info_gain)
    question_cost         −question_cost, on every question and invalid action (a turn used up)
    repeat_penalty        −repeat_penalty if the question repeats what is already known, else 0 (question
                          steps): its reply revealed only facts known before (earlier turns or the opening),
                          or its words repeat an earlier question (mediq_env.scoring.is_repeat_step)
    invalid_action        −invalid_penalty (invalid actions)
    correctness           ``correct`` or ``incorrect`` (the final answer, or the forced turn timing out)

Unscored is never hidden: a weighted score that is NaN (say, an unparseable judge reply) contributes 0 to
the reward, its component is reported as 0.0, and its name is listed in ``info["unscored"]`` (and counted
in ``unscored_counts``). ``info["scores"]`` holds every score of the step, NaN included.

The scorer's full record of the last step (its raw outputs) is grader data, not part of ``info``: the
environment proxies' raw outputs hold how many facts the case has and each option's similarity to the
revealed facts, from which the answer can be read mid-episode (``proxy_relevance``'s score is the
similarity of the answer's option). It is reached as ``wrapper.grader_score_record`` (batched:
``grader_score_records[i]``), beside ``env.grader``; agents must not read either.

The wrappers supersede the env's own ``reward_fn`` (its components stay visible as
``info["env_reward_components"]``): correctness and costs come from the :class:`RewardConfig`, so one
object describes the whole reward. The single and batched forms share :func:`attribute_rewards`, which
makes one scorer call for all question steps it is given — so they give identical rewards, and the
batched form scores a whole batch turn in one call.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, SupportsFloat

import gymnasium as gym

from mediq_env.attributes import ATTRIBUTES
from mediq_env.dialogue import DialogueState
from mediq_env.errors import ConfigError, EnvStateError
from mediq_env.patient import PatientReply
from mediq_env.scoring import PROXIES, ScoreItem, Scorer, ScoreRecord, is_repeat_step

if TYPE_CHECKING:
    from mediq_env.case import Case
    from mediq_env.vector import BatchedEnv, StepResult

__all__ = [
    "AttributeReward",
    "BatchedAttributeReward",
    "RewardBreakdown",
    "RewardConfig",
    "StepView",
    "attribute_rewards",
    "component_name",
    "step_view",
]


def component_name(score_name: str) -> str:
    """``clarity`` → ``attr:clarity``; ``proxy_info_gain`` → ``proxy:info_gain``."""
    if score_name.startswith("proxy_"):
        return "proxy:" + score_name.removeprefix("proxy_")
    return "attr:" + score_name


def _canonical(key: str) -> str:
    if key.startswith("attr:"):
        return key.removeprefix("attr:")
    if key.startswith("proxy:"):
        return "proxy_" + key.removeprefix("proxy:")
    return key


@dataclass(frozen=True)
class RewardConfig:
    """The whole reward, validated at construction.

    ``weights`` maps score names to weights; keys may be written as score names (``clarity``,
    ``proxy_info_gain``) or component names (``attr:clarity``, ``proxy:info_gain``) and are stored as score
    names. Each must be a registered attribute or a known proxy, or be listed in ``extra_scores`` (scores of
    a custom scorer): a typo fails here rather than silently never scoring.

    With ``normalise`` (the default) a bounded score is mapped to [0, 1] before weighting — a rubric score
    of 1..5 becomes 0..1 — so weights of rubric attributes and 0/1 proxies are comparable. Unbounded scores
    (reward-model logits, the ``proxy_info_gain`` count) are used as they are.

    Costs are given as non-negative magnitudes and enter the reward negated. A question is a repeat when its
    reply revealed only facts already known (by meaning: a paraphrase or an echo of the opening is caught
    however it is worded) or when its words repeat an earlier question: ``repeat_threshold`` is the
    content-word overlap for the second signal (see :func:`mediq_env.scoring.is_repeat_step`); note that
    weighting ``proxy_repeat`` as well would penalise a repeat twice.
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    correct: float = 1.0
    incorrect: float = 0.0
    question_cost: float = 0.0
    repeat_penalty: float = 0.0
    invalid_penalty: float = 0.0
    normalise: bool = True
    repeat_threshold: float = 0.6
    extra_scores: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        weights: dict[str, float] = {}
        for key, value in dict(self.weights).items():
            name = _canonical(str(key))
            if name in weights:
                raise ConfigError(f"weight for {name!r} is given twice (as {key!r} and another spelling)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"weight for {key!r} must be a finite number, got {value!r}")
            known = name in ATTRIBUTES or name in PROXIES or name in self.extra_scores
            if not known:
                raise ConfigError(
                    f"weight for unknown score {key!r}: not a registered attribute ({', '.join(ATTRIBUTES)}), "
                    f"nor a proxy ({', '.join(PROXIES)}); register the attribute or list it in extra_scores"
                )
            weights[name] = float(value)
        object.__setattr__(self, "weights", MappingProxyType(weights))
        object.__setattr__(self, "extra_scores", tuple(self.extra_scores))
        for fname in ("correct", "incorrect", "question_cost", "repeat_penalty", "invalid_penalty", "repeat_threshold"):
            value = getattr(self, fname)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{fname} must be a finite number, got {value!r}")
        for fname in ("question_cost", "repeat_penalty", "invalid_penalty"):
            if getattr(self, fname) < 0:
                raise ConfigError(f"{fname} is a cost: give it as a value >= 0 (it is subtracted), got {getattr(self, fname)}")
        if self.correct < self.incorrect:
            raise ConfigError(f"correct ({self.correct}) must be >= incorrect ({self.incorrect})")
        if not 0 < self.repeat_threshold <= 1:
            raise ConfigError(f"repeat_threshold must be in (0, 1], got {self.repeat_threshold}")


StepKind = Literal["question", "answer", "invalid", "timeout"]


@dataclass(frozen=True)
class StepView:
    """What the reward needs to know about one finished step (built by :func:`step_view`)."""

    kind: StepKind
    question: str
    context: DialogueState
    case: Case
    reply: PatientReply | None = None
    correct: bool | None = None


def step_view(before: DialogueState, info: Mapping[str, Any], terminated: bool, truncated: bool, case: Case) -> StepView:
    """Describe a step from the doctor's view *before* it, the env's ``info`` after it, and the case."""
    action_type = info.get("action_type")
    after: DialogueState = info["state"]
    if action_type == "answer":
        return StepView("answer", "", before, case, correct=bool(info.get("correct")))
    if truncated and info.get("forced"):
        return StepView("timeout", "", before, case, correct=False)
    if action_type == "question":
        last = after.turns[-1]
        reply = PatientReply(text=str(info.get("reply", last.reply)), revealed=tuple(last.revealed))
        return StepView("question", last.question, before, case, reply=reply)
    return StepView("invalid", "", before, case)


@dataclass
class RewardBreakdown:
    """The reward of one step: its components, the weighted scores that were NaN, the scorer's record."""

    components: dict[str, float]
    unscored: list[str] = field(default_factory=list)
    record: ScoreRecord | None = None

    @property
    def reward(self) -> float:
        return float(sum(self.components.values()))


def _weighted(config: RewardConfig, record: ScoreRecord) -> tuple[dict[str, float], list[str]]:
    components: dict[str, float] = {}
    unscored: list[str] = []
    for name, weight in config.weights.items():
        value = record.scores.get(name, math.nan)
        if math.isnan(value):
            components[component_name(name)] = 0.0
            unscored.append(name)
            continue
        if config.normalise and name in record.bounds:
            lo, hi = record.bounds[name]
            value = (value - lo) / (hi - lo) if hi > lo else 0.0
        components[component_name(name)] = weight * value
    return components, unscored


def attribute_rewards(views: Sequence[StepView], scorer: Scorer, config: RewardConfig) -> list[RewardBreakdown]:
    """Rewards for many steps, with **one** ``scorer.score`` call for all question steps among them.

    The one function behind both wrappers: a step's reward depends only on its own view and record, so
    scoring steps one at a time or all together gives the same rewards (for a scorer that is itself
    deterministic per item).
    """
    questions = [v for v in views if v.kind == "question"]
    items = [ScoreItem(v.question, v.context, v.case, v.reply) for v in questions]
    records = scorer.score(items) if items else []
    if len(records) != len(items):
        raise ConfigError(f"scorer {scorer.name!r} returned {len(records)} records for {len(items)} items")
    by_view = {id(v): r for v, r in zip(questions, records, strict=True)}
    out = []
    for v in views:
        if v.kind == "question":
            record = by_view[id(v)]
            repeat = is_repeat_step(v.question, v.context, v.case, v.reply, config.repeat_threshold)
            components = {
                "question_cost": -config.question_cost,
                "repeat_penalty": -config.repeat_penalty if repeat else 0.0,
            }
            weighted, unscored = _weighted(config, record)
            components.update(weighted)
            out.append(RewardBreakdown(components, unscored, record))
        elif v.kind == "invalid":
            out.append(RewardBreakdown({"question_cost": -config.question_cost, "invalid_action": -config.invalid_penalty}))
        else:
            out.append(RewardBreakdown({"correctness": config.correct if v.correct else config.incorrect}))
    return out


def _check_scorer(scorer: Scorer, config: RewardConfig) -> None:
    keys = getattr(scorer, "keys", None)
    if keys is None:
        return
    missing = [k for k in config.weights if k not in keys]
    if missing:
        raise ConfigError(
            f"the reward weights {missing} name scores that scorer {scorer.name!r} does not produce ({list(keys)})"
        )


def _annotate(info: dict[str, Any], out: RewardBreakdown, counts: Counter[str]) -> None:
    # Not out.record itself: its raw outputs are grader data (see the module docstring).
    info["env_reward_components"] = info.get("reward_components", {})
    info["reward_components"] = dict(out.components)
    info["unscored"] = list(out.unscored)
    info["scores"] = dict(out.record.scores) if out.record is not None else {}
    counts.update(out.unscored)


def _grader_case(env: Any) -> Case:
    """The shown case (answer and facts) through the grader view; envs without one expose ``case``."""
    base = getattr(env, "unwrapped", env)
    grader = getattr(type(base), "grader", None)
    return base.grader.case if grader is not None else base.case


def _base_env(env: gym.Env[Any, Any]) -> Any:
    from mediq_env.env import MediQEnv

    base = env.unwrapped
    if not isinstance(base, MediQEnv):
        raise ConfigError(f"AttributeReward wraps a MediQEnv, got {type(base).__name__}")
    return base


class AttributeReward(gym.Wrapper[str, Any, str, Any]):
    """A MediQEnv whose reward is built from question-quality scores (see the module docstring).

    Example::

        env = AttributeReward(MediQEnv(), JudgeScorer(backend, ["clarity", "focus"]),
                              RewardConfig(weights={"clarity": 0.1, "focus": 0.1}, question_cost=0.02))
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step("Do you smoke?")
        info["reward_components"]   # {'question_cost': -0.02, 'repeat_penalty': 0.0, 'attr:clarity': ..., ...}
    """

    def __init__(self, env: gym.Env[str, Any], scorer: Scorer, config: RewardConfig | None = None) -> None:
        super().__init__(env)
        self._base = _base_env(env)
        self.scorer = scorer
        self.config = config if config is not None else RewardConfig()
        _check_scorer(scorer, self.config)
        self._before: DialogueState | None = None
        self.unscored_counts: Counter[str] = Counter()
        #: The scorer's record of the last step (None: not a scored question). Grader data: agents must not read it.
        self.grader_score_record: ScoreRecord | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._before = info["state"]
        self.grader_score_record = None
        return obs, info

    def step(self, action: Any) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._before is None:
            raise EnvStateError("step() called before reset()")
        obs, _, terminated, truncated, info = self.env.step(action)
        view = step_view(self._before, info, terminated, truncated, _grader_case(self._base))
        out = attribute_rewards([view], self.scorer, self.config)[0]
        _annotate(info, out, self.unscored_counts)
        self.grader_score_record = out.record
        self._before = info["state"]
        return obs, out.reward, terminated, truncated, info


class BatchedAttributeReward:
    """:class:`~mediq_env.vector.BatchedEnv` with the attribute reward, scoring every question of a batch
    turn in **one** scorer call. Same interface as BatchedEnv (``reset``, ``reset_at``, ``step``,
    ``active``, ``active_before_step``, ``abandon``, ``envs``)."""

    def __init__(self, batch: BatchedEnv, scorer: Scorer, config: RewardConfig | None = None) -> None:
        self.batch = batch
        self.scorer = scorer
        self.config = config if config is not None else RewardConfig()
        _check_scorer(scorer, self.config)
        self._before: list[DialogueState | None] = [None] * len(batch)
        self.unscored_counts: Counter[str] = Counter()
        #: Per env slot, the scorer's record of its last step (see AttributeReward.grader_score_record).
        self.grader_score_records: list[ScoreRecord | None] = [None] * len(batch)

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def envs(self) -> list[Any]:
        return self.batch.envs

    @property
    def active(self) -> list[int]:
        return self.batch.active

    @property
    def active_before_step(self) -> list[int]:
        return self.batch.active_before_step

    def abandon(self, index: int) -> None:
        self.batch.abandon(index)

    def reset(
        self,
        *,
        seeds: Sequence[int | None] | None = None,
        case_ids: Sequence[str | None] | None = None,
    ) -> tuple[list[str], list[dict[str, Any]]]:
        observations, infos = self.batch.reset(seeds=seeds, case_ids=case_ids)
        self._before = [info["state"] for info in infos]
        self.grader_score_records = [None] * len(self.batch)
        return observations, infos

    def reset_at(self, index: int, *, seed: int | None = None, case_id: str | None = None) -> tuple[str, dict[str, Any]]:
        obs, info = self.batch.reset_at(index, seed=seed, case_id=case_id)
        self._before[index] = info["state"]
        self.grader_score_records[index] = None
        return obs, info

    def step(self, actions: Sequence[Any]) -> list[StepResult]:
        """Step every active episode (``actions[j]`` for the j-th active one) and score them together."""
        active = self.batch.active
        results = self.batch.step(actions)
        views = []
        for i, r in zip(active, results, strict=True):
            before = self._before[i]
            if before is None:
                raise EnvStateError(f"env {i} was stepped before reset")
            views.append(step_view(before, r.info, r.terminated, r.truncated, _grader_case(self.batch.envs[i])))
        outs = attribute_rewards(views, self.scorer, self.config)
        for i, r, out in zip(active, results, outs, strict=True):
            _annotate(r.info, out, self.unscored_counts)
            self.grader_score_records[i] = out.record
            r.reward = out.reward
            self._before[i] = r.info["state"]
        return results
