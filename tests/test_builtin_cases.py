"""The built-in cases meet the bar the project set for them."""

from __future__ import annotations

from collections import Counter

from mediq_env import builtin_cases
from mediq_env.case import content_words


def test_counts_specialties_and_letters():
    cases = builtin_cases()
    assert len(cases) >= 40
    assert len({c.specialty for c in cases}) >= 10
    letters = Counter(c.answer for c in cases if len(c.options) == 4)
    assert max(letters.values()) - min(letters.values()) <= 2
    assert all(8 <= len(c.facts) <= 25 for c in cases)


def test_each_case_is_interactive():
    for case in builtin_cases():
        assert case.demographics and case.demographics.age and case.demographics.sex
        assert 2 <= len(case.key_facts) <= 6, case.id
        assert len(case.facts) - len(case.key_facts) >= 3, case.id  # room for distractors
        # The key facts are hidden: the initial information does not already state them.
        info = content_words(case.initial_info)
        for i in case.key_facts:
            fact_words = content_words(case.facts[i])
            assert not fact_words or len(fact_words & info) / len(fact_words) < 0.8, (case.id, case.facts[i])


def test_probes_point_at_real_facts():
    from benchmarks.probes import load_probes

    cases = {c.id: c for c in builtin_cases()}
    probes = [p for p in load_probes(["builtin"]) if p.kind == "targeted"]
    assert len(probes) >= 4 * len(cases)
    assert {p.case_id for p in probes} == set(cases)
