"""Every exception mediq-env raises on purpose, in one tree.

    MediQError                      base class: catch this to catch everything below
    ├── CaseFormatError             a cases file is malformed (names file, line and field)
    ├── EnvStateError               the environment was used out of order (step before reset, after the end)
    ├── ConfigError                 a config value is out of range or inconsistent
    ├── MissingDependencyError      an optional extra is needed (the message says which pip command installs it)
    └── BackendError                a model backend failed to produce a generation
        ├── BackendTimeoutError     the backend did not answer within its timeout, after retries
        └── BackendResponseError    the backend answered, but with an error status or a malformed body

Errors that are data, not bugs (an unparseable agent action, a failed episode) are *not* raised: they are
recorded in ``info`` and in episode records, and counted.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendResponseError",
    "BackendTimeoutError",
    "CaseFormatError",
    "ConfigError",
    "EnvStateError",
    "MediQError",
    "MissingDependencyError",
]


class MediQError(Exception):
    """Base class of every error raised by mediq-env."""


class CaseFormatError(MediQError, ValueError):
    """A cases file could not be read. ``str(err)`` is one line: ``file:line: field: problem``."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = path if line is None else f"{path}:{line}"
        what = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {what}")


class EnvStateError(MediQError, RuntimeError):
    """The environment was used out of order, e.g. ``step`` after the episode ended."""


class ConfigError(MediQError, ValueError):
    """A configuration value is invalid."""


class MissingDependencyError(MediQError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'mediq-env[{extra}]'"
        )


class BackendError(MediQError, RuntimeError):
    """A model backend failed."""


class BackendTimeoutError(BackendError, TimeoutError):
    """The backend did not answer in time, after all retries."""


class BackendResponseError(BackendError):
    """The backend answered with an error status or a body that could not be parsed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)
