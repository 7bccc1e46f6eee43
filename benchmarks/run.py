"""The interactive clinical QA benchmark: run an agent on cases, record every episode, resume after a crash.

    mediq bench --agent llm:smollm2 --max-questions 5 --out runs/smollm2
    python -m benchmarks.run --agent checklist --cases ../shared/data/mediq_askdocs_dev.jsonl

A run directory holds:

* ``manifest.json`` — the full config, package versions, git revision, seeds, the cases' checksum and any
  records skipped with ``--skip-invalid``;
* ``episodes.jsonl`` — one line per finished episode, appended and flushed as it finishes (transcript,
  facts revealed per question, the agent's intermediate answer and confidence at every turn, per-question
  scores, final answer, correctness, error, attempts);
* ``summary.json``, ``report.md`` and ``plots/`` — written at the end from ``episodes.jsonl`` alone;
* ``episodes.damaged.jsonl`` (damaged lines moved out of ``episodes.jsonl``, with the reason) and
  ``episodes.retried.jsonl`` (failed attempts that were run again), when there were any;
* ``.lock`` — held while a run writes, so that a second run on the same directory is refused.

Rerunning the same command resumes: finished episodes are skipped, failed ones are retried (at most
``--max-attempts`` attempts each), damaged lines are moved aside, and a different config in the same
directory is refused (the cases are compared by content, not by how their path is spelled). Rerunning a
finished run only recomputes and prints its summary and writes nothing. Besides the interactive mode,
reference modes run the same agent on the same cases: ``no_interaction`` (initial information only, no
questions) and ``full_information`` (every fact given up front).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from benchmarks.common import json_safe
from benchmarks.metrics import FALLBACK_WARN_RATE
from mediq_env import BatchedEnv, Case, Patient, builtin_cases, make_patient
from mediq_env.case import read_cases
from mediq_env.cases import builtin_cases_path
from mediq_env.errors import CaseFormatError, ConfigError, MediQError

__all__ = [
    "MODES",
    "BenchConfig",
    "RunDir",
    "RunDirError",
    "build_agent",
    "build_patient",
    "episode_specs",
    "format_run_summary",
    "run_benchmark",
]

MODES = ("interactive", "no_interaction", "full_information")
BASELINE_AGENTS = ("answer-now", "checklist", "random")
PATIENTS = ("faithful", "bm25", "bm25+minilm", "llm-select:<backend>", "llm-freeform:<backend>")
# The environment proxy that needs the MiniLM embedder (tens of seconds to load on a CPU); ``--scorer env``
# leaves it out so that a model-free run stays model-free, ``env:all`` asks for it.
EMBEDDING_PROXY = "proxy_relevance"


class RunDirError(ConfigError):
    """The run directory cannot be used as asked: its manifest is damaged, another run holds it, or it
    cannot be written (read-only, full). The message names the file and says what to do."""


@dataclass
class BenchConfig:
    """Everything that determines a run's results (the run directory is not part of it)."""

    agent: str = "llm:smollm2"
    strategy: str = "implicit"
    threshold: float | None = None
    rationale: bool = False
    self_consistency: int = 1
    question_model: str | None = None
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
        self.modes = tuple(self.modes)
        if self.max_questions < 0:
            raise ConfigError(f"max_questions must be >= 0, got {self.max_questions}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if self.self_consistency < 1:
            raise ConfigError(f"self_consistency must be >= 1, got {self.self_consistency}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if "interactive" not in self.modes or any(m not in MODES for m in self.modes):
            raise ConfigError(f"modes must include 'interactive' and come from {MODES}, got {self.modes}")
        if self.initial_info not in ("auto", "given", "derived"):
            raise ConfigError(f"initial_info must be auto, given or derived, got {self.initial_info!r}")
        kind = self.patient.split(":", 1)[0]
        known = ("faithful", "bm25", "bm25+minilm", "lookup", "lookup+minilm", "llm-select", "llm-freeform")
        if kind not in known or (kind.startswith("llm") and ":" not in self.patient):
            raise ConfigError(f"unknown patient {self.patient!r}; use one of {', '.join(PATIENTS)}")

    def result_fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.RESUMABLE_CHANGES}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# -- building the pieces --------------------------------------------------------------------------------


def build_agent(config: BenchConfig) -> Any:
    from agents import make_agent

    spec = config.agent
    if spec.split(":", 1)[0] in BASELINE_AGENTS:
        return make_agent(spec)
    if not spec.startswith("llm:"):
        spec = f"llm:{spec}"  # a bare backend spec ("smollm2", "hf:...") means an LLM agent over it
    kw: dict[str, Any] = {
        "strategy": config.strategy,
        "rationale": config.rationale,
        "self_consistency": config.self_consistency,
    }
    if config.threshold is not None:
        kw["threshold"] = config.threshold
    if config.question_model:
        kw["question_backend"] = config.question_model
    if config.cache_dir:
        kw["backend_options"] = {"cache_dir": config.cache_dir}
    return make_agent(spec, **kw)


def build_patient(config: BenchConfig) -> Patient:
    kind, _, backend_spec = config.patient.partition(":")
    if not kind.startswith("llm"):
        return make_patient(config.patient)  # faithful (default), bm25, bm25+minilm; lookup = bm25's old name
    from mediq_env.backends.factory import make_backend
    from mediq_env.llm_patient import LLMPatient

    options = {"cache_dir": config.cache_dir} if config.cache_dir else {}
    return LLMPatient(make_backend(backend_spec, **options), mode="select" if kind == "llm-select" else "freeform")


def _env_scorer(part: str) -> Any:
    from mediq_env.scoring import PROXIES, EnvironmentScorer

    if part == "env":
        # The model-free proxies only: proxy_relevance would load MiniLM the first time a fact is revealed.
        return EnvironmentScorer([p for p in PROXIES if p != EMBEDDING_PROXY], embedder=None)
    chosen = part.removeprefix("env:")
    if chosen == "all":
        return EnvironmentScorer()
    names = [n.strip() if n.strip().startswith("proxy_") else f"proxy_{n.strip()}" for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROXIES]
    if not names or unknown:
        raise ConfigError(f"unknown proxies in scorer {part!r}: {unknown or chosen!r}; known: {', '.join(PROXIES)}, or env:all")
    return EnvironmentScorer(names, embedder="auto" if EMBEDDING_PROXY in names else None)


def build_scorer(config: BenchConfig) -> Any | None:
    """The per-question scorer named by ``config.scorer``: ``none``, or parts joined by ``+``: ``env`` (the
    model-free proxies), ``env:all`` (those plus ``proxy_relevance``, which loads the MiniLM embedder),
    ``env:<proxy,...>`` (chosen proxies), ``judge:<backend>`` (rubric judge), ``rm:<dir>`` (reward models: a
    ``reward_models.json`` index written by ``mediq train reward``, or one multi-head model directory)."""
    if config.scorer == "none":
        return None
    from mediq_env.scoring import CompositeScorer, JudgeScorer

    parts: list[Any] = []
    for part in config.scorer.split("+"):
        if part == "env" or part.startswith("env:"):
            parts.append(_env_scorer(part))
        elif part.startswith("judge:"):
            from mediq_env.backends.factory import make_backend

            options = {"cache_dir": config.cache_dir} if config.cache_dir else {}
            parts.append(JudgeScorer(make_backend(part.removeprefix("judge:"), **options)))
        elif part.startswith("rm:"):
            from mediq_env.scoring import RewardModelScorer

            target = Path(part.removeprefix("rm:"))
            index = target / "reward_models.json" if target.is_dir() else target
            if index.suffix == ".json" and index.exists():
                try:
                    mapping = json.loads(index.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"{index}: cannot read the reward-model index ({exc})") from None
                if not isinstance(mapping, dict):
                    raise ConfigError(f"{index}: expected a JSON object mapping score names to model directories")
                parts.append(RewardModelScorer({k: (index.parent / v if not Path(v).is_absolute() else Path(v)) for k, v in mapping.items()}))
            else:
                parts.append(RewardModelScorer(target))
        else:
            raise ConfigError(f"unknown scorer {part!r}; use none, env, env:all, judge:<backend>, rm:<dir>, joined with '+'")
    return parts[0] if len(parts) == 1 else CompositeScorer(*parts)


def load_bench_cases(config: BenchConfig) -> tuple[list[Case], str, list[str]]:
    """The cases (limited, in file order), the sha256 of the file they came from, and the records skipped
    as invalid (``file:line: field: problem``; only with ``skip_invalid``, else the first one is raised)."""
    skipped: list[str] = []
    if config.cases:
        path = Path(config.cases)
        try:
            report = read_cases(path, initial_info=config.initial_info)  # type: ignore[arg-type]
        except OSError as exc:  # a directory, no permission: one line, not a traceback
            raise CaseFormatError(str(path), None, None, f"cannot read: {exc.strerror or exc}") from None
        if report.errors and not config.skip_invalid:
            err = report.errors[0]
            more = f" (+{len(report.errors) - 1} more problems)" if len(report.errors) > 1 else ""
            raise CaseFormatError(
                err.path, err.line, err.field,
                f"{err.message}{more}; run `mediq validate {path}` to see them all, or `--skip-invalid` to run the valid cases",
            )
        skipped = [str(e) for e in report.errors]
        cases = report.cases
        if not cases:
            raise CaseFormatError(str(path), None, None, f"no valid cases ({len(skipped)} invalid records)")
    else:
        path = builtin_cases_path()
        cases = builtin_cases()
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise CaseFormatError(str(path), None, None, f"cannot read: {exc.strerror or exc}") from None
    if config.limit:
        cases = cases[: config.limit]
    return cases, digest, skipped


def full_information(case: Case) -> Case:
    return case.model_copy(update={"initial_info": f"{case.initial_info} Further facts: {' '.join(case.facts)}"})


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


# -- the run directory ------------------------------------------------------------------------------------

EPISODES = "episodes.jsonl"
DAMAGED = "episodes.damaged.jsonl"
RETRIED = "episodes.retried.jsonl"
LOCK = ".lock"
REPORTS = ("summary.json", "report.md")

# What every episode line must hold to be used; anything else is a damaged line (moved aside, re-run).
_REQUIRED: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "mode": (str,),
    "case_id": (str,),
    "turns": (list,),
    "correct": (bool,),
    "error": (str, type(None)),
    "questions_asked": (int,),
}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mediq-env", "gymnasium", "numpy", "bm25s", "torch", "transformers", "vllm", "httpx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, cwd=Path(__file__).parent
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, check=False, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        return None
    return f"{rev}{'+dirty' if dirty else ''}" if rev else None


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _oserror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def parse_episode_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """One line of ``episodes.jsonl`` as (record, None), or (None, why it cannot be used)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start})"
    try:
        rec = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and over-long integers
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return None, f"invalid JSON ({detail})"
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"
    if not isinstance(rec, dict):
        return None, f"expected a JSON object, got {type(rec).__name__}"
    for name, types in _REQUIRED.items():
        if name not in rec:
            return None, f"missing field {name!r}"
        if not isinstance(rec[name], types) or (types == (int,) and isinstance(rec[name], bool)):
            return None, f"field {name!r} has the wrong type ({type(rec[name]).__name__})"
    if rec["mode"] not in MODES or not rec["key"].startswith(f"{rec['mode']}/"):
        return None, f"unknown mode or key ({rec['mode']!r}, {rec['key']!r})"
    attempts = rec.get("attempts", 1)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        return None, f"field 'attempts' must be a positive integer, got {attempts!r}"
    return rec, None


@dataclass
class Damaged:
    line: int
    reason: str
    raw: bytes


@dataclass
class RunState:
    """What a run directory holds, read without writing anything."""

    manifest: dict[str, Any] | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # the last valid record of each key
    raw: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # its line number and bytes
    superseded: list[bytes] = field(default_factory=list)  # earlier records of a key that appears again
    damaged: list[Damaged] = field(default_factory=list)
    previous_attempts: dict[str, int] = field(default_factory=dict)  # from episodes.retried.jsonl

    @property
    def needs_repair(self) -> bool:
        return bool(self.damaged or self.superseded)


@dataclass
class Plan:
    """Which episodes this invocation runs, and how many attempts each has had before."""

    todo: list[Spec]
    attempts: dict[str, int]  # key -> the attempt number this run makes
    retry: set[str]  # keys of failed records run again
    gave_up: list[str]  # failed keys that reached max_attempts


def plan_episodes(specs: Sequence[Spec], state: RunState, max_attempts: int) -> Plan:
    todo, attempts, retry, gave_up = [], {}, set(), []
    for s in specs:
        rec = state.records.get(s.key)
        before = max(rec.get("attempts", 1) if rec else 0, state.previous_attempts.get(s.key, 0))
        if rec is None:
            todo.append(s)
            attempts[s.key] = before + 1
        elif rec.get("error"):
            if before < max_attempts:
                todo.append(s)
                attempts[s.key] = before + 1
                retry.add(s.key)
            else:
                gave_up.append(s.key)
    return Plan(todo, attempts, retry, gave_up)


@dataclass
class RunDir:
    path: Path
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def episodes_path(self) -> Path:
        return self.path / EPISODES

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    # reading (never writes) ---------------------------------------------------------------------------

    def read(self) -> RunState:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is not a directory; use another --out")
        state = RunState(manifest=self._read_manifest())
        self._read_episodes(state)
        if state.manifest is None and state.records:
            raise RunDirError(
                f"{self.manifest_path} is missing but {self.episodes_path} holds {len(state.records)} episodes: "
                "without the manifest their config is unknown; restore it, or use another --out"
            )
        state.previous_attempts = self._read_retried()
        self.done = dict(state.records)
        return state

    def _damaged_manifest(self, why: str) -> RunDirError:
        return RunDirError(
            f"{self.manifest_path} is damaged ({why}); it records the config these episodes were run with, so "
            "the run cannot be resumed or summarised safely: restore the file, or use another --out"
        )

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.manifest_path
        try:
            text = path.read_bytes().decode("utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None  # a new run (if the directory cannot be created either, that is said when it is)
        except UnicodeDecodeError as exc:
            raise self._damaged_manifest(f"not UTF-8 text at byte {exc.start}") from None
        except OSError as exc:
            raise RunDirError(f"cannot read {path}: {_oserror(exc)}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._damaged_manifest(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:
            raise self._damaged_manifest(f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise self._damaged_manifest(f"expected a JSON object, got {type(data).__name__}")
        if not isinstance(data.get("config"), dict):
            raise self._damaged_manifest("field 'config' is missing or not an object")
        if not isinstance(data.get("cases_sha256"), str):
            raise self._damaged_manifest("field 'cases_sha256' is missing or not a string")
        try:
            BenchConfig.from_dict(data["config"])
        except (MediQError, TypeError, ValueError) as exc:
            raise self._damaged_manifest(f"config: {exc}") from None
        return data

    def _read_episodes(self, state: RunState) -> None:
        try:
            raw = self.episodes_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise RunDirError(f"cannot read {self.episodes_path}: {_oserror(exc)}") from None
        chunks = raw.split(b"\n")
        for number, line in enumerate(chunks, start=1):
            if not line.strip():
                continue
            if number == len(chunks):
                # No newline after it: a write cut short by a crash, even if the text happens to parse.
                state.damaged.append(Damaged(number, "half-written last line (the run was stopped mid-write)", line))
                continue
            rec, why = parse_episode_line(line)
            if rec is None:
                state.damaged.append(Damaged(number, why or "unreadable", line))
                continue
            key = rec["key"]
            if key in state.raw:
                state.superseded.append(state.raw[key][1])
            state.records[key] = rec
            state.raw[key] = (number, line)

    def _read_retried(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            raw = (self.path / RETRIED).read_bytes()
        except OSError:
            return out  # history only raises the attempt count; without it a failed episode is simply retried
        for line in raw.split(b"\n"):
            rec, _ = parse_episode_line(line) if line.strip() else (None, None)
            if rec is not None:
                out[rec["key"]] = max(out.get(rec["key"], 0), rec.get("attempts", 1))
        return out

    def reports_fresh(self) -> bool:
        """Whether summary.json and report.md exist and are newer than every episode and the manifest."""
        try:
            report_times = [(self.path / n).stat().st_mtime_ns for n in REPORTS]
            inputs = [p.stat().st_mtime_ns for p in (self.manifest_path, self.episodes_path) if p.exists()]
        except OSError:
            return False
        return not inputs or min(report_times) >= max(inputs)

    def check(self, state: RunState, config: BenchConfig, cases_sha256: str) -> None:
        """Refuse a directory that holds a run of another config (cases compared by content, not path)."""
        if state.manifest is None:
            return
        old = state.manifest
        old_config = BenchConfig.from_dict(old["config"]).result_fields()
        new_config = config.result_fields()
        # Modes may be added to a run; the cases are compared by checksum below, not by their path's spelling.
        ignore = {"modes", "cases"}
        diff = {k: (old_config.get(k), v) for k, v in new_config.items() if old_config.get(k) != v and k not in ignore}
        if diff:
            pairs = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(f"{self.path} holds a run with a different config ({pairs}); use another --out")
        if old["cases_sha256"] != cases_sha256:
            was = old["config"].get("cases") or "the built-in cases"
            now = config.cases or "the built-in cases"
            raise ConfigError(
                f"{self.path}: the cases differ from this run's (it used {was}, sha256 {old['cases_sha256'][:12]}...; "
                f"{now} has sha256 {cases_sha256[:12]}...); use another --out"
            )

    # writing (only under the lock) ---------------------------------------------------------------------

    def _in_use(self) -> RunDirError:
        return RunDirError(
            f"{self.path} is in use by another run (it holds {self.path / LOCK}); wait for it to finish, "
            "or use another --out"
        )

    def check_free(self) -> None:
        """Refuse at once, before any model is loaded, when another run holds the directory."""
        from filelock import FileLock, Timeout

        if not (self.path / LOCK).exists():
            return
        lock = FileLock(self.path / LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._in_use() from None
        except OSError:
            return  # not writable: said precisely when the run tries to write
        lock.release()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (non-blocking): a second run on the same directory is refused at once
        rather than running every episode a second time beside the first."""
        from filelock import FileLock, Timeout

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create the run directory {self.path}: {_oserror(exc)}; use another --out") from None
        lock = FileLock(self.path / LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._in_use() from None
        except OSError as exc:
            raise RunDirError(f"cannot write in the run directory {self.path}: {_oserror(exc)}; use another --out") from None
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def _writing(self, what: Path) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise RunDirError(
                f"cannot write {what}: {_oserror(exc)}. Episodes already saved are kept; free space or fix "
                "permissions and rerun the same command to resume, or use another --out"
            ) from None

    def _replace(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with self._writing(path):
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)

    def write_manifest(self, config: BenchConfig, cases_sha256: str, n_cases: int, skipped: Sequence[str]) -> None:
        manifest = {
            "config": asdict(config),
            "cases_sha256": cases_sha256,
            "n_cases": n_cases,
            "skipped_records": list(skipped),
            "versions": _versions(),
            "git": _git_revision(),
            "command": sys.argv,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._replace(self.manifest_path, (json.dumps(manifest, indent=2, default=str) + "\n").encode("utf-8"))

    def repair(self, state: RunState, retry: set[str]) -> None:
        """Move damaged lines to episodes.damaged.jsonl, and earlier or to-be-retried records to
        episodes.retried.jsonl, so that episodes.jsonl holds exactly one usable record per episode (other
        tools read it line by line). Side files are written before the main file is replaced: a crash in
        between duplicates a line there, never loses one."""
        moved = [line for key, (_, line) in state.raw.items() if key in retry]
        if not (state.damaged or state.superseded or moved):
            return
        if state.damaged:
            side = self.path / DAMAGED
            with self._writing(side), side.open("a", encoding="utf-8") as fh:
                for d in state.damaged:
                    text = d.raw.decode("utf-8", errors="backslashreplace")
                    fh.write(json.dumps({"line": d.line, "reason": d.reason, "text": text}, ensure_ascii=False) + "\n")
            shown = "; ".join(f"line {d.line}: {d.reason}" for d in state.damaged[:3])
            more = f"; +{len(state.damaged) - 3} more" if len(state.damaged) > 3 else ""
            _note(f"{self.episodes_path}: {len(state.damaged)} damaged line(s) moved to {side} ({shown}{more}); "
                  "every valid record is kept, missing episodes run again")
        if state.superseded or moved:
            side = self.path / RETRIED
            with self._writing(side), side.open("ab") as fh:
                for line in [*state.superseded, *moved]:
                    fh.write(line + b"\n")
        keep = sorted((n, line) for key, (n, line) in state.raw.items() if key not in retry)
        self._replace(self.episodes_path, b"".join(line + b"\n" for _, line in keep))
        for key in retry:
            state.records.pop(key, None)
            state.raw.pop(key, None)
        state.damaged, state.superseded = [], []
        self.done = dict(state.records)

    def append(self, record: dict[str, Any]) -> None:
        with self._writing(self.episodes_path), self.episodes_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done[record["key"]] = record


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


# -- running ------------------------------------------------------------------------------------------------


def _make_envs(config: BenchConfig, cases: list[Case], patient: Patient, max_questions: int, scorer: Any) -> Any:
    envs = BatchedEnv(
        min(config.batch_size, len(cases) * config.repeats),
        cases,
        patient=patient,
        max_questions=max_questions,
        shuffle_options=config.shuffle_options,
    )
    if scorer is None:
        return envs
    from mediq_env.wrappers import BatchedAttributeReward

    return BatchedAttributeReward(envs, scorer)


class _Watched:
    """The batched envs as the rollout sees them, reporting every turn to the progress bar and keeping the
    final info of each episode (for fields the episode record does not carry, like ``n_facts_known``)."""

    def __init__(self, envs: Any, on_turns: Any) -> None:
        self.inner = envs
        self.on_turns = on_turns
        self.slot: dict[int, tuple[str | None, int | None]] = {}
        self.final: dict[tuple[str | None, int | None], dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def active(self) -> list[int]:
        return list(self.inner.active)

    def reset_at(self, index: int, *, seed: int | None = None, case_id: str | None = None) -> tuple[str, dict[str, Any]]:
        self.slot[index] = (case_id, seed)
        return self.inner.reset_at(index, seed=seed, case_id=case_id)

    def abandon(self, index: int) -> None:
        self.inner.abandon(index)

    def step(self, actions: Sequence[Any]) -> list[Any]:
        active = list(self.inner.active)
        results = self.inner.step(actions)
        for i, r in zip(active, results, strict=True):
            if r.done:
                self.final[self.slot[i]] = r.info
        self.on_turns(len(active))
        return results


def _turn_budget(config: BenchConfig, mode: str) -> int:
    # Questions (and invalid actions) use up max_questions turns; one forced-answer turn follows.
    return (config.max_questions if mode == "interactive" else 0) + 1


def run_benchmark(
    config: BenchConfig,
    out: str | Path,
    *,
    agent: Any | None = None,
    patient: Patient | None = None,
    progress: bool | TextIO = True,
) -> dict[str, Any]:
    """Run (or resume) a benchmark into ``out`` and return its summary. ``agent``/``patient`` override the config's.

    ``progress``: show a progress bar (on stderr, or on the given text stream). Nothing is written before
    the agent, patient and scorer are built, so a typo in any of them leaves no run directory behind; a
    finished run is summarised without writing anything.
    """
    cases, digest, skipped = load_bench_cases(config)
    if skipped:
        _note(f"skipped {len(skipped)} invalid record(s) of {config.cases} (--skip-invalid); each is listed in "
              "the run's manifest.json and report.md")
    run = RunDir(Path(out))
    state = run.read()
    run.check(state, config, digest)
    specs = episode_specs(cases, config)
    plan = plan_episodes(specs, state, config.max_attempts)
    if plan.gave_up:
        _note(f"{len(plan.gave_up)} failed episode(s) not retried: each already failed {config.max_attempts} "
              "times (--max-attempts)")
    built: dict[str, Any] = {}
    if plan.todo:
        run.check_free()
        built = _build(config, agent, patient)  # before writing anything
    if not (plan.todo or state.needs_repair or not run.reports_fresh()):
        return _summarise(run, config, specs, state, skipped, write=False)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run.locked())
        except RunDirError as exc:
            if plan.todo:
                raise
            # Only a repair or a report refresh was due: a finished run stays readable on read-only media.
            _note(f"{exc}; summarising without writing")
            return _summarise(run, config, specs, state, skipped, write=False)
        # Read again under the lock: another run may have finished episodes since the first look.
        state = run.read()
        run.check(state, config, digest)
        plan = plan_episodes(specs, state, config.max_attempts)
        if plan.todo and not built:
            built = _build(config, agent, patient)
        run.write_manifest(config, digest, len(cases), skipped)
        run.repair(state, plan.retry)
        if plan.todo:
            done = len(specs) - len(plan.todo)
            if done or plan.retry:
                _note(f"resuming {run.path}: {done} of {len(specs)} episodes already done; running {len(plan.todo)}"
                      + (f", of which {len(plan.retry)} retry failed episodes" if plan.retry else ""))
            _execute(run, config, cases, plan, built, progress)
        return _summarise(run, config, specs, state, skipped, write=True)


def _build(config: BenchConfig, agent: Any | None, patient: Patient | None) -> dict[str, Any]:
    return {
        "agent": agent if agent is not None else build_agent(config),
        "patient": patient if patient is not None else build_patient(config),
        "scorer": build_scorer(config),
    }


def _execute(run: RunDir, config: BenchConfig, cases: list[Case], plan: Plan, built: dict[str, Any], progress: bool | TextIO) -> None:
    from agents.rollout import EpisodeSpec, rollout

    budgets = {s.key: _turn_budget(config, s.mode) for s in plan.todo}
    bar = _Progress(sum(budgets.values()), len(plan.todo), progress)
    try:
        for mode in config.modes:
            mode_specs = [s for s in plan.todo if s.mode == mode]
            if not mode_specs:
                continue
            mode_cases = [full_information(c) for c in cases] if mode == "full_information" else cases
            max_q = config.max_questions if mode == "interactive" else 0
            envs = _Watched(
                _make_envs(config, mode_cases, built["patient"], max_q, built["scorer"] if mode == "interactive" else None),
                bar.turns,
            )
            by_key = {s.key: s for s in mode_specs}
            episodes = [EpisodeSpec(s.case_id, s.seed, s.key) for s in mode_specs]
            for record in rollout(built["agent"], envs, episodes):  # type: ignore[arg-type]
                spec = by_key[record.key]
                row = {"mode": spec.mode, "repeat": spec.repeat, **record.to_dict(), "attempts": plan.attempts[spec.key]}
                final = envs.final.pop((spec.case_id, spec.seed), {})
                if row.get("n_facts_known") is None and final.get("n_facts_known") is not None:
                    row["n_facts_known"] = final["n_facts_known"]
                run.append(row)
                steps = sum(1 for t in row["turns"] if t.get("action_type") != "error")
                bar.finished(row, max(budgets[spec.key] - steps, 0))
    finally:
        bar.close()


class _Progress:
    """Moves on every agent turn (the unit of work), so the rate and the ETA are measured, not guessed
    from batches finishing together. The total is every episode's turn budget; an episode that answers
    early gives back its unused turns when it finishes."""

    def __init__(self, total_turns: int, episodes: int, enabled: bool | TextIO) -> None:
        from tqdm import tqdm

        stream = None if isinstance(enabled, bool) else enabled
        self.bar = tqdm(
            total=total_turns,
            disable=enabled is False,
            unit="turn",
            dynamic_ncols=True,
            smoothing=0,  # the average over the whole run: turn times vary too much for a moving average
            file=stream,
            mininterval=0 if stream is not None else 0.1,
        )
        self.episodes = episodes
        self.finished_episodes = 0
        self.correct = 0
        self.interactive = 0
        self.failed = 0
        self._postfix()

    def _postfix(self) -> None:
        parts = [f"episodes {self.finished_episodes}/{self.episodes}"]
        if self.interactive:
            parts.append(f"acc {self.correct / self.interactive:.1%} of {self.interactive}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)

    def turns(self, n: int) -> None:
        self.bar.update(n)

    def finished(self, row: dict[str, Any], unused_turns: int) -> None:
        self.finished_episodes += 1
        self.failed += bool(row.get("error"))
        if row["mode"] == "interactive":
            self.interactive += 1
            self.correct += bool(row.get("correct")) and not row.get("error")
        self._postfix()  # counts and bar move together in the same refresh
        if unused_turns:
            self.bar.update(unused_turns)
        elif not self.bar.disable and time.time() - self.bar.last_print_t >= self.bar.mininterval:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# -- summary --------------------------------------------------------------------------------------------------

NULL_NOTE = (
    "null = not defined for this run: a mean or interval over no values (e.g. fact coverage when every episode "
    "failed, calibration when the agent gave no confidences, a score that was never produced)."
)


def _short_error(error: str) -> str:
    line = error.strip().splitlines()[0] if error.strip() else "unknown error"
    return line if len(line) <= 160 else line[:157] + "..."


def _run_facts(config: BenchConfig, specs: Sequence[Spec], episodes: Sequence[dict[str, Any]], skipped: Sequence[str]) -> dict[str, Any]:
    failed = [e for e in episodes if e.get("error")]
    retried = [e for e in episodes if e.get("attempts", 1) > 1]
    inter = [e for e in episodes if e.get("mode") == "interactive" and e.get("option_order")]
    return {
        "failures": {
            "failed": len(failed),
            "episodes": len(episodes),
            "missing": len(specs) - len(episodes),
            "top_errors": [{"error": m, "count": c} for m, c in Counter(_short_error(e["error"]) for e in failed).most_common(5)],
        },
        "retries": {
            "max_attempts": config.max_attempts,
            "retried_episodes": len(retried),
            "extra_attempts": sum(e.get("attempts", 1) - 1 for e in retried),
            "recovered": sum(1 for e in retried if not e.get("error")),
            "gave_up": sum(1 for e in failed if e.get("attempts", 1) >= config.max_attempts),
        },
        "skipped_records": list(skipped),
        # Accuracy of guessing uniformly among each episode's options.
        "chance": float(np.mean([1 / len(e["option_order"]) for e in inter])) if inter else None,
        "notes": [NULL_NOTE],
    }


def _health_markdown(facts: dict[str, Any]) -> str:
    f, r = facts["failures"], facts["retries"]
    out = ["", "## Run health", ""]
    out.append(f"- Failed episodes: {f['failed']} of {f['episodes']} (each counts as incorrect).")
    for row in f["top_errors"]:
        out.append(f"  - {row['count']} × `{row['error']}`")
    out.append(f"- Retried episodes: {r['retried_episodes']} ({r['extra_attempts']} extra attempts, {r['recovered']} "
               f"recovered, {r['gave_up']} failed all {r['max_attempts']} attempts).")
    if facts["skipped_records"]:
        out += ["", f"## Skipped invalid records ({len(facts['skipped_records'])}, `--skip-invalid`)", ""]
        out += [f"- {s}" for s in facts["skipped_records"]]
    return "\n".join(out) + "\n"


def _merge(summary: dict[str, Any], facts: dict[str, Any]) -> None:
    notes = [*summary.get("notes", []), *facts["notes"]]  # keep any notes the report writer added
    summary.update(facts)
    summary["notes"] = notes


def _summarise(run: RunDir, config: BenchConfig, specs: Sequence[Spec], state: RunState, skipped: Sequence[str], *, write: bool) -> dict[str, Any]:
    from benchmarks.report import write_reports

    episodes = [run.done[s.key] for s in specs if s.key in run.done]
    facts = _run_facts(config, specs, episodes, skipped)
    if not write:
        # Summarising a finished run writes nothing in it (it may sit on read-only media): the reports
        # and plots are made in a scratch directory and thrown away.
        with tempfile.TemporaryDirectory() as tmp:
            summary = write_reports(Path(tmp), config, episodes)
        _merge(summary, facts)
        return summary
    with run._writing(run.path / "report.md"):
        summary = write_reports(run.path, config, episodes)
        _merge(summary, facts)
        with (run.path / "report.md").open("a", encoding="utf-8") as fh:
            fh.write(_health_markdown(facts))
    # Strict JSON: NaN is not JSON (json.loads in other languages rejects it); null plus a note instead.
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False, default=str) + "\n"
    run._replace(run.path / "summary.json", text.encode("utf-8"))
    return summary


def _pct(x: Any) -> str:
    return f"{x:.1%}" if _defined(x) else "n/a"


def _defined(x: Any) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)


def _ci(d: dict[str, Any] | None, pct: bool = True) -> str:
    """``mean [low, high]``, or ``n/a`` when the mean is undefined (None or NaN)."""
    if not d or not _defined(d.get("mean")):
        return "n/a"
    fmt = _pct if pct else (lambda x: f"{x:.2f}" if _defined(x) else "n/a")
    return f"{fmt(d['mean'])} [{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]"


def _number(x: Any) -> str:
    if isinstance(x, dict):
        return _ci(x, pct=False)
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def format_run_summary(summary: dict[str, Any], report: str | Path | None = None) -> str:
    """What a person needs after a run, in plain words: how it went, what failed, how to read the numbers."""
    m = summary["modes"]
    inter = m.get("interactive", {"episodes": 0, "failed": 0})
    cfg = summary["config"]
    f = summary.get("failures") or {"failed": sum(s["failed"] for s in m.values()), "episodes": sum(s["episodes"] for s in m.values()), "top_errors": []}
    lines = [f"agent: {cfg['agent']}   cases: {cfg['cases'] or 'built-in'}   episodes: {f['episodes']} ({f['failed']} failed)"]
    n, n_failed = inter["episodes"], inter["failed"]
    if n == 0 or n_failed == n:
        lines.append(f"accuracy: not measured: {'no' if n == 0 else 'every'} interactive episode {'ran' if n == 0 else 'failed'} "
                     f"({n_failed} of {n} failed); see the errors below")
    else:
        if n_failed:
            lines.append(f"WARNING: {n_failed} of {n} interactive episodes failed; they count as incorrect, so the "
                         "accuracy below understates the agent")
        acc = inter["accuracy"]["mean"]
        lines.append(f"accuracy: {_ci(inter['accuracy'])}   (95% bootstrap interval)")
        chance = summary.get("chance")
        if isinstance(chance, float) and _defined(acc) and acc < chance:
            lines.append(f"  below chance: answering at random would score {chance:.1%} (1 in {round(1 / chance)} options)")
        ml = inter["majority_letter"]
        if _defined(acc) and _defined(ml.get("accuracy")) and acc < ml["accuracy"]:
            lines.append(f"  below the majority-letter baseline: always answering {ml['letter']} would score {ml['accuracy']:.1%}")
        lines.append(f"questions asked: {_ci(inter['questions_asked'], pct=False)} per episode")
        lines.append(f"forced answers: {_pct(inter['forced_answer_rate'])} (episodes where the question budget ran out "
                     "and the agent had to answer)")
        lines.append(f"fact coverage: {_ci(inter['fact_coverage'])} (share of each case's hidden facts the patient revealed)")
        fpq = summary.get("facts_per_question", inter.get("facts_per_question"))
        if fpq is not None:
            lines.append(f"facts found per question: {_number(fpq)}")
        fb = summary.get("fallback", inter.get("fallback"))
        if isinstance(fb, dict) and _defined(fb.get("rate")):
            kinds = ", ".join(f"{k} {_pct(v) if isinstance(v, float) else v}" for k, v in (fb.get("by_kind") or {}).items())
            lines.append(f"fallbacks: {fb['rate']:.1%} of agent turns used a fallback" + (f" (by kind: {kinds})" if kinds else ""))
            if fb["rate"] > FALLBACK_WARN_RATE:
                lines.append(f"WARNING: more than {FALLBACK_WARN_RATE:.0%} of agent turns fell back to a default: the "
                             "numbers above describe the fallbacks as much as the model")
        ml = inter["majority_letter"]
        lines.append(f"majority-letter baseline: {_pct(ml['accuracy'])} (always {ml['letter']} as shown); "
                     f"in the file's own lettering {_pct(ml['file_accuracy'])} (always {ml['file_letter']})")
    for mode in ("no_interaction", "full_information"):
        s = m.get(mode)
        if s is None:
            continue
        name = mode.replace("_", " ")
        if s["episodes"] == 0 or s["failed"] == s["episodes"]:
            lines.append(f"{name}: accuracy not measured (every episode failed)")
        else:
            warn = f"   ({s['failed']} of {s['episodes']} failed, counted as incorrect)" if s["failed"] else ""
            lines.append(f"{name}: accuracy {_ci(s['accuracy'])}{warn}")
    if f["failed"]:
        lines.append(f"{f['failed']} of {f['episodes']} episodes failed; most common errors:")
        lines += [f"  {row['count']} × {row['error']}" for row in f.get("top_errors", [])]
    r = summary.get("retries")
    if r and (r["retried_episodes"] or r["gave_up"]):
        lines.append(f"retries: {r['retried_episodes']} episode(s) retried, {r['recovered']} recovered; {r['gave_up']} "
                     f"failed all {r['max_attempts']} attempts and will not be retried")
    if summary.get("skipped_records"):
        lines.append(f"skipped {len(summary['skipped_records'])} invalid case record(s) (--skip-invalid; listed in the report)")
    if report is not None:
        lines.append(f"report: {report}")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    p.add_argument("--agent", default=d.agent, help="answer-now | checklist | random[:seed] | llm:<backend> | <backend> "
                   "(backends: smollm2, hf:<id-or-path>, vllm:<id>, openai:<model>)")
    p.add_argument("--strategy", default=d.strategy, choices=["implicit", "binary", "numeric", "likert"])
    p.add_argument("--threshold", type=float, help="confidence needed to answer (numeric: 0-1, likert: 1-5)")
    p.add_argument("--rationale", action="store_true", help="ask for a rationale before each decision")
    p.add_argument("--self-consistency", type=int, default=d.self_consistency, metavar="K")
    p.add_argument("--question-model", help="a separate backend for question generation (ALFA swaps only this)")
    p.add_argument("--patient", default=d.patient, help=" | ".join(PATIENTS))
    p.add_argument("--cases", help="cases file in any MediQ variant (default: the built-in cases)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="run the valid records of --cases and list the invalid ones (default: refuse the file)")
    p.add_argument("--initial-info", default=d.initial_info, choices=["auto", "given", "derived"])
    p.add_argument("--max-questions", type=int, default=d.max_questions)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-shuffle", action="store_true", help="keep each file's option order (default: shuffle)")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--scorer", default=d.scorer, help="none, or parts joined by '+': env (model-free proxies) | env:all "
                   "(also proxy_relevance, loads MiniLM) | judge:<backend> | rm:<reward model dir>")
    p.add_argument("--modes", default=",".join(d.modes), help=f"comma-separated, from {','.join(MODES)}")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-attempts", type=int, default=d.max_attempts,
                   help="attempts per episode: a rerun retries failed episodes until they have had this many")
    p.add_argument("--cache-dir", help="response cache directory for model backends (reruns are free)")
    p.add_argument("--out", help="run directory (default: runs/<agent>-<cases>-q<max questions>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars at all (model loading included)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        agent=args.agent,
        strategy=args.strategy,
        threshold=args.threshold,
        rationale=args.rationale,
        self_consistency=args.self_consistency,
        question_model=args.question_model,
        patient=args.patient,
        cases=args.cases,
        initial_info=args.initial_info,
        max_questions=args.max_questions,
        repeats=args.repeats,
        seed=args.seed,
        shuffle_options=not args.no_shuffle,
        limit=args.limit,
        scorer=args.scorer,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        skip_invalid=args.skip_invalid,
        max_attempts=args.max_attempts,
    )


def default_out(config: BenchConfig) -> Path:
    cases = Path(config.cases).stem if config.cases else "builtin"
    agent = config.agent.replace(":", "-").replace("/", "_")
    return Path("runs") / f"{agent}-{cases}-q{config.max_questions}"


def quiet_libraries() -> None:
    """``--no-progress`` means no bars at all: transformers and huggingface_hub draw their own while
    loading weights, and log advisory warnings. The variables cover libraries imported later (they read
    them at import); the calls cover those already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def main_from_args(args: argparse.Namespace) -> int:
    """Run, print the summary; exit status 1 when any episode failed (the numbers are then not the agent's alone)."""
    if args.no_progress:
        quiet_libraries()
    config = config_from_args(args)
    out = Path(args.out) if args.out else default_out(config)
    summary = run_benchmark(config, out, progress=not args.no_progress)
    print(format_run_summary(summary, report=out / "report.md"))
    print(f"run directory: {out}")
    # Imported here: running a benchmark never needs the viewer's code.
    from benchmarks.view import write_viewer

    print(f"viewer: {write_viewer(out)}")
    return 1 if summary["failures"]["failed"] else 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return main_from_args(args)
    except MediQError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished episodes are saved; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
