"""Question-level PPO: the clipped, multi-epoch policy-gradient update on sampled doctor turns.

Why beside :mod:`training.question_grpo` and :mod:`training.rejection_sampling`: TRL's GRPOTrainer made one
small step per 16 replies (800 replies on CPU), and the policy learned *to ask* but not *to ask better*.
Rejection sampling learned to ask better from the same kind of samples, by imitating only the best reply of
each state. This module is the policy-gradient counterpart of that round: it uses *every* reply — the ones
that found a fact pushed up, the ones that did not pushed down — with PPO's clipped surrogate, several epochs
over one large on-policy batch, as in PPO proper (Schulman et al. 2017). The baseline is the mean reward of
the state's own replies, not a learned critic: eight replies of one state estimate that state's value far
better than a value head trained on a few hundred states could.

One iteration, top to bottom:

1. **Samples.** ``samples.jsonl`` files written by ``python -m training.rejection_sampling --stage sample``
   from *this* policy (checked: the ``config.json`` beside each file names the model and the temperature).
   Each line is one train-split interview state with its replies, each played through the environment.
   With ``rescore`` every reply is replayed with today's patient first.
2. **Advantages.** Per state: reward − the mean reward of that state's replies (not divided by a standard
   deviation: ``question_grpo.md`` shows scaling teaches the policy to stop asking). States whose replies all
   earned the same carry no signal and are left out (counted).
3. **Old log-probabilities.** Every reply token's log-probability under the sampling distribution
   (``logits / temperature``) of the starting policy, computed once. The starting policy is also the KL
   reference (``kl_coef``; k3 estimator per token), so the first epoch's ratio is 1 exactly.
4. **Update.** LoRA on the starting policy. ``epochs`` passes over the states in a seeded order,
   ``states_per_step`` states per optimiser step; the loss is the per-token clipped surrogate
   max(−A·r, −A·clip(r, 1±ε)) (+ β·KL), averaged over the step's reply tokens. A state's replies share its
   prompt: the prompt runs once and the replies run batched on its key/value cache, gradients flowing
   through both (exact; :func:`reply_logprobs`), which makes a step about six times cheaper than running
   every reply with its own copy of the prompt.
5. **Output.** ``metrics.jsonl`` (one line per step: loss, ratio, clip fraction, KL), ``summary.json``, the
   adapter in ``adapter/`` and the merged policy in ``policy/`` (``llm:hf:<output_dir>/policy``).
   A checkpoint (adapter, optimiser, step) is written every ``save_steps`` steps; the same command resumes
   from it and ends where an uninterrupted run would.

Another iteration samples from ``<output_dir>/policy`` (``--states policy``) and runs this again with
``--ref-model`` the first policy.

    python -m training.rejection_sampling --model runs/ppo-from-sft/sft/model --output-dir runs/question-rft \\
        --temperature 0.8 --stage sample
    python -m training.question_ppo --model runs/ppo-from-sft/sft/model --samples runs/question-rft/samples.jsonl \\
        --output-dir runs/question-ppo --rescore
    python -m training.question_ppo curve runs/question-ppo          # the update's learning curve
    python -m training.question_ppo iterations STAGE                 # one row per iteration of offline_gpu_qppo.sh
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mediq_env.errors import ConfigError
from training.rl_common import dataclass_from_dict

__all__ = ["QuestionPPOConfig", "curve_markdown", "group_advantages", "iterations_markdown", "main", "policy_shift", "reply_logprobs", "reply_logprobs_batch", "sampled_quality", "train_question_ppo"]


@dataclass
class QuestionPPOConfig:
    """One question-level PPO iteration. ``model``: the policy the samples were drawn from (the update starts
    there); ``ref_model``: the KL reference (None: ``model``); ``samples``: comma-separated ``samples.jsonl``
    files of :mod:`training.rejection_sampling` drawn from ``model``. ``sources``, ``data_dir``,
    ``max_questions`` and ``demo_rounds`` rebuild the environments for ``rescore``."""

    model: str = "runs/ppo-from-sft/sft/model"
    samples: str = "runs/question-rft/samples.jsonl"
    output_dir: str = "runs/question-ppo"
    ref_model: str | None = None
    rescore: bool = True
    sources: str = "builtin,askdocs,medqa"
    data_dir: str | None = None
    max_questions: int = 3
    demo_rounds: int = 2
    epochs: int = 2
    states_per_step: int = 4
    learning_rate: float = 2e-4
    clip: float = 0.2
    kl_coef: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 8
    lora_alpha: int = 16
    seed: int = 0
    save_steps: int = 10
    max_states: int | None = None
    torch_threads: int | None = 2
    device: str = "auto"
    # One left-padded forward and backward for all of a step's states instead of one per state. The same loss up
    # to float rounding; on a GPU the update looks bound by dispatching ~31,000 small operators per state (SmolLM2-135M
    # with LoRA: 0.41 s a state on an H200), so fewer, larger calls should make it faster there. Off by default (on a
    # CPU it is 0.86x the speed); training/offline_gpu_qppo.sh turns it on for CUDA.
    batch_states: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "states_per_step", "lora_r", "lora_alpha", "save_steps", "max_questions", "demo_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"question PPO: {name} must be an integer >= 1, got {value!r}")
        if not self.learning_rate > 0 or not 0 < self.clip < 1:
            raise ConfigError(f"question PPO: learning_rate must be > 0 and clip in (0, 1), got {self.learning_rate}, {self.clip}")
        if self.kl_coef < 0 or not self.max_grad_norm > 0:
            raise ConfigError("question PPO: kl_coef must be >= 0 and max_grad_norm > 0")
        if self.max_states is not None and (isinstance(self.max_states, bool) or self.max_states < 1):
            raise ConfigError(f"question PPO: max_states must be >= 1 or None, got {self.max_states!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"question PPO: device must be auto, cpu or cuda, got {self.device!r}")
        if not [p for p in self.samples.split(",") if p.strip()]:
            raise ConfigError("question PPO: samples names no file")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuestionPPOConfig:
        return dataclass_from_dict(cls, data)


def _load_samples(config: QuestionPPOConfig) -> tuple[list[dict[str, Any]], float, int]:
    """(scored states, sampling temperature, max_new_tokens) from every samples file, each checked to have been
    drawn from ``config.model`` at one shared temperature: PPO's ratio is against the distribution that sampled."""
    from training.rejection_sampling import _read_samples, sampling_dtype

    records: dict[str, dict[str, Any]] = {}
    settings: set[tuple[float, int]] = set()
    for name in (p.strip() for p in config.samples.split(",") if p.strip()):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"samples: {path} does not exist")
        meta_path = path.parent / "config.json"
        if not meta_path.is_file():
            raise ConfigError(f"samples: {meta_path} is missing (it says which policy drew {path.name} and at what temperature)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for key in ("model", "temperature", "max_new_tokens"):
            if key not in meta:
                raise ConfigError(f"{meta_path}: field {key!r} missing")
        if sampling_dtype(meta) != "float32":
            raise ConfigError(f"{meta_path}: field 'dtype' is {meta.get('dtype')!r} (device {meta.get('device')!r}); the update's old "
                              "log-probabilities are float32, so the samples must be drawn in float32 too")
        if meta["model"] != config.model:
            raise ConfigError(f"{meta_path}: field 'model' is {meta['model']!r}, but this update starts from {config.model!r}; "
                              "PPO needs samples drawn from the policy it updates")
        settings.add((float(meta["temperature"]), int(meta["max_new_tokens"])))
        done, _failed = _read_samples(path)  # failed lines are the sampler's to retry; they carry no replies
        records.update(done)
    if len(settings) > 1:
        raise ConfigError(f"samples: the files were drawn at different (temperature, max_new_tokens) settings {sorted(settings)}")
    if not records:
        raise ConfigError(f"samples: no scored state in {config.samples}")
    temperature, max_new_tokens = settings.pop()
    return [records[k] for k in sorted(records)], temperature, max_new_tokens


def group_advantages(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The states whose replies differ in reward, each with ``advantages`` = reward − the state's mean reward,
    and a summary (states with no signal, reply statistics)."""
    groups: list[dict[str, Any]] = []
    flat = replies = questions = facts = 0
    for rec in records:
        rewards = [float(o["reward"]) for o in rec["replies"]]
        replies += len(rewards)
        questions += sum(1 for o in rec["replies"] if o["asked"])
        facts += sum(int(o["new_facts"]) for o in rec["replies"] if o["asked"])
        mean = sum(rewards) / len(rewards)
        if max(rewards) - min(rewards) < 1e-9:
            flat += 1
            continue
        groups.append({**rec, "advantages": [r - mean for r in rewards]})
    summary = {"states": len(records), "states_without_signal": flat, "states_used": len(groups), "replies": replies,
               "share_asking": questions / replies if replies else None,
               "facts_per_question_sampled": facts / questions if questions else None}
    return groups, summary


def _tokenize(tokenizer: Any, record: Mapping[str, Any], eos_id: int, max_new_tokens: int) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, reply ids): the prompt as the sampler rendered it, each reply re-tokenized with the end of
    turn the sampler stopped on (a reply that used every token was cut, so it gets none)."""
    prompt = tokenizer.apply_chat_template(list(record["prompt"]), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    replies = []
    for o in record["replies"]:
        ids = tokenizer(o["text"], add_special_tokens=False)["input_ids"][:max_new_tokens]
        replies.append([*ids, eos_id] if len(ids) < max_new_tokens else ids)
    return list(prompt), replies


def _cache_name(model: Any) -> str:
    """transformers 5.x renamed past_key_values to cache (the old name warns, then goes); 4.x knows only the old one."""
    from training.ppo import _unwrap_peft

    return "cache" if "cache" in inspect.signature(_unwrap_peft(model).forward).parameters else "past_key_values"


def _right_padded(replies: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """(ids [n, L], float mask [n, L]) of the replies, padded on the right to the longest."""
    import torch

    n, width = len(replies), max(len(r) for r in replies)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((n, width), dtype=torch.float32, device=device)
    for i, r in enumerate(replies):
        ids[i, : len(r)] = torch.tensor(list(r), device=device)
        mask[i, : len(r)] = 1.0
    return ids, mask


def _token_logprobs(first: Any, body_logits: Any, ids: Any, temperature: float) -> Any:
    """Token j of a reply is predicted by the logits one position earlier: ``first`` (the prompt's last) for j = 0."""
    import torch

    logits = torch.cat([first, body_logits[:, :-1]], dim=1).float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def reply_logprobs(model: Any, prompt_ids: Sequence[int], replies: Sequence[Sequence[int]], temperature: float,
                   pad_id: int) -> tuple[Any, Any]:
    """Per-token log-probabilities of each reply after the prompt under ``softmax(logits / temperature)``:
    ``(logp [n, L], mask [n, L])``. The prompt runs once; its key/value cache is repeated for the n replies,
    which run as one right-padded batch. Gradients flow through the cache into the prompt's computation,
    so this equals running every prompt+reply sequence on its own (tested)."""
    import torch

    device = next(model.parameters()).device
    n = len(replies)
    prompt = torch.tensor([list(prompt_ids)], device=device)
    head = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache_name = _cache_name(model)
    cache = getattr(head, cache_name)
    cache.batch_repeat_interleave(n)
    ids, mask = _right_padded(replies, pad_id, device)
    attention = torch.cat([torch.ones((n, prompt.shape[1]), dtype=torch.long, device=device), mask.long()], dim=1)
    body = model(input_ids=ids, attention_mask=attention, use_cache=True, **{cache_name: cache})
    return _token_logprobs(head.logits[:, -1:].expand(n, 1, -1), body.logits, ids, temperature) * mask, mask


def reply_logprobs_batch(model: Any, items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], temperature: float,
                         pad_id: int) -> list[tuple[Any, Any]]:
    """:func:`reply_logprobs` for several ``(prompt ids, replies)`` at once: the prompts run as one left-padded
    batch (explicit positions, so padding shifts nothing), each prompt's key/value rows are repeated for its
    replies, and all replies run as one right-padded batch. Returns each item's ``(logp, mask)`` as
    :func:`reply_logprobs` does, equal to it up to float rounding (tested)."""
    import torch

    if len(items) == 1:
        return [reply_logprobs(model, items[0][0], items[0][1], temperature, pad_id)]
    device = next(model.parameters()).device
    lengths = [len(p) for p, _ in items]
    counts = [len(r) for _, r in items]
    width_p = max(lengths)
    prompts = torch.full((len(items), width_p), pad_id, dtype=torch.long, device=device)
    prompt_mask = torch.zeros((len(items), width_p), dtype=torch.long, device=device)
    for i, (p, _) in enumerate(items):
        prompts[i, width_p - len(p):] = torch.tensor(list(p), device=device)
        prompt_mask[i, width_p - len(p):] = 1
    positions = (prompt_mask.cumsum(1) - 1).clamp(min=0)
    head = model(input_ids=prompts, attention_mask=prompt_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache_name = _cache_name(model)
    cache = getattr(head, cache_name)
    owner = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)], device=device)
    cache.batch_select_indices(owner)
    ids, mask = _right_padded([r for _, rs in items for r in rs], pad_id, device)
    attention = torch.cat([prompt_mask[owner], mask.long()], dim=1)
    body_positions = torch.tensor(lengths, device=device)[owner].unsqueeze(1) + torch.arange(ids.shape[1], device=device).unsqueeze(0)
    body = model(input_ids=ids, attention_mask=attention, position_ids=body_positions, use_cache=True, **{cache_name: cache})
    logp = _token_logprobs(head.logits[owner][:, -1:], body.logits, ids, temperature) * mask
    out, start = [], 0
    for i, (_, rs) in enumerate(items):
        w = max(len(r) for r in rs)  # each item keeps its own width, as reply_logprobs returns it
        out.append((logp[start:start + counts[i], :w], mask[start:start + counts[i], :w]))
        start += counts[i]
    return out


def _schedule(n_groups: int, config: QuestionPPOConfig) -> list[list[int]]:
    """Every optimiser step's states, fixed by the seed (a resumed run takes the same steps)."""
    steps: list[list[int]] = []
    rng = random.Random(config.seed)
    for _epoch in range(config.epochs):
        order = list(range(n_groups))
        rng.shuffle(order)
        steps += [order[i:i + config.states_per_step] for i in range(0, n_groups, config.states_per_step)]
    return steps


def _update_settings(config: QuestionPPOConfig, groups: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The settings a checkpoint is only valid for (the schedule, the samples, the loss, the adapter). The samples
    count by content, not only by path: a samples file that grew (its sampling resumed) makes another schedule."""
    settings = {k: getattr(config, k) for k in ("model", "samples", "ref_model", "rescore", "epochs", "states_per_step", "learning_rate",
                                                 "clip", "kl_coef", "lora_r", "lora_alpha", "seed", "max_states")}
    content = json.dumps([[g["key"], [round(float(a), 9) for a in g["advantages"]]] for g in groups])
    settings["samples_digest"] = hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
    return settings


def _device(config: QuestionPPOConfig) -> str:
    import torch

    return "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"


def train_question_ppo(config: QuestionPPOConfig) -> dict[str, Any]:
    """One PPO iteration on the samples; returns the summary written to ``summary.json``."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    from training.common import save_trained_model
    from training.ppo import load_policy
    from training.rl_common import JsonlLogger, seed_everything

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed)

    # 1-2. Samples and advantages.
    records, temperature, max_new_tokens = _load_samples(config)
    if config.max_states is not None:
        records = records[: config.max_states]
    rescored = None
    if config.rescore:
        from training.rejection_sampling import replayer_for, rescore

        records, rescored = rescore(records, replayer_for(config))
    groups, summary = group_advantages(records)
    summary.update(temperature=temperature, rescored=rescored)
    print(f"[qppo] {json.dumps(summary)}", flush=True)
    if not groups:
        raise ConfigError(f"{config.samples}: every state's replies earned the same reward; there is nothing to learn from")

    # 3. The starting policy, its old log-probabilities, and the reference's.
    device = _device(config)
    model, tokenizer = load_policy(config.model, "float32", device)
    eos_id = int(tokenizer.eos_token_id)
    pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_id
    tokens = [_tokenize(tokenizer, g, eos_id, max_new_tokens) for g in groups]
    model.eval()
    chunk = config.states_per_step if config.batch_states else 1

    def all_logprobs(m: Any) -> list[Any]:
        with torch.no_grad():
            return [lp for i in range(0, len(tokens), chunk) for lp, _ in reply_logprobs_batch(m, tokens[i:i + chunk], temperature, pad_id)]

    old = all_logprobs(model)
    if config.ref_model and config.ref_model != config.model:
        ref_model, _ = load_policy(config.ref_model, "float32", device)
        ref_model.eval()
        ref = all_logprobs(ref_model)
        del ref_model
    else:
        ref = old

    # 4. LoRA and the clipped update.
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    steps = _schedule(len(groups), config)
    ckpt = out / "checkpoint"
    settings = _update_settings(config, groups)
    start_step = 0
    if (ckpt / "state.pt").exists():  # our own file: plain tensors and numbers, loaded without pickle's code paths
        state = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
        # A resumed run must take the steps the first run planned: settings that change the update are compared.
        for key, value in settings.items():
            if state.get("settings", {}).get(key) != value:
                raise ConfigError(f"{ckpt / 'state.pt'}: field {key!r} was {state.get('settings', {}).get(key)!r} when the checkpoint was "
                                  f"written, now {value!r}; use another output_dir or the same settings")
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        print(f"[qppo] resuming at step {start_step} of {len(steps)}", flush=True)
    log = JsonlLogger(out / "metrics.jsonl")
    log.truncate_after(start_step)  # steps past the checkpoint are redone; a fresh run starts a fresh curve
    # A resumed run's clock goes on from its checkpoint's step, so 'seconds' and train_seconds are the update's time.
    logged = log.read() if start_step else []
    done_before = float(logged[-1].get("seconds", 0.0)) if logged else 0.0
    begin = time.perf_counter() - done_before
    for step in range(start_step, len(steps)):
        batch = steps[step]
        n_tokens = sum(len(r) for g in batch for r in tokens[g][1])
        optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "clipped": 0.0, "ratio": 0.0, "kl": 0.0, "abs_log_ratio": 0.0}
        for k in range(0, len(batch), chunk):  # chunk 1: one state's graph at a time, freed by its backward
            part = batch[k:k + chunk]
            part_loss: Any = 0.0  # a tensor once the first state's loss is added
            for g, (logp, mask) in zip(part, reply_logprobs_batch(model, [tokens[g] for g in part], temperature, pad_id), strict=True):
                adv = torch.tensor(groups[g]["advantages"], device=logp.device).unsqueeze(1)
                log_ratio = (logp - old[g]) * mask
                ratio = torch.exp(log_ratio)
                surrogate = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - config.clip, 1 + config.clip))
                ref_gap = (ref[g] - logp) * mask
                kl = torch.exp(ref_gap) - ref_gap - 1  # k3: an unbiased, non-negative estimate of KL(policy || ref)
                loss = ((surrogate + config.kl_coef * kl) * mask).sum() / n_tokens
                part_loss = part_loss + loss
                with torch.no_grad():
                    sums["loss"] += float(loss)
                    sums["clipped"] += float((((ratio - 1).abs() > config.clip).float() * mask).sum())
                    sums["ratio"] += float((ratio * mask).sum())
                    sums["kl"] += float((kl * mask).sum())
                    sums["abs_log_ratio"] += float(log_ratio.abs().sum())
            part_loss.backward()
        if not math.isfinite(sums["loss"]):  # one NaN step would silently ruin the adapter and every later step
            raise FloatingPointError(f"question PPO: step {step + 1}'s loss is {sums['loss']} (states {batch}); nothing after it is saved"
                                     + (" (batch_states is on: try without it)" if config.batch_states else ""))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
        epoch = step * config.epochs // len(steps) + 1
        log.log({"step": step + 1, "epoch": epoch, "states": len(batch), "loss": sums["loss"], "grad_norm": grad_norm,
                 "ratio": sums["ratio"] / n_tokens, "clip_fraction": sums["clipped"] / n_tokens, "kl_ref": sums["kl"] / n_tokens,
                 "mean_abs_log_ratio": sums["abs_log_ratio"] / n_tokens, "seconds": round(time.perf_counter() - begin, 1)})
        if (step + 1) % config.save_steps == 0 and step + 1 < len(steps):
            ckpt.mkdir(exist_ok=True)
            tmp = ckpt / "state.tmp"
            torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(), "step": step + 1,
                        "settings": settings}, tmp)
            tmp.replace(ckpt / "state.pt")
        if (step + 1) % 10 == 0 or step + 1 == len(steps):
            print(f"[qppo] step {step + 1}/{len(steps)} ({time.perf_counter() - begin:.0f} s)", flush=True)

    # 5. Output.
    model.save_pretrained(str(out / "adapter"))
    policy = save_trained_model(model, tokenizer, out / "policy", merge_lora=True)
    summary.update(steps=len(steps), epochs=config.epochs, policy=str(policy), train_seconds=round(time.perf_counter() - begin, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


def _best_reply(replies: Sequence[Mapping[str, Any]]) -> int:
    """Index of the highest-reward reply; ties go to the first sampled (as rejection sampling keeps)."""
    return max(range(len(replies)), key=lambda i: (float(replies[i]["reward"]), -i))


def policy_shift(before: str, after: Sequence[str], samples: str, *, rescore: bool = False, max_states: int | None = 60,
                 config: QuestionPPOConfig | None = None) -> list[dict[str, Any]]:
    """How far each policy in ``after`` moved from ``before`` on the sampled replies of ``samples`` (drawn from
    ``before``), one row per policy: the mean change in sequence log-probability of each state's best reply
    (highest reward; ties to the first sampled) and of its other replies, the advantage-weighted mean change,
    and the share of states whose best reply is the most likely of its state's replies (before and after). A
    policy that imitated the best replies moves the first and the last; one that only learned to ask does not."""
    import torch

    from training.ppo import load_policy

    config = config or QuestionPPOConfig(model=before, samples=samples, rescore=rescore)
    records, temperature, max_new_tokens = _load_samples(config)
    if rescore:
        from training.rejection_sampling import replayer_for
        from training.rejection_sampling import rescore as replay

        records, _ = replay(records, replayer_for(config))
    groups, _ = group_advantages(records)
    groups = [g for g in groups if any(o["asked"] and o["new_facts"] > 0 for o in g["replies"])]
    groups = groups[:max_states] if max_states is not None else groups
    if not groups:
        raise ConfigError(f"{samples}: no state where a sampled question found a fact")

    def seq_logprobs(spec: str) -> list[Any]:
        model, tokenizer = load_policy(spec, "float32", "cpu")
        model.eval()
        eos = int(tokenizer.eos_token_id)
        pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
        with torch.no_grad():
            return [reply_logprobs(model, *_tokenize(tokenizer, g, eos, max_new_tokens), temperature, pad)[0].sum(1) for g in groups]

    base = seq_logprobs(before)
    best = [_best_reply(g["replies"]) for g in groups]
    rows = []
    for spec in after:
        new = seq_logprobs(spec)
        d_best = d_rest = weighted = 0.0
        top_before = top_after = n_rest = 0
        for g, b, old, cur in zip(groups, best, base, new, strict=True):
            delta = cur - old
            d_best += float(delta[b])
            d_rest += float(delta.sum() - delta[b])
            n_rest += len(delta) - 1
            weighted += float((torch.tensor(g["advantages"]) * delta).mean())
            top_before += int(int(old.argmax()) == b)
            top_after += int(int(cur.argmax()) == b)
        n = len(groups)
        rows.append({"policy": spec, "states": n, "best_reply_dlogp": d_best / n, "other_replies_dlogp": d_rest / max(n_rest, 1),
                     "advantage_weighted_dlogp": weighted / n, "best_is_most_likely_before": top_before / n,
                     "best_is_most_likely_after": top_after / n})
    return rows


def sampled_quality(files: Sequence[str], *, rescore: bool = False, config: QuestionPPOConfig | None = None) -> list[dict[str, Any]]:
    """The sampled replies of several samples files (say, drawn from SFT and from a PPO policy), on the states
    they share only, one row per file: share of replies that ask, new facts per sampled question and per
    reply, and the best of each state's replies. With ``rescore`` every reply is replayed with today's
    patient first, so files scored by different patient fits compare on one patient."""
    from training.rejection_sampling import _read_samples

    loaded = [_read_samples(Path(f))[0] for f in files]
    shared = sorted(set.intersection(*(set(d) for d in loaded)))
    if not shared:
        raise ConfigError(f"samples: {', '.join(files)} share no state")
    from training.rejection_sampling import replayer_for
    from training.rejection_sampling import rescore as replay

    replayer = replayer_for(config or QuestionPPOConfig()) if rescore else None  # one patient index for every file
    rows = []
    for name, done in zip(files, loaded, strict=True):
        records = [done[k] for k in shared]
        if replayer is not None:
            records, _ = replay(records, replayer)
        replies = [o for r in records for o in r["replies"]]
        asked = [o for o in replies if o["asked"]]
        facts = sum(int(o["new_facts"]) for o in asked)
        best = sum(max((int(o["new_facts"]) for o in r["replies"] if o["asked"]), default=0) for r in records)
        rows.append({"samples": name, "states": len(shared), "replies": len(replies), "share_asking": len(asked) / len(replies),
                     "facts_per_question": facts / len(asked) if asked else None, "facts_per_reply": facts / len(replies),
                     "best_of_n_facts_per_state": best / len(records)})
    return rows


def _metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-step rows of an update's ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def curve_markdown(metrics_path: str | Path, block: int = 10) -> str:
    """The learning curve of a run as a markdown table, one row per ``block`` steps (means)."""
    rows = _metrics(metrics_path)
    keys = ("loss", "ratio", "clip_fraction", "kl_ref", "mean_abs_log_ratio", "grad_norm")
    lines = ["| steps | epoch | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        means = [sum(r[k] for r in chunk) / len(chunk) for k in keys]
        lines.append(f"| {chunk[0]['step']}–{chunk[-1]['step']} | {chunk[-1]['epoch']} | "
                     + " | ".join("nan" if math.isnan(m) else f"{m:.4f}" for m in means) + " |")
    return "\n".join(lines) + "\n"


def iterations_markdown(stage: str | Path) -> str:
    """One row per iteration of an iterated run (``training/offline_gpu_qppo.sh``: ``qs-<i>`` holds the samples
    drawn from the policy before iteration ``i``, ``qp-<i>`` its update), the train-side learning curve. Each
    iteration draws its own states (seed ``i``), so the sampled columns compare different states."""
    stage = Path(stage)
    numbers = sorted(int(d.name[3:]) for d in stage.glob("qs-*") if d.name[3:].isdigit() and (d / "samples.jsonl").exists())
    if not numbers:
        raise ConfigError(f"{stage}: no qs-<i>/samples.jsonl (not an iterated question-PPO run)")
    keys = ("kl_ref", "clip_fraction", "ratio")
    lines = ["| iteration | sampled from | states | share asking | new facts / sampled question | best of n / state "
             "| update steps | update s | KL to ref (last epoch) | clip fraction (last epoch) | ratio (last epoch) |",
             "|" + "---|" * 11]
    for i in numbers:
        row = sampled_quality([str(stage / f"qs-{i}" / "samples.jsonl")])[0]
        config = json.loads((stage / f"qs-{i}" / "config.json").read_text(encoding="utf-8"))
        cells = [str(i), f"`{Path(config['model']).parent.name}/{Path(config['model']).name}`", str(row["states"]),
                 f"{row['share_asking']:.1%}", "—" if row["facts_per_question"] is None else f"{row['facts_per_question']:.3f}",
                 f"{row['best_of_n_facts_per_state']:.2f}"]
        metrics_path, summary_path = stage / f"qp-{i}" / "metrics.jsonl", stage / f"qp-{i}" / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            metrics = _metrics(metrics_path)
            last = [m for m in metrics if m["epoch"] == metrics[-1]["epoch"]]
            cells += [str(summary["steps"]), f"{summary['train_seconds']:.0f}"]
            cells += [f"{sum(m[k] for m in last) / len(last):.4f}" for k in keys]
        else:
            cells += ["not run"] + ["—"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from training.cli_rl import one_line_errors

    return one_line_errors(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from training.cli_rl import add_config_arguments, config_from_args

    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv and argv[0] == "curve":
        print(curve_markdown(Path(argv[1]) / "metrics.jsonl"), end="")
        return 0
    if argv and argv[0] == "iterations":
        print(iterations_markdown(argv[1]), end="")
        return 0
    if argv and argv[0] == "sampled":
        sampled = argparse.ArgumentParser(prog="python -m training.question_ppo sampled", description=sampled_quality.__doc__)
        sampled.add_argument("files", nargs="+", help="samples.jsonl files")
        sampled.add_argument("--rescore", action="store_true")
        b = sampled.parse_args(argv[1:])
        for row in sampled_quality(b.files, rescore=b.rescore):
            print(json.dumps(row), flush=True)
        return 0
    if argv and argv[0] == "shift":
        shift = argparse.ArgumentParser(prog="python -m training.question_ppo shift", description=policy_shift.__doc__)
        shift.add_argument("--before", required=True, help="the policy the samples were drawn from")
        shift.add_argument("--after", required=True, help="comma-separated trained policies")
        shift.add_argument("--samples", required=True)
        shift.add_argument("--rescore", action="store_true")
        shift.add_argument("--max-states", type=int, default=60)
        a = shift.parse_args(argv[1:])
        for row in policy_shift(a.before, a.after.split(","), a.samples, rescore=a.rescore, max_states=a.max_states):
            print(json.dumps(row), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m training.question_ppo", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, QuestionPPOConfig)
    config = config_from_args(QuestionPPOConfig, parser.parse_args(argv))
    print(json.dumps(train_question_ppo(config), default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
