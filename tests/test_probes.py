"""The labelled probe set: every label names a fact by index and hash; stale labels are errors."""

from __future__ import annotations

import json

import pytest

from benchmarks.probes import fact_hash, load_probe_cases, load_probes, main, split_of
from mediq_env.errors import CaseFormatError


def test_builtin_probes_load_and_split_by_case():
    probes = load_probes(["builtin"])
    assert probes
    by_case: dict[str, set[str]] = {}
    for p in probes:
        by_case.setdefault(p.case_id, set()).add(p.split)
    assert all(len(s) == 1 for s in by_case.values())  # a case is wholly in one half
    assert split_of("builtin", "bi-001") == split_of("builtin", "bi-001")


def test_stale_label_is_an_error_naming_file_line_field(tmp_path, capsys):
    case = load_probe_cases("builtin")["bi-001"]
    good = {"source": "builtin", "case_id": "bi-001", "kind": "targeted", "question": "Q?", "answers": [[0, fact_hash(case.facts[0])]]}
    stale = dict(good, answers=[[1, fact_hash(case.facts[0])]])
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(stale) + "\n", encoding="utf-8")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: answers:" in err and "stale label" in err


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"kind": "adversarial", "answers": []}, "attack"),
        ({"kind": "unanswerable", "answers": [[0, "x"]]}, "answers"),
        ({"kind": "targeted", "answers": []}, "answers"),
        ({"case_id": "nope"}, "case_id"),
        ({"kind": "guess"}, "kind"),
    ],
)
def test_bad_records_are_refused(tmp_path, record, field):
    from benchmarks.probes import _load_files

    case = load_probe_cases("builtin")["bi-001"]
    base = {"source": "builtin", "case_id": "bi-001", "kind": "targeted", "question": "Q?", "answers": [[0, fact_hash(case.facts[0])]]}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**base, **record}) + "\n", encoding="utf-8")
    with pytest.raises(CaseFormatError) as err:
        _load_files([path])
    assert err.value.field == field


@pytest.mark.shared
def test_public_probe_labels_match_the_data(shared_data):
    probes = load_probes(["askdocs", "medqa"], data_dir=str(shared_data))
    assert len(probes) >= 700
    assert len({(p.source, p.case_id) for p in probes}) >= 100


def test_public_probes_skip_when_data_absent(tmp_path):
    assert load_probes(["askdocs", "medqa"], data_dir=str(tmp_path)) == []


def test_check_validates_the_second_labellers_labels_too(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "second labels" in out  # at least the built-in 120 (all 360 with the data)
