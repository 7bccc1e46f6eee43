"""Two-process PPO on CPU (gloo), launched with ``torchrun --nproc_per_node 2`` (as
``python -m torch.distributed.run``): accelerate's ``Accelerator(cpu=True)`` joins it as MULTI_CPU.
(``accelerate launch --cpu --num_processes 2`` starts a single process in accelerate 1.15.)

What only a real multi-process run shows: after a resume every process must continue with its *own*
episode RNG (accelerate saves registered state from the main process only), the adaptive KL coefficient
must stay identical across processes (it is updated with the all-reduced KL), and an interrupted run must
end exactly where an uninterrupted one does. The worker is tests/ppo_two_process.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

WORKER = Path(__file__).with_name("ppo_two_process.py")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_resume_exactly_with_their_own_rngs_and_one_kl_coefficient(tiny_dir: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "MASTER_PORT": str(29500 + os.getpid() % 2000),
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", env["MASTER_PORT"], str(WORKER), str(tiny_dir), str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=80)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        # gloo's own threads can abort a process on a loaded 2-core machine (seen twice in CI on a loaded machine, once after
        # closing the group explicitly): run the whole job once more, from scratch, and say so.
        warnings.warn("two-process PPO aborted inside gloo ('terminate called without an active exception'); rerunning once",
                      stacklevel=1)
        for f in tmp_path.iterdir():
            shutil.rmtree(f) if f.is_dir() else f.unlink()
        env["MASTER_PORT"] = str(int(env["MASTER_PORT"]) + 1)
        cmd[cmd.index("--master_port") + 1] = env["MASTER_PORT"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r0, r1 = (json.loads((tmp_path / f"result_{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2

    for r in (r0, r1):
        # The resumed third update draws exactly the episodes the uninterrupted run drew for it.
        assert r["first_seeds"] == r["straight_seeds"][:2]
        assert r["resumed_seeds"] == [r["straight_seeds"][2]]
        # ... and ends with the same weights and metrics.
        assert r["max_param_diff"] == 0.0
        assert r["metrics_resumed"] == r["metrics_straight"]
        assert r["coefs_interrupted"] == r["coefs_straight"]
    # Each process plays its own episodes, before and after the resume.
    for step in range(3):
        assert r0["straight_seeds"][step] != r1["straight_seeds"][step]
    assert r0["resumed_seeds"] != r1["resumed_seeds"]
    # One KL coefficient for the whole run: it moved, and identically on both processes.
    assert r0["coefs_straight"] == r1["coefs_straight"]
    assert r0["coefs_straight"][-1] != pytest.approx(0.2)
    assert r0["metrics_straight"]["kl"] == r1["metrics_straight"]["kl"]
