"""A one-minute check of the question-level PPO path on a GPU before a long run is started there.

With the tiny model of :mod:`mediq_env.backends.tiny` (built from a config, no hub), loaded by the runs' own
:func:`training.ppo.load_policy` and checked to be on the device: several states sampled in one left-padded
generate call on the device (:func:`training.rejection_sampling._sample`; near temperature 0 a batch must give
each prompt's replies alone), then the shared-prompt
log-probabilities of :func:`training.question_ppo.reply_logprobs` with a gradient, compared with the same on the
CPU. Exits non-zero on any mismatch, so a device-only failure shows before the parcels of a real run are spent.

    python -m training.gpu_smoke [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.gpu_smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from mediq_env.backends.tiny import build_tiny_causal_lm
    from training.ppo import load_policy
    from training.question_ppo import reply_logprobs
    from training.rejection_sampling import RejectionSamplingConfig, _sample

    start = time.perf_counter()
    folder = build_tiny_causal_lm(tempfile.mkdtemp(prefix="gpu-smoke-"), seed=0)
    tokenizer: Any = AutoTokenizer.from_pretrained(str(folder))
    prompts = [[{"role": "user", "content": "A 30-year-old with a cough. Ask one question."}],
               [{"role": "user", "content": "A 70-year-old man with chest pain that began an hour ago at rest. Ask one question."}]]
    config = RejectionSamplingConfig(temperature=0.8, samples_per_state=4, max_new_tokens=8)
    results = {}
    for device in ("cpu", args.device):
        model, _ = load_policy(str(folder), "float32", device)  # the loader the real run uses, device move included
        on = next(model.parameters()).device.type
        if on != torch.device(device).type:
            print(f"[gpu-smoke] FAILED: load_policy(..., {device!r}) left the weights on {on}", flush=True)
            return 1
        model.eval()
        replies = _sample(model, tokenizer, prompts, config, seed=0)
        assert [len(r) for r in replies] == [4, 4], replies
        # Left padding changes nothing: near temperature 0 a batch gives each prompt's replies alone.
        cold = RejectionSamplingConfig(temperature=1e-3, samples_per_state=2, max_new_tokens=8)
        if _sample(model, tokenizer, prompts, cold, seed=0) != [_sample(model, tokenizer, [p], cold, seed=0)[0] for p in prompts]:
            print(f"[gpu-smoke] FAILED: on {device}, a left-padded batch samples other replies than its prompts alone", flush=True)
            return 1
        prompt_ids = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, return_dict=True)["input_ids"]
        reply_ids = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
        model.train()
        logp, mask = reply_logprobs(model, prompt_ids, reply_ids, 0.8, int(tokenizer.eos_token_id))
        (logp * mask).sum().backward()
        grad = next(p.grad for p in model.parameters() if p.grad is not None)
        results[device] = ((logp * mask).detach().cpu(), grad.detach().cpu())
        print(f"[gpu-smoke] {device}: sampled {sum(len(r) for r in replies)} replies; log-probs {float((logp * mask).sum().detach()):.5f}", flush=True)
    gap = float((results["cpu"][0] - results[args.device][0]).abs().max())
    grad_gap = float((results["cpu"][1] - results[args.device][1]).abs().max() / results["cpu"][1].abs().max().clamp_min(1e-12))
    print(f"[gpu-smoke] {args.device} vs cpu: log-prob gap {gap:.2e}, relative gradient gap {grad_gap:.2e}, {time.perf_counter() - start:.1f} s")
    if gap > 1e-3 or grad_gap > 1e-2:
        print("[gpu-smoke] FAILED: the device's log-probabilities or gradients differ from the CPU's", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
