"""One self-contained HTML file to read benchmark runs: ``mediq view RUN... [--out FILE.html] [--serve]``.

The file holds everything it shows — data, script, styles and plots (PNG as base64) — and loads nothing
from the network, so it can be mailed, archived next to a run, or opened from disk years later. It shows

* a leaderboard of the runs (accuracy with its interval, the no-interaction, full-information and
  majority-letter references, questions asked, new facts per question, fact coverage, fallback rate);
* an accuracy-vs-questions chart of every run (inline SVG) and each run's own plots;
* every episode as a chat: the doctor's questions, the patient's replies with the facts they revealed,
  the key facts never found (built-in cases carry ``key_facts``), the answer against the correct one,
  reward components and attribute scores per turn, and the turns an agent's fallback decided;
* filters (correct / wrong / forced / failed / fallback, mode, case id, specialty), full-text search, and
  the same case from a second run side by side.

Large runs stay responsive: each run's episodes are embedded as a separate JSON block that the page parses
only when that run is first shown, and the episode list is paginated, so a 10,000-episode run draws one
page, not 10,000 chats (``python -m benchmarks.view --measure`` times it in headless Chromium).

The case texts are not in ``episodes.jsonl``: they are read again from the manifest's cases file (or the
built-in cases) and used only when the file's checksum still matches the run's; otherwise the chats are
shown without them and the page says why.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import http.server
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_html", "load_view_run", "measure_load", "screenshot", "write_html", "write_viewer"]

ASSETS = Path(__file__).resolve().parent / "viewer"
VIEWER_FILE = "viewer.html"
# Model outputs can be long (a rationale per turn); the viewer shows the start of each, the run keeps all.
MAX_RAW_CHARS = 2000
_AGENT_KEYS = ("decision", "intermediate_answer", "confidence", "fallback", "fallback_kinds", "fallback_detail", "raw")


# -- reading a run ----------------------------------------------------------------------------------------


def _finite(x: Any) -> Any:
    """NaN and infinities become None: they are not JSON, and the page shows None as "unscored"."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def action_text(action: Any) -> str:
    """A doctor action as one line of text: the question, ``ANSWER: C``, or the raw action."""
    if isinstance(action, dict):
        if "question" in action:
            return str(action["question"])
        if "answer" in action:
            return f"ANSWER: {action['answer']}"
        return json.dumps(action, ensure_ascii=False)
    return "" if action is None else str(action)


def _compact_turn(turn: dict[str, Any]) -> dict[str, Any]:
    agent = turn.get("agent") or {}
    kept = {k: agent[k] for k in _AGENT_KEYS if agent.get(k) not in (None, [], "")}
    if isinstance(kept.get("raw"), str) and len(kept["raw"]) > MAX_RAW_CHARS:
        kept["raw"] = kept["raw"][:MAX_RAW_CHARS] + " …"
    if "traceback" in agent:
        kept["traceback"] = str(agent["traceback"])[-MAX_RAW_CHARS:]
    out = {
        "action": action_text(turn.get("action")),
        "action_type": turn.get("action_type"),
        "reply": turn.get("reply"),
        "revealed": turn.get("revealed") or [],
        "new_facts": turn.get("new_facts") or [],
        "reward": turn.get("reward"),
        "reward_components": turn.get("reward_components") or {},
        "invalid_action": turn.get("invalid_action"),
        "agent": kept,
        "scores": turn.get("scores") or {},
    }
    return {k: v for k, v in out.items() if v not in (None, {}, [])}


_EPISODE_KEYS = (
    "key", "mode", "repeat", "case_id", "seed", "answer", "correct", "correct_answer", "confidence", "forced",
    "truncated", "questions_asked", "n_facts_revealed", "n_facts", "n_facts_known", "total_reward",
    "reward_components", "option_order", "error", "seconds", "attempts",
)


def compact_episode(e: dict[str, Any]) -> dict[str, Any]:
    """The fields of an episode record the page shows (agent raw outputs cut to ``MAX_RAW_CHARS``)."""
    out = {k: e[k] for k in _EPISODE_KEYS if e.get(k) is not None}
    out["turns"] = [_compact_turn(t) for t in e.get("turns") or []]
    return _finite(out)


def _case_dict(case: Any) -> dict[str, Any]:
    return {
        "initial_info": case.initial_info,
        "question": case.question,
        "options": dict(case.options),
        "answer": case.answer,
        "facts": list(case.facts),
        "key_facts": list(case.key_facts),
        "known_facts": list(case.known_facts),
        "specialty": case.specialty,
    }


def load_cases_for(manifest: dict[str, Any], cases_override: str | Path | None = None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The run's cases by id, and a note when they could not be used (``({}, why)``).

    The cases are read the way the run read them (same file, ``initial_info`` mode and ``limit``), and only
    trusted when the file's sha256 equals the manifest's: fact indices in the episodes point into that
    exact file, so a changed file would highlight the wrong facts.
    """
    from benchmarks.run import BenchConfig, load_bench_cases
    from mediq_env.errors import MediQError

    cfg = dict(manifest.get("config") or {})
    if cases_override is not None:
        cfg["cases"] = str(cases_override)
    try:
        config = BenchConfig.from_dict(cfg)
        cases, digest, _ = load_bench_cases(config)
    except (MediQError, OSError, TypeError, ValueError) as exc:
        return {}, f"case texts unavailable ({cfg.get('cases') or 'built-in cases'}: {exc})"
    expected = manifest.get("cases_sha256")
    if expected and digest != expected:
        return {}, (f"case texts not shown: {cfg.get('cases') or 'the built-in cases'} changed since the run "
                    "(checksum differs), so its fact numbers may not match the episodes")
    return {c.id: _case_dict(c) for c in cases}, None


def _read_episodes(path: Path) -> list[dict[str, Any]]:
    episodes = []
    if path.exists():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of a crashed run; `mediq bench` moves such lines aside
                if isinstance(rec, dict):
                    episodes.append(rec)
    return episodes


def _summary(run: Path, manifest: dict[str, Any], episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's modes, or recomputed from the episodes when it is missing (a run still going)."""
    path = run / "summary.json"
    if path.exists():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("modes"), dict):
                return data
    from benchmarks.metrics import summarise

    cfg = manifest.get("config") or {}
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for e in episodes:
        by_mode.setdefault(str(e.get("mode", "interactive")), []).append(e)
    return {"config": cfg, "modes": {
        m: summarise(eps, max_questions=int(cfg.get("max_questions", 0)) if m == "interactive" else 0,
                     seed=int(cfg.get("seed", 0)), mode=m)
        for m, eps in by_mode.items()
    }}


_SUMMARY_KEYS = (
    "episodes", "failed", "accuracy", "questions_asked", "forced_answer_rate", "no_answer_rate", "fact_coverage",
    "facts_per_question", "accuracy_by_questions", "majority_letter", "fallback", "reward", "attributes",
)


def _plots(run: Path) -> dict[str, str]:
    out = {}
    for png in sorted((run / "plots").glob("*.png")):
        with contextlib.suppress(OSError):
            out[png.name] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    return out


def load_view_run(path: str | Path, *, name: str | None = None, cases: str | Path | None = None) -> dict[str, Any]:
    """Everything the page needs about one run: config, summary per mode, plots, cases and episodes."""
    from benchmarks.report import load_run

    run = Path(path)
    manifest, _ = load_run(run)  # raises ConfigError for a directory that is not a run
    episodes = _read_episodes(run / "episodes.jsonl")
    summary = _summary(run, manifest, episodes)
    case_map, note = load_cases_for(manifest, cases)
    cfg = manifest.get("config") or {}
    return {
        "name": name or run.name or str(run),
        "path": str(run),
        "config": cfg,
        "updated": manifest.get("updated"),
        "cases_sha256": manifest.get("cases_sha256"),
        "summary": {m: {k: s.get(k) for k in _SUMMARY_KEYS if k in s} for m, s in (summary.get("modes") or {}).items()},
        "chance": summary.get("chance"),
        "plots": _plots(run),
        "cases": case_map,
        "cases_note": note,
        "episodes": [compact_episode(e) for e in episodes],
    }


# -- the page ---------------------------------------------------------------------------------------------


def _json_block(obj: Any) -> str:
    """JSON safe inside <script>: ``<``, ``>`` and ``&`` escaped so no text can close the element."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Short run names (the folder name), made unique with the parent folder where two clash."""
    names = [p.resolve().name or str(p) for p in paths]
    for i, p in enumerate(paths):
        if names.count(names[i]) > 1:
            names[i] = f"{p.resolve().parent.name}/{p.resolve().name}"
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n} ({seen[n]})"
    return names


def build_html(runs: Sequence[dict[str, Any]], *, title: str = "mediq-env runs") -> str:
    """The page for runs loaded with :func:`load_view_run`.

    Case texts shared by several runs (same cases file) are embedded once; each run's episodes go in their
    own ``<script type="application/json">`` block, parsed by the page only when the run is first shown.
    """
    casesets: dict[str, dict[str, Any]] = {}
    meta_runs = []
    blocks = []
    for i, run in enumerate(runs):
        blob = json.dumps(run["cases"], sort_keys=True, ensure_ascii=False).encode("utf-8")
        ref = hashlib.sha256(blob).hexdigest()[:16]
        casesets.setdefault(ref, run["cases"])
        meta = {k: v for k, v in run.items() if k not in ("cases", "episodes")}
        meta["cases_ref"] = ref
        meta["n_episodes"] = len(run["episodes"])
        meta_runs.append(meta)
        blocks.append(f'<script type="application/json" id="mediq-episodes-{i}">{_json_block(run["episodes"])}</script>')
    meta_block = _json_block(_finite({"title": title, "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "runs": meta_runs, "casesets": casesets}))
    template = (ASSETS / "template.html").read_text(encoding="utf-8")
    css = (ASSETS / "viewer.css").read_text(encoding="utf-8")
    js = (ASSETS / "viewer.js").read_text(encoding="utf-8")
    # Plain replacement, not str.format: the CSS and JS are full of braces.
    parts = {
        "<!--MEDIQ_TITLE-->": _escape(title),
        "/*MEDIQ_CSS*/": css,
        "<!--MEDIQ_DATA-->": f'<script type="application/json" id="mediq-meta">{meta_block}</script>\n' + "\n".join(blocks),
        "/*MEDIQ_JS*/": js.replace("</", "<\\/"),
    }
    missing = [m for m in parts if m not in template]
    if missing:
        raise RuntimeError(f"viewer template lacks {missing}")
    # One pass over the template: inserted text (run data may contain a marker-like string) is never rescanned.
    return re.sub("|".join(map(re.escape, parts)), lambda m: parts[m.group(0)], template)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        # mkstemp makes the file private (0600); a viewer is meant to be shared like the run's other files.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_html(run_paths: Sequence[str | Path], out: str | Path, *, cases: str | Path | None = None) -> Path:
    """Write the viewer of ``run_paths`` to ``out`` (atomically: a reader never sees half a page)."""
    paths = [Path(p) for p in run_paths]
    names = _unique_names(paths)
    runs = [load_view_run(p, name=n, cases=cases) for p, n in zip(paths, names, strict=True)]
    title = "mediq-env: " + ", ".join(names) if len(names) <= 3 else f"mediq-env: {len(names)} runs"
    out_path = Path(out)
    _atomic_write(out_path, build_html(runs, title=title))
    return out_path


def write_viewer(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/viewer.html`` for one run and return its path.

    A viewer newer than everything it is made from (the run's files and the viewer's own assets) is kept
    as it is, so rerunning a finished run writes nothing (as ``mediq bench`` promises). A finished run may
    sit on read-only media: the viewer then goes to the temporary directory instead, with a note on stderr,
    and that path is returned.
    """
    run = Path(run_dir)
    if _viewer_fresh(run):
        return run / VIEWER_FILE
    try:
        return write_html([run], run / VIEWER_FILE)
    except OSError as exc:
        digest = hashlib.sha256(str(run.resolve()).encode("utf-8")).hexdigest()[:8]
        fallback = Path(tempfile.gettempdir()) / f"mediq-viewer-{run.name}-{digest}.html"
        print(f"note: cannot write {run / VIEWER_FILE} ({exc.strerror or exc}); writing {fallback} instead", file=sys.stderr)
        return write_html([run], fallback)


def _viewer_fresh(run: Path) -> bool:
    try:
        built = (run / VIEWER_FILE).stat().st_mtime_ns
        sources = [run / "manifest.json", run / "episodes.jsonl", run / "summary.json", *(run / "plots").glob("*.png"),
                   *ASSETS.iterdir()]
        return all(p.stat().st_mtime_ns <= built for p in sources if p.exists())
    except OSError:
        return False


def serve(path: Path, port: int = 0) -> None:
    """Serve the viewer's folder on localhost until interrupted (for machines where file:// is awkward)."""
    handler = functools.partial(_QuietHandler, directory=str(path.parent.resolve()))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        print(f"serving http://127.0.0.1:{httpd.server_address[1]}/{path.name}  (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            httpd.serve_forever()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per request would bury the URL
        pass


# -- headless Chromium over the DevTools protocol (tests and the load-time measurement) -----------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """A Chromium/Chrome binary: ``$MEDIQ_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    import shutil

    env = os.environ.get("MEDIQ_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
)


class _WebSocket:
    """The smallest WebSocket client CDP needs (RFC 6455: text frames, client masking, no extensions).

    Written here rather than taken from a package so that the tests need nothing beyond the dev extra; it
    only ever talks to a local Chromium.
    """

    def __init__(self, url: str, timeout: float) -> None:
        import socket
        from urllib.parse import urlparse

        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {status[:200]!r}")
        self.buffer = rest

    def send(self, text: str) -> None:
        import struct

        data = text.encode("utf-8")
        header = bytearray([0x81])
        n = len(data)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        header += mask
        self.sock.sendall(bytes(header) + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv(self) -> str:
        import struct

        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)  # the server never masks
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping / pong: nothing to do for a short-lived client
                continue
            message += payload
            if b0 & 0x80:
                return message.decode("utf-8")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Browser:
    """Headless Chromium driven over the Chrome DevTools Protocol: open a page, run JS, click, screenshot.

    ``with Browser() as b: b.open(url); b.eval("document.title")``. Raises FileNotFoundError when no
    Chromium binary is found.
    """

    def __init__(self, binary: str | None = None, *, width: int = 1400, height: int = 1000, timeout: float = 60.0) -> None:
        found = binary or find_chromium()
        if not found:
            raise FileNotFoundError("no Chromium binary found (install chromium, or set MEDIQ_CHROMIUM)")
        self.binary: str = found
        self.width, self.height, self.timeout = width, height, timeout
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        import subprocess
        import urllib.request

        # Chromium's helper processes can still be writing the profile as it is removed: leftovers are not an error.
        self._profile = tempfile.TemporaryDirectory(prefix="mediq-chromium-", ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [self.binary, *CHROMIUM_FLAGS, "--remote-debugging-port=0", f"--user-data-dir={self._profile.name}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            # Chromium writes the port it picked to DevToolsActivePort in the profile folder.
            port_file = Path(self._profile.name) / "DevToolsActivePort"
            deadline = time.monotonic() + self.timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Chromium did not start (exit status {self.proc.poll()})")
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as r:
                targets = json.loads(r.read())
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = _WebSocket(page["webSocketDebuggerUrl"], self.timeout)
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self, "ws"):
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)
        self._profile.cleanup()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})
            if "method" in msg:
                self.events.append(msg)

    def eval(self, expression: str) -> Any:
        """The value of a JS expression (awaited when it is a promise); a JS exception raises RuntimeError."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(f"JS error: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def open(self, url: str, *, ready: str = "document.body && document.body.dataset.ready === '1'") -> float:
        """Navigate to ``url``, wait until ``ready`` is true; returns the seconds that took."""
        self.events.clear()
        t0 = time.perf_counter()
        self.call("Page.navigate", url=url)
        self.wait_for(ready)
        return time.perf_counter() - t0

    def wait_for(self, expression: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            with contextlib.suppress(RuntimeError):  # the new document may not exist yet
                if self.eval(f"Boolean({expression})"):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {expression}; console: {self.console_errors()}")
            time.sleep(0.02)

    def console_errors(self) -> list[str]:
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                d = e["params"]["exceptionDetails"]
                out.append(str(d.get("exception", {}).get("description") or d.get("text")))
            elif e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"].get("args", [])))
        return out

    def screenshot(self, path: str | Path, *, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": min(size[1], 6000), "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        out = Path(path)
        out.write_bytes(base64.b64decode(data))
        return out


# -- the load-time measurement -----------------------------------------------------------------------------


def synthetic_run(out: str | Path, n_episodes: int = 10_000, *, seed: int = 0) -> Path:
    """A run directory with ``n_episodes`` made-up interactive episodes on the built-in cases (for timing)."""
    import random

    from benchmarks.run import BenchConfig
    from mediq_env import builtin_cases
    from mediq_env.cases import builtin_cases_path

    rng = random.Random(seed)
    cases = builtin_cases()
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    config = BenchConfig(agent="synthetic", max_questions=5, repeats=max(1, n_episodes // len(cases) + 1), modes=("interactive",))
    from dataclasses import asdict

    manifest = {"config": asdict(config), "n_cases": len(cases),
                "cases_sha256": hashlib.sha256(builtin_cases_path().read_bytes()).hexdigest()}
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    with (run / "episodes.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n_episodes):
            case = cases[i % len(cases)]
            r = i // len(cases)
            turns: list[dict[str, Any]] = []
            revealed = set(case.known_facts)
            n_q = rng.randint(0, 5)
            for q in range(n_q):
                fact = rng.randrange(len(case.facts))
                new = [fact] if fact not in revealed and rng.random() < 0.5 else []
                revealed.update(new)
                fb = "question_missing" if rng.random() < 0.05 else None
                turns.append({
                    "action": {"question": f"Synthetic question {q + 1} about {case.facts[fact][:40].lower()}?"},
                    "action_type": "question", "reply": case.facts[fact] if new else "I'm not sure. Nobody has told me that.",
                    "revealed": new, "new_facts": new, "reward": 0.1 * len(new),
                    "reward_components": {"proxy:info_gain": 0.1 * len(new), "question_cost": -0.02},
                    "invalid_action": None,
                    # A model's output of typical length (~400 characters), as LLM agents record it.
                    "agent": {"decision": "ask", "intermediate_answer": rng.choice("ABCD"), "confidence": rng.random(),
                              "fallback": fb, "fallback_kinds": [fb] if fb else [],
                              "raw": f"RATIONALE: {' '.join(case.facts[:3])[:300]} CONFIDENT: NO ASK: question {q + 1}"},
                    "scores": {"proxy_info_gain": float(bool(new)), "clarity": rng.choice([0.25, 0.5, 0.75, 1.0])},
                })
            answer = rng.choice(sorted(case.options))
            failed = rng.random() < 0.01
            turns.append({"action": {"answer": answer}, "action_type": "answer", "reply": None, "revealed": [], "new_facts": [],
                          "reward": float(answer == case.answer), "reward_components": {"correct": float(answer == case.answer)},
                          "agent": {"decision": "answer", "intermediate_answer": answer, "fallback": None, "fallback_kinds": []}})
            rec = {"mode": "interactive", "repeat": r, "key": f"interactive/{case.id}#r{r}", "case_id": case.id,
                   "seed": rng.randrange(2**32), "turns": turns, "answer": None if failed else answer,
                   "correct": (answer == case.answer) and not failed, "correct_answer": case.answer,
                   "forced": n_q == 5, "truncated": False, "questions_asked": n_q,
                   "n_facts_revealed": len(revealed - set(case.known_facts)), "n_facts": len(case.facts),
                   "n_facts_known": len(case.known_facts), "total_reward": sum(float(t["reward"]) for t in turns),
                   "reward_components": {}, "option_order": sorted(case.options),
                   "error": "agent failed: RuntimeError: synthetic" if failed else None, "seconds": 0.01, "attempts": 1}
            fh.write(json.dumps(rec) + "\n")
    return run


def measure_load(n_episodes: int = 10_000, *, repeats: int = 3, binary: str | None = None) -> dict[str, Any]:
    """Time the viewer of a synthetic ``n_episodes`` run in headless Chromium.

    ``ready_s``: navigation start until the page has drawn the leaderboard and the first page of episodes
    (wall clock, from Python). ``page_ready_ms``: the same from the page's own clock (navigation start to
    ready). ``filter_ms``: applying the "wrong answers" filter and redrawing. ``search_ms``: a full-text
    search over every episode. ``open_episode_ms``: opening one episode's chat. Medians over ``repeats``.
    """
    import statistics

    with tempfile.TemporaryDirectory(prefix="mediq-view-measure-") as tmp:
        run = synthetic_run(Path(tmp) / "synthetic-10k", n_episodes)
        t0 = time.perf_counter()
        html = write_html([run], Path(tmp) / "viewer.html")
        write_s = time.perf_counter() - t0
        size = html.stat().st_size
        rows: list[dict[str, float]] = []
        with Browser(binary) as b:
            version = b.call("Browser.getVersion").get("product")
            for _ in range(repeats):
                ready_s = b.open(html.resolve().as_uri())
                page_ms = b.eval("window.mediqViewer.timings.ready")
                filter_ms = b.eval("window.mediqViewer.timeAction(() => window.mediqViewer.setFilter({outcome: 'wrong'}))")
                search_ms = b.eval("window.mediqViewer.timeAction(() => window.mediqViewer.setFilter({outcome: 'all', search: 'wheez'}))")
                open_ms = b.eval("window.mediqViewer.timeAction(() => window.mediqViewer.openEpisode(0, 0))")
                rows.append({"ready_s": ready_s, "page_ready_ms": page_ms, "filter_ms": filter_ms,
                             "search_ms": search_ms, "open_episode_ms": open_ms})
            shown = b.eval("document.querySelectorAll('#episode-table tbody tr').length")
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"episodes": n_episodes, "html_bytes": size, "write_html_s": write_s, "browser": version,
            "rows_drawn": shown, "repeats": repeats, "median": med, "runs": rows}


def _measure_markdown(result: dict[str, Any]) -> str:
    m = result["median"]
    return "\n".join([
        "# Viewer load time",
        "",
        f"`python -m benchmarks.view --measure`: the viewer of a synthetic run of {result['episodes']:,} interactive "
        f"episodes (built-in cases, 0–5 questions each, ~400 characters of model output per question) opened from disk in headless {result['browser']}; "
        f"medians of {result['repeats']} loads on {result['machine']['cpus']} CPU cores.",
        "",
        "| what | time |",
        "|---|---|",
        f"| HTML file | {result['html_bytes'] / 1e6:.1f} MB, written in {result['write_html_s']:.1f} s |",
        f"| open → leaderboard and first page of episodes drawn (wall clock) | {m['ready_s'] * 1000:.0f} ms |",
        f"| same, page clock (navigation start → ready) | {m['page_ready_ms']:.0f} ms |",
        f"| filter to wrong answers, redraw | {m['filter_ms']:.0f} ms |",
        f"| full-text search over all episodes, redraw | {m['search_ms']:.0f} ms |",
        f"| open one episode's chat | {m['open_episode_ms']:.0f} ms |",
        "",
        f"Rows drawn per page: {result['rows_drawn']} (the list is paginated; chats are drawn only when opened).",
        "",
    ])


def screenshot(html: str | Path, out: str | Path, *, case_id: str | None = None, binary: str | None = None) -> Path:
    """A full-page PNG of a viewer as a reader first uses it (how ``benchmarks/results/viewer.png`` is made).

    With two or more runs the second is set as the side-by-side partner; the episode list is narrowed to
    ``case_id`` (default: the first run's first interactive episode) and that episode is opened.
    """
    with Browser(binary, width=1400, height=1000) as b:
        b.open(Path(html).resolve().as_uri())
        runs = b.eval("JSON.parse(document.getElementById('mediq-meta').textContent).runs.length")
        if runs > 1:
            b.eval("window.mediqViewer.setCompare(1)")
        b.eval(f"window.mediqViewer.setFilter({{caseId: {json.dumps(case_id or '')}}})")
        index = b.eval("(() => { const t = document.querySelector('#episode-table tbody tr'); return t ? Number(t.dataset.index) : -1; })()")
        if index < 0:
            raise ValueError(f"no interactive episode{' on case ' + case_id if case_id else ''} in {html}")
        b.eval(f"window.mediqViewer.openEpisode(0, {index})")
        errors = b.console_errors()
        if errors:
            raise RuntimeError(f"the page reported errors: {errors}")
        return b.screenshot(out, full_page=True)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.view", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run directories")
    parser.add_argument("--out", help="HTML file to write")
    parser.add_argument("--serve", action="store_true", help="serve the file on localhost")
    parser.add_argument("--screenshot", metavar="PNG", help="also write a full-page screenshot (headless Chromium) with the "
                                                             "second run side by side and one episode open")
    parser.add_argument("--case", help="with --screenshot: the case whose episode is opened (default: the first)")
    parser.add_argument("--measure", type=int, nargs="?", const=10_000, metavar="N",
                        help="time the viewer of a synthetic N-episode run in headless Chromium (default 10000) "
                             "and write benchmarks/results/viewer_load.{json,md}")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.measure:
        from benchmarks.common import write_result

        result = measure_load(args.measure)
        path = write_result("viewer_load", result)
        result = json.loads(path.read_text(encoding="utf-8"))
        (path.with_suffix(".md")).write_text(_measure_markdown(result), encoding="utf-8")
        print(_measure_markdown(result))
        return 0
    if args.screenshot:
        if not args.runs:
            parser.error("--screenshot needs run directories")
        path = write_html(args.runs, args.out or default_out(args.runs))
        print(f"viewer: {path}")
        print(f"screenshot: {screenshot(path, args.screenshot, case_id=args.case)}")
        if args.serve:
            serve(path)
        return 0
    return run_view(args.runs, out=args.out, serve_after=args.serve)


def default_out(runs: Sequence[str | Path]) -> Path:
    """One run: ``<run>/viewer.html``; several: ``viewer.html`` in the current directory."""
    return Path(runs[0]) / VIEWER_FILE if len(runs) == 1 else Path(VIEWER_FILE)


def run_view(runs: Sequence[str | Path], *, out: str | Path | None = None, serve_after: bool = False,
             cases: str | Path | None = None) -> int:
    if not runs:
        print("error: give at least one run directory", file=sys.stderr)
        return 2
    path = write_html(runs, out or default_out(runs), cases=cases)
    print(f"viewer: {path}")
    if serve_after:
        serve(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
