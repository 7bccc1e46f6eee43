"""GRPO on the environment through TRL's ``GRPOTrainer``, with a multi-turn ``rollout_func``.

TRL 1.16's experimental ``rollout_func(prompts, trainer)`` replaces the trainer's generation: it gets the
prompts of a generation batch (already repeated ``num_generations`` times by TRL's sampler) and returns
``prompt_ids``, ``completion_ids`` and ``logprobs``; any other key is passed to the reward functions, and
an ``env_mask`` key (1 = model token, 0 = environment token) is used as the loss mask. That is enough for
true multi-turn episodes: :func:`make_rollout_func` plays each episode with
:func:`training.rl_common.run_episodes` — the very rollout PPO uses — and returns everything after the first
prompt as the "completion", with the patient's turns masked out.

What differs from :mod:`training.ppo` (on purpose, or because of TRL's API):

* **Credit assignment.** GRPO has no critic: an episode's *return* (the sum of its per-question rewards and
  correctness) is normalised within its group of ``num_generations`` episodes of the same case and seed,
  and that one advantage is given to every doctor token of the episode. PPO puts each question's reward
  on that question's last token and lets GAE assign credit turn by turn.
* **KL.** TRL applies the KL to the reference as a loss term (``beta``, default 0), not as a per-token
  reward.
* **Prompts only.** ``rollout_func`` receives the prompts, not the other dataset columns, so the dataset's
  prompt is the episode's real first prompt and a lookup table maps it back to its ``(case_id, seed)``.
* **Fresh option orders.** A dataset row fixes a case and a base seed; the episode is played with seed
  ``base + seeds_per_case × global_step``, so every generation step reshuffles the options (with one seed
  per case, a fixed seed would let the policy learn one letter per case) while all episodes of a group —
  same prompt, same step, on every process — still share one opening. The prompt TRL logs is the
  dataset's (step-0) rendering; the ``prompt_ids`` trained on are the episode's real ones.
* **Episodes cut before their first turn** (the opening does not fit ``max_seq_len``) have no return:
  every reward function gives None for them, which TRL leaves out of the group mean and std and gives
  advantage 0; they have no trained token either. They are counted in the ``episodes/cut_before_first_turn``
  metric.
* **Sampling.** Each doctor turn is sampled with the trainer's ``temperature`` (TRL rescales the training
  log-probabilities by it) and ``top_p``; ``max_new_tokens`` of the :class:`GRPOEnvConfig` bounds each turn
  (TRL's ``max_completion_length`` would bound the whole episode and is not used). ``logprobs`` is returned
  as None: without vLLM, TRL recomputes the old log-probabilities itself.
* **Sharded models.** Generation goes through TRL's ``unwrap_model_for_generation`` (ZeRO-3 weights are
  gathered); FSDP's full-parameter summoning is TRL-private and not done here.

``trl`` is imported inside functions only (it costs seconds to import).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mediq_env.errors import ConfigError
from training.rl_common import (
    ChatLayout,
    Episode,
    EpisodeConfig,
    PromptFormat,
    eos_token_ids,
    make_prompt_format,
    pad_token_id,
    run_episodes,
)

if TYPE_CHECKING:
    from mediq_env.case import Case

__all__ = ["GRPOEnvConfig", "build_grpo_trainer", "component_names", "episode_dataset", "lora_config", "make_rollout_func", "train_grpo", "trl_args"]


@dataclass
class GRPOEnvConfig(EpisodeConfig):
    """A GRPO run on the environment: the episode settings plus the TRL ``GRPOConfig`` values that matter.

    ``per_device_train_batch_size × gradient_accumulation_steps`` episodes are played per generation
    batch and must be a multiple of ``num_generations`` (the group size). The dataset has one row per
    ``(case, seed)``: every case once per seed in ``range(seeds_per_case)``.
    """

    output_dir: str = "runs/grpo"
    num_generations: int = 4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = 100
    learning_rate: float = 1e-6
    beta: float = 0.0
    epsilon: float = 0.2
    num_iterations: int = 1
    seeds_per_case: int = 1
    use_lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_cpu: bool = False
    bf16: bool = False
    report_to: list[str] = field(default_factory=lambda: ["none"])
    logging_steps: int = 1
    save_steps: int = 0
    gradient_checkpointing: bool = False
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_iterations", "seeds_per_case", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: GRPO's advantage compares episodes within a group")
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ConfigError(
                f"per_device_train_batch_size × gradient_accumulation_steps ({batch}) must be a multiple of "
                f"num_generations ({self.num_generations})"
            )
        if self.temperature <= 0:
            raise ConfigError("GRPO samples its groups: temperature must be > 0")
        if self.learning_rate <= 0 or self.beta < 0 or self.epsilon <= 0:
            raise ConfigError("learning_rate and epsilon must be > 0 and beta >= 0")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = list(self.report_to)
        if self.save_steps < 0:
            raise ConfigError(f"save_steps must be >= 0, got {self.save_steps}")


def component_names(env: Any) -> list[str]:
    """The reward components an env reports, when they are known in advance (for per-component logging)."""
    from mediq_env.wrappers import component_name

    config = getattr(env, "config", None)
    names = ["correctness", "question_cost", "invalid_action"]
    if config is not None and hasattr(config, "weights"):
        names += ["repeat_penalty", *(component_name(k) for k in config.weights)]
    return names


def _prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def episode_dataset(env: Any, fmt: PromptFormat, seeds_per_case: int = 1, case_ids: Sequence[str] | None = None) -> tuple[Any, dict[str, tuple[str, int]]]:
    """A ``datasets.Dataset`` of episode openings and the lookup from each prompt to its ``(case_id, seed)``.

    Each row's ``prompt`` is the real first chat of the episode (rendered by ``fmt`` from a reset of slot 0
    of ``env``), so TRL logs meaningful prompts and the rollout can recover the episode from the prompt.
    """
    import datasets

    ids = list(case_ids) if case_ids is not None else [c.id for c in env.envs[0].cases]
    rows: list[dict[str, Any]] = []
    lookup: dict[str, tuple[str, int]] = {}
    for case_id in ids:
        for seed in range(seeds_per_case):
            obs, info = env.reset_at(0, seed=seed, case_id=case_id)
            prompt = fmt.first_messages(info["state"], obs)
            env.abandon(0)
            key = _prompt_key(prompt)
            if key in lookup:
                continue  # same opening (e.g. no option shuffling): one row is enough
            lookup[key] = (case_id, seed)
            rows.append({"prompt": prompt, "case_id": case_id, "seed": seed})
    return datasets.Dataset.from_list(rows), lookup


def make_rollout_func(
    config: EpisodeConfig,
    env: Any,
    fmt: PromptFormat,
    tokenizer: Any,
    lookup: dict[str, tuple[str, int]],
    *,
    env_factory: Callable[[int], Any] | None = None,
    seeds_per_case: int | None = None,
) -> Callable[[list[Any], Any], dict[str, Any]]:
    """TRL's ``rollout_func``: play one multi-turn episode per prompt and return its tokens.

    Returns ``prompt_ids`` (the first prompt), ``completion_ids`` (every later token: doctor turns and the
    patient's turns), ``env_mask`` (1 on the doctor's tokens only), ``logprobs=None``, and for the reward
    functions ``episode_return`` and ``episode_components`` (each component summed over the episode).
    ``env_factory(n)`` builds a bigger env when a generation batch has more prompts than ``env`` has slots.
    ``seeds_per_case`` (default: the config's, else 1) spaces the per-step seeds (:func:`episode_seed`).
    """
    state: dict[str, Any] = {"env": env}
    stride = int(seeds_per_case if seeds_per_case is not None else getattr(config, "seeds_per_case", 1))

    def rollout_func(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        import torch
        from trl.models.utils import unwrap_model_for_generation

        specs: list[tuple[str | None, int | None]] = []
        step = int(getattr(getattr(trainer, "state", None), "global_step", 0) or 0)
        for p in prompts:
            key = _prompt_key(p)
            if key not in lookup:
                raise ConfigError("rollout_func got a prompt that is not an episode opening of its dataset")
            case_id, seed = lookup[key]
            specs.append((case_id, episode_seed(seed, step, stride)))
        if len(state["env"]) < len(specs) and env_factory is not None:
            state["env"] = env_factory(len(specs))
        args = trainer.args
        settings = config.generation()
        settings = type(settings)(settings.max_new_tokens, float(args.temperature), float(args.top_p))
        with (
            unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation) as model,
            torch.no_grad(),
        ):
            eos_ids = eos_token_ids(model, tokenizer)
            layout = ChatLayout(tokenizer, eos_ids)
            episodes = run_episodes(
                model, tokenizer, state["env"], fmt, layout, specs, settings, max_seq_len=config.max_seq_len,
                batch_size=config.generation_batch_size, pad_id=pad_token_id(tokenizer, eos_ids),
            )
        return episodes_to_rollout(episodes, pad_token_id(tokenizer, eos_ids))

    return rollout_func


def episode_seed(base_seed: int, step: int, seeds_per_case: int) -> int:
    """The env seed of a dataset row's episodes at a generation step: distinct for every (row, step) of a
    case (base seeds are ``0..seeds_per_case-1``), the same for every episode of one group."""
    return int(base_seed) + int(seeds_per_case) * int(step)


def _unplayed(e: Episode) -> bool:
    return e.cut and not e.turns


def episodes_to_rollout(episodes: Sequence[Episode], pad_id: int) -> dict[str, Any]:
    """The ``rollout_func`` output for finished episodes (split at the first prompt; masks; rewards).

    An episode cut before its first turn gets ``None`` as return and components: it was never played, so
    a 0 would drag its group's baseline (see the module notes)."""
    prompt_ids, completion_ids, env_mask = [], [], []
    for e in episodes:
        completion = e.ids[e.prompt_len :]
        mask = e.action_mask[e.prompt_len :]
        if not completion:
            # An episode cut before its first turn: one masked pad token keeps TRL's bookkeeping valid.
            completion, mask = [pad_id], [0]
        prompt_ids.append(e.ids[: e.prompt_len])
        completion_ids.append(completion)
        env_mask.append(mask)
    return {
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "logprobs": None,
        "env_mask": env_mask,
        "episode_return": [None if _unplayed(e) else e.total_reward for e in episodes],
        "episode_components": [None if _unplayed(e) else e.components() for e in episodes],
        "episode_correct": [bool(e.correct) for e in episodes],
    }


def episode_return(prompts: list[Any], completions: list[Any], episode_return: list[float | None], **kwargs: Any) -> list[float | None]:
    """The GRPO reward: the episode's return, i.e. the sum of every turn's reward (exactly what PPO sums);
    None for an episode cut before its first turn, counted in ``episodes/cut_before_first_turn``."""
    log_metric = kwargs.get("log_metric")
    if log_metric is not None:
        log_metric("episodes/cut_before_first_turn", float(sum(r is None for r in episode_return)))
    return [None if r is None else float(r) for r in episode_return]


def _component_reward(name: str) -> Callable[..., list[float | None]]:
    def reward(
        prompts: list[Any], completions: list[Any], episode_components: list[dict[str, float] | None], **kwargs: Any
    ) -> list[float | None]:
        return [None if c is None else float(c.get(name, 0.0)) for c in episode_components]

    reward.__name__ = name
    return reward


def trl_args(config: GRPOEnvConfig, *, reward_weights: Sequence[float], **overrides: Any) -> Any:
    """The ``trl.GRPOConfig`` of a run: the values of ``config`` that TRL knows, then ``overrides`` as they are."""
    from trl import GRPOConfig

    kwargs: dict[str, Any] = {
        "output_dir": config.output_dir,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "num_generations": config.num_generations,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "beta": config.beta,
        "epsilon": config.epsilon,
        "num_iterations": config.num_iterations,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "use_cpu": config.use_cpu,
        "bf16": config.bf16,
        "report_to": config.report_to,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps" if config.save_steps else "no",
        "seed": config.seed,
        "reward_weights": list(reward_weights),
        "dataloader_num_workers": 0,
    }
    # transformers 5 renamed gradient checkpointing (TRL turns it on by default); the old name still works
    # but warns, so use whichever this version's config knows.
    config_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    kwargs["activation_checkpointing" if "activation_checkpointing" in config_fields else "gradient_checkpointing"] = config.gradient_checkpointing
    if config.save_steps:
        kwargs["save_steps"] = config.save_steps
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def lora_config(config: GRPOEnvConfig) -> Any:
    """The PEFT LoRA config of a run, or None when it trains all weights."""
    if not config.use_lora:
        return None
    from peft import LoraConfig

    targets: Any = "all-linear" if config.lora_target_modules == ["all-linear"] else config.lora_target_modules
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=targets, task_type="CAUSAL_LM")


def build_grpo_trainer(
    config: GRPOEnvConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    env: Any = None,
    cases: Sequence[Case] | None = None,
    prompt_format: PromptFormat | None = None,
    **grpo_overrides: Any,
) -> Any:
    """A ``trl.GRPOTrainer`` whose rollouts are whole episodes of the environment.

    Reward functions: ``episode_return`` (weight 1) and, weighted 0 so they only show up in the logs, one
    function per known reward component. ``grpo_overrides`` go to ``trl.GRPOConfig`` as they are.
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOTrainer

    from training.ppo import load_policy

    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    if model is None:
        model, loaded = load_policy(config.model, "auto", "cpu")
        tokenizer = tokenizer or loaded
    if tokenizer is None:
        raise ConfigError("a model passed in needs its tokenizer: pass tokenizer=...")
    fmt = prompt_format or make_prompt_format(config.prompt_format)
    n = config.per_device_train_batch_size * config.gradient_accumulation_steps

    def factory(k: int) -> Any:
        return config.build_env(k, cases=cases)

    env = env if env is not None else factory(n)
    dataset, lookup = episode_dataset(env, fmt, config.seeds_per_case)
    groups = n // config.num_generations
    if len(dataset) < groups:
        raise ConfigError(
            f"the dataset has {len(dataset)} distinct episode openings but a generation batch needs {groups} "
            "(batch / num_generations); add cases or raise seeds_per_case (with shuffle_options)"
        )
    names = component_names(env)
    reward_funcs: list[Any] = [episode_return, *(_component_reward(k) for k in names)]
    args = trl_args(config, reward_weights=[1.0] + [0.0] * len(names), **grpo_overrides)
    peft_config = lora_config(config)
    rollout = make_rollout_func(config, env, fmt, tokenizer, lookup, env_factory=factory)
    return GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout,
        peft_config=peft_config,
    )


def train_grpo(config: GRPOEnvConfig) -> Any:
    """Build the trainer from ``config``, train, and save the policy to ``<output_dir>/policy``."""
    trainer = build_grpo_trainer(config)
    trainer.train()
    out = os.path.join(config.output_dir, "policy")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if config.use_lora:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    trainer.processing_class.save_pretrained(out)
    return trainer
