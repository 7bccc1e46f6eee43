"""A benchmark you can trust under faults: outages, damaged run directories, concurrent runs, read-only and
full disks, bad cases files, typos. Each test is a fault a real run met; none needs a model."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from agents import make_agent
from benchmarks import run as bench
from benchmarks.run import BenchConfig, RunDirError, format_run_summary, main, run_benchmark
from mediq_env.cases import builtin_cases_path
from mediq_env.errors import BackendError, CaseFormatError, ConfigError

SET_BY_MAIN = ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS",
               *bench.OPENAI_FLAGS.values())


@pytest.fixture(autouse=True)
def _restore_library_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() sets these for the whole process (--no-progress, --openai-*), as a CLI should; tests must not
    # leak them. setenv first: delenv of an absent variable records nothing, so it would not be undone.
    for var in SET_BY_MAIN:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


def cfg(**kw: Any) -> BenchConfig:
    base: dict[str, Any] = {"agent": "checklist", "max_questions": 2, "limit": 4, "scorer": "none", "modes": ("interactive",)}
    return BenchConfig(**{**base, **kw})


def episodes(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line]


class Counting:
    """The checklist agent, counting the episodes it acts for (a stand-in for requests to a model server)."""

    name = "counting"

    def __init__(self) -> None:
        self.inner = make_agent("checklist")
        self.calls = 0
        self.cases: set[str] = set()

    def act(self, states: Any) -> Any:
        self.calls += 1
        self.cases.update(s.case_id for s in states)
        return self.inner.act(states)


class Outage(Counting):
    """A model server that is down: every call fails."""

    def act(self, states: Any) -> Any:
        self.calls += 1
        raise BackendError("server down (connection refused)")


# -- 1. failed episodes are retried on resume, a bounded number of times -------------------------------------


def test_resume_retries_failed_episodes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run_benchmark(cfg(), out, agent=Outage(), progress=False)
    assert summary["modes"]["interactive"]["failed"] == 4
    assert all(e["attempts"] == 1 and e["error"] for e in episodes(out))

    agent = Counting()
    summary = run_benchmark(cfg(), out, agent=agent, progress=False)
    assert agent.calls > 0 and len(agent.cases) == 4
    eps = episodes(out)
    assert len(eps) == 4 and all(e["attempts"] == 2 and not e["error"] for e in eps)  # one line per episode
    assert len((out / "episodes.retried.jsonl").read_text().splitlines()) == 4  # the failed attempts, kept
    assert summary["failures"]["failed"] == 0
    assert summary["retries"] == {"max_attempts": 3, "retried_episodes": 4, "extra_attempts": 4, "recovered": 4, "gave_up": 0}

    again = Counting()
    run_benchmark(cfg(), out, agent=again, progress=False)
    assert again.calls == 0


def test_retries_stop_after_max_attempts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    for attempt in (1, 2, 3):
        run_benchmark(cfg(), out, agent=Outage(), progress=False)
        assert {e["attempts"] for e in episodes(out)} == {attempt}
    agent = Outage()
    summary = run_benchmark(cfg(), out, agent=agent, progress=False)
    assert agent.calls == 0
    assert summary["retries"]["gave_up"] == 4 and summary["failures"]["failed"] == 4
    assert "4 failed episode(s) not retried" in capsys.readouterr().err


# -- 3. a failed run says so, and exits non-zero ----------------------------------------------------------------


def test_all_failed_run_exits_nonzero_without_an_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "build_agent", lambda config: Outage())
    code = main(["--agent", "checklist", "--limit", "4", "--max-questions", "2", "--scorer", "none", "--modes", "interactive",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "accuracy: 0.0%" not in printed
    assert "accuracy: not measured" in printed
    assert "4 of 4 episodes failed" in printed
    assert "4 × agent failed: BackendError: server down (connection refused)" in printed


def test_partly_failed_run_warns_before_its_accuracy(tmp_path: Path) -> None:
    class Flaky(Counting):
        def act(self, states: Any) -> Any:
            if any(s.case_id.endswith("2") for s in states):
                raise RuntimeError("boom")
            return super().act(states)

    summary = run_benchmark(cfg(batch_size=1), tmp_path / "run", agent=Flaky(), progress=False)
    lines = format_run_summary(summary).splitlines()
    warn = next(i for i, line in enumerate(lines) if line.startswith("WARNING: 1 of 4 interactive episodes failed"))
    assert lines[warn + 1].startswith("accuracy:")
    assert "  1 × agent failed: RuntimeError: boom" in lines


# -- 4. damaged episode lines and manifests ---------------------------------------------------------------------


def test_damaged_middle_line_keeps_every_other_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    run_benchmark(cfg(limit=8), out, progress=False)
    lines = (out / "episodes.jsonl").read_bytes().split(b"\n")
    lost = json.loads(lines[3])["case_id"]
    lines[3] = lines[3][:40] + b"\x00garbage"
    (out / "episodes.jsonl").write_bytes(b"\n".join(lines))
    agent = Counting()
    summary = run_benchmark(cfg(limit=8), out, agent=agent, progress=False)
    assert agent.cases == {lost}  # one episode re-run, not every episode after the damage
    assert summary["modes"]["interactive"]["episodes"] == 8 and len(episodes(out)) == 8
    side = [json.loads(line) for line in (out / "episodes.damaged.jsonl").read_text().splitlines()]
    assert [d["line"] for d in side] == [4] and "invalid JSON" in side[0]["reason"]
    assert "1 damaged line(s) moved to" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad",
    [b"{}", b"5", b"[1, 2]", b"\xff\xfe\xfd not utf-8", b'{"key": 5}', b'{"key": "interactive/x#r0", "mode": "interactive"}', b"null"],
)
def test_junk_lines_are_moved_aside_not_tracebacks(tmp_path: Path, bad: bytes) -> None:
    out = tmp_path / "run"
    run_benchmark(cfg(), out, progress=False)
    lines = (out / "episodes.jsonl").read_bytes().splitlines()
    (out / "episodes.jsonl").write_bytes(b"\n".join([*lines[:2], bad, *lines[2:]]) + b"\n")
    agent = Counting()
    summary = run_benchmark(cfg(), out, agent=agent, progress=False)
    assert agent.calls == 0 and summary["modes"]["interactive"]["episodes"] == 4
    assert (out / "episodes.jsonl").read_bytes().splitlines() == lines
    side = [json.loads(line) for line in (out / "episodes.damaged.jsonl").read_text().splitlines()]
    assert [d["line"] for d in side] == [3]


def _mutated(record: dict[str, Any], change: dict[str, Any]) -> bytes:
    rec = dict(record)
    for path, value in change.items():
        if path.startswith("turn0."):
            rec["turns"] = [dict(rec["turns"][0], **{path.removeprefix("turn0."): value}), *rec["turns"][1:]]
        else:
            rec[path] = value
    return json.dumps(rec).encode()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"turns": [5, 6]}, "turns[0] is not a JSON object"),
        ({"turn0.scores": 7}, "'turns[0].scores' has the wrong type"),
        ({"turn0.scores": {"proxy_focus": "high"}}, "'turns[0].scores' must map names to numbers"),
        ({"turn0.agent": {"fallback_kinds": "x"}}, "fallback_kinds"),
        ({"n_facts": "x"}, "'n_facts' has the wrong type"),
        ({"n_facts": True}, "'n_facts' has the wrong type"),
        ({"questions_asked": -4}, "'questions_asked' is negative"),
        ({"questions_asked": float("nan")}, "'questions_asked' has the wrong type"),
        ({"option_order": "ABCD"}, "'option_order' has the wrong type"),
        ({"correct_answer": "Z"}, "not one of the 4 option letters"),
        ({"answer": [1]}, "'answer' has the wrong type"),
    ],
)
def test_records_with_wrong_inner_types_are_damaged_lines(tmp_path: Path, change: dict[str, Any], why: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Valid JSON with every required field, but a value the summary cannot use: this crashed the summary,
    # `mediq report` and `mediq compare` with AttributeError/TypeError/ValueError tracebacks.
    out = tmp_path / "run"
    run_benchmark(cfg(), out, progress=False)
    lines = (out / "episodes.jsonl").read_bytes().splitlines()
    (out / "episodes.jsonl").write_bytes(b"\n".join([_mutated(json.loads(lines[0]), change), *lines[1:]]) + b"\n")
    from benchmarks.report import leaderboard

    assert "checklist" in leaderboard([out])  # read side: the line is skipped and counted
    assert "skipped 1 damaged line" in capsys.readouterr().err
    agent = Counting()
    summary = run_benchmark(cfg(), out, agent=agent, progress=False)
    assert len(agent.cases) == 1 and summary["modes"]["interactive"]["episodes"] == 4
    (side,) = [json.loads(line) for line in (out / "episodes.damaged.jsonl").read_text().splitlines()]
    assert side["line"] == 1 and why in side["reason"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"config": {', "invalid JSON at line 1"),
        (b'{"config": {"patient": 3}, "cases_sha256": "0"}', "config: patient must be str, got int 3"),
        (b'{"config": {"seed": "0"}, "cases_sha256": "0"}', "config: seed must be int, got str '0'"),
        (b'{"config": {"modes": "interactive"}, "cases_sha256": "0"}', "config: modes must be tuple or list"),
        (b'{"config": {"seed": ' + b"9" * 5000 + b'}, "cases_sha256": "0"}', "Exceeds the limit (4300 digits)"),
        (b"", "invalid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "expected a JSON object"),
        (b'{"config": 5, "cases_sha256": "0"}', "'config' is missing or not an object"),
        (b'{"config": {}}', "'cases_sha256'"),
        (b'{"config": {"max_questions": "five"}, "cases_sha256": "0"}', "config:"),
    ],
)
def test_damaged_manifest_is_refused_by_name(tmp_path: Path, content: bytes, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    run_benchmark(cfg(), out, progress=False)
    (out / "manifest.json").write_bytes(content)
    with pytest.raises(RunDirError, match=r"manifest\.json is damaged") as info:
        run_benchmark(cfg(), out, progress=False)
    assert why in str(info.value)
    code = main(["--agent", "checklist", "--limit", "4", "--max-questions", "2", "--scorer", "none", "--modes", "interactive",
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "manifest.json is damaged" in err and "Traceback" not in err
    assert "set_int_max_str_digits" not in err and len(err.strip().splitlines()) == 1


# -- 5. one run per directory at a time -------------------------------------------------------------------------


def test_second_concurrent_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    started, release = threading.Event(), threading.Event()

    class Blocking(Counting):
        def act(self, states: Any) -> Any:
            started.set()
            release.wait(30)
            return super().act(states)

    errors: list[BaseException] = []

    def first() -> None:
        try:
            run_benchmark(cfg(), out, agent=Blocking(), progress=False)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(30)
        second = Counting()
        with pytest.raises(RunDirError, match="in use by another run"):
            run_benchmark(cfg(), out, agent=second, progress=False)
        assert second.calls == 0

        def no_model(config: BenchConfig) -> Any:
            raise AssertionError("a model was loaded for a run that is then refused")

        monkeypatch.setattr(bench, "build_agent", no_model)
        with pytest.raises(RunDirError, match="in use by another run"):
            run_benchmark(cfg(), out, progress=False)
    finally:
        release.set()
        thread.join(60)
    assert not errors
    assert len(episodes(out)) == 4


# -- 6. the cases are compared by content, not by how their path is spelled -----------------------------------


def test_same_cases_file_under_another_spelling_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("cases.jsonl").write_bytes(builtin_cases_path().read_bytes())
    run_benchmark(cfg(cases="cases.jsonl"), "run", progress=False)
    for spelling in ("./cases.jsonl", str(tmp_path / "cases.jsonl"), "../" + tmp_path.name + "/cases.jsonl"):
        agent = Counting()
        run_benchmark(cfg(cases=spelling), "run", agent=agent, progress=False)
        assert agent.calls == 0
    Path("cases.jsonl").write_bytes(builtin_cases_path().read_bytes().replace(b"wheezing", b"coughing"))
    with pytest.raises(ConfigError, match="the cases differ"):
        run_benchmark(cfg(cases="./cases.jsonl"), "run", progress=False)


# -- 7. read-only and full disks --------------------------------------------------------------------------------


def test_run_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunDirError, match="cannot create the run directory"):
        run_benchmark(cfg(), tmp_path / "afile" / "run", progress=False)


def test_a_directory_of_other_files_is_not_used_as_a_run_directory(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "report.md").write_text("my own notes")
    (notes / ".DS_Store").write_text("")
    with pytest.raises(RunDirError, match=r"notes is not a run directory \(no manifest.json\) but holds other files \(report.md\)"):
        run_benchmark(cfg(), notes, progress=False)
    assert (notes / "report.md").read_text() == "my own notes" and sorted(p.name for p in notes.iterdir()) == [".DS_Store", "report.md"]
    (notes / "report.md").unlink()  # hidden files alone do not stop a run
    assert run_benchmark(cfg(), notes, progress=False)["modes"]["interactive"]["episodes"] == 4


def test_full_disk_mid_run_is_a_clear_error_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:  # the manifest and the first episode fit; then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RunDirError, match=r"No space left on device.*rerun the same command to resume"):
        run_benchmark(cfg(batch_size=1), out, progress=False)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert len(episodes(out)) >= 1
    summary = run_benchmark(cfg(batch_size=1), out, progress=False)
    assert summary["modes"]["interactive"]["episodes"] == 4 and len({e["key"] for e in episodes(out)}) == len(episodes(out)) == 4


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make a directory read-only even for root: every write-mode open, os.open, replace and mkdir under it fails."""
    roots: list[Path] = []

    def inside(path: Any) -> bool:
        p = Path(os.fsdecode(path)).absolute()
        return any(p == r or r in p.parents for r in roots)

    def denied(path: Any) -> OSError:
        return PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    real_open, real_os_open, real_replace, real_mkdir = Path.open, os.open, os.replace, Path.mkdir

    def path_open(self: Path, mode: str = "r", *a: Any, **k: Any) -> Any:
        if inside(self) and any(c in mode for c in "wax+"):
            raise denied(self)
        return real_open(self, mode, *a, **k)

    def os_open(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise denied(path)
        return real_os_open(path, flags, *a, **k)

    def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if inside(dst):
            raise denied(dst)
        real_replace(src, dst, *a, **k)

    def mkdir(self: Path, *a: Any, **k: Any) -> None:
        if inside(self) and not self.exists():
            raise denied(self)
        real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "open", path_open)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    return roots


def test_finished_run_is_summarised_without_writing(tmp_path: Path, read_only: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    first = run_benchmark(cfg(), out, progress=False)
    before = _snapshot(out)
    read_only.append(out.absolute())
    again = run_benchmark(cfg(), out, progress=False)
    assert _snapshot(out) == before
    assert again["modes"]["interactive"]["accuracy"] == first["modes"]["interactive"]["accuracy"]
    code = main(["--agent", "checklist", "--limit", "4", "--max-questions", "2", "--scorer", "none", "--modes", "interactive",
                 "--out", str(out), "--no-progress"])
    assert code == 0 and "accuracy:" in capsys.readouterr().out
    assert _snapshot(out) == before


def test_unfinished_run_on_read_only_media_is_a_clear_error(tmp_path: Path, read_only: list[Path]) -> None:
    read_only.append(tmp_path.absolute())
    with pytest.raises(RunDirError, match=r"cannot create the run directory .*Read-only file system"):
        run_benchmark(cfg(), tmp_path / "run", progress=False)


# -- 8. --skip-invalid ------------------------------------------------------------------------------------------


def test_skip_invalid_runs_the_valid_records_and_lists_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = builtin_cases_path().read_text().splitlines()[:5]
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join([lines[0], '{"id": "broken"}', *lines[1:], "not json"]) + "\n")
    with pytest.raises(CaseFormatError, match="--skip-invalid"):
        run_benchmark(cfg(cases=str(cases), limit=None), tmp_path / "strict", progress=False)
    assert not (tmp_path / "strict").exists()
    out = tmp_path / "run"
    code = main(["--agent", "checklist", "--cases", str(cases), "--skip-invalid", "--max-questions", "1", "--scorer", "none",
                 "--modes", "interactive", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "skipped 2 invalid record(s)" in captured.err and "skipped 2 invalid case record(s)" in captured.out
    skipped = json.loads((out / "manifest.json").read_text())["skipped_records"]
    assert [s.split(": ")[0] for s in skipped] == [f"{cases}:2", f"{cases}:7"]
    assert json.loads((out / "summary.json").read_text())["skipped_records"] == skipped
    report = (out / "report.md").read_text()
    assert all(f"- {s}" in report for s in skipped)
    assert len(episodes(out)) == 5


# -- 10. a model-free scorer loads no model ---------------------------------------------------------------------


def test_env_scorer_does_not_load_the_embedder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mediq_env.patient

    def no_embedder() -> Any:
        raise AssertionError("the MiniLM embedder was loaded for a model-free run")

    monkeypatch.setattr(mediq_env.patient, "load_embedder", no_embedder)
    # The default (faithful) patient embeds questions by design; with the model-free BM25 patient nothing in
    # the run may load MiniLM: the env scorer's default proxies are model-free.
    run_benchmark(cfg(scorer="env", max_questions=3, patient="bm25"), tmp_path / "run", progress=False)
    scores = [set(t["scores"]) for e in episodes(tmp_path / "run") for t in e["turns"] if t["action_type"] == "question"]
    assert scores and all("proxy_info_gain" in s and "proxy_relevance" not in s for s in scores)
    assert "proxy_relevance" in bench.build_scorer(cfg(scorer="env:all")).keys
    assert bench.build_scorer(cfg(scorer="env:focus,repeat")).keys == ("proxy_focus", "proxy_repeat")
    with pytest.raises(ConfigError, match="unknown proxies"):
        bench.build_scorer(cfg(scorer="env:nonsense"))


# -- 20. a typo leaves nothing behind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo",
    [{"scorer": "judge:smolm2"}, {"scorer": "bogus"}, {"agent": "nosuch"}, {"patient": "llm-select:smolm2"},
     {"seed": -5}, {"scorer": "rm:/no/such/reward-model"}, {"scorer": "rm:."}, {"max_questions": "2"}],
)
def test_typo_writes_nothing_and_the_corrected_command_runs(tmp_path: Path, typo: dict[str, str]) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        run_benchmark(cfg(**typo), out, progress=False)
    assert not out.exists()
    summary = run_benchmark(cfg(), out, progress=False)
    assert summary["modes"]["interactive"]["episodes"] == 4


def test_numpy_and_path_values_are_stored_as_plain_json_and_resume(tmp_path: Path) -> None:
    import numpy as np

    cases = tmp_path / "cases.jsonl"
    cases.write_bytes(builtin_cases_path().read_bytes())
    config = cfg(max_questions=np.int64(2), seed=np.uint32(0), cases=cases)
    assert (type(config.max_questions), type(config.seed), config.cases) == (int, int, str(cases))
    run_benchmark(config, tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert stored["max_questions"] == 2 and stored["cases"] == str(cases)
    again = Counting()
    run_benchmark(cfg(max_questions=2, cases=str(cases)), tmp_path / "run", agent=again, progress=False)
    assert again.calls == 0  # the same config: resumed, nothing re-run


def test_unusable_cache_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    code = main(["--agent", "scripted", "--cache-dir", str(tmp_path / "afile" / "cache"), "--limit", "1", "--max-questions", "1",
                 "--scorer", "none", "--modes", "interactive", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot create the response cache directory") and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# -- 9. OpenAI-compatible servers: timeout, retries and the Retry-After cap from the command line ---------------


def test_openai_flags_bound_a_hung_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_backend_openai import FakeServer

    with FakeServer() as server:
        server.default = "sleep"  # holds every answer for longer than the timeout below
        monkeypatch.setenv("MEDIQ_OPENAI_BASE_URL", server.base_url)
        code = main(["--agent", "openai:fake-model", "--openai-timeout", "0.2", "--openai-max-retries", "1",
                     "--openai-max-retry-after", "0.5", "--limit", "1", "--max-questions", "1", "--scorer", "none",
                     "--modes", "interactive", "--out", str(tmp_path / "run"), "--no-progress"])
        attempts = sum(len(a) for a in server.attempts.values())
    printed = capsys.readouterr().out
    assert code == 1 and attempts == 2  # one attempt and one retry, each cut off after 0.2 s
    assert "BackendTimeoutError: fake-model: timed out after 0.2s" in printed and "gave up after 2 attempts" in printed
    assert os.environ["MEDIQ_OPENAI_MAX_RETRY_AFTER"] == "0.5"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--openai-timeout", "0", "must be a number > 0"), ("--openai-timeout", "inf", "must be a number > 0"),
     ("--openai-max-retries", "1.5", "must be a whole number >= 0"), ("--openai-max-retry-after", "-1", "must be a number >= 0")],
)
def test_bad_openai_flags_are_refused_by_name(flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--agent", "checklist", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: {message}, got {value!r}" in capsys.readouterr().err


# -- 21. summary.json is strict JSON ----------------------------------------------------------------------------


def test_summary_json_is_strict_json_with_a_note_on_null(tmp_path: Path) -> None:
    run_benchmark(cfg(), tmp_path / "run", agent=Outage(), progress=False)  # every value over "no episode" is undefined
    text = (tmp_path / "run" / "summary.json").read_text()

    def reject(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    summary = json.loads(text, parse_constant=reject)
    assert summary["modes"]["interactive"]["questions_asked"]["mean"] is None
    assert any(n.startswith("null = not defined for this run") for n in summary["notes"])


# -- 22. progress ------------------------------------------------------------------------------------------------


def test_progress_moves_every_turn_and_counts_agree(tmp_path: Path) -> None:
    stream = io.StringIO()
    seen: list[int] = []

    def position() -> tuple[int, int, str]:
        frame = [f for f in re.split(r"[\r\n]", stream.getvalue()) if "/" in f][-1]
        n, total = re.search(r"(\d+)/(\d+) \[", frame).groups()  # type: ignore[union-attr]
        return int(n), int(total), frame

    class Watching(Counting):
        def act(self, states: Any) -> Any:
            seen.append(position()[0])
            return super().act(states)

    # batch 16 > 4 episodes: all four finish on the same turn, so a per-episode bar would sit at 0 until the end.
    run_benchmark(cfg(max_questions=3), tmp_path / "run", agent=Watching(), progress=stream)
    assert seen == [0, 4, 8, 12]
    n, total, frame = position()
    assert n == total == 16
    assert "episodes 4/4" in frame and "acc" in frame and "of 4" in frame


def test_no_progress_quiets_model_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    transformers = pytest.importorskip("transformers")
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    verbosity, hub_bars = hf_logging.get_verbosity(), not are_progress_bars_disabled()
    try:
        code = main(["--agent", "checklist", "--limit", "2", "--max-questions", "1", "--scorer", "none", "--modes", "interactive",
                     "--out", str(tmp_path / "run"), "--no-progress"])
        assert code == 0 and "%|" not in capsys.readouterr().err
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert are_progress_bars_disabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    finally:
        if hub_bars:
            enable_progress_bars()
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


# -- 23. the printed summary -------------------------------------------------------------------------------------


def test_printed_summary_explains_itself(tmp_path: Path) -> None:
    summary = run_benchmark(cfg(modes=("interactive", "full_information")), tmp_path / "run", progress=False)
    inter = summary["modes"]["interactive"]
    inter["accuracy"] = {"mean": 0.1, "ci_low": 0.0, "ci_high": 0.3}
    inter["majority_letter"].update(accuracy=0.5, letter="C")
    inter["fallback"] = {"rate": 0.3, "by_kind": {"unparsed_decision": 3}, "turns": 10}
    inter["facts_per_question"] = {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75, "questions": 8}
    text = format_run_summary(summary, report=tmp_path / "run" / "report.md")
    lines = text.splitlines()
    assert "  below chance: answering at random would score 25.0% (1 in 4 options)" in lines
    assert "  below the majority-letter baseline: always answering C would score 50.0%" in lines
    assert any(line.startswith("forced answers: ") and "question budget ran out" in line for line in lines)
    assert "facts found per question: 0.50 [0.25, 0.75]" in lines
    assert "fallbacks: 30.0% of agent turns used a fallback (by kind: unparsed_decision 3)" in lines
    assert any(line.startswith("WARNING: more than 20% of agent turns") for line in lines)
    full = next(line for line in lines if line.startswith("full information"))
    assert "coverage" not in full
    assert lines[-1] == f"report: {tmp_path / 'run' / 'report.md'}"
    assert not any(line.startswith("repeat redraws") for line in lines)  # an agent that does not redraw
    inter["fallback"]["rate"] = 0.1
    assert "WARNING" not in format_run_summary(summary)
    inter["question_redraws"] = {"questions": 132, "redrawn": 62, "share": 62 / 132, "still_repeating": 0, "draws": 79}
    assert ("repeat redraws: 62 of 132 questions (47.0%) were drawn again, sampled, because the model's first choice "
            "restated an earlier question; 0 still did") in format_run_summary(summary).splitlines()


def test_main_prints_the_report_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    main(["--agent", "checklist", "--limit", "2", "--max-questions", "1", "--scorer", "none", "--modes", "interactive",
          "--out", str(out), "--no-progress"])
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out


# -- n_facts_known reaches the episode record ---------------------------------------------------------------------


def test_n_facts_known_from_the_final_info_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mediq_env.vector import BatchedEnv

    real_step = BatchedEnv.step

    def step(self: BatchedEnv, actions: Any) -> Any:
        results = real_step(self, actions)
        for r in results:
            if r.done:
                r.info["n_facts_known"] = 2
        return results

    monkeypatch.setattr(BatchedEnv, "step", step)
    run_benchmark(cfg(), tmp_path / "run", progress=False)
    assert [e["n_facts_known"] for e in episodes(tmp_path / "run")] == [2, 2, 2, 2]
