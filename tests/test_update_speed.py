"""benchmarks/perf/update_speed.py: both ways run on the same states, batching dispatches fewer operators, and the
run fails when the two ways disagree (what it checks on a new device before a long run uses --batch-states)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _samples(path: Path) -> Path:
    rows = []
    for i in range(4):
        prompt = [{"role": "user", "content": f"A {30 + i}-year-old with a cough{' and a fever' * i}. Ask one question."}]
        rows.append({"key": str(i), "prompt": prompt, "replies": [{"text": "ASK: Any fever?"}, {"text": f"ASK: How long{'?' * (i + 1)}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_update_speed_compares_both_ways_and_counts_operators(tiny_dir: Path, tmp_path: Path, one_torch_thread: None) -> None:
    from benchmarks.perf import update_speed

    samples = _samples(tmp_path / "samples.jsonl")
    args = ["--model", str(tiny_dir), "--samples", str(samples), "--steps", "2", "--states-per-step", "2", "--max-new-tokens", "8",
            "--threads", "1", "--out-dir", str(tmp_path)]
    assert update_speed.main(args) == 0
    result = json.loads((tmp_path / "update_speed.json").read_text(encoding="utf-8"))
    assert [(r["batched"], r["states"]) for r in result["rows"]] == [(False, 4), (True, 4)]
    assert result["agreement"]["agree"] and result["agreement"]["max_logprob_gap"] < 1e-4
    assert result["rows"][1]["ops_per_step"] < 0.75 * result["rows"][0]["ops_per_step"]  # two states per call, not one
    assert "**agree**" in (tmp_path / "update_speed.md").read_text(encoding="utf-8")


def test_update_speed_exits_1_when_the_batched_way_disagrees(tiny_dir: Path, tmp_path: Path, one_torch_thread: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import training.question_ppo as qp
    from benchmarks.perf import update_speed

    real = qp.reply_logprobs_batch

    def broken(model: Any, items: Any, temperature: float, pad_id: int) -> Any:
        out = real(model, items, temperature, pad_id)
        return out if len(items) == 1 else [(lp * float("nan"), m) for lp, m in out]  # as a device's NaN would

    monkeypatch.setattr(qp, "reply_logprobs_batch", broken)
    samples = _samples(tmp_path / "samples.jsonl")
    assert update_speed.main(["--model", str(tiny_dir), "--samples", str(samples), "--steps", "1", "--states-per-step", "2",
                              "--threads", "1", "--out-dir", str(tmp_path)]) == 1
    assert "DO NOT AGREE" in (tmp_path / "update_speed.md").read_text(encoding="utf-8")
