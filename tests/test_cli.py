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
    info = play(case.id, read=lambda _prompt: next(inputs), out=out)
    text = out.getvalue()
    assert info["correct"] is True
    assert "Patient:" in text and "You answered" in text and "correct" in text
    assert "facts. /facts:" in text and "(key)" in text


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
