"""What a benchmark run is: its config (:class:`BenchConfig`, every field that determines the results, checked
on construction) and its episodes (:func:`episode_specs`). Shared by the runner (:mod:`benchmarks.run`) and the
run directory (:mod:`benchmarks.rundir`), which checks a resumed run against the config in its manifest."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from mediq_env import Case
from mediq_env.errors import ConfigError
from mediq_env.patient import PATIENTS, patient_spec

__all__ = ["BASELINE_AGENTS", "MODES", "PATIENTS", "BenchConfig", "Spec", "episode_specs", "is_a"]

MODES = ("interactive", "no_interaction", "full_information")
BASELINE_AGENTS = ("answer-now", "checklist", "random")


# The types each BenchConfig field may hold, by its annotation (bool is refused where an int is meant).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "int": (int,),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
    "bool": (bool,),
    "tuple[str, ...]": (tuple, list),
}


def is_a(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not a number here (JSON true is not a count)."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


@dataclass
class BenchConfig:
    """Everything that determines a run's results (the run directory is not part of it)."""

    agent: str = "llm:smollm2"
    strategy: str = "implicit"
    threshold: float | None = None
    rationale: bool = False
    self_consistency: int = 1
    question_model: str | None = None
    decision_model: str | None = None
    # Redraw (sampled, seeded) a decision whose question restates an earlier one word for word, up to N times;
    # None: the agent's own default (4 for the shipped doctor 'llm:smollm2', else 0).
    redraw_repeats: int | None = None
    patient: str = "faithful"
    cases: str | None = None
    initial_info: str = "auto"
    max_questions: int = 5
    repeats: int = 1
    seed: int = 0
    shuffle_options: bool = True
    limit: int | None = None
    scorer: str = "env"
    modes: tuple[str, ...] = MODES
    batch_size: int = 16
    cache_dir: str | None = None
    skip_invalid: bool = False
    max_attempts: int = 3

    # Settings that change speed or persistence, not results: a resumed run may use different values.
    # (skip_invalid too: the cases file is compared by checksum, and a file with invalid records never
    # started a run without it.)
    RESUMABLE_CHANGES = ("batch_size", "cache_dir", "max_attempts", "skip_invalid")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike):  # a Path is fine; the manifest records its text
                setattr(self, f.name, os.fspath(value))
            elif isinstance(value, np.generic):  # numpy numbers as plain ones (the manifest would store text)
                setattr(self, f.name, value.item())
        self._check_types()
        self.modes = tuple(self.modes)
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.max_questions < 0:
            raise ConfigError(f"max_questions must be >= 0, got {self.max_questions}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if self.redraw_repeats is not None and self.redraw_repeats < 0:
            raise ConfigError(f"redraw_repeats must be >= 0, got {self.redraw_repeats}")
        if self.self_consistency < 1:
            raise ConfigError(f"self_consistency must be >= 1, got {self.self_consistency}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if "interactive" not in self.modes or any(m not in MODES for m in self.modes):
            raise ConfigError(f"modes must include 'interactive' and come from {MODES}, got {self.modes}")
        if self.initial_info not in ("auto", "given", "derived"):
            raise ConfigError(f"initial_info must be auto, given or derived, got {self.initial_info!r}")
        self.patient = patient_spec(self.patient)  # refuses an unknown one; faithful:float32 is faithful

    def _check_types(self) -> None:
        # Checked first, so that a hand-edited manifest ("seed": "0", "patient": 3) is refused as damaged
        # instead of passing as "a different config" or failing deep inside with a traceback.
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = _FIELD_TYPES[str(f.type)]
            if not is_a(value, allowed):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise ConfigError(f"{f.name} must be {names}, got {type(value).__name__} {value!r:.60}")
        if not all(isinstance(m, str) for m in self.modes):
            raise ConfigError(f"modes must be strings, got {self.modes!r:.100}")

    def result_fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.RESUMABLE_CHANGES}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Spec:
    mode: str
    case_id: str
    repeat: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.mode}/{self.case_id}#r{self.repeat}"


def episode_specs(cases: Sequence[Case], config: BenchConfig) -> list[Spec]:
    """Every episode of the run; each seed depends only on (run seed, repeat, case position)."""
    out = []
    for mode in config.modes:
        for r in range(config.repeats):
            for i, case in enumerate(cases):
                seed = int(np.random.SeedSequence([config.seed, r, i]).generate_state(1)[0])
                out.append(Spec(mode, case.id, r, seed))
    return out
