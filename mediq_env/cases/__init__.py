"""The built-in cases: clinical cases written by the mediq-env team, shipped inside the package.

They are the embedded default of the environment and the project's test data. Each carries ``key_facts``
(the facts the answer depends on) and a ``specialty``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from mediq_env.case import Case, load_cases

__all__ = ["builtin_cases", "builtin_cases_path"]


def builtin_cases_path() -> Path:
    return Path(str(resources.files("mediq_env.cases").joinpath("builtin.jsonl")))


@lru_cache(maxsize=1)
def _cached() -> tuple[Case, ...]:
    return tuple(load_cases(builtin_cases_path(), initial_info="given"))


def builtin_cases() -> list[Case]:
    """A fresh list of the built-in cases (the Case objects themselves are immutable)."""
    return list(_cached())
