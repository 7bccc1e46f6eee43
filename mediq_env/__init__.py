"""mediq-env: an interactive clinical question-asking environment (MediQ) with attribute-level question
rewards (ALFA).

    >>> import gymnasium, mediq_env
    >>> env = gymnasium.make("mediq_env/MediQ-v0")
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step("Do you have a fever?")

Importing this package does not import torch, transformers or vLLM.
"""

from __future__ import annotations

from mediq_env.actions import ParsedAction, parse_action, resolve_option
from mediq_env.attributes import ATTRIBUTES, Attribute, register_attribute
from mediq_env.case import Case, Demographics, LoadReport, derive_initial_info, load_cases, read_cases
from mediq_env.cases import builtin_cases
from mediq_env.dialogue import DialogueState, render_observation
from mediq_env.env import GraderView, MediQEnv
from mediq_env.errors import (
    BackendError,
    CaseFormatError,
    ConfigError,
    EnvStateError,
    MediQError,
    MissingDependencyError,
)
from mediq_env.patient import (
    CANNOT_ANSWER,
    FactLookupPatient,
    FaithfulPatient,
    Patient,
    PatientQuery,
    PatientReply,
    Turn,
    make_patient,
)
from mediq_env.rewards import CorrectnessReward, RewardFunction, StepEvent
from mediq_env.scoring import (
    CompositeScorer,
    EnvironmentScorer,
    JudgeScorer,
    PairwiseJudge,
    RewardModelScorer,
    ScoreItem,
    Scorer,
    ScoreRecord,
)
from mediq_env.vector import BatchedEnv, StepResult
from mediq_env.wrappers import AttributeReward, BatchedAttributeReward, RewardConfig

__version__ = "0.1.0"

ENV_ID = "mediq_env/MediQ-v0"

__all__ = [
    "ATTRIBUTES",
    "CANNOT_ANSWER",
    "ENV_ID",
    "Attribute",
    "AttributeReward",
    "BackendError",
    "BatchedAttributeReward",
    "BatchedEnv",
    "Case",
    "CaseFormatError",
    "CompositeScorer",
    "ConfigError",
    "CorrectnessReward",
    "Demographics",
    "DialogueState",
    "EnvStateError",
    "EnvironmentScorer",
    "FactLookupPatient",
    "FaithfulPatient",
    "GraderView",
    "JudgeScorer",
    "LoadReport",
    "MediQEnv",
    "MediQError",
    "MissingDependencyError",
    "PairwiseJudge",
    "ParsedAction",
    "Patient",
    "PatientQuery",
    "PatientReply",
    "RewardConfig",
    "RewardFunction",
    "RewardModelScorer",
    "ScoreItem",
    "ScoreRecord",
    "Scorer",
    "StepEvent",
    "StepResult",
    "Turn",
    "__version__",
    "builtin_cases",
    "derive_initial_info",
    "load_cases",
    "make_patient",
    "parse_action",
    "read_cases",
    "register_attribute",
    "register_envs",
    "render_observation",
    "resolve_option",
]


def register_envs() -> None:
    """Register ``mediq_env/MediQ-v0`` with Gymnasium (idempotent; also run by Gymnasium's plugin hook)."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        # Gymnasium 1.4's passive checker marks reset as checked before the first reset returns, so a refused
        # first reset (an unknown case id) would break the env for good; tests run check_env instead.
        gymnasium.register(id=ENV_ID, entry_point="mediq_env.env:MediQEnv", disable_env_checker=True)


register_envs()
