"""The run directory of a benchmark run: read without writing, damaged lines repaired, one writer at a time.

See :mod:`benchmarks.run` for what the directory holds. Reading never writes, so a finished run on read-only
media can be summarised; every write goes through :meth:`RunDir._writing`, which turns a full or read-only disk
into one :class:`RunDirError` that says what to do; writes happen only under the directory's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.config import MODES, BenchConfig, Spec, is_a
from mediq_env.case import LETTERS
from mediq_env.errors import ConfigError, MediQError

__all__ = [
    "DAMAGED",
    "EPISODES",
    "LOCK",
    "REPORTS",
    "RETRIED",
    "Damaged",
    "Plan",
    "RunDir",
    "RunDirError",
    "RunState",
    "note",
    "parse_episode_line",
    "plan_episodes",
]


class RunDirError(ConfigError):
    """The run directory cannot be used as asked: its manifest is damaged, another run holds it, or it
    cannot be written (read-only, full). The message names the file and says what to do."""


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
_NONE = type(None)
# Fields the summary, report and comparison read when present: a line whose value has another type (a
# hand edit, another tool's output) is damaged, not a traceback in the middle of summarising.
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "repeat": (int,),
    "answer": (str, _NONE),
    "correct_answer": (str, _NONE),
    "confidence": (int, float, _NONE),
    "forced": (bool,),
    "truncated": (bool,),
    "n_facts_revealed": (int,),
    "n_facts": (int,),
    "n_facts_known": (int, _NONE),
    "total_reward": (int, float),
    "reward_components": (dict,),
    "option_order": (list, _NONE),
    "seconds": (int, float),
}
_TURN: dict[str, tuple[type, ...]] = {
    "action_type": (str,),
    "reply": (str, _NONE),
    "revealed": (list,),
    "new_facts": (list,),
    "agent": (dict, _NONE),
    "scores": (dict, _NONE),
    "reward_components": (dict,),
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


def note(message: str) -> None:
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
        if not is_a(rec[name], types):
            return None, f"field {name!r} has the wrong type ({type(rec[name]).__name__})"
    if rec["mode"] not in MODES or not rec["key"].startswith(f"{rec['mode']}/"):
        return None, f"unknown mode or key ({rec['mode']!r}, {rec['key']!r})"
    for name, types in _OPTIONAL.items():
        if name in rec and not is_a(rec[name], types):
            return None, f"field {name!r} has the wrong type ({type(rec[name]).__name__})"
    for name in ("questions_asked", "n_facts", "n_facts_revealed", "n_facts_known"):
        if (rec.get(name) or 0) < 0:
            return None, f"field {name!r} is negative ({rec[name]})"
    order = rec.get("option_order") or []
    if not all(isinstance(x, str) for x in order):
        return None, "field 'option_order' must be a list of letters"
    shown = rec.get("correct_answer")
    if order and shown is not None and shown not in LETTERS[: len(order)]:
        return None, f"field 'correct_answer' {shown!r:.20} is not one of the {len(order)} option letters"
    for t, turn in enumerate(rec["turns"]):
        if not isinstance(turn, dict):
            return None, f"turns[{t}] is not a JSON object ({type(turn).__name__})"
        for name, types in _TURN.items():
            if name in turn and not is_a(turn[name], types):
                return None, f"field 'turns[{t}].{name}' has the wrong type ({type(turn[name]).__name__})"
        scores = turn.get("scores") or {}
        if not all(is_a(v, (int, float, _NONE)) for v in scores.values()):
            return None, f"field 'turns[{t}].scores' must map names to numbers"
        kinds = (turn.get("agent") or {}).get("fallback_kinds")
        if kinds is not None and not isinstance(kinds, list):
            return None, f"field 'turns[{t}].agent.fallback_kinds' must be a list"
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
        if state.manifest is None:
            self._refuse_foreign_files()
        state.previous_attempts = self._read_retried()
        self.done = dict(state.records)
        return state

    def _refuse_foreign_files(self) -> None:
        """A new run goes in a new or empty directory: `--out .` or `--out ~/notes` would otherwise write
        report.md, summary.json and plots/ over whatever files of the same names are there."""
        try:
            names = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        except OSError as exc:
            raise RunDirError(f"cannot read the run directory {self.path}: {_oserror(exc)}") from None
        # Hidden files (the lock, .DS_Store) are never overwritten; manifest.json.tmp is a run's own write cut short.
        foreign = [n for n in names if not n.startswith(".") and n != self.manifest_path.name + ".tmp"]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise RunDirError(
                f"{self.path} is not a run directory (no manifest.json) but holds other files ({shown}); a run "
                "would write its files among them: use a new or empty directory as --out"
            )

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
        except (ValueError, RecursionError) as exc:  # over-long integers (Python's hint after ';' is not for users)
            raise self._damaged_manifest(f"invalid JSON: {str(exc).split(';')[0]}") from None
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

    def check(self, state: RunState, config: BenchConfig, cases_sha256: str, patient_model: str | None = None) -> None:
        """Refuse a directory that holds a run of another config (cases compared by content, not path) or of
        another patient model (``patient_model``: :func:`mediq_env.patient.patient_model_id`)."""
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
        old_model = old.get("patient_model")
        if patient_model != old_model and state.records:
            # The same config with a refitted patient gives other replies: resuming, or summarising into a table
            # of this patient's runs (benchmarks.heldout re-reads finished runs), would mix two patients'
            # episodes. A manifest with no id was written before ids were recorded, or by a run given a patient
            # object that has none: nothing says which model its episodes met.
            was = (f"patient model {old_model}" if old_model
                   else "no recorded patient model (written before ids were recorded, or given a patient object without one)")
            raise ConfigError(
                f"{self.path} holds episodes run with {was}; this run's patient {config.patient!r} is model "
                f"{patient_model or 'none'}, so its replies may differ; use another run directory (--out of mediq bench, "
                "--runs-dir of benchmarks.heldout)"
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

    def write_manifest(self, config: BenchConfig, cases_sha256: str, n_cases: int, skipped: Sequence[str],
                       patient_model: str | None = None) -> None:
        manifest = {
            "config": asdict(config),
            "cases_sha256": cases_sha256,
            "patient_model": patient_model,
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
            note(f"{self.episodes_path}: {len(state.damaged)} damaged line(s) moved to {side} ({shown}{more}); "
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
