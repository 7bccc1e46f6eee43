"""Worker of tests/test_ppo_multiproc.py, run on every process of a two-process CPU (gloo) launch.

Usage: ``python -m torch.distributed.run --nproc_per_node 2 tests/ppo_two_process.py TINY_MODEL_DIR OUT_DIR``

On each process it runs PPO three ways on the tiny local model — three updates straight; two updates then a
save; a fresh trainer resumed from that checkpoint for the third — and writes what the test compares to
``OUT_DIR/result_<rank>.json``: the episode seeds each update drew, the KL coefficient after each update,
the third update's metrics, and the largest parameter difference between the straight and resumed runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from mediq_env.case import Case
from training.ppo import PPOConfig, PPOTrainer

CASES = [
    Case(
        id=f"m{i}",
        initial_info=f"A man has had a cough for {i + 2} days.",
        facts=("The patient has a fever.", "The patient does smoke.", "The patient has chest pain."),
        question="Most likely cause?",
        options={"A": "flu", "B": "cold"},
        answer="A",
    )
    for i in range(5)
]


def length_reward(outcome: Any) -> dict[str, float]:
    # Varies with the text, so every update has a non-zero advantage and the policy moves off the reference.
    return {"length": len(outcome.text) / 10.0}


def make(tiny: Path, out: Path, **kw: Any) -> PPOTrainer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = PPOConfig(
        model="unused", output_dir=str(out), prompt_format="env", max_questions=1, max_new_tokens=4, episodes_per_update=2,
        mini_batch_size=2, micro_batch_size=1, ppo_epochs=1, learning_rate=1e-2, use_cpu=True, max_seq_len=400,
        reward_weights={"proxy_answerable": 1.0}, export_policy_on_save=False,
        kl_coef=0.2, adaptive_kl=True, kl_horizon=4, **kw,
    )
    model, tok = AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny)
    trainer = PPOTrainer(config, model=model, tokenizer=tok, env=config.build_env(2, cases=CASES), reward_fn=length_reward)
    drawn: list[list[int | None]] = []
    original = trainer._episode_specs

    def recording(n: int) -> list[tuple[str | None, int | None]]:
        specs = original(n)
        drawn.append([seed for _, seed in specs])
        return specs

    trainer._episode_specs = recording  # type: ignore[method-assign]
    trainer.drawn = drawn  # type: ignore[attr-defined]
    return trainer


def main(tiny: Path, out: Path) -> None:
    torch.set_num_threads(1)
    # The adaptive controller clips its proportional error to ±0.2, so a coefficient update depends on the KL
    # it is given only when that KL is near the target. A probe run measures the (process-mean) KL of the
    # second update, which does not depend on the target (the first update's KL is 0: the policy is the
    # reference); with that as target each process's own KL would move its coefficient differently.
    probe = make(tiny, out / "probe", target_kl=1.0)
    probe.step()
    target = float(probe.step()["kl"])
    assert target > 0, "the policy did not move off the reference"
    straight = make(tiny, out / "straight", target_kl=target)
    rank = straight.accelerator.process_index
    coefs_straight = []
    for _ in range(3):
        straight.step()
        coefs_straight.append(straight.kl_ctl.value)

    first = make(tiny, out / "interrupted", target_kl=target)
    first.step()
    first.step()
    ckpt = first.save()
    coefs_first = [h["kl_coef"] for h in first.history]

    resumed = make(tiny, out / "interrupted", target_kl=target, resume_from=str(ckpt))
    resumed.step()
    a, b = dict(straight.unwrapped.named_parameters()), dict(resumed.unwrapped.named_parameters())
    diff = max(float((a[k].detach() - b[k].detach()).abs().max()) for k in a)
    keys = ("reward/mean", "kl", "kl_coef", "loss/policy", "loss/value", "entropy")
    result = {
        "rank": rank,
        "world": straight.accelerator.num_processes,
        "straight_seeds": straight.drawn,  # type: ignore[attr-defined]
        "first_seeds": first.drawn,  # type: ignore[attr-defined]
        "resumed_seeds": resumed.drawn,  # type: ignore[attr-defined]
        "coefs_straight": coefs_straight,
        "coefs_interrupted": [*coefs_first, resumed.kl_ctl.value],
        "metrics_straight": {k: straight.history[-1][k] for k in keys},
        "metrics_resumed": {k: resumed.history[-1][k] for k in keys},
        "max_param_diff": diff,
    }
    (out / f"result_{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    # Leave together and close the gloo group before the interpreter exits: a process that exits while its
    # peer still talks to it (or with gloo's threads alive) can abort with "terminate called without an
    # active exception", which once failed this test on a loaded CI machine.
    straight.accelerator.wait_for_everyone()
    straight.accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
