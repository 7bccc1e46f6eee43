"""Speed of question PPO's update: each state's forward and backward on its own against a step's states in one
left-padded call (``--batch-states``), side by side in one run on the same samples and model.

A step is ``--states-per-step`` states, as in :mod:`training.question_ppo`: LoRA on every linear layer, the
replies' log-probabilities from :func:`training.question_ppo.reply_logprobs_batch` (one state per call when
not batched, the function the real update calls), then a backward. Besides the time, it counts the operators
PyTorch dispatches for one step: on a GPU each is at least one kernel launch, and for a 135M model the launches,
not the arithmetic, seem to set the speed (the H200's update took 0.41 s a state; ``question_ppo_gpu_h200.md``).
One warm-up step first. Before timing, it checks on the device that both ways give the same log-probabilities
and gradients for the first step, all finite; it exits 1 (after writing the result) when they do not, so run it
before a long run uses ``--batch-states`` on a new device or library version.

Run:  ``python -m benchmarks.perf.update_speed --model runs/ppo-from-sft/sft/model --samples
runs/qppo-gpu/qs-2/samples.jsonl [--device cuda]`` → ``benchmarks/results/update_speed.{json,md}``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

# Bookkeeping operators that launch no kernel (views, metadata); the rest are counted.
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "view", "unsafe_view", "as_strided", "detach", "alias", "expand", "unsqueeze",
              "squeeze", "reshape", "transpose", "permute", "slice", "select", "split", "chunk", "t", "unbind", "lift_fresh",
              "result_type"}


def _logprobs(model: Any, tokens: list[Any], chunk: int, pad_id: int) -> list[list[Any]]:
    """Each call's states' log-probabilities, ``chunk`` states per call, as the update computes them."""
    from training.question_ppo import reply_logprobs_batch

    return [[lp for lp, _ in reply_logprobs_batch(model, tokens[k:k + chunk], 0.8, pad_id)] for k in range(0, len(tokens), chunk)]


def _step(model: Any, tokens: list[Any], chunk: int, pad_id: int) -> None:
    for call in _logprobs(model, tokens, chunk, pad_id):
        sum(lp.sum() for lp in call).backward()
    model.zero_grad(set_to_none=True)


def _ops(model: Any, tokens: list[Any], chunk: int, pad_id: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _step(model, tokens, chunk, pad_id)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::") and e.key[6:].lstrip("_") not in _NO_KERNEL)


def agreement(model: Any, step: list[Any], pad_id: int) -> dict[str, Any]:
    """The first step's log-probabilities and gradients one state per call against all in one call."""
    import torch

    def run(chunk: int) -> tuple[list[Any], dict[str, Any]]:
        model.zero_grad(set_to_none=True)
        logps = [lp for call in _logprobs(model, step, chunk, pad_id) for lp in call]
        sum(lp.sum() for lp in logps).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return [lp.detach() for lp in logps], grads

    one, g_one = run(1)
    many, g_many = run(len(step))
    logp_gap = max(float((a - b).abs().max()) for a, b in zip(one, many, strict=True))
    grad_gap = max(float((g_one[n] - g_many[n]).abs().max()) / max(float(g_one[n].abs().max()), 1e-12) for n in g_one)
    finite = all(bool(torch.isfinite(t).all()) for t in [*one, *many, *g_one.values(), *g_many.values()])
    agree = finite and logp_gap <= 1e-3 and grad_gap <= 1e-3
    return {"max_logprob_gap": logp_gap, "max_relative_gradient_gap": grad_gap, "finite": finite, "agree": agree}


def measure(model: Any, steps: list[list[Any]], batched: bool, pad_id: int, device: str) -> dict[str, Any]:
    import torch

    chunk = len(steps[0]) if batched else 1
    _step(model, steps[0], chunk, pad_id)  # warm-up: allocator, kernels
    ops = _ops(model, steps[0], chunk, pad_id)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for s in steps:
        _step(model, s, chunk, pad_id)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    states = sum(len(s) for s in steps)
    return {"batched": batched, "steps": len(steps), "states": states, "seconds": round(seconds, 2),
            "seconds_per_state": round(seconds / states, 3), "ops_per_step": ops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/ppo-from-sft/sft/model")
    parser.add_argument("--samples", type=Path, required=True, help="a samples.jsonl of training.rejection_sampling")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--states-per-step", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model

    from training.common import load_records
    from training.ppo import load_policy
    from training.question_ppo import _tokenize

    torch.set_num_threads(args.threads)
    records = [r for r in load_records(args.samples) if r.get("replies")][: args.steps * args.states_per_step]
    if len(records) < args.steps * args.states_per_step:
        raise SystemExit(f"update_speed: {args.samples} has {len(records)} sampled states, fewer than --steps x --states-per-step")
    model, tokenizer = load_policy(args.model, "float32", args.device)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    eos = int(tokenizer.eos_token_id)
    pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
    tokens = [_tokenize(tokenizer, r, eos, args.max_new_tokens) for r in records]
    steps = [tokens[i:i + args.states_per_step] for i in range(0, len(tokens), args.states_per_step)]
    check = agreement(model, steps[0], pad_id)
    rows = [measure(model, steps, batched, pad_id, args.device) for batched in (False, True)]
    for r in rows:
        r["speedup_vs_first"] = round(rows[0]["seconds"] / r["seconds"], 2)
        r["ops_vs_first"] = round(r["ops_per_step"] / rows[0]["ops_per_step"], 3)
    prompt_tokens = sum(len(p) for p, _ in tokens) / len(tokens)
    reply_tokens = sum(len(x) for _, rs in tokens for x in rs) / len(tokens)
    result = {"model": args.model, "samples": str(args.samples), "device": args.device, "threads": args.threads,
              "states_per_step": args.states_per_step, "mean_prompt_tokens": round(prompt_tokens, 1),
              "mean_reply_tokens_per_state": round(reply_tokens, 1), "agreement": check, "rows": rows}
    md = [f"# Question-PPO update speed: one state per call or a step's states in one (`{args.device}`, {args.threads} threads)", "",
          f"Command: `python -m benchmarks.perf.update_speed --model {args.model} --samples {args.samples} --device {args.device} "
          f"--steps {args.steps} --states-per-step {args.states_per_step}`; LoRA r 8 on every linear layer, float32, "
          f"{len(tokens)} states (prompts {prompt_tokens:.0f} tokens on average, {reply_tokens:.0f} reply tokens per state). "
          "Forward and backward only; measured side by side in one run; compare the ratio.", "",
          "| states per call | steps | seconds | seconds / state | speed-up | operators dispatched per step | ratio |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {args.states_per_step if r['batched'] else 1} | {r['steps']} | {r['seconds']} | {r['seconds_per_state']} | "
           f"{r['speedup_vs_first']}× | {r['ops_per_step']:,} | {r['ops_vs_first']} |" for r in rows]
    md += ["", f"First step, one state per call against {args.states_per_step} in one: largest log-probability gap "
           f"{check['max_logprob_gap']:.2e}, largest gradient gap {check['max_relative_gradient_gap']:.2e} of its tensor's scale, "
           f"{'all finite' if check['finite'] else 'NOT ALL FINITE'}: **{'agree' if check['agree'] else 'DO NOT AGREE'}**."]
    path = write_result("update_speed", result, "\n".join(md) + "\n", args.out_dir)
    print("\n".join(md))
    print(f"wrote {path}")
    return 0 if check["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
