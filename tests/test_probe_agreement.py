"""The second labeller's labels: they load and validate, match the seeded draw, and the agreement figures
are computed as documented."""

from __future__ import annotations

import json

import pytest

from benchmarks.probe_agreement import agreement_rows, draw_sample, load_second_labels, pair_kappa
from benchmarks.probes import Probe, fact_hash, load_probe_cases
from mediq_env.errors import CaseFormatError


def test_second_labels_are_the_seeded_draw_of_the_test_half():
    labelled = [p for p, _ in load_second_labels() if p.source == "builtin"]
    drawn = [p for p in draw_sample() if p.source == "builtin"]
    assert len(labelled) == 120 and labelled == drawn
    assert all(p.split == "test" and p.kind != "adversarial" for p in labelled)


def test_second_labeller_agrees_with_the_probe_set_on_builtin():
    pairs = [(p, a) for p, a in load_second_labels() if p.source == "builtin"]
    probes, second = [p for p, _ in pairs], [a for _, a in pairs]
    row = agreement_rows(probes, second, second)[0]  # the second labeller as the reply, the probe set as truth
    assert row["answered"] >= 0.95 and row["off_target"] <= 0.02 and row["abstained"] >= 0.95
    assert pair_kappa(probes, [p.answers for p in probes], second)["kappa"] >= 0.9


def test_agreement_rows_score_each_label_set_as_a_reply():
    facts = load_probe_cases("builtin")["bi-001"].facts
    probes = [
        Probe("builtin", "bi-001", "targeted", "Q1?", (4,)),
        Probe("builtin", "bi-001", "history", "Q2?", (2, 3)),
        Probe("builtin", "bi-001", "unanswerable", "Q3?", ()),
    ]
    second = [(4, 5), (6,), ()]  # agrees, disagrees, agrees (empty)
    patient = [(5,), (3,), (7,)]  # off the first label but on the second's; right; reveals for nothing
    rows = {(r["reply"], r["truth"]): r for r in agreement_rows(probes, second, patient)}
    first_truth = rows[("second labeller", "first labeller (the probe set)")]
    assert first_truth["answered"] == pytest.approx(1 / 2) and first_truth["off_target"] == pytest.approx(1 / 2)
    assert rows[("faithful patient", "first labeller (the probe set)")]["answered"] == pytest.approx(1 / 2)
    union = rows[("faithful patient", "either labeller (union)")]
    assert union["answered"] == 1.0 and union["abstained"] == 0.0  # (5,) counts under the union
    both = rows[("faithful patient", "both labellers (intersection)")]
    assert both["answerable"] == 1 and both["answered"] == 0.0  # Q2's labels share nothing: unanswerable
    k = pair_kappa(probes, [p.answers for p in probes], second)
    assert k["pairs"] == 3 * len(facts) and k["identical"] == pytest.approx(1 / 3) and -1 <= k["kappa"] < 1


def test_a_bad_second_label_names_file_line_and_field(tmp_path):
    probe = next(p for p, _ in load_second_labels() if p.source == "builtin")
    facts = load_probe_cases("builtin")[probe.case_id].facts
    good = {"source": "builtin", "case_id": probe.case_id, "kind": probe.kind, "question": probe.question, "answers": [[0, fact_hash(facts[0])]]}
    path = tmp_path / "second.jsonl"
    path.write_text(json.dumps(good) + "\n", encoding="utf-8")
    assert load_second_labels(path) == [(probe, (0,))]
    path.write_text("\n" + json.dumps(dict(good, answers=[[1, fact_hash(facts[0])]])) + "\n", encoding="utf-8")
    with pytest.raises(CaseFormatError) as err:
        load_second_labels(path)
    assert err.value.line == 2 and err.value.field == "answers" and "stale" in str(err.value)
    path.write_text(json.dumps(dict(good, question="Is this a question nobody asked?")) + "\n", encoding="utf-8")
    with pytest.raises(CaseFormatError) as err:
        load_second_labels(path)
    assert err.value.line == 1 and err.value.field == "question"


def test_second_labels_load_for_every_source(shared_data):  # type: ignore[no-untyped-def]
    pairs = load_second_labels()
    assert len(pairs) == 360 and [p for p, _ in pairs] == draw_sample()
