"""The case model and the loader: every public variant, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediq_env import Case, CaseFormatError, derive_initial_info, load_cases, read_cases
from mediq_env.case import content_words, initial_info_overlap
from tests.conftest import good_record


def test_loads_our_format_and_normalises(write_jsonl):
    path = write_jsonl([good_record(atomic_facts=["1. The patient is 40 years old.", "- The patient smokes."])])
    (case,) = load_cases(path, initial_info="given")
    assert case.facts == ("The patient is 40 years old.", "The patient smokes.")
    assert case.answer == "B" and case.answer_text == "Lung cancer"
    assert case.source == "cases"


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"answer_idx": "E"}, "answer_idx", "not among the options"),
        ({"answer": "Asthma"}, "answer", "does not match option B"),
        ({"atomic_facts": []}, "atomic_facts", "no facts"),
        ({"atomic_facts": "x", "id": None}, "id", "must be a string or an integer"),
        ({"options": {"A": "only one"}, "answer_idx": "A", "answer": "only one"}, "options", "2 to 10 options"),
        ({"options": {"A": "x", "C": "y"}, "answer_idx": "A", "answer": "x"}, "options", "consecutive letters"),
        ({"question": 3}, "question", "must be a string"),
        ({"atomic_facts": [1, 2]}, "atomic_facts", "list of strings"),
        ({"context": 5}, "context", "string or a list"),
    ],
)
def test_bad_records_name_file_line_and_field(write_jsonl, overrides, field, fragment):
    path = write_jsonl([good_record(id="ok"), good_record(**overrides)])
    report = read_cases(path)
    assert len(report.errors) == 1
    err = report.errors[0]
    assert (err.path, err.line, err.field) == (str(path), 2, field)
    assert fragment in err.message
    assert str(err).startswith(f"{path}:2: {field}: ")
    assert "\n" not in str(err)
    with pytest.raises(CaseFormatError, match=rf"^{path}:2: {field}: "):
        load_cases(path)


def test_missing_fields(write_jsonl):
    rec = good_record()
    del rec["options"]
    report = read_cases(write_jsonl([rec]))
    assert [e.field for e in report.errors] == ["options"]
    rec = good_record()
    del rec["question"]
    assert [e.field for e in read_cases(write_jsonl([rec])).errors] == ["question"]


def test_truncated_json_line(write_jsonl):
    good = json.dumps(good_record())
    path = write_jsonl([good, good[: len(good) // 2]])
    report = read_cases(path)
    assert len(report.cases) == 1
    (err,) = report.errors
    assert err.line == 2 and err.field == "json" and "invalid JSON" in err.message


def test_duplicate_ids(write_jsonl):
    path = write_jsonl([good_record(), good_record()])
    report = read_cases(path)
    (err,) = report.errors
    assert err.field == "id" and err.line == 2 and "first seen on line 1" in err.message


def test_duplicate_ids_across_files(write_jsonl):
    a = write_jsonl([good_record()], "a.jsonl")
    b = write_jsonl([good_record()], "b.jsonl")
    with pytest.raises(CaseFormatError, match="already loaded"):
        load_cases([a, b])


def test_json_array_with_line_numbers(tmp_path: Path):
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([good_record(id=1), good_record(id=2, answer_idx="Z")], indent=2))
    report = read_cases(path)
    assert [c.id for c in report.cases] == ["1"]
    (err,) = report.errors
    assert err.field == "answer_idx" and err.line is not None and err.line > 10


def test_variants_facts_key_int_id_context_list_no_initial_info(write_jsonl):
    rec = good_record(id=7)
    rec["facts"] = rec.pop("atomic_facts")
    del rec["initial_info"]
    rec["context"] = ["A 40-year-old man has a cough. He is worried.", "He smokes."]
    rec["patient"] = {"gender": "Male", "age": "40 years old"}
    report = read_cases(write_jsonl([rec]), initial_info="given")
    (case,) = report.cases
    assert case.id == "7"
    assert case.initial_info == "A 40-year-old man has a cough."
    assert case.demographics is not None and case.demographics.sex == "male"
    assert report.quirks["integer id"] == 1 and report.quirks["'facts' instead of 'atomic_facts'"] == 1


def test_context_as_string_and_five_options(write_jsonl):
    rec = good_record(context="Title\n\nBody of the post.", options={"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}, answer_idx="E", answer="e")
    (case,) = load_cases(write_jsonl([rec]), initial_info="given")
    assert case.context == ("Title", "Body of the post.") and case.answer == "E"


def test_missing_file_and_empty_file(tmp_path: Path):
    with pytest.raises(CaseFormatError, match="file not found"):
        read_cases(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "no cases" in str(read_cases(empty).errors[0])


@pytest.mark.parametrize("name", ["cases.jsonl", "cases.json"])
def test_a_byte_order_mark_is_not_an_error(tmp_path: Path, name: str):
    # Excel and Notepad save UTF-8 with a BOM; json refuses it, so the whole file used to be one error.
    path = tmp_path / name
    body = json.dumps(good_record()) if name.endswith(".jsonl") else json.dumps([good_record()])
    path.write_bytes(b"\xef\xbb\xbf" + body.encode() + b"\n")
    report = read_cases(path)
    assert not report.errors and [c.id for c in report.cases] == ["c1"]


def test_mismatched_initial_info_is_derived(write_jsonl):
    rec = good_record(initial_info="I've had persistent knee swelling and a rash on my toes.")
    report = read_cases(write_jsonl([rec, good_record(id="c2"), good_record(id="c3")]), initial_info="auto")
    first, second, _ = report.cases
    assert first.initial_info.startswith("A 40-year-old patient.")
    assert "knee" not in first.initial_info
    assert second.initial_info == good_record()["initial_info"]
    assert len(report.notes) == 1 and ":1: initial_info" in report.notes[0]
    # When most strings of a file are mismatched, the whole file is rebuilt.
    bad = [good_record(id=f"b{i}", initial_info="Persistent knee swelling.") for i in range(2)]
    report = read_cases(write_jsonl([*bad, good_record(id="c2")]), initial_info="auto")
    assert all(c.initial_info.startswith("A 40-year-old patient.") for c in report.cases)
    assert "2 of 3" in report.notes[0]


def test_derive_initial_info_uses_demographics_and_first_clinical_fact():
    case = Case(**{**_fields(), "facts": ("The patient is female.", "The patient is 23 years old.", "The patient has a rash on her arms.")})
    assert derive_initial_info(case) == "A 23-year-old female patient. The patient has a rash on her arms."
    assert initial_info_overlap(case.model_copy(update={"initial_info": "[describe main symptom]"})) == 0.0


def _fields() -> dict:
    return {"id": "x", "initial_info": "info", "facts": ("f",), "question": "q?", "options": {"A": "a", "B": "b"}, "answer": "A"}


def test_option_permutation_keeps_the_answer_text():
    case = load_cases_from_record(good_record())
    permuted = case.with_options_permuted(["D", "C", "B", "A"])
    assert permuted.answer == "C" and permuted.answer_text == case.answer_text


def load_cases_from_record(rec: dict) -> Case:
    from mediq_env.case import _record_to_fields

    return Case(**_record_to_fields(rec, "mem", 1))


@settings(max_examples=60, deadline=None)
@given(
    n_options=st.integers(2, 10),
    answer=st.integers(0, 9),
    n_facts=st.integers(1, 12),
    numbered=st.booleans(),
    int_id=st.booleans(),
)
def test_property_any_valid_variant_round_trips(tmp_path_factory, n_options, answer, n_facts, numbered, int_id):
    answer %= n_options
    letters = "ABCDEFGHIJ"[:n_options]
    facts = [f"{i + 1}. Fact number {i} about the patient." if numbered else f"Fact number {i} about the patient." for i in range(n_facts)]
    rec = {
        "id": 12 if int_id else "case-12",
        "atomic_facts": facts,
        "context": ["Presentation sentence. Second sentence."],
        "question": "Which option?",
        "options": {letter: f"Option {letter}" for letter in letters},
        "answer_idx": letters[answer],
        "answer": f"Option {letters[answer]}",
    }
    path = tmp_path_factory.mktemp("p") / "c.jsonl"
    path.write_text(json.dumps(rec))
    (case,) = load_cases(path, initial_info="given")
    assert case.answer == letters[answer]
    assert len(case.facts) == n_facts and all(f.startswith("Fact number") for f in case.facts)
    assert case.initial_info == "Presentation sentence."


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_property_garbage_lines_give_one_line_errors(tmp_path_factory, junk):
    path = tmp_path_factory.mktemp("g") / "c.jsonl"
    path.write_text(json.dumps(good_record()) + "\n" + junk.replace("\n", " ") + "\n", encoding="utf-8")
    report = read_cases(path)
    assert len(report.cases) == 1
    for err in report.errors:
        assert "\n" not in str(err) and err.line == 2


@pytest.mark.shared
def test_public_files_load_with_known_quirks(shared_data: Path):
    askdocs = read_cases(shared_data / "mediq_askdocs_dev.jsonl")
    assert len(askdocs.cases) == 205 and not askdocs.errors
    assert any("initial_info" in n for n in askdocs.notes)
    medqa = read_cases(shared_data / "medqa_dev.jsonl")
    assert medqa.records == 1272
    assert len(medqa.cases) + len(medqa.errors) == 1272
    assert all(e.field == "atomic_facts" for e in medqa.errors)
    assert medqa.quirks["integer id"] == 1272
    assert not any(re.match(r"\d{1,3}\.\s", f) for c in medqa.cases for f in c.facts)


# -- key facts (issues 12 and 13) -------------------------------------------------------------------------


def test_key_facts_are_reindexed_when_a_blank_fact_is_dropped(write_jsonl):
    facts = ["The patient is 40 years old.", "   ", "The patient smokes.", "The patient has lost 6 kg."]
    (case,) = read_cases(write_jsonl([good_record(atomic_facts=facts, key_facts=[2, 3])])).cases
    assert [case.facts[i] for i in case.key_facts] == ["The patient smokes.", "The patient has lost 6 kg."]


def test_key_fact_on_a_blank_fact_is_refused(write_jsonl):
    facts = ["The patient is 40 years old.", "", "The patient smokes."]
    (err,) = read_cases(write_jsonl([good_record(atomic_facts=facts, key_facts=[1])])).errors
    assert err.field == "key_facts" and "blank fact" in err.message


@pytest.mark.parametrize(("key_facts", "fragment"), [([9], "out of range"), ([-1], "out of range"), ([0, 0], "more than once")])
def test_key_fact_errors_name_the_key_facts_field(write_jsonl, key_facts, fragment):
    (err,) = read_cases(write_jsonl([good_record(key_facts=key_facts)])).errors
    assert err.field == "key_facts" and fragment in err.message
    assert str(err).startswith(f"{err.path}:1: key_facts: ")


def test_model_level_key_fact_error_names_the_field():
    from mediq_env.case import _pydantic_error

    with pytest.raises(Exception) as info:
        Case(**{**_fields(), "key_facts": (5,)})
    err = _pydantic_error("f.jsonl", 3, info.value)  # type: ignore[arg-type]
    assert err.field == "key_facts" and "index 5 is out of range" in err.message


# -- the derived opening and known facts (issue 10, item 4) -------------------------------------------------


def _case(facts: tuple[str, ...], options: dict | None = None) -> Case:
    return Case(**{**_fields(), "facts": facts, "options": options or {"A": "Sleep paralysis", "B": "Stroke"}})


def test_opening_skips_measurements_origin_meta_and_beliefs():
    case = _case((
        "The patient is male.", "The patient is 20 years old.", "The patient's height is 188 cm.",
        "The patient's weight is approximately 90 kg.", "The patient is Caucasian.",
        "The doctor asked how long it lasted.", "The patient posted about this before.",
        "The patient wonders if it is serious.", "The patient feels light-headed when climbing stairs.",
    ))
    from mediq_env.case import derive_opening

    opening, known = derive_opening(case)
    assert opening == "A 20-year-old male patient. The patient feels light-headed when climbing stairs."
    assert known == (0, 1, 8)


def test_opening_never_names_an_option_and_ignores_a_relatives_age():
    case = _case((
        "The patient's son is 3 years old.", "The patient believes it was sleep paralysis.",
        "The patient was diagnosed when they were 10 years old.", "The patient woke up unable to move.",
    ))
    opening = derive_initial_info(case)
    assert opening.startswith("A patient. ") and "paralysis" not in opening and "son" not in opening


def test_opening_uses_a_belief_only_when_no_symptom_exists():
    case = _case(("The patient is 30 years old.", "The patient wonders whether kelp helps."))
    assert derive_initial_info(case) == "A 30-year-old patient. The patient wonders whether kelp helps."


def test_derived_openings_record_known_facts(write_jsonl):
    bad = [good_record(id=f"b{i}", initial_info="Persistent knee swelling.") for i in range(2)]
    for case in read_cases(write_jsonl(bad), initial_info="auto").cases:
        assert case.initial_info == "A 40-year-old patient. The patient has lost 6 kg."
        assert case.known_facts == (0, 2)


def test_given_openings_state_facts_conservatively():
    from mediq_env.case import stated_facts

    opening = "A 40-year-old man who smokes has lost weight."
    facts = ["The patient is 40 years old.", "The patient is male.", "The patient smokes 20 cigarettes a day.",
             "The patient has lost 6 kg.", "The patient is 14 years old."]
    assert stated_facts(opening, facts) == (0, 1)


def test_builtin_known_facts_are_in_their_openings():
    from mediq_env import builtin_cases

    cases = builtin_cases()
    assert sum(bool(c.known_facts) for c in cases) >= len(cases) // 2
    for case in cases:
        for i in case.known_facts:
            missing = content_words(case.facts[i]) - {"male", "female"} - content_words(case.initial_info)
            # The rule lets a long fact miss one word ("seven days ago" for "a week ago"), never more.
            assert len(missing) <= 1, (case.id, case.facts[i])
            assert i not in case.key_facts, (case.id, i)


def test_leaks_and_stray_quotes_are_warnings(write_jsonl):
    rec = good_record(atomic_facts=["The patient is 40 years old.", "Friends say it looks like pneumonia."])
    rec["options"]["D"] = "Reflux’"
    report = read_cases(write_jsonl([rec]))
    assert len(report.cases) == 1 and not report.errors
    assert any(":1: atomic_facts[1]: names option C \"Pneumonia\"" in w for w in report.warnings)
    assert any(":1: options.D: stray quote character" in w for w in report.warnings)


@pytest.mark.shared
def test_askdocs_openings_are_complaints_not_demographics(shared_data: Path):
    from mediq_env.case import _NOT_A_COMPLAINT, _option_named

    cases = load_cases(shared_data / "mediq_askdocs_dev.jsonl")
    complaints = [c.initial_info.split("patient. ", 1)[1] for c in cases if "patient. " in c.initial_info]
    assert len(complaints) >= 200
    assert sum(bool(_NOT_A_COMPLAINT.search(x)) for x in complaints) <= 5
    assert not any(_option_named(c.initial_info, c.options) for c in cases)
    assert all(c.known_facts for c in cases if "patient. " in c.initial_info)


@pytest.mark.shared
def test_medqa_known_facts_are_conservative(shared_data: Path):
    cases = load_cases(shared_data / "medqa_dev.jsonl", strict=False)
    known = [(c, i) for c in cases for i in c.known_facts]
    assert known, "MedQA openings are the vignette's first sentence; some facts repeat it"
    for case, i in known:
        missing = content_words(case.facts[i]) - {"male", "female"} - content_words(case.initial_info)
        assert len(missing) <= 1, (case.id, case.facts[i], case.initial_info)
