"""The whole learning loop for any chat model in one command: demonstrations → SFT → PPO / GRPO → held-out evaluation.

    python -m training.pipeline --model <hub id, local dir or smollm2> --out runs/pipeline [--vllm] [--tiny]

Stages (each in its own folder under ``--out``, each skipped when its ``manifest.json`` says it finished and
its outputs are still there, so rerunning the same command resumes after the last finished stage):

1. ``demos/``: demonstration episodes of :mod:`training.demos` on the **train** side of
   :func:`training.demos.doctor_split` only (``train.jsonl``, prompt/completion rows), and the train cases
   (``train_cases.jsonl``) that PPO plays.
2. ``sft/``: LoRA SFT through :func:`training.sft.main` — the exact code path of ``mediq train sft`` — with the
   adapter merged, so ``sft/model`` is a plain ``transformers`` checkpoint. ``--sft-adapter DIR`` instead
   merges an adapter trained earlier (e.g. ``runs/sft-doctor/adapter``) into ``--model``.
3. ``ppo/``: multi-turn PPO (:mod:`training.ppo`) from ``sft/model`` on the train cases, with the faithful
   patient and the reward ``--reward``: by default the info-gain reward of
   :data:`benchmarks.hacks.REWARD_CONFIGS` (``proxy_info_gain`` — new facts the reply revealed — plus
   correctness, minus a per-question cost), a reward that the hack suite shows cannot be raised by keyword
   soups, catch-alls or paraphrased repeats; ``--reward info_gain_only`` drops the correctness term (see
   :func:`reward_configs`). The stage manifests and the held-out table record the reward. LoRA on top of the SFT
   weights; the reference of the KL penalty is the SFT model. The metrics log adds, per update, new facts per
   question and the share of questions that pass the patient's question gate.
4. ``grpo/``: multi-turn GRPO (:mod:`training.grpo`, TRL's ``GRPOTrainer`` with the same episodes as PPO)
   from ``sft/model`` on the same train cases, patient and reward. Each step plays ``--grpo-episodes-per-step``
   episodes: groups of ``--grpo-num-generations`` episodes of one case (same option order), each episode's
   return normalised within its group. LoRA on top of the SFT weights; the KL term (``--grpo-beta``, a loss
   term in TRL) is taken against the same weights with the adapter disabled, i.e. the SFT model. TRL
   checkpoints (``grpo/checkpoint-*``, every ``--save-steps`` steps) make a killed run resume where its last
   checkpoint left off; ``grpo/metrics.jsonl`` has one row per step (mean return, new facts per question, gate
   pass share, KL, correct share, questions per episode, seconds) and the final policy is merged into a plain
   ``transformers`` checkpoint ``grpo/policy`` (adapter in ``grpo/adapter``).
5. ``eval/``: base vs SFT vs SFT+PPO vs SFT+GRPO (each RL variant when its stage has finished in ``--out``) on
   the **held-out** cases (:func:`benchmarks.heldout.write_heldout_cases`) through
   ``benchmarks.run.run_benchmark``; writes ``eval/heldout.{json,md}`` (one column per variant) with paired
   differences (SFT − base, SFT+PPO − SFT, SFT+GRPO − SFT) on accuracy and facts per question.

``--tiny`` runs the same five stages on a tiny randomly initialised model built from a config
(:func:`mediq_env.backends.tiny.build_tiny_causal_lm`) with toy sizes, on CPU, in well under a minute: it
proves the stages fit together, nothing about learning.

GPUs: ``--vllm`` serves the evaluation agents with vLLM (``llm:vllm:<dir>``); PPO and GRPO rollouts always use
``transformers.generate`` (neither trainer has a vLLM path here). ``--num-processes N`` (N > 1) runs the SFT,
PPO and GRPO stages under ``accelerate launch --num_processes N`` (the command is printed and recorded in the
manifest); demos and evaluation run in the launching process. GRPO's per-step question metrics (new facts
per question, gate pass, correct, questions per episode) are then those of the main process's episodes;
TRL's own logs (reward, KL) are over all processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mediq_env.errors import ConfigError

__all__ = [
    "STAGES",
    "PipelineOptions",
    "agent_spec",
    "latest_checkpoint",
    "main",
    "question_stats",
    "run_pipeline",
    "truncate_metrics",
    "write_split_cases",
]

STAGES = ("demos", "sft", "ppo", "grpo", "eval")
VARIANTS = ("base", "sft", "sft+ppo", "sft+grpo")
# Paired differences of the held-out table: (reference, variant), reported as "variant - reference".
COMPARISONS = (("base", "sft"), ("sft", "sft+ppo"), ("sft", "sft+grpo"))
REWARD_NAME = "info_gain"  # the default --reward
INFO_GAIN_ONLY = "info_gain_only"


def reward_configs() -> dict[str, Any]:
    """The rewards ``--reward`` may name: every one of :data:`benchmarks.hacks.REWARD_CONFIGS` (``None``: the env's
    correctness-only reward) plus ``info_gain_only``.

    ``info_gain_only`` is ``info_gain`` with ``correct`` and ``incorrect`` set to 0: an episode's return is the
    new facts its questions revealed minus 0.02 per question, nothing for the answer. With a 135M doctor near
    chance accuracy the ±1 of the answer dominates the spread of ``info_gain`` returns within a group and
    swamps the information signal; this reward keeps only that signal.

    Why it is safe to optimise: what is left is exactly the question part of ``info_gain``, and the hack suite
    (``benchmarks/results/hacks.md``, faithful patient with the tuned relevance encoder, the patient the
    pipeline trains with) shows no adversary beating the checklist on info-gain coverage on the builtin cases
    the pipeline trains on: keyword soups, catch-alls, repeats, paraphrases, echoes, option probes, gibberish
    and joined questions all reveal fewer facts (the closest, paraphrase, is -0.004 behind, not significantly;
    ``repeat_best``, which repeats the case's best labelled question, is judged against the good doctor and
    falls 0.263 short of it). And with the correctness term absent nothing else is left to game: the answer
    earns nothing whatever it is, and every question still costs 0.02. Caveats: on medqa paraphrase is
    +0.018 ahead of the checklist (a FAIL there); under the bm25 patient joined and keyword questions beat it.
    """
    from dataclasses import replace

    from benchmarks.hacks import REWARD_CONFIGS

    configs: dict[str, Any] = dict(REWARD_CONFIGS)
    info_gain = REWARD_CONFIGS["info_gain"]
    assert info_gain is not None
    configs[INFO_GAIN_ONLY] = replace(info_gain, correct=0.0, incorrect=0.0)
    return configs


@dataclass
class PipelineOptions:
    """Everything the pipeline needs; the command line maps onto it one flag per field."""

    model: str
    out: str = "runs/pipeline"
    tiny: bool = False
    vllm: bool = False
    stages: tuple[str, ...] = STAGES
    sources: tuple[str, ...] = ("builtin",)
    data_dir: str | None = None
    seed: int = 0
    max_questions: int = 3
    reward: str = REWARD_NAME  # PPO's and GRPO's reward: a name of reward_configs()
    # -- demos
    demo_budgets: tuple[int, ...] = (3, 5)
    demo_examples: int | None = None  # keep at most this many examples (seeded, every kind kept); None: all
    # -- SFT
    sft_adapter: str | None = None
    sft_steps: int | None = None
    sft_epochs: float = 1.0
    sft_lr: float = 3e-4
    sft_batch_size: int = 4
    sft_grad_accum: int = 1
    sft_max_length: int = 512
    lora_r: int = 16
    # -- PPO
    ppo_updates: int = 20
    episodes_per_update: int = 8
    mini_batch_size: int = 4
    micro_batch_size: int = 2
    ppo_epochs: int = 2
    ppo_lr: float = 5e-5
    ppo_lora_r: int = 8
    kl_coef: float = 0.05
    max_new_tokens: int = 48
    save_steps: int = 1  # PPO updates / GRPO steps between checkpoints
    torch_threads: int | None = None
    # -- GRPO
    grpo_steps: int = 20
    grpo_episodes_per_step: int = 16  # a multiple of grpo_num_generations: (episodes / generations) cases a step
    grpo_num_generations: int = 4
    grpo_micro_batch_size: int = 4  # episodes per forward/backward; the rest is gradient accumulation
    grpo_lr: float = 5e-5
    grpo_beta: float = 0.05
    grpo_lora_r: int = 8
    # -- evaluation
    eval_limit: int | None = None
    eval_batch_size: int = 16
    # -- hardware
    device: str = "auto"
    num_processes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
        if self.max_questions < 1:
            raise ConfigError(f"max_questions must be >= 1, got {self.max_questions}")
        if self.num_processes < 1:
            raise ConfigError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.grpo_steps < 1 or self.grpo_num_generations < 2 or self.grpo_micro_batch_size < 1:
            raise ConfigError("grpo_steps and grpo_micro_batch_size must be >= 1 and grpo_num_generations >= 2")
        if self.grpo_episodes_per_step % self.grpo_num_generations:
            raise ConfigError(f"grpo_episodes_per_step ({self.grpo_episodes_per_step}) must be a multiple of "
                              f"grpo_num_generations ({self.grpo_num_generations})")
        if self.grpo_episodes_per_step % self.grpo_micro_batch_size:
            raise ConfigError(f"grpo_episodes_per_step ({self.grpo_episodes_per_step}) must be a multiple of "
                              f"grpo_micro_batch_size ({self.grpo_micro_batch_size})")
        rewards = reward_configs()
        if self.reward not in rewards:
            raise ConfigError(f"unknown reward {self.reward!r}; choose from {', '.join(rewards)}")
        if self.sft_adapter is not None and not (Path(self.sft_adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"--sft-adapter {self.sft_adapter}: no adapter_config.json there")


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def _launched() -> bool:
    """True inside ``accelerate launch`` / torchrun (which set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for pkg in ("mediq-env", "torch", "transformers", "trl", "peft", "accelerate", "vllm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _manifest_done(stage_dir: Path, outputs: Sequence[str]) -> dict[str, Any] | None:
    path = stage_dir / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not manifest.get("complete") or not all((stage_dir / o).exists() for o in outputs):
        return None
    return dict(manifest)


def _write_manifest(stage_dir: Path, stage: str, *, outputs: Sequence[str], started: float, **fields_: Any) -> dict[str, Any]:
    manifest = {
        "stage": stage,
        "complete": True,
        "outputs": list(outputs),
        "seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        **fields_,
    }
    if _is_main_process():
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return manifest


def write_split_cases(split: str, out: Path, sources: Sequence[str], *, data_dir: str | None = None,
                      limit: int | None = None) -> dict[str, list[str]]:
    """Copy the records of one side of :func:`training.demos.doctor_split` (``train`` or ``heldout``) of every
    source, verbatim, into one JSONL file; return the ids per source. Public sources count only their
    probe-set cases (as :func:`benchmarks.heldout.heldout_case_ids` does); absent public data is skipped."""
    from benchmarks.heldout import case_records, split_case_ids
    from benchmarks.probes import source_path

    lines: list[str] = []
    ids_by_source: dict[str, list[str]] = {}
    seen: set[str] = set()
    for source in sources:
        path = source_path(source, data_dir)
        if source != "builtin" and not path.exists():
            print(f"skipping {source}: {path} is absent", file=sys.stderr)
            continue
        ids = split_case_ids(source, split, data_dir)
        if limit is not None:
            ids = ids[:limit]
        clash = seen & set(ids)
        if clash:
            raise ConfigError(f"{source}: case ids {sorted(clash)[:3]} also occur in another source")
        seen |= set(ids)
        lines += case_records(source, ids, data_dir)
        ids_by_source[source] = ids
    if not lines:
        raise ConfigError(f"no {split} cases in sources {list(sources)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ids_by_source


def agent_spec(model_dir: str, *, vllm: bool) -> str:
    """The benchmark agent of a checkpoint directory (or hub id): ``llm:vllm:<dir>`` or ``llm:hf:<dir>``."""
    return f"llm:{'vllm' if vllm else 'hf'}:{model_dir}"


def base_agent_spec(model: str, *, vllm: bool) -> str:
    """The untouched base model as an agent. ``smollm2`` alone would apply the shipped doctor adapter, so
    the offline default's base is ``smollm2-base``."""
    if model.strip().lower() == "smollm2":
        return "llm:smollm2-base"
    return agent_spec(model.removeprefix("hf:"), vllm=vllm)


def _accelerate_prefix(n: int) -> list[str]:
    return ["accelerate", "launch", "--num_processes", str(n), "-m", "training.pipeline"]


def _relaunch(opts: PipelineOptions, argv: Sequence[str], stage: str) -> list[str]:
    """Run one stage of this same command under ``accelerate launch`` (multi-GPU); return the command."""
    rest = [a for a in _strip_flag(list(argv), "--stages")]
    cmd = [*_accelerate_prefix(opts.num_processes), *rest, "--stages", stage]
    print("running:", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return cmd


def _strip_flag(argv: list[str], flag: str) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


# ---------------------------------------------------------------------------------------------------
# Stage 1: demonstrations


def stage_demos(opts: PipelineOptions, out: Path) -> dict[str, Any]:
    from training.demos import build_demos, demo_records, sample_records, summarise

    stage_dir = out / "demos"
    outputs = ["train.jsonl", "train_cases.jsonl"]
    done = _manifest_done(stage_dir, outputs)
    if done:
        print(f"[demos] done earlier: {stage_dir}", flush=True)
        return done
    started = time.time()
    stage_dir.mkdir(parents=True, exist_ok=True)
    train_ids = write_split_cases("train", stage_dir / "train_cases.jsonl", opts.sources, data_dir=opts.data_dir)
    episodes = build_demos([s for s in opts.sources if s in train_ids], budgets=opts.demo_budgets, seed=opts.seed,
                           data_dir=opts.data_dir)
    records = demo_records(episodes)
    if opts.demo_examples is not None and opts.demo_examples < len(records):
        kinds = sorted({r["kind"] for r in records})
        per_kind = {k: max(1, opts.demo_examples // len(kinds)) for k in kinds}
        records = sample_records(records, per_kind, seed=opts.seed)
    with (stage_dir / "train.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    summary = summarise(episodes)
    print(f"[demos] {summary['episodes']} episodes, {len(records)} examples -> {stage_dir / 'train.jsonl'}", flush=True)
    return _write_manifest(stage_dir, "demos", outputs=outputs, started=started, split="train",
                           train_cases=train_ids, examples_written=len(records), summary=summary,
                           budgets=list(opts.demo_budgets))


# ---------------------------------------------------------------------------------------------------
# Stage 2: SFT


def sft_argv(opts: PipelineOptions, data: Path, model_out: Path) -> list[str]:
    """The ``mediq train sft`` arguments of the SFT stage (LoRA, merged at save)."""
    argv = [
        "--model", opts.model, "--data", str(data), "--out", str(model_out),
        "--lr", f"{opts.sft_lr:g}", "--batch-size", str(opts.sft_batch_size), "--grad-accum", str(opts.sft_grad_accum),
        "--max-length", str(opts.sft_max_length), "--lora-r", str(opts.lora_r), "--lora-alpha", str(2 * opts.lora_r),
        "--seed", str(opts.seed), "--device", opts.device, "--overwrite", "--no-progress", "--logging-steps", "5",
    ]
    argv += ["--steps", str(opts.sft_steps)] if opts.sft_steps else ["--epochs", f"{opts.sft_epochs:g}"]
    return argv


def merge_adapter_checkpoint(model: str, adapter: str | Path, out_dir: Path) -> Path:
    """``model`` with a LoRA ``adapter`` folded into its weights, saved as a plain checkpoint in ``out_dir``."""
    from mediq_env.backends.smollm import merge_lora_adapter
    from training.ppo import load_policy

    base, tokenizer = load_policy(model.removeprefix("hf:"), "float32", "cpu")
    changed = merge_lora_adapter(base, adapter)
    out_dir.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    print(f"[sft] merged {changed} LoRA weights of {adapter} into {model} -> {out_dir}", flush=True)
    return out_dir


def stage_sft(opts: PipelineOptions, out: Path, argv: Sequence[str]) -> dict[str, Any]:
    stage_dir = out / "sft"
    outputs = ["model/config.json"]
    done = _manifest_done(stage_dir, outputs)
    if done:
        print(f"[sft] done earlier: {stage_dir}", flush=True)
        return done
    started = time.time()
    model_out = stage_dir / "model"
    if opts.sft_adapter:
        merge_adapter_checkpoint(opts.model, opts.sft_adapter, model_out)
        return _write_manifest(stage_dir, "sft", outputs=outputs, started=started, from_adapter=str(opts.sft_adapter),
                               base_model=opts.model, command=None)
    args = sft_argv(opts, out / "demos" / "train.jsonl", model_out)
    command: list[str] = ["mediq", "train", "sft", *args]
    if opts.num_processes > 1 and not _launched():
        command = _relaunch(opts, argv, "sft")
    else:
        from training import sft

        print("[sft] mediq train sft " + shlex.join(args), flush=True)
        sft.main(args)
    return _write_manifest(stage_dir, "sft", outputs=outputs, started=started, command=shlex.join(command),
                           base_model=opts.model, data=str(out / "demos" / "train.jsonl"))


# ---------------------------------------------------------------------------------------------------
# Stage 3: PPO


def _episode_fields(opts: PipelineOptions, out: Path) -> dict[str, Any]:
    """The episode settings PPO and GRPO share: SFT weights, train cases, faithful patient, the reward
    ``opts.reward`` (:func:`reward_configs`), the agent's prompt format."""
    from mediq_env.wrappers import RewardConfig

    reward = reward_configs()[opts.reward]
    # None (``correctness``): the env's own reward, no question scorer. The GRPO log then counts new facts from
    # the env's step info instead of the (absent) info-gain component.
    scorer = "environment" if reward is not None else "none"
    reward = reward if reward is not None else RewardConfig()
    return {
        "model": str(out / "sft" / "model"),
        "seed": opts.seed,
        "cases": str(out / "demos" / "train_cases.jsonl"),
        "max_questions": opts.max_questions,
        "scorer": scorer,
        "reward_weights": dict(reward.weights),
        "correct": reward.correct,
        "incorrect": reward.incorrect,
        "question_cost": reward.question_cost,
        "repeat_penalty": reward.repeat_penalty,
        "invalid_penalty": reward.invalid_penalty,
        "prompt_format": "agent",
        "max_new_tokens": opts.max_new_tokens,
        "max_seq_len": 4096 if not opts.tiny else 2048,
    }


def _check_reward(manifest: Mapping[str, Any], opts: PipelineOptions, stage: str) -> None:
    """A finished RL stage is reused only for the reward it was trained with (manifests without one: ``info_gain``)."""
    trained = manifest.get("reward", REWARD_NAME)
    if trained != opts.reward:
        raise ConfigError(f"[{stage}] finished earlier with reward {trained!r}, not --reward {opts.reward}: "
                          "use another --out (or remove the stage folder)")


def ppo_config(opts: PipelineOptions, out: Path) -> Any:
    """The PPO config: SFT weights, train cases, faithful patient, the reward ``opts.reward``."""
    from training.ppo import PPOConfig

    on_gpu = opts.device != "cpu" and not opts.tiny
    return PPOConfig(
        **_episode_fields(opts, out),
        output_dir=str(out / "ppo"),
        num_updates=opts.ppo_updates,
        episodes_per_update=opts.episodes_per_update,
        mini_batch_size=opts.mini_batch_size,
        micro_batch_size=opts.micro_batch_size,
        ppo_epochs=opts.ppo_epochs,
        learning_rate=opts.ppo_lr,
        kl_coef=opts.kl_coef,
        use_lora=True,
        lora_r=opts.ppo_lora_r,
        lora_alpha=2 * opts.ppo_lora_r,
        use_cpu=not on_gpu,
        dtype="bfloat16" if opts.device == "cuda" else "auto",
        save_steps=opts.save_steps,
        save_total_limit=2,
        export_policy_on_save=False,
        resume_from="latest",
        torch_threads=opts.torch_threads,
    )


def question_stats(episodes: Sequence[Any], options: Mapping[str, Mapping[str, str]], info_gain_weight: float = 1.0) -> dict[str, float]:
    """Per-update question metrics of PPO episodes: new facts per question (from the ``proxy:info_gain``
    component, divided by its weight) and the share of questions that pass the patient's question gate."""
    from mediq_env.actions import question_text
    from mediq_env.question_gate import check_question

    facts = 0.0
    passed = 0
    asked = 0
    for ep in episodes:
        for t in ep.turns:
            if t.kind != "question":
                continue
            asked += 1
            facts += float(t.components.get("proxy:info_gain", 0.0)) / info_gain_weight
            passed += bool(check_question(question_text(t.action), options.get(ep.case_id)).ok)
    if not asked:
        return {"facts_per_question": float("nan"), "gate_pass": float("nan"), "questions_total": 0.0}
    return {"facts_per_question": facts / asked, "gate_pass": passed / asked, "questions_total": float(asked)}


def _pipeline_trainer_class() -> type:
    from training.ppo import PPOTrainer

    class PipelinePPOTrainer(PPOTrainer):
        """:class:`PPOTrainer` whose per-update metrics also hold new facts per question and gate pass share."""

        def __init__(self, config: Any, *, options: Mapping[str, Mapping[str, str]], info_gain_weight: float = 1.0) -> None:
            self.question_options = dict(options)
            self.info_gain_weight = info_gain_weight
            super().__init__(config)

        def _metrics(self, episodes: list[Any], batch: Any, train: dict[str, float], times: tuple[float, float, float]) -> dict[str, Any]:
            metrics = super()._metrics(episodes, batch, train, times)
            metrics.update(question_stats(episodes, self.question_options, self.info_gain_weight))
            return metrics

    return PipelinePPOTrainer


def run_ppo(config: Any) -> list[dict[str, Any]]:
    """Train PPO from ``config`` with the pipeline's extra metrics (resumes from the latest checkpoint)."""
    from mediq_env.case import load_cases

    options = {c.id: dict(c.options) for c in load_cases(config.cases, strict=False)}
    weight = float(config.reward_weights.get("proxy_info_gain", 1.0)) or 1.0
    trainer = _pipeline_trainer_class()(config, options=options, info_gain_weight=weight)
    history: list[dict[str, Any]] = trainer.train()
    return history


def ppo_command(config: Any) -> str:
    """The ``mediq train ppo`` command line of a config (without the pipeline's extra metrics)."""
    from training.ppo import PPOConfig

    default = PPOConfig()
    parts = ["mediq", "train", "ppo"]
    for k, v in config.to_dict().items():
        if v == getattr(default, k):
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, dict):
            parts += [flag, ",".join(f"{a}={b:g}" for a, b in v.items())]
        elif isinstance(v, list):
            parts += [flag, *map(str, v)]
        else:
            parts += [flag, str(v)]
    return shlex.join(parts)


def _rl_stage_start(opts: PipelineOptions, out: Path, name: str) -> tuple[Path, list[str], dict[str, Any] | None]:
    """An RL stage's folder, outputs, and its manifest when it finished earlier with the same reward."""
    stage_dir = out / name
    outputs = ["policy/config.json", "metrics.jsonl"]
    done = _manifest_done(stage_dir, outputs)
    if done:
        _check_reward(done, opts, name)
        print(f"[{name}] done earlier: {stage_dir}", flush=True)
    return stage_dir, outputs, done


def stage_ppo(opts: PipelineOptions, out: Path, argv: Sequence[str]) -> dict[str, Any]:
    stage_dir, outputs, done = _rl_stage_start(opts, out, "ppo")
    if done:
        return done
    started = time.time()
    config = ppo_config(opts, out)
    command = ppo_command(config)
    if opts.num_processes > 1 and not _launched():
        command = shlex.join(_relaunch(opts, argv, "ppo"))
        history = _read_jsonl(stage_dir / "metrics.jsonl")
    else:
        print(f"[ppo] {config.num_updates} updates x {config.episodes_per_update} episodes (equivalent: {command})", flush=True)
        run_ppo(config)
        history = _read_jsonl(stage_dir / "metrics.jsonl")
    return _write_manifest(stage_dir, "ppo", outputs=outputs, started=started, command=command,
                           config=config.to_dict(), reward=opts.reward, curve=curve(history))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


CURVE_KEYS = ("step", "reward/mean", "facts_per_question", "gate_pass", "kl", "correct", "questions", "time/update_s")


def curve(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The learning curve: per update, mean episode reward, new facts per question, gate pass share, KL."""
    return [{k: h.get(k) for k in CURVE_KEYS} for h in history]


def write_curve_report(ppo_dir: str | Path, stem: str | Path, *, command: str, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Write a PPO run's learning curve (``<stem>.json`` and ``<stem>.md``) from its ``metrics.jsonl``."""
    ppo_dir = Path(ppo_dir)
    history = _read_jsonl(ppo_dir / "metrics.jsonl")
    if not history:
        raise ConfigError(f"{ppo_dir}: no metrics.jsonl rows yet")
    config_files = sorted(ppo_dir.glob("checkpoint-*/ppo_config.json"))
    config = json.loads(config_files[-1].read_text(encoding="utf-8")) if config_files else None
    rows = curve(history)
    result = {"command": command, "updates": len(rows), "episodes": history[-1].get("episodes"), "curve": rows,
              "config": config, "notes": list(notes)}
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")

    def f(v: Any, nd: int = 3) -> str:
        return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"

    lines = ["| update | mean episode reward | new facts / question | gate pass | KL | correct | questions / episode | s / update |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {f(r['reward/mean'])} | {f(r['facts_per_question'])} | {f(r['gate_pass'])} | "
                     f"{f(r['kl'], 4)} | {f(r['correct'], 2)} | {f(r['questions'], 2)} | {f(r['time/update_s'], 0)} |")
    stem.with_suffix(".md").write_text("\n".join(["# PPO from the SFT adapter: learning curve", "", *notes, "",
                                                  "```bash", command, "```", "", *lines]) + "\n", encoding="utf-8")
    return result


# ---------------------------------------------------------------------------------------------------
# Stage 4: GRPO


def grpo_config(opts: PipelineOptions, out: Path) -> Any:
    """The GRPO config: the PPO stage's episodes and reward (:func:`_episode_fields`), LoRA on the SFT
    weights, ``grpo_episodes_per_step`` episodes a step in groups of ``grpo_num_generations``."""
    from training.grpo import GRPOEnvConfig

    on_gpu = opts.device != "cpu" and not opts.tiny
    return GRPOEnvConfig(
        **_episode_fields(opts, out),
        output_dir=str(out / "grpo"),
        num_generations=opts.grpo_num_generations,
        per_device_train_batch_size=opts.grpo_micro_batch_size,
        gradient_accumulation_steps=opts.grpo_episodes_per_step // opts.grpo_micro_batch_size,
        max_steps=opts.grpo_steps,
        learning_rate=opts.grpo_lr,
        beta=opts.grpo_beta,
        use_lora=True,
        lora_r=opts.grpo_lora_r,
        lora_alpha=2 * opts.grpo_lora_r,
        use_cpu=not on_gpu,
        bf16=opts.device == "cuda",
        save_steps=opts.save_steps,
        torch_threads=opts.torch_threads,
    )


# TRL settings of the pipeline's GRPO beyond GRPOEnvConfig: a constant learning rate (as PPO's; it also lets a
# resumed run change --grpo-steps without changing the schedule) and the last two checkpoints kept.
GRPO_TRL_OVERRIDES: dict[str, Any] = {"lr_scheduler_type": "constant", "save_total_limit": 2}


class QuestionStatsEnv:
    """A batched env that records what its episodes did, for the GRPO metrics log: per finished step of the
    trainer, the episodes started, the questions asked, the new facts they revealed (``proxy:info_gain``
    divided by its weight), how many passed the patient's question gate, and the correct answers.

    Everything else is the wrapped env's (:func:`training.rl_common.run_episodes` sees no difference)."""

    def __init__(self, inner: Any, options: Mapping[str, Mapping[str, str]], info_gain_weight: float = 1.0) -> None:
        self.inner = inner
        self.question_options = dict(options)
        self.info_gain_weight = info_gain_weight
        self.slot_case: dict[int, str] = {}
        self.reset_stats()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def reset_stats(self) -> None:
        self.stats = {"episodes": 0, "questions": 0, "facts": 0.0, "gate_passed": 0, "answered": 0, "correct": 0}

    def reset_at(self, index: int, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        obs, info = self.inner.reset_at(index, **kwargs)
        self.slot_case[index] = str(info.get("case_id"))
        self.stats["episodes"] += 1
        return obs, info

    def step(self, actions: Sequence[Any]) -> list[Any]:
        from mediq_env.actions import question_text
        from mediq_env.question_gate import check_question

        active = list(self.inner.active)
        results: list[Any] = self.inner.step(actions)
        for slot, action, r in zip(active, actions, results, strict=True):
            info = r.info
            if info.get("action_type") == "question":
                self.stats["questions"] += 1
                components = info.get("reward_components", {})
                if "proxy:info_gain" in components:
                    self.stats["facts"] += float(components["proxy:info_gain"]) / self.info_gain_weight
                else:  # a reward without the info-gain proxy: count the env's new facts
                    self.stats["facts"] += float(len(info.get("new_facts") or ()))
                options = self.question_options.get(self.slot_case.get(slot, ""))
                self.stats["gate_passed"] += bool(check_question(question_text(action), options).ok)
            if r.done:
                self.stats["answered"] += 1
                self.stats["correct"] += bool(info.get("correct"))
        return results

    def take_stats(self) -> dict[str, float]:
        """The metrics since the last call (NaN where nothing was asked or played), and start afresh."""
        s = self.stats
        nan = float("nan")
        out = {
            "episodes_this_step": float(s["episodes"]),
            "questions_total": float(s["questions"]),
            "facts_per_question": s["facts"] / s["questions"] if s["questions"] else nan,
            "gate_pass": s["gate_passed"] / s["questions"] if s["questions"] else nan,
            "questions": s["questions"] / s["episodes"] if s["episodes"] else nan,
            "correct": s["correct"] / s["episodes"] if s["episodes"] else nan,
        }
        self.reset_stats()
        return out


def _grpo_metrics_callback(env: QuestionStatsEnv, path: Path, episodes_per_step: int) -> Any:
    """A ``TrainerCallback`` that writes one ``metrics.jsonl`` row per logged GRPO step: TRL's logs (``reward``
    as ``reward/mean``, ``kl``, ...) with the episode metrics of ``env`` and the step's wall time."""
    from transformers import TrainerCallback

    class GRPOMetricsLog(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            env.reset_stats()
            self.last = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not logs or "reward" not in logs:
                return  # e.g. the end-of-training summary
            now = time.perf_counter()
            row: dict[str, Any] = {"step": int(state.global_step), **logs, **env.take_stats()}
            row["reward/mean"] = logs.get("reward")
            row["reward/std"] = logs.get("reward_std")
            row["kl"] = logs.get("kl")
            row["episodes"] = int(state.global_step) * episodes_per_step
            row["time/update_s"] = round(now - self.last, 1)
            self.last = now
            if state.is_world_process_zero:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row, default=float) + "\n")
                print(f"[grpo] step {row['step']}: reward {row['reward/mean']:.3f}, facts/q {row['facts_per_question']:.3f}, "
                      f"gate {row['gate_pass']:.2f}, kl {row['kl'] if row['kl'] is not None else float('nan'):.4f}, "
                      f"{row['time/update_s']:.0f} s", flush=True)

    return GRPOMetricsLog()


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` TRL saved in ``stage_dir`` (the one with a ``trainer_state.json``)."""
    found = [p for p in stage_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop the rows of steps after ``last_step`` (logged, then lost with a killed run): they are replayed."""
    rows = [r for r in _read_jsonl(path) if int(r.get("step", 0)) <= last_step]
    path.write_text("".join(json.dumps(r, default=float) + "\n" for r in rows), encoding="utf-8")


def run_grpo(config: Any) -> dict[str, Any]:
    """Train GRPO from ``config`` (resuming from the newest checkpoint in its output dir) with the per-step
    metrics log, then save the adapter (``adapter/``) and the merged policy (``policy/``)."""
    from mediq_env.case import load_cases
    from training.grpo import build_grpo_trainer

    stage_dir = Path(config.output_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    cases = load_cases(config.cases, strict=False)
    options = {c.id: dict(c.options) for c in cases}
    weight = float(config.reward_weights.get("proxy_info_gain", 1.0)) or 1.0
    n = config.per_device_train_batch_size * config.gradient_accumulation_steps
    env = QuestionStatsEnv(config.build_env(n, cases=cases), options, weight)
    trainer = build_grpo_trainer(config, env=env, cases=cases, **GRPO_TRL_OVERRIDES)
    metrics = stage_dir / "metrics.jsonl"
    resume = latest_checkpoint(stage_dir)
    if resume is not None:
        step = int(json.loads((resume / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
        print(f"[grpo] resuming from {resume} (step {step} of {config.max_steps})", flush=True)
        if _is_main_process():
            truncate_metrics(metrics, step)
    elif _is_main_process() and metrics.exists():
        metrics.unlink()  # a run that died before its first checkpoint starts over
    trainer.add_callback(_grpo_metrics_callback(env, metrics, n * int(os.environ.get("WORLD_SIZE", "1"))))
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.accelerator.is_main_process:
        model.save_pretrained(stage_dir / "adapter")
        merged = model.merge_and_unload()
        merged.save_pretrained(stage_dir / "policy")
        trainer.processing_class.save_pretrained(stage_dir / "policy")
    trainer.accelerator.wait_for_everyone()
    return {"resumed_from": str(resume) if resume is not None else None, "global_step": int(trainer.state.global_step)}


def stage_grpo(opts: PipelineOptions, out: Path, argv: Sequence[str]) -> dict[str, Any]:
    stage_dir, outputs, done = _rl_stage_start(opts, out, "grpo")
    if done:
        return done
    started = time.time()
    config = grpo_config(opts, out)
    info: dict[str, Any] = {}
    if opts.num_processes > 1 and not _launched():
        command = shlex.join(_relaunch(opts, argv, "grpo"))
    else:
        command = "python -m training.pipeline " + shlex.join(list(argv))
        print(f"[grpo] {config.max_steps} steps x {opts.grpo_episodes_per_step} episodes "
              f"(groups of {config.num_generations}), lr {config.learning_rate:g}, beta {config.beta:g}", flush=True)
        info = run_grpo(config)
    history = _read_jsonl(stage_dir / "metrics.jsonl")
    return _write_manifest(stage_dir, "grpo", outputs=outputs, started=started, command=command,
                           config=config.to_dict(), trl_overrides=GRPO_TRL_OVERRIDES, reward=opts.reward,
                           curve=curve(history), **info)


# ---------------------------------------------------------------------------------------------------
# Stage 5: held-out evaluation


def evaluate(variants: Mapping[str, str], opts: PipelineOptions, stage_dir: Path) -> dict[str, Any]:
    """Run every variant's agent on the held-out cases of every source; pool and compare."""
    from benchmarks.heldout import gate_pass, write_heldout_cases
    from benchmarks.metrics import paired_episode_diffs, summarise
    from benchmarks.probes import source_path
    from benchmarks.run import BenchConfig, run_benchmark
    from mediq_env.case import load_cases

    case_files: dict[str, Path] = {}
    options: dict[str, dict[str, str]] = {}
    held: dict[str, int] = {}
    for source in opts.sources:
        if source != "builtin" and not source_path(source, opts.data_dir).exists():
            continue
        path = stage_dir / "cases" / f"{source}.jsonl"
        held[source] = len(write_heldout_cases(source, path, data_dir=opts.data_dir, limit=opts.eval_limit))
        case_files[source] = path
        for c in load_cases(path, strict=False):
            options[f"{source}:{c.id}"] = dict(c.options)
    pooled: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for label, spec in variants.items():
        pooled[label] = []
        for source, path in case_files.items():
            config = BenchConfig(agent=spec, cases=str(path), max_questions=opts.max_questions, modes=("interactive",),
                                 batch_size=opts.eval_batch_size, scorer="none")
            run_dir = stage_dir / f"{label.replace('+', '_')}-{source}"
            t0 = time.perf_counter()
            run_benchmark(config, run_dir, progress=False)
            seconds[f"{label}/{source}"] = round(time.perf_counter() - t0, 1)
            for line in (run_dir / "episodes.jsonl").read_text(encoding="utf-8").splitlines():
                if line.strip():
                    e = json.loads(line)
                    if e.get("mode") == "interactive":
                        pooled[label].append({**e, "case_id": f"{source}:{e['case_id']}"})
    agents: dict[str, Any] = {}
    for label, episodes in pooled.items():
        s = summarise(episodes, max_questions=opts.max_questions, mode="interactive")
        agents[label] = {
            "agent": variants[label], "episodes": s["episodes"], "fallback": s.get("fallback"),
            "questions_asked": s["questions_asked"], "facts_per_question": s["facts_per_question"],
            "fact_coverage": s["fact_coverage"], "gate_pass": gate_pass(episodes, options), "accuracy": s["accuracy"],
        }
    comparisons: dict[str, Any] = {}
    for a, b in COMPARISONS:
        if a not in pooled or b not in pooled:
            continue
        ea = {(e["case_id"], e.get("seed")): e for e in pooled[a]}
        eb = {(e["case_id"], e.get("seed")): e for e in pooled[b]}
        keys = sorted(set(ea) & set(eb), key=str)
        if not keys:
            continue
        accuracy, facts = paired_episode_diffs(ea, eb, keys)
        comparisons[f"{b} - {a}"] = {"pairs": len(keys), "accuracy": accuracy, "facts_per_question": facts}
    return {"variants": dict(variants), "rewards": trained_rewards(variants, Path(opts.out)),
            "held_out_cases": held, "max_questions": opts.max_questions,
            "limit_per_source": opts.eval_limit, "agents": agents, "paired": comparisons, "seconds": seconds,
            "patient": "faithful", "split": "heldout (training.demos.doctor_split)"}


def eval_markdown(result: Mapping[str, Any]) -> str:
    from benchmarks.heldout import fmt_ci as _fmt

    labels = list(result["agents"])
    lines = [
        "# Held-out evaluation: " + " vs ".join(lab.upper().replace("BASE", "base") for lab in labels),
        "",
        f"Held-out cases ({', '.join(f'{s}: {n}' for s, n in result['held_out_cases'].items())}), faithful patient, "
        f"at most {result['max_questions']} questions, options shuffled, seed 0; 95% bootstrap intervals.",
        *([f"RL training reward: {', '.join(f'{lab}: `{r}`' for lab, r in result['rewards'].items())}."]
          if result.get("rewards") else []),
        "",
        "| metric | " + " | ".join(f"{lab} (`{result['variants'][lab]}`)" for lab in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    rows = [
        ("episodes", lambda r: str(r["episodes"])),
        ("fallback rate (turns)", lambda r: f"{r['fallback']['rate'] * 100:.1f}%" if r.get("fallback") else "—"),
        ("questions asked / episode", lambda r: _fmt(r["questions_asked"])),
        ("new facts / question", lambda r: _fmt(r["facts_per_question"])),
        ("fact coverage", lambda r: _fmt(r["fact_coverage"], pct=True)),
        ("questions passing the gate", lambda r: f"{r['gate_pass']['mean'] * 100:.1f}% of {r['gate_pass']['questions']}"
         if r["gate_pass"]["mean"] is not None else "—"),
        ("accuracy", lambda r: _fmt(r["accuracy"], pct=True)),
    ]
    for name, fn in rows:
        lines.append(f"| {name} | " + " | ".join(fn(result["agents"][lab]) for lab in labels) + " |")
    if result.get("paired"):
        lines += ["", "| paired difference | episodes | accuracy | new facts / question |", "|---|---|---|---|"]
        for name, c in result["paired"].items():
            lines.append(f"| {name} | {c['pairs']} | {_fmt(c['accuracy'], pct=True)} | {_fmt(c['facts_per_question'])} |")
    return "\n".join(lines) + "\n"


def trained_rewards(variants: Mapping[str, str], out: Path) -> dict[str, str]:
    """The reward each RL variant of ``variants`` was trained with, from its stage manifest (``info_gain`` for
    manifests written before ``--reward`` existed)."""
    found: dict[str, str] = {}
    for label in variants:
        if label.startswith("sft+"):
            manifest = _manifest_done(out / label.removeprefix("sft+"), ["policy/config.json"]) or {}
            found[label] = str(manifest.get("reward", REWARD_NAME))
    return found


def eval_variants(opts: PipelineOptions, out: Path) -> dict[str, str]:
    """The agents of the held-out table: base and SFT always, SFT+PPO and SFT+GRPO when their stage has
    finished in ``out`` (its manifest complete, its merged policy there)."""
    variants = {
        "base": base_agent_spec(opts.model, vllm=opts.vllm),
        "sft": agent_spec(str(out / "sft" / "model"), vllm=opts.vllm),
    }
    for stage in ("ppo", "grpo"):
        if _manifest_done(out / stage, ["policy/config.json"]):
            variants[f"sft+{stage}"] = agent_spec(str(out / stage / "policy"), vllm=opts.vllm)
    return variants


def stage_eval(opts: PipelineOptions, out: Path) -> dict[str, Any]:
    stage_dir = out / "eval"
    outputs = ["heldout.json", "heldout.md"]
    variants = eval_variants(opts, out)
    done = _manifest_done(stage_dir, outputs)
    if done and done.get("variants") == variants:
        print(f"[eval] done earlier: {stage_dir}", flush=True)
        return done
    if done:
        print(f"[eval] variants changed since the last evaluation ({list(done.get('variants') or {})} -> {list(variants)}): "
              "evaluating again", flush=True)
    started = time.time()
    result = evaluate(variants, opts, stage_dir)
    (stage_dir / "heldout.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    md = eval_markdown(result)
    (stage_dir / "heldout.md").write_text(md, encoding="utf-8")
    print(md, flush=True)
    return _write_manifest(stage_dir, "eval", outputs=outputs, started=started, variants=variants)


# ---------------------------------------------------------------------------------------------------
# Driver


TINY_SETTINGS: dict[str, Any] = {
    "demo_budgets": (3,), "demo_examples": 8, "sft_steps": 2, "sft_batch_size": 2, "sft_max_length": 1024, "lora_r": 4,
    "ppo_updates": 1, "episodes_per_update": 2, "mini_batch_size": 2, "micro_batch_size": 2, "ppo_epochs": 1,
    "ppo_lr": 1e-3, "ppo_lora_r": 4, "grpo_steps": 1, "grpo_episodes_per_step": 4, "grpo_num_generations": 2,
    "grpo_micro_batch_size": 2, "grpo_lr": 1e-3, "grpo_lora_r": 4, "max_new_tokens": 8, "max_questions": 2, "eval_limit": 2, "eval_batch_size": 4,
    "device": "cpu", "torch_threads": 1, "sources": ("builtin",),
}


def run_pipeline(opts: PipelineOptions, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run the selected stages in order (each resumes or skips); write ``<out>/manifest.json``."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.tiny and not (out / "tiny-model" / "config.json").is_file():
        from mediq_env.backends.tiny import build_tiny_causal_lm

        build_tiny_causal_lm(out / "tiny-model", seed=opts.seed)
    if opts.torch_threads:
        import torch

        torch.set_num_threads(opts.torch_threads)
    if opts.num_processes > 1:
        print("multi-GPU: SFT, PPO and GRPO run as `" + shlex.join([*_accelerate_prefix(opts.num_processes), *argv])
              + " --stages sft|ppo|grpo`",
              flush=True)
    started = time.time()
    manifests: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in opts.stages:
            continue
        if _launched() and stage in ("demos", "eval"):
            continue
        if stage == "demos":
            manifests[stage] = stage_demos(opts, out)
        elif stage == "sft":
            manifests[stage] = stage_sft(opts, out, argv)
        elif stage == "ppo":
            manifests[stage] = stage_ppo(opts, out, argv)
        elif stage == "grpo":
            manifests[stage] = stage_grpo(opts, out, argv)
        else:
            manifests[stage] = stage_eval(opts, out)
    summary = {
        "command": "python -m training.pipeline " + shlex.join(list(argv)),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(opts).items()},
        "stages": {k: {"seconds": v.get("seconds"), "outputs": v.get("outputs")} for k, v in manifests.items()},
        "seconds": round(time.time() - started, 1),
    }
    if _is_main_process():
        (out / "manifest.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return manifests


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.pipeline", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model", help="hub id, local directory or smollm2 (with --tiny: ignored, a tiny model is built)")
    p.add_argument("--out", default="runs/pipeline")
    p.add_argument("--tiny", action="store_true", help="a tiny model from a config, toy sizes, CPU: a smoke run")
    p.add_argument("--vllm", action="store_true", help="serve the evaluation agents with vLLM (llm:vllm:<dir>)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--sources", help="case sources, comma-separated (default builtin; add askdocs,medqa where present)")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-questions", type=int)
    p.add_argument("--reward", help="PPO and GRPO reward: a name of benchmarks.hacks.REWARD_CONFIGS or info_gain_only "
                                    f"(default {REWARD_NAME})")
    p.add_argument("--demo-examples", type=int, help="keep at most N demonstration examples (all kinds kept)")
    p.add_argument("--sft-adapter", help="skip SFT training: merge this LoRA adapter into --model instead")
    p.add_argument("--sft-steps", type=int)
    p.add_argument("--sft-epochs", type=float)
    p.add_argument("--sft-lr", type=float)
    p.add_argument("--sft-batch-size", type=int)
    p.add_argument("--sft-grad-accum", type=int)
    p.add_argument("--sft-max-length", type=int)
    p.add_argument("--lora-r", type=int, help="SFT LoRA rank")
    p.add_argument("--ppo-updates", type=int)
    p.add_argument("--episodes-per-update", type=int)
    p.add_argument("--mini-batch-size", type=int)
    p.add_argument("--micro-batch-size", type=int)
    p.add_argument("--ppo-epochs", type=int)
    p.add_argument("--ppo-lr", type=float)
    p.add_argument("--ppo-lora-r", type=int)
    p.add_argument("--kl-coef", type=float)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--save-steps", type=int, help="PPO / GRPO checkpoint every N updates / steps (resumable)")
    p.add_argument("--grpo-steps", type=int, help="GRPO optimizer steps (a resumed run may raise or lower it)")
    p.add_argument("--grpo-episodes-per-step", type=int, help="episodes per GRPO step (cases x generations)")
    p.add_argument("--grpo-num-generations", type=int, help="GRPO group size: episodes per case per step")
    p.add_argument("--grpo-micro-batch-size", type=int, help="GRPO episodes per forward/backward")
    p.add_argument("--grpo-lr", type=float)
    p.add_argument("--grpo-beta", type=float, help="GRPO KL coefficient (reference: the SFT model)")
    p.add_argument("--grpo-lora-r", type=int)
    p.add_argument("--torch-threads", type=int)
    p.add_argument("--eval-limit", type=int, help="first N held-out cases per source")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--num-processes", type=int, help="GPUs: run SFT, PPO and GRPO under accelerate launch")
    return p


def options_from_args(args: argparse.Namespace) -> PipelineOptions:
    values: dict[str, Any] = dict(TINY_SETTINGS) if args.tiny else {}
    for name in ("seed", "max_questions", "reward", "demo_examples", "sft_adapter", "sft_steps", "sft_epochs", "sft_lr",
                 "sft_batch_size", "sft_grad_accum", "sft_max_length", "lora_r", "ppo_updates", "episodes_per_update",
                 "mini_batch_size", "micro_batch_size", "ppo_epochs", "ppo_lr", "ppo_lora_r", "kl_coef", "max_new_tokens",
                 "save_steps", "grpo_steps", "grpo_episodes_per_step", "grpo_num_generations", "grpo_micro_batch_size",
                 "grpo_lr", "grpo_beta", "grpo_lora_r", "torch_threads", "eval_limit", "eval_batch_size", "device", "num_processes", "data_dir"):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.sources:
        values["sources"] = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    values["stages"] = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    out = Path(args.out)
    if args.tiny:
        model = str(out / "tiny-model")
    elif args.model:
        model = args.model
    else:
        raise ConfigError("give --model (a hub id, a local directory or smollm2), or --tiny")
    return PipelineOptions(model=model, out=str(out), tiny=args.tiny, vllm=args.vllm, **values)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        opts = options_from_args(args)
        run_pipeline(opts, argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
