"""``mediq export``: episodes as chat datasets and synth pairs as preference datasets, read back with ``datasets``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("datasets", reason="the train extra (datasets) is not installed")

from benchmarks.export import episode_rows, export, load_export, preference_rows
from benchmarks.run import BenchConfig, run_benchmark
from mediq_env import builtin_cases
from mediq_env.cli import main as mediq
from mediq_env.errors import ConfigError

FORMATS = ("jsonl", "parquet", "hf")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "random"
    cfg = BenchConfig(agent="random:1", max_questions=2, limit=5, scorer="env", patient="bm25")
    run_benchmark(cfg, out, progress=False)
    return out


def _episodes(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines() if line]


def _rows(ds: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in ds]


@pytest.mark.parametrize("fmt", FORMATS)
def test_episodes_round_trip(run: Path, tmp_path: Path, fmt: str) -> None:
    expected = episode_rows(run)
    out, n = export(run, fmt, tmp_path / f"episodes.{fmt}")  # type: ignore[arg-type]
    assert n == len(expected) == 15
    loaded = _rows(load_export(out, fmt))  # type: ignore[arg-type]
    assert loaded == expected


def test_chat_format_matches_the_episode(run: Path) -> None:
    cases = {c.id: c for c in builtin_cases()}
    episodes = {e["key"]: e for e in _episodes(run)}
    for row in episode_rows(run):
        e = episodes[row["key"]]
        case = cases[row["case_id"]]
        msgs = row["messages"]
        system = msgs[0]
        assert system["role"] == "system" and case.question in system["content"]
        # Options in the episode's shown lettering: shown letter i holds the file's option order[i].
        for i, old in enumerate(e["option_order"]):
            assert f"{'ABCDEFGHIJ'[i]}) {case.options[old]}" in system["content"]
        if row["mode"] == "full_information":
            assert all(f in system["content"] for f in case.facts)
        else:
            assert case.initial_info in system["content"]
        roles = [m["role"] for m in msgs[1:]]
        assert roles == ["assistant", "user"] * (len(roles) // 2) + ["assistant"]  # doctor, patient, ..., answer
        assert len(row["rewards"]) == roles.count("assistant") == len(e["turns"])
        assert row["rewards"] == [t["reward"] for t in e["turns"]]
        assert msgs[-1]["content"] == f"ANSWER: {e['answer']}"
        replies = [t["reply"] or t["invalid_action"] for t in e["turns"][:-1]]
        assert [m["content"] for m in msgs if m["role"] == "user"] == replies
        assert (row["correct"], row["answer"], row["correct_answer"], row["seed"], row["n_facts_revealed"]) == (
            e["correct"], e["answer"], e["correct_answer"], e["seed"], e["n_facts_revealed"])
        assert row["run"] == "random"


def test_modes_filter_and_failed_episodes(run: Path, tmp_path: Path) -> None:
    assert {r["mode"] for r in episode_rows(run, modes=["interactive"])} == {"interactive"}
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    eps = _episodes(broken)
    eps[0]["error"] = "agent failed: RuntimeError: boom"
    eps[0]["turns"].append({"action": None, "action_type": "error", "reply": None, "revealed": [], "new_facts": [],
                            "reward": 0.0, "reward_components": {}, "agent": {"traceback": "..."}})
    (broken / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    row = episode_rows(broken)[0]
    assert row["error"] == "agent failed: RuntimeError: boom" and row["correct"] is False
    assert len(row["rewards"]) == sum(m["role"] == "assistant" for m in row["messages"]) == len(eps[0]["turns"]) - 1


def test_missing_cases_file_needs_cases_option(run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["config"]["cases"] = str(tmp_path / "gone.jsonl")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="--cases"):
        episode_rows(moved)
    from mediq_env.cases import builtin_cases_path

    assert episode_rows(moved, cases=builtin_cases_path()) == [dict(r, run="moved") for r in episode_rows(run)]


def _synth_folder(tmp_path: Path) -> Path:
    """A synth output folder written by synth's own writer (save_splits), with made-up pairs."""
    from training.synth import preference_features, save_splits

    rows = []
    for i in range(12):
        rows.append({
            "prompt": [{"role": "system", "content": "Ask one follow-up question."}, {"role": "user", "content": f"Post {i}: my knee hurts."}],
            "chosen": [{"role": "assistant", "content": f"When did the knee pain start ({i})?"}],
            "rejected": [{"role": "assistant", "content": f"Anything else ({i})?"}],
            "attribute": "focus", "source_attribute": "focus", "source_id": f"q{i}", "post_id": f"p{i % 6}",
            "pair_kind": "enhanced>corrupted", "uses_diagnosis": False, "judge_win_rate": 0.75 + i / 100,
        })
    out = tmp_path / "synth"
    save_splits(rows, out / "pairs", None, features=preference_features(), eval_fraction=0.3, seed=0)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_synth_pairs_round_trip(tmp_path: Path, fmt: str) -> None:
    synth = _synth_folder(tmp_path)
    expected = preference_rows(synth)
    assert len(expected) == 12 and {r["split"] for r in expected} <= {"train", "eval"}
    out, n = export(synth, fmt, tmp_path / f"pairs.{fmt}")  # type: ignore[arg-type]
    assert n == 12
    loaded = load_export(out, fmt)  # type: ignore[arg-type]
    # hf: a DatasetDict keyed by split; jsonl and parquet: one table with a split column.
    got = [dict(r, split=split) for split in loaded for r in loaded[split]] if fmt == "hf" else _rows(loaded)
    assert sorted(got, key=lambda r: r["source_id"]) == sorted(expected, key=lambda r: r["source_id"])
    assert all(r["chosen"][0]["role"] == "assistant" and r["prompt"][0]["role"] == "system" for r in got)


def test_cli_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.jsonl"
    assert mediq(["export", str(run), "--format", "jsonl", "--out", str(out), "--modes", "interactive"]) == 0
    assert f"wrote 5 rows to {out}" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 5
    assert mediq(["export", str(tmp_path), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    assert "neither a benchmark run" in capsys.readouterr().err


def test_cli_export_without_out_writes_beside_the_run(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    copy = Path(shutil.copytree(run, tmp_path / "run"))
    assert mediq(["export", str(copy), "--format", "jsonl", "--modes", "interactive"]) == 0
    assert f"wrote 5 rows to {copy / 'export.jsonl'}" in capsys.readouterr().out
    assert len((copy / "export.jsonl").read_text().splitlines()) == 5


def test_exports_are_what_trl_reads(run: Path, tmp_path: Path, tiny_dir: Path) -> None:
    """Read back as a trainer would, each export goes through TRL's own chat-format helpers unchanged."""
    pytest.importorskip("trl")
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    out, _ = export(run, "hf", tmp_path / "episodes")
    for row in load_export(out, "hf"):
        assert is_conversational(row)
        text = apply_chat_template({"messages": row["messages"]}, tokenizer)["text"]
        # Every message, in order, with its role: the doctor's actions as assistant turns, replies as user turns.
        at = 0
        for m in row["messages"]:
            at = text.index(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>", at)
    synth = _synth_folder(tmp_path)
    pairs = load_export(export(synth, "hf", tmp_path / "pairs")[0], "hf")
    for row in pairs["train"]:
        assert is_conversational(row)
        rendered = apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tokenizer)
        assert rendered["prompt"].endswith("<|im_start|>assistant\n")  # generation prompt, as DPO wants it
        assert rendered["chosen"].startswith(row["chosen"][0]["content"])
        assert rendered["rejected"].startswith(row["rejected"][0]["content"])
