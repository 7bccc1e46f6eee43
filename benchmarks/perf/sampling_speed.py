"""Speed of sampling doctor replies for rejection sampling and question PPO: one state per ``generate`` call
against several (``--state-batch``), side by side in one run on the same states and model.

Each state gets ``--samples`` replies of at most ``--max-new-tokens`` tokens at temperature 0.8 from
:func:`training.rejection_sampling._sample`, the function the real runs call. Only generation is timed, not the
patient's scoring (0.65 s for 128 replies on the GPU machine; ``question_ppo_gpu.md``). One warm-up call first.

Run:  ``python -m benchmarks.perf.sampling_speed --model runs/ppo-from-sft/sft/model --states-file
runs/demo-states/demo_states.jsonl [--device cuda]`` → ``benchmarks/results/sampling_speed.{json,md}``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result


def measure(model: Any, tokenizer: Any, prompts: list[Any], batch: int, samples: int, max_new_tokens: int, device: str) -> dict[str, Any]:
    import torch

    from training.rejection_sampling import RejectionSamplingConfig, _sample

    config = RejectionSamplingConfig(temperature=0.8, samples_per_state=samples, max_new_tokens=max_new_tokens)
    _sample(model, tokenizer, prompts[:batch], config, seed=0)  # warm-up: allocator, kernels, caches
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    replies = 0
    for i in range(0, len(prompts), batch):
        replies += sum(len(r) for r in _sample(model, tokenizer, prompts[i: i + batch], config, seed=i))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"state_batch": batch, "states": len(prompts), "replies": replies, "seconds": round(seconds, 2),
            "states_per_minute": round(60 * len(prompts) / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/ppo-from-sft/sft/model")
    parser.add_argument("--states-file", type=Path, required=True, help="a demo_states.jsonl (rejection_sampling --stage states)")
    parser.add_argument("--states", type=int, default=16)
    parser.add_argument("--batches", default="1,8", help="comma-separated state batch sizes, measured in this order")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)

    import torch

    from training.common import load_records
    from training.ppo import load_policy

    torch.set_num_threads(args.threads)
    prompts = [row["prompt"] for row in load_records(args.states_file)[: args.states]]
    model, tokenizer = load_policy(args.model, "float32", args.device)
    model.eval()
    rows = [measure(model, tokenizer, prompts, int(b), args.samples, args.max_new_tokens, args.device) for b in args.batches.split(",")]
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_first"] = round(base / r["seconds"], 2)
    result = {"model": args.model, "device": args.device, "threads": args.threads, "samples_per_state": args.samples,
              "max_new_tokens": args.max_new_tokens, "rows": rows}
    md = [f"# Sampling speed: states per generate call (`{args.device}`, {args.threads} threads)", "",
          f"Command: `python -m benchmarks.perf.sampling_speed --model {args.model} --states-file {args.states_file} --device {args.device} "
          f"--states {args.states} --batches {args.batches}`; "
          f"{args.samples} replies per state, at most {args.max_new_tokens} new tokens, temperature 0.8, float32, model `{args.model}`. "
          "Measured side by side in one run; compare the ratio.", "",
          "| states per call | states | seconds | states / minute | speed-up |", "|---|---|---|---|---|"]
    md += [f"| {r['state_batch']} | {r['states']} | {r['seconds']} | {r['states_per_minute']} | {r['speedup_vs_first']}× |" for r in rows]
    path = write_result("sampling_speed", result, "\n".join(md) + "\n", args.out_dir)
    print("\n".join(md))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
