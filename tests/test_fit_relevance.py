"""Fitting the relevance head: cross-fitted (out-of-fold) head features and the per-fold features cache."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from benchmarks.fit_relevance import _cv_probs, _load_fold, _oof, _save_fold
from benchmarks.probes import Probe
from mediq_env.relevance import FEATURES


def _probes(n: int) -> list[Probe]:
    # Each probe's case has 4 facts; fact 0 answers it.
    return [Probe("builtin", f"c{i}", "targeted", f"question {i}?", (0,)) for i in range(n)]


def _features(positive: float, rng: np.random.Generator) -> np.ndarray:
    """4 facts x all features: noise, with the first feature at ``positive`` for the answering fact."""
    x = rng.normal(0, 0.05, size=(4, len(FEATURES)))
    x[0, 0] += positive
    return x


def test_oof_takes_each_probes_own_fold_encoder():
    xs_by_fold = [[np.full((2, 1), 10 * f + i) for i in range(3)] for f in range(2)]
    assert [int(x[0, 0]) for x in _oof(xs_by_fold, [1, 0, 1])] == [10, 1, 12]


def test_head_fitted_on_out_of_fold_features_answers_unseen_questions():
    """An encoder tuned on a probe separates its answer far more than an unseen probe's: a head fitted on the
    in-fold features puts its boundary where unseen answers never reach; the cross-fitted head does not."""
    rng = np.random.default_rng(0)
    probes = _probes(40)
    fold = [i % 2 for i in range(40)]
    # Under fold f's encoder, probes of the other fold (its training data) score their answer at 1.0 above the
    # rest; probes of fold f itself (unseen) only at 0.25.
    xs_by_fold = [[_features(0.25 if fold[i] == f else 1.0, rng) for i in range(40)] for f in range(2)]
    in_fold = _cv_probs(probes, xs_by_fold, fold, 1.0, "in-fold")
    oof = _cv_probs(probes, xs_by_fold, fold, 1.0, "oof")
    p_answer_in_fold = np.mean([p[0] for p in in_fold])
    p_answer_oof = np.mean([p[0] for p in oof])
    assert p_answer_oof > 0.5 > p_answer_in_fold
    assert max(p[1:].max() for p in oof) < 0.5  # and still no other fact


def test_fold_cache_round_trip_and_key(tmp_path):
    xs = [np.arange(8, dtype=float).reshape(2, 4), np.ones((3, 4))]
    _save_fold(tmp_path, 2, "key-a", xs)
    back = _load_fold(tmp_path, 2, "key-a", 2)
    assert back is not None and all(np.array_equal(a, b) for a, b in zip(xs, back, strict=True))
    assert _load_fold(tmp_path, 2, "key-b", 2) is None  # other probes or settings: recomputed
    assert _load_fold(tmp_path, 2, "key-a", 3) is None
    assert _load_fold(tmp_path, 1, "key-a", 2) is None
    assert _load_fold(None, 2, "key-a", 2) is None
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_fold_cache_survives_a_damaged_file_and_concurrent_writers(tmp_path):
    import threading

    xs = [np.ones((3, 4)) * i for i in range(50)]
    (tmp_path / "fold0.npz").write_bytes(b"PK\x03\x04 cut short")
    assert _load_fold(tmp_path, 0, "k", 50) is None  # a miss, recomputed, not a crash
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(5):
                _save_fold(tmp_path, 0, "k", xs)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    back = _load_fold(tmp_path, 0, "k", 50)
    assert back is not None and np.array_equal(back[7], xs[7])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0.npz"]


@pytest.mark.parametrize("argv", [["--only-folds", "0"], ["--only-folds", "7", "--features-cache", "x"], ["--only-folds", "a", "--features-cache", "x"]])
def test_only_folds_is_checked_before_any_work(argv, capsys):
    from benchmarks.fit_relevance import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--only-folds" in capsys.readouterr().err
