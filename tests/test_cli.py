"""`mediq validate` and `mediq play` (driven by scripted terminal input)."""

from __future__ import annotations

import io
import json

import pytest

from mediq_env import builtin_cases
from mediq_env.cli import main, play
from tests.conftest import good_record


def test_validate_prints_statistics_and_problems(write_jsonl, capsys):
    path = write_jsonl([good_record(id="a"), good_record(id="b", answer_idx="Q"), "{not json"])
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "records: 3   valid cases: 1   problems: 2" in out
    assert f"error: {path}:2: answer_idx:" in out and f"error: {path}:3: json:" in out
    assert "majority letter: B = 100.0%" in out


def test_validate_builtin_is_clean(capsys):
    from mediq_env.cases import builtin_cases_path

    assert main(["validate", str(builtin_cases_path())]) == 0
    assert "problems: 0" in capsys.readouterr().out


@pytest.mark.shared
def test_validate_public_files(shared_data, capsys):
    main(["validate", str(shared_data / "mediq_askdocs_dev.jsonl"), str(shared_data / "medqa_dev.jsonl")])
    out = capsys.readouterr().out
    assert "records: 205   valid cases: 205" in out and "records: 1272" in out
    assert "majority letter: C = 52.2%" in out
    assert "do not match their case" in out


def test_missing_file_is_one_line(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "none.jsonl")]) == 1
    assert "file not found" in capsys.readouterr().out


def test_play_scripted_session():
    case = builtin_cases()[0]
    inputs = iter(["How old are you?", "/options", "Do you smoke?", f"/answer {case.answer}"])
    out = io.StringIO()
    info = play(case.id, read=lambda _prompt: next(inputs), out=out, shuffle_options=False)
    text = out.getvalue()
    assert info["correct"] is True
    assert "Patient:" in text and "You answered" in text and "correct" in text
    assert "Facts of the case:" in text and "(key)" in text


def test_play_marks_opening_facts_as_given_not_missed():
    case = builtin_cases()[0]
    assert case.known_facts, "the built-in opening states the age and sex"
    inputs = iter([f"/answer {case.answer}"])
    out = io.StringIO()
    play(case.id, read=lambda _prompt: next(inputs), out=out, shuffle_options=False)
    text = out.getvalue()
    assert "/facts" not in text
    for i in case.known_facts:
        assert f"  [=] {case.facts[i]}" in text and f"  [ ] {case.facts[i]}" not in text
    hidden = len(case.facts) - len(case.known_facts)
    assert f"You uncovered 0 of the {hidden} facts not in the opening" in text


def test_play_unknown_command_uses_no_turn():
    case = builtin_cases()[0]
    inputs = iter(["/facts", "/anwser B", "/help", f"/answer {case.answer}"])
    out = io.StringIO()
    info = play(case.id, max_questions=1, read=lambda _prompt: next(inputs), out=out, shuffle_options=False)
    text = out.getvalue()
    # Sent to the patient, "/facts" used up the only question and the answer came on the forced turn.
    assert info["correct"] is True and info["forced"] is False and info["questions_asked"] == 0
    assert "(unknown command '/facts'; commands: /answer, /options, /help, /quit)" in text
    assert "(unknown command '/anwser'" in text and text.count("Commands: type a question") == 2


def test_a_reader_that_goes_away_is_no_traceback(tmp_path):
    import subprocess
    import sys

    # `mediq validate ... | head -1`: the pipe closes before mediq writes. Unbuffered as under
    # PYTHONUNBUFFERED, and buffered (the error would then surface at interpreter exit).
    for unbuffered in ("1", ""):
        env = {**__import__("os").environ, "PYTHONUNBUFFERED": unbuffered}
        proc = subprocess.Popen([sys.executable, "-m", "mediq_env.cli", "validate", str(builtin_path())],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 1 and err == "", err


def builtin_path():
    from mediq_env.cases import builtin_cases_path

    return builtin_cases_path()


def test_validate_pluralises_and_prints_warnings(write_jsonl, capsys):
    rec = good_record(id=7, atomic_facts=["The patient is 40 years old.", "The patient thinks it is lung cancer."])
    rec["options"]["C"] = '"Pneumonia'
    path = write_jsonl([rec])
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "quirk: integer id: 1 record\n" in out and "1 records" not in out
    assert f"warning: {path}:1: atomic_facts[1]: names option B \"Lung cancer\" (the answer: a leak)" in out
    assert f"warning: {path}:1: options.C: stray quote character" in out


def test_validate_a_directory_is_one_line(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "is a directory" in out and "Traceback" not in out


def test_play_runs_out_of_questions():
    case = builtin_cases()[1]
    inputs = iter(["Any fever?", "Any pain?", "Another question?"])
    out = io.StringIO()
    info = play(case.id, max_questions=2, read=lambda _p: next(inputs), out=out)
    assert info["answer"] is None and "No answer given" in out.getvalue()


def test_cli_play_eof_quits(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["play", "--case", builtin_cases()[2].id]) == 0
    assert "Stopped without an answer" in capsys.readouterr().out


def test_unknown_case_is_one_line_error(capsys):
    assert main(["play", "--case", "does-not-exist"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mediq: error:") and err.count("\n") == 1
    json.dumps(err)


def test_a_shadowing_agents_package_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """openai-agents (a dependency of verifiers) ships a top-level `agents` package that hides ours."""
    import importlib.machinery
    import importlib.util

    from mediq_env import cli

    fake = tmp_path / "site-packages" / "agents" / "__init__.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "agents":
            return importlib.machinery.ModuleSpec("agents", None, origin=str(fake))
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert cli.main(["validate", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "openai-agents" in err and str(fake) in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    assert cli._shadowed_agents() is None  # ours, here
