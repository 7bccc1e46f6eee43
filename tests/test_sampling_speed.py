"""benchmarks/perf/sampling_speed.py: both batch sizes run on the same states and the result files say so."""

from __future__ import annotations

import json
from pathlib import Path


def test_sampling_speed_writes_one_row_per_batch_size(tiny_dir: Path, tmp_path: Path) -> None:
    from benchmarks.perf import sampling_speed

    states = tmp_path / "demo_states.jsonl"
    prompts = [[{"role": "user", "content": f"A {30 + i}-year-old with a cough. Ask one question."}] for i in range(3)]
    states.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    assert sampling_speed.main(["--model", str(tiny_dir), "--states-file", str(states), "--states", "3", "--batches", "1,2",
                                "--samples", "2", "--max-new-tokens", "3", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sampling_speed.json").read_text(encoding="utf-8"))
    assert [(r["state_batch"], r["states"], r["replies"]) for r in result["rows"]] == [(1, 3, 6), (2, 3, 6)]
    assert result["rows"][0]["speedup_vs_first"] == 1.0 and result["device"] == "cpu"
    md = (tmp_path / "sampling_speed.md").read_text(encoding="utf-8")
    assert f"--states-file {states}" in md and md.count("\n| ") == 3  # header row and the two measured rows
