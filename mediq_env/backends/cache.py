"""An on-disk response cache in front of any backend, safe for many threads and processes at once.

Why: benchmark and training runs repeat the same requests (patient answers, judge calls) across reruns and
ablations; a cache makes reruns free and bit-identical. Design choices:

* **Key** = sha256 of (model_id, messages, every sampling parameter including the seed, and the
  *occurrence index* of the request among identical requests in the same batch). The occurrence index is
  what keeps ``k`` identical sampled requests in one batch as ``k`` distinct samples instead of one answer
  repeated ``k`` times.
* **Everything is cached**, sampled requests with ``seed=None`` included: a rerun reproduces the first
  run's samples. Use a different seed (or no cache) to draw new ones.
* **sqlite3 in WAL mode** with a busy timeout: readers never block, writers queue instead of failing, and
  it is in the standard library. One connection per thread (sqlite connections are not shareable).
* **First writer wins.** If two workers miss the same key at once, both ask the model; the first stored
  answer is kept and *both* return it, so the cache and every caller agree.
* Values are JSON (never pickle), so a cache file is inspectable with the ``sqlite3`` shell and safe to
  open from an untrusted source.
* **No stored emptiness from backends that treat it as an error.** When ``inner`` declares
  ``empty_text_is_error = True`` (the OpenAI-compatible backend), a cached blank answer is a miss and is
  replaced: caches written before that backend raised on ``content: null`` would otherwise replay the
  silent fallback on every rerun.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mediq_env.backends.base import Backend, Chat, Generation, SamplingParams
from mediq_env.errors import BackendError

__all__ = ["CACHE_FORMAT", "CachedBackend", "canonical_request", "occurrence_indices", "request_key"]

#: Part of every key: bump it when the key payload or the stored value format changes.
CACHE_FORMAT = "mediq-cache-v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""
# SQLite builds before 3.32 allow at most 999 bound variables per statement.
_MAX_VARS = 900


def _chat_json(chat: Chat) -> str:
    return json.dumps([dict(m) for m in chat], sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def occurrence_indices(chats: Sequence[Chat]) -> list[int]:
    """For each chat, how many identical chats came before it in ``chats`` (0 for the first of a kind).

    Backends with per-request seeds (vLLM, OpenAI-compatible servers) add this to the seed so that ``k``
    identical sampled requests in one batch give ``k`` different samples, each reproducible on its own.
    """
    seen: dict[str, int] = {}
    out: list[int] = []
    for chat in chats:
        k = _chat_json(chat)
        out.append(seen.get(k, 0))
        seen[k] = out[-1] + 1
    return out


def canonical_request(model_id: str, chat: Chat, params: SamplingParams, occurrence: int) -> str:
    """The exact JSON text that is hashed into a key (and stored next to the response, for inspection)."""
    payload = {
        "format": CACHE_FORMAT,
        "model_id": model_id,
        "messages": [dict(m) for m in chat],
        "params": params.to_dict(),
        "occurrence": occurrence,
    }
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_key(model_id: str, chat: Chat, params: SamplingParams, occurrence: int = 0) -> str:
    """sha256 hex digest of :func:`canonical_request`."""
    return hashlib.sha256(canonical_request(model_id, chat, params, occurrence).encode("utf-8")).hexdigest()


def _generation_from_json(text: str) -> Generation:
    data: Any = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ValueError("not a Generation record")
    return Generation(
        text=data["text"],
        finish_reason=data.get("finish_reason"),
        token_logprobs=data.get("token_logprobs"),
        tokens=data.get("tokens"),
        usage=dict(data.get("usage") or {}),
    )


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch the file to WAL (persistent: once per file). Processes that open a new cache at the same moment
    race for the exclusive lock this needs, and SQLite may answer "database is locked" at once instead of
    waiting on the busy timeout, so the loser retries until the winner has switched it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class CachedBackend:
    """Wraps ``inner`` with a sqlite response cache at ``path``; only misses reach ``inner``, in one call.

    ``hits`` and ``misses`` count requests (not calls) served from the cache and sent to ``inner``.
    ``timeout`` is sqlite's busy timeout in seconds: how long a writer waits for another one to finish.
    """

    def __init__(self, inner: Backend, path: str | Path, *, timeout: float = 60.0) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a typo'd --cache-dir, a read-only disk: one line, not a traceback
            raise BackendError(f"cannot create the response cache directory {self.path.parent}: {err.strerror or err}") from None
        self.timeout = timeout
        self.hits = 0
        self.misses = 0
        self._blank_is_miss = bool(getattr(inner, "empty_text_is_error", False))
        self._counter_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._connect()  # create the schema now, so a bad path fails at construction

    def __repr__(self) -> str:
        return (
            f"CachedBackend({self.inner!r}, path={str(self.path)!r}, hits={self.hits}, misses={self.misses})"
        )

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a write batch is one transaction.
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=True
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            _set_wal(conn, self.timeout)
            # NORMAL is durable across application crashes in WAL mode; only an OS crash can lose the last
            # commits, which for a cache just means recomputing them.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
        except sqlite3.Error as err:
            raise BackendError(f"cannot open response cache {self.path}: {err}") from err
        self._local.conn = conn
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this object opened (from any thread)."""
        with self._connections_lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            # A connection made in another thread can only be closed there; it is freed with the thread.
            with contextlib.suppress(sqlite3.ProgrammingError):
                conn.close()
        self._local = threading.local()

    def __enter__(self) -> CachedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def _lookup(self, keys: Sequence[str]) -> dict[str, Generation]:
        conn = self._connect()
        found: dict[str, Generation] = {}
        for start in range(0, len(keys), _MAX_VARS):
            chunk = list(keys[start : start + _MAX_VARS])
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk
            ).fetchall()
            for key, response in rows:
                try:
                    found[key] = _generation_from_json(response)
                except (ValueError, TypeError) as err:
                    raise BackendError(
                        f"response cache {self.path} holds a corrupt entry {key[:12]}…: {err}; delete the file"
                    ) from err
        return found

    def _store(self, rows: list[tuple[str, str, str, str, float]]) -> None:
        conn = self._connect()
        try:
            # IMMEDIATE takes the write lock up front, so the busy timeout applies here and not as a
            # deadlock-prone lock upgrade halfway through the transaction.
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR IGNORE INTO responses (key, model_id, request, response, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise BackendError(f"cannot write response cache {self.path}: {err}") from err

    def _delete(self, keys: Sequence[str]) -> None:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for start in range(0, len(keys), _MAX_VARS):
                chunk = list(keys[start : start + _MAX_VARS])
                conn.execute(f"DELETE FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise BackendError(f"cannot write response cache {self.path}: {err}") from err

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        occurrences = occurrence_indices(chats)
        requests = [
            canonical_request(self.model_id, c, params, k) for c, k in zip(chats, occurrences, strict=True)
        ]
        keys = [hashlib.sha256(r.encode("utf-8")).hexdigest() for r in requests]
        found = self._lookup(keys)
        if self._blank_is_miss:
            stale = sorted({key for key, g in found.items() if not g.text.strip()})
            if stale:
                self._delete(stale)  # so the fresh answer is stored instead of ignored as a duplicate
                for key in stale:
                    del found[key]
        missing = [i for i, key in enumerate(keys) if key not in found]
        with self._counter_lock:
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
        if missing:
            fresh = self.inner.generate([chats[i] for i in missing], params)
            if len(fresh) != len(missing):
                raise BackendError(
                    f"{self.inner.model_id}: backend returned {len(fresh)} generations for {len(missing)} chats"
                )
            now = time.time()
            self._store(
                [
                    (keys[i], self.model_id, requests[i], json.dumps(asdict(g), ensure_ascii=False), now)
                    for i, g in zip(missing, fresh, strict=True)
                ]
            )
            # Read back: if another worker stored one of these keys first, its answer is the cached truth.
            found.update(self._lookup([keys[i] for i in missing]))
        return [found[key] for key in keys]
