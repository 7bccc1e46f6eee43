"""Hostile and broken inputs: every one is a clear one-line error (or a reported warning), never a
traceback, a hang or a silently accepted case."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import mediq_env.case as case_mod
from mediq_env import Case, CaseFormatError, MediQEnv, builtin_cases, read_cases
from mediq_env.actions import parse_action
from mediq_env.cli import main
from mediq_env.errors import ConfigError
from tests.conftest import good_record


def _one_error(report, field: str, fragment: str) -> CaseFormatError:
    assert not report.cases
    (err,) = report.errors
    assert err.field == field and fragment in err.message, str(err)
    assert "\n" not in str(err)
    return err


# -- files that are not cases files ---------------------------------------------------------------------


def test_deeply_nested_json_line_is_one_error(write_jsonl):
    path = write_jsonl([json.dumps(good_record(id="ok")), '{"id": ' + "[" * 100_000 + "]" * 100_000 + "}"])
    report = read_cases(path)
    (err,) = report.errors
    assert (err.line, err.field) == (2, "json") and "nested too deeply" in err.message and len(report.cases) == 1


def test_deeply_nested_json_array_file_is_one_error(tmp_path: Path):
    path = tmp_path / "cases.json"
    path.write_text("[" + "{\"a\":" * 50_000 + "1" + "}" * 50_000 + "]")
    _one_error(read_cases(path), "json", "nested too deeply")


def test_five_thousand_digit_id_is_one_error(write_jsonl):
    path = write_jsonl(['{"id": ' + "9" * 5000 + "}"])
    _one_error(read_cases(path), "json", "invalid JSON")


def test_long_integer_id_is_refused(write_jsonl):
    path = write_jsonl([good_record(id=int("9" * 300))])
    _one_error(read_cases(path), "id", "more than 200 digits")


def test_directory_is_refused(tmp_path: Path):
    with pytest.raises(CaseFormatError, match="is a directory"):
        read_cases(tmp_path)


def test_symlink_loop_is_refused(tmp_path: Path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    with pytest.raises(CaseFormatError, match=r"cannot read the file"):
        read_cases(loop)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.timeout(20)
def test_fifo_is_refused_without_blocking(tmp_path: Path):
    fifo = tmp_path / "cases.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(CaseFormatError, match="FIFO"):
        read_cases(fifo)


def test_file_over_the_size_limit_is_refused(write_jsonl, monkeypatch):
    path = write_jsonl([good_record()])
    monkeypatch.setattr(case_mod, "MAX_FILE_BYTES", 100)
    with pytest.raises(CaseFormatError, match="more than the limit of 100"):
        read_cases(path)


def test_cli_on_a_fifo_or_loop_is_one_line(tmp_path: Path, capsys):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    assert main(["validate", str(loop)]) == 1
    out = capsys.readouterr().out
    assert "Traceback" not in out and f"error: {loop}: cannot read the file" in out


# -- records accepted too easily ------------------------------------------------------------------------


def test_unknown_keys_are_warned_and_mediq_keys_are_not(write_jsonl):
    mediq_extras = {"usage": {}, "original_post": "x", "explanation": "", "facts_old": [], "context_len": 1,
                    "patient": {"age": "40", "gender": "Male", "specialties": ["x"]}}
    path = write_jsonl([good_record(id="a", **mediq_extras), good_record(id="b", key_fact=[1], answer_index="B")])
    report = read_cases(path)
    assert [c.id for c in report.cases] == ["a", "b"]
    assert report.warnings == [f"{path}:2: record: unknown keys 'answer_index', 'key_fact' ignored"]


@pytest.mark.parametrize(
    ("age", "fragment"),
    [([1, 2], "must be a string or a number, got list"), (math.nan, "between 0 and 150"),
     (-3, "between 0 and 150"), ({"years": 4}, "got dict"), (True, "got bool")],
)
def test_bad_age_is_refused(write_jsonl, age, fragment):
    rec = good_record(patient={"age": age, "gender": "male"})
    path = Path(write_jsonl([rec]))
    if isinstance(age, float) and math.isnan(age):
        path.write_text(json.dumps(rec), encoding="utf-8")  # json.dumps writes NaN, as Python's json reads it
    _one_error(read_cases(path), "patient.age", fragment)


def test_numeric_age_is_text():
    rec = good_record(demographics={"age": 40, "sex": "female"})
    (case,) = load_cases_from(rec)
    assert case.demographics is not None and case.demographics.age == "40"


def load_cases_from(rec: dict) -> list[Case]:
    from mediq_env.case import _record_to_fields

    return [Case(**_record_to_fields(rec, "mem", 1))]


@pytest.mark.parametrize("key", ["specialty", "source"])
def test_empty_specialty_or_source_is_refused(write_jsonl, key):
    _one_error(read_cases(write_jsonl([good_record(**{key: "  "})])), key, "must not be empty")
    with pytest.raises(ValidationError, match="must not be empty"):
        Case(**{**builtin_cases()[0].model_dump(), key: ""})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"question": "What\ud800?"}, "question"),
        ({"atomic_facts": ["The patient is 40.", "Bad \udfff fact."]}, "atomic_facts[1]"),
        ({"options": {"A": "Asthma", "B": "Lung cancer\ud83d"}, "answer_idx": "A", "answer": "Asthma"}, "options.B"),
        ({"initial_info": "\ud800"}, "initial_info"),
        ({"context": ["ok", "x\ud800"]}, "context[1]"),
        ({"id": "c\ud800"}, "id"),
    ],
)
def test_lone_surrogates_are_refused(tmp_path: Path, overrides, field):
    path = tmp_path / "c.jsonl"
    # ensure_ascii keeps the surrogate as a "\ud800" escape, exactly as a broken exporter writes it.
    path.write_text(json.dumps(good_record(**overrides), ensure_ascii=True), encoding="utf-8")
    _one_error(read_cases(path), field, "lone surrogate")


def test_case_with_a_surrogate_cannot_be_built_so_fingerprint_never_crashes():
    fields = builtin_cases()[0].model_dump()
    with pytest.raises(ValidationError, match="lone surrogate"):
        Case(**{**fields, "key_facts": (), "known_facts": (), "facts": ("fine", "bad \ud800")})
    assert len(builtin_cases()[0].fingerprint()) == 16


def test_size_limits(write_jsonl):
    big = "x" * (case_mod.MAX_TEXT_CHARS + 1)
    _one_error(read_cases(write_jsonl([good_record(question=big)])), "question", "more than the limit")
    huge = "y" * 10_000_000
    _one_error(read_cases(write_jsonl([good_record(question=huge)])), "question", "more than the limit")
    many = [f"Fact {i}." for i in range(100_000)]
    _one_error(read_cases(write_jsonl([good_record(atomic_facts=many)])), "atomic_facts", "more than the limit of 500")
    _one_error(read_cases(write_jsonl([good_record(context=["z" * 60_000, "z" * 60_000])])), "context", "in all")


def test_limits_are_documented():
    doc = Case.__doc__ or ""
    for name in ("MAX_ID_CHARS", "MAX_TEXT_CHARS", "MAX_CONTEXT_CHARS", "MAX_FACTS", "MAX_FILE_BYTES"):
        assert name in doc and isinstance(getattr(case_mod, name), int)


# -- the environment's inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"case_index": "x"}, {"case_index": 1.9}, {"case_index": True}, {"case_index": None}, ["case_id"],
     "case_id", {"case_id": ["bi-001"]}, {"case_id": None}, {"case_id": "bi-001", "case_index": 0}],
)
def test_bad_reset_options_are_config_errors(options):
    env = MediQEnv(max_questions=2)
    with pytest.raises(ConfigError):
        env.reset(options=options)


def test_confidence_nan_and_control_character_questions_are_invalid():
    options = {"A": "Stroke", "B": "Panic attack"}
    for conf in (math.nan, math.inf, -math.inf):
        parsed = parse_action({"answer": "B", "confidence": conf}, options, 100)
        assert parsed.kind == "invalid" and parsed.error is not None and "finite" in parsed.error
    for text in ("\x00\x01\x02", {"question": "\x00\x01\x02"}, "QUESTION: ???", "\u200b\u200b"):
        parsed = parse_action(text, options, 100)
        assert parsed.kind == "invalid" and parsed.error == "the question has no letters or digits"


def test_control_character_question_uses_a_turn_as_invalid():
    env = MediQEnv(max_questions=3)
    env.reset(seed=0)
    *_, info = env.step("\x00\x01\x02")
    assert info["action_type"] == "invalid" and info["invalid_action"] and info["questions_asked"] == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_env_given_a_directory_is_one_error(tmp_path: Path):
    with pytest.raises(CaseFormatError, match="is a directory"):
        MediQEnv(tmp_path)
