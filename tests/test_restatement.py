"""benchmarks.restatement counts pairs within a case, apart for a shared answer and not."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.restatement import pair_rates


def test_pair_rates_split_pairs_by_shared_answer_and_skip_unanswerable_and_other_cases():
    e = np.eye(3, dtype=np.float32)
    close = (e[0] + 0.2 * e[1]) / np.linalg.norm(e[0] + 0.2 * e[1])
    embeddings = np.stack([e[0], close, e[1], e[0], e[2]])
    answers = [(1,), (1, 2), (3,), (1,), ()]
    groups = ["a", "a", "a", "b", "a"]  # the fourth is another case; the fifth is unanswerable
    r = pair_rates(answers, groups, embeddings, (0.1, 0.5, 0.99))
    assert r["pairs_sharing_an_answer"] == 1 and r["pairs_about_different_facts"] == 2
    # cosines: e0~close 0.98 (sharing), close~e1 0.196 and e0~e1 0 (different)
    assert r["rates"]["0.10"] == {"sharing": 1.0, "different": pytest.approx(0.5)}
    assert r["rates"]["0.50"] == {"sharing": 1.0, "different": 0.0}
    assert r["rates"]["0.99"] == {"sharing": 0.0, "different": 0.0}
