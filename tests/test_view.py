"""The run viewer: a self-contained HTML file, checked as text and in a real headless Chromium.

Browser tests drive Debian's ``chromium`` (``.ci/run`` installs it) over the DevTools protocol; they skip
only where no Chromium binary exists.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from benchmarks.run import BenchConfig, run_benchmark
from benchmarks.view import (
    CHROMIUM_FLAGS,
    Browser,
    build_html,
    find_chromium,
    load_view_run,
    synthetic_run,
    write_html,
    write_viewer,
)
from mediq_env.cli import main as mediq

HOSTILE = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def _run(out: Path, agent: str, *, modes: tuple[str, ...] = ("interactive", "no_interaction", "full_information")) -> Path:
    # bm25 patient and four cases: a real run in about a second, without loading MiniLM.
    cfg = BenchConfig(agent=agent, max_questions=2, limit=4, scorer="env", patient="bm25", modes=modes)
    run_benchmark(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("runs")
    return _run(base / "checklist", "checklist"), _run(base / "answer-now", "answer-now")


def _episodes(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines() if line]


def _hostile_run(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose first patient reply is markup that would run if the page used innerHTML."""
    shutil.copytree(src, dst)
    eps = _episodes(dst)
    eps[0]["turns"][0]["reply"] = HOSTILE
    (dst / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    return dst


def _data_blocks(html: str) -> dict[str, object]:
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(r'<script type="application/json" id="([^"]+)">(.*?)</script>', html, re.S)}


# -- the file ------------------------------------------------------------------------------------------------


def test_write_viewer_writes_one_self_contained_file(runs: tuple[Path, Path]) -> None:
    path = write_viewer(runs[0])
    assert path == runs[0] / "viewer.html"
    html = path.read_text(encoding="utf-8")
    # Nothing is fetched: no external script, style sheet, image or font; the CSP forbids any request.
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "<link" not in html and "@import" not in html
    assert "default-src 'none'" in html
    blocks = _data_blocks(html)
    meta = blocks["mediq-meta"]
    assert isinstance(meta, dict)
    run = meta["runs"][0]
    assert run["config"]["agent"] == "checklist" and run["cases_note"] is None
    assert run["summary"]["interactive"]["accuracy"]["mean"] is not None
    assert set(run["plots"]) and all(uri.startswith("data:image/png;base64,") for uri in run["plots"].values())
    cases = meta["casesets"][run["cases_ref"]]
    assert len(cases) == 4 and all(c["facts"] and c["key_facts"] for c in cases.values())
    assert len(blocks["mediq-episodes-0"]) == len(_episodes(runs[0]))  # type: ignore[arg-type]


def test_markup_in_a_run_cannot_close_the_data_block(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = _hostile_run(runs[0], tmp_path / "hostile")
    html = build_html([load_view_run(run)])
    assert HOSTILE not in html and "<script>window.pwned" not in html
    episodes = _data_blocks(html)["mediq-episodes-0"]
    assert episodes[0]["turns"][0]["reply"] == HOSTILE  # type: ignore[index]


def test_missing_cases_file_is_reported_not_fatal(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "moved"
    shutil.copytree(runs[0], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["cases"] = str(tmp_path / "gone.jsonl")
    (run / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_view_run(run)
    assert loaded["cases"] == {} and "gone.jsonl" in loaded["cases_note"]
    assert loaded["episodes"]  # the chats are still there, without case texts
    build_html([loaded])


def test_changed_cases_file_is_not_trusted(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "changed"
    shutil.copytree(runs[0], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["cases_sha256"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_view_run(run)
    assert loaded["cases"] == {} and "changed since the run" in loaded["cases_note"]


def test_cli_view_writes_the_file(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "both.html"
    assert mediq(["view", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert f"viewer: {out}" in capsys.readouterr().out
    meta = _data_blocks(out.read_text(encoding="utf-8"))["mediq-meta"]
    assert [r["name"] for r in meta["runs"]] == ["checklist", "answer-now"]  # type: ignore[index]
    assert len(meta["casesets"]) == 1  # type: ignore[index]  # same cases: embedded once


def test_not_a_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mediq(["view", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


# -- in a real browser -----------------------------------------------------------------------------------------

needs_browser = pytest.mark.skipif(find_chromium() is None, reason="no Chromium binary (apt-get install chromium, or set MEDIQ_CHROMIUM)")


@pytest.fixture(scope="module")
def page(runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_html(list(runs), tmp_path_factory.mktemp("html") / "viewer.html")


@needs_browser
def test_dump_dom_shows_leaderboard_and_episodes(page: Path) -> None:
    binary = find_chromium()
    assert binary
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        dom = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
    assert 'data-ready="1"' in dom  # the script ran to the end
    body = dom.split('id="leaderboard"', 1)[1].split("</table>", 1)[0]
    assert body.count('data-run="') == 2 and "checklist" in body and "answer-now" in body
    table = dom.split('id="episode-table"', 1)[1].split("</table>", 1)[0]
    assert table.count('data-index="') == 4  # interactive episodes of the first run
    assert "4 of 12 episodes" in dom


def _click(b: Browser, selector: str) -> None:
    """A real mouse click (press and release) at the centre of the element."""
    box = b.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}}); "
                 "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        b.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


def _choose(b: Browser, select: str, value: str) -> None:
    """Pick an option of a <select> the way a user's choice reaches the page: value set, change event."""
    b.eval(f"(() => {{ const s = document.querySelector({json.dumps(select)}); s.focus(); s.value = {json.dumps(value)}; "
           "s.dispatchEvent(new Event('change', {bubbles: true})); })()")


@needs_browser
def test_filters_chat_and_side_by_side_in_chromium(page: Path, runs: tuple[Path, Path], tmp_path: Path) -> None:
    inter = [e for e in _episodes(runs[0]) if e["mode"] == "interactive"]
    with Browser() as b:
        b.open(page.resolve().as_uri())
        rows = "document.querySelectorAll('#episode-table tbody tr').length"
        assert b.eval(rows) == 4
        for outcome, expected in (("correct", sum(e["correct"] for e in inter)), ("wrong", sum(not e["correct"] for e in inter)),
                                  ("forced", sum(e["forced"] for e in inter)), ("failed", 0)):
            _choose(b, "#outcome-select", outcome)
            assert b.eval(rows) == expected, outcome
        _choose(b, "#outcome-select", "all")
        b.eval("(() => { const i = document.getElementById('case-filter'); i.value = 'bi-002'; i.dispatchEvent(new Event('input')); })()")
        assert b.eval(rows) == 1
        _choose(b, "#compare-select", "1")
        _click(b, "#episode-table tbody tr")
        b.wait_for("document.querySelectorAll('#episode-detail .episode').length === 2")
        columns = b.eval("[...document.querySelectorAll('#episode-detail .episode')].map(e => [e.dataset.run, e.dataset.key])")
        assert columns == [["0", "interactive/bi-002#r0"], ["1", "interactive/bi-002#r0"]]
        # The chat: two doctor questions, patient replies, the answer against the correct one, facts listed.
        first = "document.querySelector('#episode-detail .episode')"
        assert b.eval(f"{first}.querySelectorAll('.msg.doctor').length") == 3
        assert b.eval(f"{first}.querySelectorAll('.msg.patient').length") == 2
        assert "correct" in b.eval(f"{first}.querySelector('.msg.final').textContent")
        assert b.eval(f"{first}.querySelectorAll('.facts-list li').length") > 0
        assert b.eval(f"{first}.querySelectorAll('.chip').length") > 0  # reward components and scores
        # Search narrows by words in the replies and case text.
        b.eval("window.mediqViewer.setFilter({caseId: '', search: 'zzzz-no-such-word'})")
        assert b.eval(rows) == 0
        shot = b.screenshot(tmp_path / "shot.png")
        assert b.console_errors() == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@needs_browser
def test_markup_in_a_reply_is_shown_as_text(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = _hostile_run(runs[0], tmp_path / "hostile")
    html = write_html([run], tmp_path / "hostile.html")
    with Browser() as b:
        b.open(html.resolve().as_uri())
        b.eval("window.mediqViewer.openEpisode(0, 0)")
        assert b.eval("window.pwned === undefined")
        assert HOSTILE in b.eval("document.querySelector('#episode-detail .msg.patient').textContent")
        assert b.eval("document.querySelectorAll('#episode-detail img').length") == 0


@needs_browser
def test_fallback_turns_are_flagged(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "fallback"
    shutil.copytree(runs[0], run)
    eps = _episodes(run)
    eps[1]["turns"][0]["agent"].update(fallback="question_missing", fallback_kinds=["question_missing"])
    (run / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    html = write_html([run], tmp_path / "fallback.html")
    with Browser() as b:
        b.open(html.resolve().as_uri())
        _choose(b, "#outcome-select", "fallback")
        assert b.eval("document.querySelectorAll('#episode-table tbody tr').length") == 1
        _click(b, "#episode-table tbody tr")
        b.wait_for("document.querySelector('#episode-detail .b-fallback')")
        assert "question_missing" in b.eval("document.querySelector('#episode-detail .b-fallback').textContent")


@needs_browser
def test_a_large_run_draws_one_page(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "big", 3000)
    html = write_html([run], tmp_path / "big.html")
    with Browser() as b:
        seconds = b.open(html.resolve().as_uri())
        assert b.eval("document.querySelectorAll('#episode-table tbody tr').length") == 50
        assert b.eval("document.getElementById('episode-count').textContent") == "3,000 of 3,000 episodes"
        b.eval("window.mediqViewer.setFilter({outcome: 'failed'})")
        failed = sum(1 for e in _episodes(run) if e["error"])
        assert b.eval("window.mediqViewer.filteredCount()") == failed
        _click(b, "#next-page") if failed > 50 else None
        assert b.console_errors() == []
    assert seconds < 30  # generous: shared CI machines; the measured figure is in benchmarks/results


def test_serve_serves_the_file(runs: tuple[Path, Path], tmp_path: Path) -> None:
    import sys
    import urllib.request

    out = tmp_path / "served.html"
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.view", str(runs[0]), "--out", str(out), "--serve"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        url = next(line.split()[1] for line in lines if line.startswith("serving "))
        assert url.endswith("/served.html")
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.read() == out.read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)


def test_write_viewer_keeps_a_fresh_file_and_survives_read_only_media(runs: tuple[Path, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    run = tmp_path / "ro"
    shutil.copytree(runs[1], run)
    (run / "viewer.html").unlink(missing_ok=True)
    first = write_viewer(run)
    stamp = first.stat().st_mtime_ns
    assert write_viewer(run) == first and first.stat().st_mtime_ns == stamp  # a rerun of a finished run writes nothing
    # Read-only media: every open for writing under the run fails; the viewer goes to the temp folder.
    first.unlink()
    real_open = os.open

    def deny(path: object, flags: int, *a: object, **k: object) -> int:
        if str(run) in os.fsdecode(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):  # type: ignore[arg-type]
            raise PermissionError(30, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    before = sorted(p.name for p in run.iterdir())
    fallback = write_viewer(run)
    assert fallback.parent == Path(tempfile.gettempdir()) and fallback.exists()
    assert sorted(p.name for p in run.iterdir()) == before
    fallback.unlink()


# -- what each part of the page shows, checked against the run's own files ---------------------------------------


def test_mediq_bench_prints_the_viewer_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench-run"
    argv = ["bench", "--agent", "checklist", "--limit", "2", "--max-questions", "1", "--patient", "bm25",
            "--scorer", "env", "--modes", "interactive", "--out", str(out)]
    assert mediq(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"viewer: {out / 'viewer.html'}"
    meta = _data_blocks((out / "viewer.html").read_text(encoding="utf-8"))["mediq-meta"]
    assert meta["runs"][0]["config"]["agent"] == "checklist"  # type: ignore[index]
    # Rerunning the finished run prints the same path and leaves the file as it was.
    stamp = (out / "viewer.html").stat().st_mtime_ns
    assert mediq(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"viewer: {out / 'viewer.html'}"
    assert (out / "viewer.html").stat().st_mtime_ns == stamp


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


@needs_browser
def test_page_shows_the_runs_numbers_facts_scores_and_plots(page: Path, runs: tuple[Path, Path]) -> None:
    from mediq_env import builtin_cases

    cases = {c.id: c for c in builtin_cases()}
    summaries = [json.loads((r / "summary.json").read_text())["modes"] for r in runs]
    eps = _episodes(runs[0])
    with Browser() as b:
        b.call("Network.enable")
        b.open(page.resolve().as_uri())
        # Leaderboard: every column the issue names, and each run's accuracy with its interval and baselines.
        heads = b.eval("[...document.querySelectorAll('#leaderboard th')].map(th => th.textContent)")
        for h in ("accuracy [95% CI]", "no interaction", "full information", "majority letter", "questions asked",
                  "new facts / question", "fallback rate"):
            assert h in heads
        for i, s in enumerate(summaries):
            cells = b.eval(f"[...document.querySelectorAll('#leaderboard tr[data-run=\"{i}\"] td')].map(td => td.textContent)")
            acc = s["interactive"]["accuracy"]
            assert cells[heads.index("accuracy [95% CI]")] == f"{_pct(acc['mean'])} [{_pct(acc['ci_low'])}, {_pct(acc['ci_high'])}]"
            assert cells[heads.index("no interaction")].startswith(_pct(s["no_interaction"]["accuracy"]["mean"]))
            assert cells[heads.index("full information")].startswith(_pct(s["full_information"]["accuracy"]["mean"]))
        # Plots inline: one accuracy-vs-questions line per run, and every run's PNGs decoded from data: URIs.
        assert b.eval("document.querySelectorAll('#accuracy-chart svg polyline').length") == 2
        b.eval("document.getElementById('plots').open = true")
        n_png = sum(len(list((r / "plots").glob("*.png"))) for r in runs)
        assert n_png > 0 and b.eval("document.querySelectorAll('#plot-list img').length") == n_png
        b.eval("document.querySelectorAll('#plot-list img').forEach(i => i.loading = 'eager')")
        b.wait_for("[...document.querySelectorAll('#plot-list img')].every(i => i.complete && i.naturalWidth > 0)")
        # One chat, checked fact by fact against the episode record.
        index = next(i for i, e in enumerate(eps) if e["mode"] == "interactive" and any(t["new_facts"] for t in e["turns"]))
        e, case = eps[index], cases[eps[index]["case_id"]]
        b.eval(f"window.mediqViewer.openEpisode(0, {index})")
        box = "document.querySelector('#episode-detail .episode')"
        new = [case.facts[i] for t in e["turns"] for i in t["new_facts"]]
        assert b.eval(f"[...{box}.querySelectorAll('.msg.patient .fact.new')].map(x => x.textContent)") == new
        found = {i for t in e["turns"] for i in t["new_facts"]}
        missed = [i for i in case.key_facts if i not in found and i not in case.known_facts]
        assert b.eval(f"{box}.querySelectorAll('.facts-list li.found').length") == len(found)
        assert b.eval(f"[...{box}.querySelectorAll('.facts-list li.missed')].map(li => li.textContent)") == [
            f"{case.facts[i]} (key fact missed)" for i in missed]
        shown = {"ABCDEFGHIJ"[i]: case.options[old] for i, old in enumerate(e["option_order"])}
        assert b.eval(f"{box}.querySelector('.options li.correct').textContent").startswith(f"{e['correct_answer']}) {shown[e['correct_answer']]}")
        final = b.eval(f"{box}.querySelector('.msg.final').textContent")
        assert f"answered {e['answer']}) {shown[e['answer']]}; correct {e['correct_answer']})" in final
        # Reward components and attribute scores of every turn, as chips named by their keys.
        chips = b.eval(f"[...{box}.querySelectorAll('.chat .chip')].map(c => c.title)")
        for t in e["turns"]:
            assert set(t["reward_components"]) <= set(chips) and set(t["scores"]) <= set(chips)
        assert any(t["scores"] for t in e["turns"])
        # The specialty filter keeps exactly that specialty's episodes.
        specialty = case.specialty
        assert specialty
        b.eval("window.mediqViewer.openEpisode(0, 0)")
        _choose(b, "#specialty-select", specialty)
        expected = sum(1 for x in eps if x["mode"] == "interactive" and cases[x["case_id"]].specialty == specialty)
        assert b.eval("window.mediqViewer.filteredCount()") == expected
        assert b.eval("[...document.querySelectorAll('#episode-table tbody tr td:nth-child(2)')].every(td => td.textContent === "
                      f"{json.dumps(specialty)})")
        # Offline: the page requested nothing but itself and data: URIs.
        urls = [ev["params"]["request"]["url"] for ev in b.events if ev.get("method") == "Network.requestWillBeSent"]
        assert urls and all(u.startswith(("file:", "data:")) for u in urls), urls
        assert b.console_errors() == []


@needs_browser
def test_screenshot_command_opens_a_case_side_by_side(runs: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m benchmarks.view A B --screenshot PNG --case ID``: how benchmarks/results/viewer.png is made."""
    from benchmarks.view import main as view_main

    png, html = tmp_path / "shot.png", tmp_path / "both.html"
    assert view_main([str(runs[0]), str(runs[1]), "--out", str(html), "--screenshot", str(png), "--case", "bi-003"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"viewer: {html}", f"screenshot: {png}"]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1400 and height > 1000  # the full page: leaderboard, chart, two chats below the fold
    with pytest.raises(ValueError, match="no interactive episode on case nope"):
        view_main([str(runs[0]), "--out", str(html), "--screenshot", str(png), "--case", "nope"])
