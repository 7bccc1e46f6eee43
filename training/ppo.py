"""Multi-turn PPO on the environment, written for it on torch + transformers + accelerate.

Why not TRL: TRL 1.16 has no PPOTrainer (it was single-turn and needed a neural reward model). Here an
*episode* is the unit: the doctor asks, the patient answers, the doctor asks again, then answers; every
question earns its own reward (the attribute scores of :mod:`mediq_env.wrappers`) and the answer earns
correctness. The trainer therefore has to own the rollout (:func:`training.rl_common.run_episodes`), the
credit assignment and the token masking — the parts a generic single-turn trainer gets wrong here.

What one update does:

1. **Rollout.** ``episodes_per_update`` episodes (per process) through a
   :class:`~mediq_env.BatchedEnv`: one batched ``generate`` for all active episodes per turn, one patient
   call per turn. Each episode is one token sequence in chat format (observations/patient replies as user
   messages, doctor turns as assistant messages); only the doctor's sampled tokens are actions.
2. **Scoring pass** (no grad): log-probabilities of the action tokens under the policy and the frozen
   reference, and values. Rewards per action token: ``-kl_coef · (log π − log π_ref)`` on every token, plus
   each turn's env reward on that turn's last token (a question's weighted scores and costs; correctness on
   the final answer's last token).
3. **GAE** over the stream of doctor tokens (patient tokens are the environment's transition, not steps of
   the agent), whitened advantages, then ``ppo_epochs`` passes over shuffled minibatches of episodes with
   the clipped policy loss, the clipped value loss and an optional entropy bonus; gradients are clipped.

Design choices worth knowing:

* The value head is a linear layer on the final hidden state, either on the policy itself
  (``critic="shared"``, the default: no second model) or on a separate copy of the base model
  (``critic="separate"``; only its transformer body runs, never its LM head). Both the action
  log-probabilities and the values are read at the position *before* each action token. The logits come
  from the model's own forward (so model-specific transforms such as Granite's ``logits_scaling`` or
  Gemma-2's final soft-capping are applied), restricted with ``logits_to_keep`` to the positions that hold
  an action in the micro-batch, so they never take ``batch × sequence × vocabulary`` memory.
* The policy being optimised is the *sampling* distribution: log-probabilities (old, new and reference)
  are of ``softmax(logits / temperature)``, exactly what the rollout sampled from. ``temperature=0``
  (greedy rollouts: no exploration, and a ratio of a deterministic policy) and ``top_p < 1`` are refused:
  under a nucleus the new and reference policies give tokens outside their own nucleus probability 0, so
  the ratio and the KL penalty would be degenerate (−inf log-probabilities), while scoring without the
  mask would train on a distribution the rollout did not sample from.
* Dropout is off throughout (the model stays in ``eval()`` while it is trained): with dropout the ratio
  π/π_old would not be 1 on the first minibatch, which PPO assumes.
* With ``use_lora`` the reference model is the policy with its adapters disabled, so no second copy of
  the weights is held; without LoRA it is a frozen copy.
* Distributed training, DeepSpeed and FSDP come from ``accelerate launch`` and its config file: the
  trainable policy, value head and critic live in one ``nn.Module`` prepared by the Accelerator (DeepSpeed
  wants one). Each process plays its own episodes; with a sharded model (ZeRO-3/FSDP) the processes keep
  their ``generate`` calls in step.
* Plugging back in: every checkpoint (and the final run) exports ``policy/`` as a plain ``transformers``
  checkpoint with its tokenizer (LoRA adapters merged in; the adapter itself in ``adapter/``), so
  ``make_agent("llm:hf:<output_dir>/policy")`` loads it. With ``prompt_format="agent"`` the first turn
  is exactly :class:`agents.llm_agent.LLMAgent`'s implicit-strategy prompt; later turns differ in layout
  (the agent re-renders the whole interview in one user message, training uses a growing chat).

Single-turn mode (``mode="single_turn"``) is ALFA's PPO setting: each "episode" is one prompt (the
doctor's view) and one generated question, scored by the configured scorer (e.g. the attribute reward models
of :class:`~mediq_env.scoring.RewardModelScorer`) through the same reward weighting as the multi-turn
wrapper.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from mediq_env.errors import ConfigError
from training.rl_common import (
    AdaptiveKLController,
    ChatLayout,
    Episode,
    EpisodeConfig,
    FixedKLController,
    JsonlLogger,
    PromptFormat,
    TurnOutcome,
    action_positions,
    eos_token_ids,
    explained_variance,
    gae_advantages,
    make_prompt_format,
    masked_whiten,
    pad_token_id,
    ppo_losses,
    run_episodes,
    run_single_turn,
    seed_everything,
)

if TYPE_CHECKING:
    import torch

    from mediq_env.case import Case
    from mediq_env.dialogue import DialogueState
    from mediq_env.patient import Patient
    from mediq_env.scoring import Scorer
    from mediq_env.wrappers import RewardConfig

__all__ = ["PPOConfig", "PPOTrainer", "action_logprobs", "actor_critic_class", "load_policy", "train_ppo"]

KNOWN_TRACKERS = ("none", "all", "tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class PPOConfig(EpisodeConfig):
    """Everything a PPO run needs; validated at construction (a bad value fails before any model loads).

    Batch sizes count *episodes per process*: an update plays ``episodes_per_update`` episodes, then runs
    ``ppo_epochs`` passes over minibatches of ``mini_batch_size`` episodes (one optimizer step each),
    evaluated in chunks of ``micro_batch_size`` episodes (gradient accumulation, for memory).
    """

    output_dir: str = "runs/ppo"
    mode: Literal["multi_turn", "single_turn"] = "multi_turn"
    num_updates: int = 100
    episodes_per_update: int = 16
    mini_batch_size: int = 8
    micro_batch_size: int = 4
    ppo_epochs: int = 4
    learning_rate: float = 1e-5
    value_learning_rate: float | None = None
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    score_clip: float | None = None
    kl_coef: float = 0.05
    adaptive_kl: bool = False
    target_kl: float = 6.0
    kl_horizon: int = 10000
    critic: Literal["shared", "separate"] = "shared"
    use_lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    dtype: str = "auto"
    use_cpu: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    report_to: list[str] = field(default_factory=lambda: ["none"])
    project_name: str = "mediq-ppo"
    logging_steps: int = 1
    save_steps: int = 0
    save_total_limit: int | None = None
    export_policy_on_save: bool = True
    resume_from: str | None = None
    torch_threads: int | None = None
    record_rollout_logprobs: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        # The PPO ratio is of the sampling distribution (see the module notes): it must be a proper,
        # full-support softmax(logits / T).
        if self.temperature <= 0:
            raise ConfigError(f"PPO needs sampled rollouts: temperature must be > 0 (0 would be greedy), got {self.temperature}")
        if self.top_p != 1.0:
            raise ConfigError(
                f"PPO does not support top_p < 1 (got {self.top_p}): a nucleus-truncated policy gives -inf log-probabilities "
                "to tokens outside the new or the reference nucleus; use temperature to sharpen sampling instead"
            )
        if self.mode not in ("multi_turn", "single_turn"):
            raise ConfigError(f"mode must be 'multi_turn' or 'single_turn', got {self.mode!r}")
        if self.mode == "single_turn" and self.scorer == "none":
            raise ConfigError("single_turn mode scores each question: set scorer to 'environment' or 'reward_model'")
        for name in ("num_updates", "episodes_per_update", "mini_batch_size", "micro_batch_size", "ppo_epochs", "kl_horizon", "logging_steps", "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.mini_batch_size > self.episodes_per_update:
            raise ConfigError(f"mini_batch_size ({self.mini_batch_size}) exceeds episodes_per_update ({self.episodes_per_update})")
        if self.micro_batch_size > self.mini_batch_size:
            raise ConfigError(f"micro_batch_size ({self.micro_batch_size}) exceeds mini_batch_size ({self.mini_batch_size})")
        for name in ("learning_rate", "cliprange", "cliprange_value", "adam_eps", "target_kl"):
            if not _finite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.value_learning_rate is not None and not (_finite(self.value_learning_rate) and self.value_learning_rate > 0):
            raise ConfigError(f"value_learning_rate must be > 0, got {self.value_learning_rate!r}")
        for name in ("weight_decay", "vf_coef", "ent_coef", "kl_coef", "lora_dropout"):
            if not _finite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lam must lie in [0, 1], got gamma={self.gamma}, lam={self.lam}")
        for name in ("max_grad_norm", "score_clip"):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and value > 0):
                raise ConfigError(f"{name} must be > 0 or None, got {value!r}")
        if self.critic not in ("shared", "separate"):
            raise ConfigError(f"critic must be 'shared' or 'separate', got {self.critic!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = list(self.report_to)
        unknown = [r for r in self.report_to if r not in KNOWN_TRACKERS]
        if unknown:
            raise ConfigError(f"unknown report_to {unknown}; use any of {', '.join(KNOWN_TRACKERS)}")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ConfigError("report_to 'none' cannot be combined with trackers")
        if self.save_steps < 0:
            raise ConfigError(f"save_steps must be >= 0 (0: save at the end only), got {self.save_steps}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be >= 1 or None, got {self.save_total_limit}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        self.lora_target_modules = list(self.lora_target_modules)


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------------
# Model


def load_policy(spec: str, dtype: Any = "auto", device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from ``"smollm2"`` (the offline default), a local directory or a hub id, with the
    weights on ``device``. (Until the first GPU run of question-level PPO, a directory stayed on the CPU whatever
    ``device`` said: rejection sampling and question PPO then ran on the GPU machine's CPU, unnoticed until the
    sampling rate matched a laptop's; ``question_ppo_gpu.md``.)"""
    from mediq_env.backends.hf import dtype_kwarg, resolve_dtype

    if spec == "smollm2":
        from mediq_env.backends.smollm import load_smollm2

        return load_smollm2(device=device, dtype=dtype)
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(spec, **{dtype_kwarg(transformers): resolve_dtype(dtype, device)})
    cast(Any, model).to(device)  # transformers' stubs type .to for the class, not the instance
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec)
    return model, tokenizer


def _hidden_size(model: Any) -> int:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def _unwrap_peft(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _supports_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(_unwrap_peft(model).forward).parameters


def _backbone(model: Any) -> Any:
    """The transformer body of a causal LM (no LM head): what a value head needs. Works through a PEFT
    wrapper, whose LoRA layers live inside the body and stay active."""
    base = _unwrap_peft(model)
    body = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "base_model", base)
    if body is base:
        raise ConfigError(f"cannot find the transformer body of {type(base).__name__} for the separate critic")
    return body


def action_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities and entropies of the action tokens at ``(rows, cols + 1)`` under the sampling
    distribution ``softmax(logits / temperature)``, and the final hidden states at ``(rows, cols)`` (the
    state each action was sampled in).

    The logits are the model's own forward output, so whatever the model does after its LM head (Granite's
    ``logits_scaling``, Gemma-2's final soft-capping) is applied exactly as in ``generate``. With
    ``logits_to_keep`` given the distinct action columns of the batch, the LM head runs on those positions
    only instead of on the full ``batch × sequence × vocabulary`` logits, most of the memory of a forward
    pass with a large vocabulary. Models without ``logits_to_keep`` fall back to the full logits.
    """
    import torch

    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "output_hidden_states": True, "use_cache": False}
    if _supports_logits_to_keep(model):
        keep, where = torch.unique(cols, sorted=True, return_inverse=True)
        kwargs["logits_to_keep"] = keep
        out = model(**kwargs)
        logits = out.logits[rows, where]
    else:
        out = model(**kwargs)
        logits = out.logits[rows, cols]
    hidden = out.hidden_states[-1][rows, cols]
    logprobs_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logprobs_all.gather(-1, input_ids[rows, cols + 1].unsqueeze(-1)).squeeze(-1)
    entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)
    return logp, entropy, hidden


def _build_actor_critic_class() -> type:
    # Defined on first use: subclassing torch.nn.Module at import time would make importing this module
    # (and so registering ``mediq train ppo``) import torch.
    import torch

    class ActorCritic(torch.nn.Module):
        """The trainable part of PPO as one module: the policy LM, a value head and (optionally) a separate
        critic backbone. One module, because DeepSpeed prepares one model per engine.

        ``forward`` returns, for the action tokens at ``(rows, cols + 1)``, their log-probabilities, the
        entropy of the policy there, and the values of the states they were sampled in (read at ``cols``).
        """

        def __init__(self, policy: Any, critic: Any = None, temperature: float = 1.0) -> None:
            super().__init__()
            self.policy = policy
            self.critic = critic
            self.temperature = float(temperature)
            self.v_head = torch.nn.Linear(_hidden_size(critic if critic is not None else policy), 1)
            # Zero init: the first values are 0, so the first advantages are the (whitened) returns and a random
            # head does not inject noise into the first updates.
            torch.nn.init.zeros_(self.v_head.weight)
            torch.nn.init.zeros_(self.v_head.bias)

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            rows: torch.Tensor,
            cols: torch.Tensor,
            *,
            with_values: bool = True,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            logp, entropy, hidden = action_logprobs(self.policy, input_ids, attention_mask, rows, cols, self.temperature)
            values = None
            if with_values:
                if self.critic is not None:
                    # The body only: the critic's LM head (full-vocabulary logits) would be computed and thrown away.
                    out = _backbone(self.critic)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                    hidden = out.last_hidden_state[rows, cols]
                values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1).float()
            return logp, entropy, values

    return ActorCritic


_ACTOR_CRITIC: type | None = None


def actor_critic_class() -> type:
    """The ``ActorCritic`` module class (policy + value head + optional critic), built once when first
    needed; ``training.ppo.ActorCritic`` resolves to it too."""
    global _ACTOR_CRITIC
    if _ACTOR_CRITIC is None:
        _ACTOR_CRITIC = _build_actor_critic_class()
    return _ACTOR_CRITIC


def __getattr__(name: str) -> Any:
    if name == "ActorCritic":
        return actor_critic_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _TrainerState:
    """What a checkpoint must restore besides weights and optimizer: the update counter, the KL coefficient
    and the trainer's own RNG (episode seeds, minibatch order). accelerate saves the torch/numpy/python
    RNGs per process; this object is registered with ``register_for_checkpointing``, which accelerate saves
    from the main process only, so :meth:`PPOTrainer.save` also writes each process's RNG to its own file
    and a resume restores each process's own (the counters and the KL coefficient are the same on all)."""

    def __init__(self, rng: np.random.Generator, kl_coef: float) -> None:
        self.rng = rng
        self.step = 0
        self.episodes = 0
        self.kl_coef = kl_coef

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "episodes": self.episodes, "kl_coef": self.kl_coef, "rng_state": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.episodes = int(state["episodes"])
        self.kl_coef = float(state["kl_coef"])
        self.rng.bit_generator.state = dict(state["rng_state"])


@dataclass
class _Batch:
    """One rollout ready for PPO: the episodes and, per episode, tensors over its action tokens."""

    episodes: list[Episode]
    old_logp: list[torch.Tensor]
    ref_logp: list[torch.Tensor]
    old_values: list[torch.Tensor]
    advantages: list[torch.Tensor]
    returns: list[torch.Tensor]
    stats: dict[str, float]


class PPOTrainer:
    """Multi-turn (or single-turn) PPO on the environment; see the module docstring.

    Args:
        config: the run's :class:`PPOConfig`.
        model, tokenizer: an already-built policy and its tokenizer (default: loaded from ``config.model``).
        env: a BatchedEnv-like object with ``episodes_per_update`` slots (default: ``config.build_env``).
        prompt_format: how episodes are written as chats (default: ``config.prompt_format``).
        reward_fn: per-turn reward components replacing the env's (gets a :class:`TurnOutcome`).
        single_turn_items: ``(state, case or None)`` prompts for single-turn mode (default: the opening
            states of the env's cases).
        scorer, reward_config, patient: single-turn scoring (default: the env wrapper's, else the config's).
    """

    def __init__(
        self,
        config: PPOConfig,
        *,
        model: Any = None,
        tokenizer: Any = None,
        env: Any = None,
        prompt_format: PromptFormat | None = None,
        reward_fn: Callable[[TurnOutcome], Mapping[str, float]] | None = None,
        single_turn_items: Sequence[tuple[DialogueState, Case | None]] | None = None,
        scorer: Scorer | None = None,
        reward_config: RewardConfig | None = None,
        patient: Patient | None = None,
    ) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config = config
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.output_dir = Path(config.output_dir)
        trackers = [] if config.report_to == ["none"] else list(config.report_to)
        _check_trackers(trackers)
        self.accelerator = Accelerator(
            cpu=config.use_cpu,
            mixed_precision=config.mixed_precision,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
        )
        acc = self.accelerator
        seed_everything(config.seed + acc.process_index)

        if model is None:
            model, loaded_tok = load_policy(config.model, config.dtype, "cpu")
            tokenizer = tokenizer or loaded_tok
        if tokenizer is None:
            raise ConfigError("a model passed in needs its tokenizer: pass tokenizer=...")
        model.to(acc.device)
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer, self.eos_ids)
        self.layout = ChatLayout(tokenizer, self.eos_ids)
        self.fmt: PromptFormat = prompt_format or make_prompt_format(config.prompt_format)
        self.reward_fn = reward_fn

        self.ref_model: Any = None
        if config.use_lora:
            from peft import LoraConfig, get_peft_model

            targets: Any = config.lora_target_modules
            if targets == ["all-linear"]:
                targets = "all-linear"
            lora = LoraConfig(
                r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets, task_type="CAUSAL_LM"
            )
            critic_base = copy.deepcopy(model) if config.critic == "separate" else None
            policy = get_peft_model(model, lora)
            critic = get_peft_model(critic_base, copy.deepcopy(lora)) if critic_base is not None else None
        else:
            if config.kl_coef > 0 or config.adaptive_kl:
                self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
            policy = model
            critic = copy.deepcopy(model) if config.critic == "separate" else None
        self.use_reference = config.kl_coef > 0 or config.adaptive_kl

        if critic is not None:
            # The critic never runs its LM head; an untied head would get no gradient, which DDP reports as an
            # error (unused parameters) and the optimizer would hold state for. A tied one is the embedding.
            head, emb = critic.get_output_embeddings(), critic.get_input_embeddings()
            if head is not None and emb is not None and head.weight is not emb.weight:
                head.requires_grad_(False)
        ac = actor_critic_class()(policy, critic, config.temperature).to(acc.device)
        value_params = list(ac.v_head.parameters()) + (list(ac.critic.parameters()) if critic is not None else [])
        value_ids = {id(p) for p in value_params}
        policy_params = [p for p in ac.parameters() if p.requires_grad and id(p) not in value_ids]
        groups = [
            {"params": policy_params, "lr": config.learning_rate},
            {"params": [p for p in value_params if p.requires_grad], "lr": config.value_learning_rate or config.learning_rate},
        ]
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay, eps=config.adam_eps)
        self.ac, self.optimizer = acc.prepare(ac, optimizer)
        self.ac.eval()

        self.kl_ctl: FixedKLController | AdaptiveKLController = (
            AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon) if config.adaptive_kl else FixedKLController(config.kl_coef)
        )
        self.rng = np.random.default_rng(config.seed + 7919 * acc.process_index)
        self.state = _TrainerState(self.rng, self.kl_ctl.value)
        acc.register_for_checkpointing(self.state)

        self.env = env if env is not None else config.build_env(config.episodes_per_update)
        if len(self.env) < 1:
            raise ConfigError("the env needs at least one slot")
        self.single_turn_items = list(single_turn_items) if single_turn_items is not None else None
        self.scorer = scorer if scorer is not None else getattr(self.env, "scorer", None)
        self.reward_config = reward_config if reward_config is not None else getattr(self.env, "config", None)
        if config.mode == "single_turn":
            if self.scorer is None:
                self.scorer = config.build_scorer()
            if self.reward_config is None or not hasattr(self.reward_config, "weights"):
                self.reward_config = config.reward_config()
        inner = getattr(self.env, "batch", self.env)
        self.patient = patient if patient is not None else getattr(inner, "patient", None)

        self.jsonl = JsonlLogger(self.output_dir / "metrics.jsonl", enabled=acc.is_main_process)
        self.history: list[dict[str, Any]] = []
        self._trackers_started = False
        self._last_saved_step = -1
        if config.resume_from:
            self._resume(config.resume_from)

    # -- properties -------------------------------------------------------------------------------------

    @property
    def step_count(self) -> int:
        return self.state.step

    @property
    def unwrapped(self) -> Any:
        """The ActorCritic module itself (not the DDP/DeepSpeed wrapper)."""
        return self.accelerator.unwrap_model(self.ac)

    @property
    def policy(self) -> Any:
        return self.unwrapped.policy

    def _sharded(self) -> bool:
        acc = self.accelerator
        if acc.num_processes < 2:
            return False
        ds = getattr(acc.state, "deepspeed_plugin", None)
        if ds is not None and getattr(ds, "zero_stage", 0) == 3:
            return True
        return getattr(acc.state, "fsdp_plugin", None) is not None

    # -- rollout ----------------------------------------------------------------------------------------

    def _episode_specs(self, n: int) -> list[tuple[str | None, int | None]]:
        seeds = self.rng.integers(0, 2**31 - 1, size=n).tolist()
        return [(None, int(s)) for s in seeds]

    def rollout(self) -> list[Episode]:
        """Play this update's episodes with the current policy (multi-turn, or single-turn prompts)."""
        cfg = self.config
        specs = self._episode_specs(cfg.episodes_per_update)
        policy = self.policy
        sharded = self._sharded()
        global_active = self._global_max if sharded else None
        if cfg.mode == "single_turn":
            items = self._single_turn_batch(specs)
            assert self.scorer is not None and self.reward_config is not None
            return run_single_turn(
                policy, self.tokenizer, self.fmt, self.layout, items, cfg.generation(), scorer=self.scorer, reward_config=self.reward_config,
                patient=self.patient, max_seq_len=cfg.max_seq_len, batch_size=cfg.generation_batch_size, pad_id=self.pad_id, synced_gpus=sharded,
                record_logprobs=cfg.record_rollout_logprobs,
            )
        return run_episodes(
            policy, self.tokenizer, self.env, self.fmt, self.layout, specs, cfg.generation(), max_seq_len=cfg.max_seq_len,
            batch_size=cfg.generation_batch_size, pad_id=self.pad_id, reward_fn=self.reward_fn, global_active=global_active, synced_gpus=sharded,
            record_logprobs=cfg.record_rollout_logprobs,
        )

    def _single_turn_batch(self, specs: Sequence[tuple[str | None, int | None]]) -> list[tuple[DialogueState, Case | None]]:
        if self.single_turn_items is not None:
            idx = [int(s or 0) % len(self.single_turn_items) for _, s in specs]
            return [self.single_turn_items[i] for i in idx]
        items: list[tuple[DialogueState, Case | None]] = []
        for _, seed in specs:
            _, info = self.env.reset_at(0, seed=seed)
            items.append((info["state"], self.env.envs[0].case))
            self.env.abandon(0)
        return items

    def _global_max(self, n: int) -> int:
        import torch

        t = torch.tensor([n], device=self.accelerator.device)
        return int(self.accelerator.reduce(t, reduction="max").item())

    # -- scoring pass -----------------------------------------------------------------------------------

    def _pad(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, ...]:
        import torch

        width = max(len(e.ids) for e in episodes)
        ids = torch.full((len(episodes), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(episodes), width), dtype=torch.long)
        rows: list[int] = []
        cols: list[int] = []
        for b, e in enumerate(episodes):
            ids[b, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            attn[b, : len(e.ids)] = 1
            for p in action_positions(e.action_mask):
                rows.append(b)
                cols.append(p - 1)
        device = self.accelerator.device
        return (
            ids.to(device),
            attn.to(device),
            torch.tensor(rows, dtype=torch.long, device=device),
            torch.tensor(cols, dtype=torch.long, device=device),
        )

    def _split(self, flat: torch.Tensor, episodes: Sequence[Episode]) -> list[torch.Tensor]:
        sizes = [e.n_action_tokens for e in episodes]
        return [t.detach().float().cpu() for t in flat.split(sizes)]

    def _ref_logprobs(self, ids: torch.Tensor, attn: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        if self.config.use_lora:
            # The reference is the base model: the same weights with the adapters switched off.
            with self.policy.disable_adapter():
                logp, _, _ = action_logprobs(self.policy, ids, attn, rows, cols, self.config.temperature)
            return logp
        # The reference at the rollout temperature too: the KL penalty compares two sampling distributions.
        logp, _, _ = action_logprobs(self.ref_model, ids, attn, rows, cols, self.config.temperature)
        return logp

    def prepare_batch(self, episodes: list[Episode]) -> _Batch:
        """The scoring pass: old log-probs, reference log-probs and values; KL-penalised token rewards; GAE."""
        import torch

        cfg = self.config
        mb = cfg.micro_batch_size
        old_logp: list[torch.Tensor] = []
        ref_logp: list[torch.Tensor] = []
        old_values: list[torch.Tensor] = []
        with torch.no_grad(), self.accelerator.autocast():
            for start in range(0, len(episodes), mb):
                chunk = episodes[start : start + mb]
                ids, attn, rows, cols = self._pad(chunk)
                logp, _, values = self.ac(ids, attn, rows, cols)
                assert values is not None
                old_logp += self._split(logp, chunk)
                old_values += self._split(values, chunk)
                if self.use_reference:
                    ref_logp += self._split(self._ref_logprobs(ids, attn, rows, cols), chunk)
                else:
                    ref_logp += self._split(logp, chunk)
        kl_coef = self.kl_ctl.value
        rewards: list[np.ndarray] = []
        kls: list[float] = []
        for e, lp, rp in zip(episodes, old_logp, ref_logp, strict=True):
            score = np.asarray(e.action_rewards(), dtype=np.float64)
            if cfg.score_clip is not None:
                score = np.clip(score, -cfg.score_clip, cfg.score_clip)
            kl = (lp - rp).double().numpy()
            kls.append(float(kl.sum()))
            rewards.append(score - kl_coef * kl)
        flat_r = np.concatenate(rewards) if rewards else np.zeros(0)
        if cfg.whiten_rewards and flat_r.size > 1:
            t = torch.tensor(flat_r)
            flat_r = masked_whiten(t, torch.ones_like(t), shift_mean=False).numpy()
        flat_v = np.concatenate([v.double().numpy() for v in old_values]) if old_values else np.zeros(0)
        dones = np.zeros(flat_r.shape, dtype=bool)
        ends = np.cumsum([e.n_action_tokens for e in episodes])
        for end, e in zip(ends, episodes, strict=True):
            if e.n_action_tokens:
                dones[end - 1] = True
        adv, ret = gae_advantages(flat_r, flat_v, dones, cfg.gamma, cfg.lam)
        adv_t = torch.tensor(adv, dtype=torch.float32)
        if cfg.whiten_advantages and adv_t.numel() > 1:
            adv_t = masked_whiten(adv_t, torch.ones_like(adv_t))
        ret_t = torch.tensor(ret, dtype=torch.float32)
        sizes = [e.n_action_tokens for e in episodes]
        stats = {
            "kl": float(np.mean(kls)) if kls else 0.0,
            "returns/mean": float(ret.mean()) if ret.size else 0.0,
            "values/mean": float(flat_v.mean()) if flat_v.size else 0.0,
            "values/explained_variance": explained_variance(flat_v, ret) if ret.size else float("nan"),
            "advantages/raw_mean": float(adv.mean()) if adv.size else 0.0,
        }
        gaps = [(lp - torch.tensor(e.logprobs)).abs().max().item() for e, lp in zip(episodes, old_logp, strict=True) if e.logprobs and lp.numel()]
        if gaps:
            # How far the scoring pass is from the distribution the rollout sampled from (should be ~0).
            stats["rollout_logp_gap_max"] = float(max(gaps))
        return _Batch(episodes, old_logp, ref_logp, old_values, list(adv_t.split(sizes)), list(ret_t.split(sizes)), stats)

    # -- optimisation -----------------------------------------------------------------------------------

    def update(self, batch: _Batch) -> dict[str, float]:
        """``ppo_epochs`` passes over shuffled minibatches of episodes; returns token-weighted loss stats."""
        import torch

        cfg = self.config
        acc = self.accelerator
        n = len(batch.episodes)
        sums: dict[str, float] = {}
        n_tokens_seen = 0
        grad_norms: list[float] = []
        for _ in range(cfg.ppo_epochs):
            order = self.rng.permutation(n)
            for start in range(0, n, cfg.mini_batch_size):
                mb_idx = [int(i) for i in order[start : start + cfg.mini_batch_size]]
                total = max(sum(batch.episodes[i].n_action_tokens for i in mb_idx), 1)
                micro_chunks = [mb_idx[k : k + cfg.micro_batch_size] for k in range(0, len(mb_idx), cfg.micro_batch_size)]
                for k, micro in enumerate(micro_chunks):
                    eps = [batch.episodes[i] for i in micro]
                    ids, attn, rows, cols = self._pad(eps)

                    def cat(items: list[torch.Tensor], micro: list[int] = micro) -> torch.Tensor:
                        return torch.cat([items[i] for i in micro]).to(acc.device)

                    # Gradients are all-reduced once per minibatch, on its last micro-batch.
                    sync = acc.no_sync(self.ac) if k < len(micro_chunks) - 1 else contextlib.nullcontext()
                    with sync, acc.autocast():
                        logp, entropy, values = self.ac(ids, attn, rows, cols)
                        assert values is not None
                        parts = ppo_losses(
                            logp, cat(batch.old_logp), cat(batch.advantages), values, cat(batch.old_values), cat(batch.returns),
                            cliprange=cfg.cliprange, cliprange_value=cfg.cliprange_value,
                        )
                        loss = (parts["policy"].sum() + cfg.vf_coef * parts["value"].sum() - cfg.ent_coef * entropy.sum()) / total
                        acc.backward(loss)
                    ntok = int(logp.numel())
                    n_tokens_seen += ntok
                    for name, t in (
                        ("loss/policy", parts["policy"]), ("loss/value", parts["value"]), ("entropy", entropy),
                        ("clipfrac", parts["clipped"]), ("value_clipfrac", parts["value_clipped"]),
                        ("approx_kl", parts["approx_kl"]), ("ratio", parts["ratio"]),
                    ):
                        sums[name] = sums.get(name, 0.0) + float(t.detach().sum())
                if cfg.max_grad_norm is not None:
                    norm = acc.clip_grad_norm_(self.ac.parameters(), cfg.max_grad_norm)
                    if norm is not None:
                        grad_norms.append(float(norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        stats = {k: v / max(n_tokens_seen, 1) for k, v in sums.items()}
        stats["loss/total"] = stats.get("loss/policy", 0.0) + cfg.vf_coef * stats.get("loss/value", 0.0) - cfg.ent_coef * stats.get("entropy", 0.0)
        if grad_norms:
            stats["grad_norm"] = float(np.mean(grad_norms))
        return stats

    def step(self) -> dict[str, Any]:
        """One PPO update: rollout, scoring pass, optimisation, logging. Returns the update's metrics."""
        t0 = time.perf_counter()
        episodes = self.rollout()
        t1 = time.perf_counter()
        batch = self.prepare_batch(episodes)
        t2 = time.perf_counter()
        train_stats = self.update(batch)
        t3 = time.perf_counter()
        # The mean over every process's episodes: each process updating with its own KL would make the
        # coefficients (and so the rewards) drift apart between processes.
        batch.stats["kl"] = self._reduce_mean([batch.stats["kl"]])
        self.kl_ctl.update(batch.stats["kl"], self.config.episodes_per_update * self.accelerator.num_processes)
        self.state.step += 1
        self.state.episodes += len(episodes) * self.accelerator.num_processes
        self.state.kl_coef = self.kl_ctl.value
        metrics = self._metrics(episodes, batch, train_stats, (t1 - t0, t2 - t1, t3 - t2))
        self.history.append(metrics)
        if self.state.step % self.config.logging_steps == 0:
            self._log(metrics)
        return metrics

    def _reduce_mean(self, values: Sequence[float]) -> float:
        import torch

        acc = self.accelerator
        t = torch.tensor([float(sum(values)), float(len(values))], dtype=torch.float64, device=acc.device)
        if acc.num_processes > 1:
            t = acc.reduce(t, reduction="sum")
        return float(t[0] / t[1]) if float(t[1]) > 0 else float("nan")

    def _metrics(self, episodes: list[Episode], batch: _Batch, train: dict[str, float], times: tuple[float, float, float]) -> dict[str, Any]:
        rewards = [e.total_reward for e in episodes]
        comps: dict[str, list[float]] = {}
        names = sorted({k for e in episodes for k in e.components()})
        for e in episodes:
            c = e.components()
            for k in names:
                comps.setdefault(k, []).append(c.get(k, 0.0))
        answered = [e for e in episodes if e.correct is not None]
        gen_tokens = sum(e.n_action_tokens for e in episodes)
        all_tokens = sum(len(e.ids) for e in episodes)
        wall = sum(times)
        m: dict[str, Any] = {
            "step": self.state.step,
            "episodes": self.state.episodes,
            "reward/mean": self._reduce_mean(rewards),
            "reward/std": float(np.std(rewards)) if rewards else 0.0,
            "correct": self._reduce_mean([float(bool(e.correct)) for e in episodes]),
            "answered": len(answered) / max(len(episodes), 1),
            "questions": float(np.mean([sum(t.kind == "question" for t in e.turns) for e in episodes])) if episodes else 0.0,
            "cut_episodes": sum(e.cut for e in episodes),
            "episode_tokens": all_tokens / max(len(episodes), 1),
            "action_tokens": gen_tokens / max(len(episodes), 1),
            "kl_coef": self.kl_ctl.value,
            "time/rollout_s": times[0],
            "time/score_s": times[1],
            "time/train_s": times[2],
            "time/update_s": wall,
            "tokens_per_s": all_tokens * self.accelerator.num_processes / wall if wall > 0 else 0.0,
            "gen_tokens_per_s": gen_tokens * self.accelerator.num_processes / times[0] if times[0] > 0 else 0.0,
        }
        for k, vals in comps.items():
            m[f"reward/{k}"] = self._reduce_mean(vals)
        m["kl"] = batch.stats["kl"]  # already the mean over processes (see step)
        for k, v in batch.stats.items():
            if k != "kl":
                m[k] = v
        m.update(train)
        return m

    def _log(self, metrics: Mapping[str, Any]) -> None:
        acc = self.accelerator
        if acc.log_with and not self._trackers_started:
            acc.init_trackers(self.config.project_name, config=_flat_config(self.config))
            self._trackers_started = True
        if acc.log_with:
            acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=int(metrics["step"]))
        self.jsonl.log(metrics)

    # -- the loop ---------------------------------------------------------------------------------------

    def train(self, num_updates: int | None = None) -> list[dict[str, Any]]:
        """Run until ``num_updates`` updates have been done in total (default ``config.num_updates``),
        saving every ``save_steps`` and at the end; returns the metrics of the updates run by this call."""
        total = self.config.num_updates if num_updates is None else num_updates
        start = len(self.history)
        while self.state.step < total:
            self.step()
            if self.config.save_steps and self.state.step % self.config.save_steps == 0:
                self.save()
        if self._last_saved_step != self.state.step:
            self.save()
        self.export_policy(self.output_dir / "policy")
        if self._trackers_started:
            self.accelerator.end_training()
            self._trackers_started = False
        return self.history[start:]

    # -- checkpoints ------------------------------------------------------------------------------------

    def checkpoint_dir(self, step: int | None = None) -> Path:
        return self.output_dir / f"checkpoint-{self.state.step if step is None else step:06d}"

    def save(self, path: str | Path | None = None) -> Path:
        """Save everything a resume needs (weights, value head, optimizer, RNGs, step, KL coefficient) with
        ``accelerator.save_state`` — sharded correctly under DeepSpeed/FSDP — plus a readable
        ``trainer_state.json`` and, by default, the policy exported for :class:`TransformersBackend`."""
        acc = self.accelerator
        target = Path(path) if path is not None else self.checkpoint_dir()
        acc.wait_for_everyone()
        acc.save_state(str(target))
        # accelerate saves registered objects from the main process only; each process has its own trainer
        # RNG (its own episode seeds), so each writes its own file.
        target.mkdir(parents=True, exist_ok=True)
        (target / _rng_file(acc.process_index)).write_text(json.dumps(self.rng.bit_generator.state) + "\n", encoding="utf-8")
        if acc.is_main_process:
            (target / "trainer_state.json").write_text(
                json.dumps({**self.state.state_dict(), "kl_coef": self.kl_ctl.value}, indent=2) + "\n", encoding="utf-8"
            )
            (target / "ppo_config.json").write_text(json.dumps(self.config.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        if self.config.export_policy_on_save:
            self.export_policy(target / "policy")
        if acc.is_main_process:
            self._rotate()
        acc.wait_for_everyone()
        self._last_saved_step = self.state.step
        return target

    def export_policy(self, out_dir: str | Path) -> Path:
        """The policy as a plain ``transformers`` checkpoint + tokenizer (LoRA merged; adapter beside it in
        ``adapter/``), and the value head as ``value_head.pt``: loadable with ``TransformersBackend``.

        Call it on every process: under ZeRO-3/FSDP gathering the full weights is collective (LoRA exports
        merge the adapters in the main process's copy and assume unsharded weights)."""
        import torch

        acc = self.accelerator
        out = Path(out_dir)
        full_state = None if self.config.use_lora else acc.get_state_dict(self.ac)
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            unwrapped = self.unwrapped
            policy = unwrapped.policy
            if self.config.use_lora:
                policy.save_pretrained(out.parent / "adapter" if out.name == "policy" else out / "adapter")
                merged = copy.deepcopy(policy).merge_and_unload()
                merged.save_pretrained(out)
            else:
                assert full_state is not None
                state = {k.removeprefix("policy."): v for k, v in full_state.items() if k.startswith("policy.")}
                policy.save_pretrained(out, state_dict=state)
            self.tokenizer.save_pretrained(out)
            torch.save(unwrapped.v_head.state_dict(), out / "value_head.pt")
        acc.wait_for_everyone()
        return out

    def _rotate(self) -> None:
        limit = self.config.save_total_limit
        if limit is None:
            return
        ckpts = sorted(self.output_dir.glob("checkpoint-*"))
        for old in ckpts[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self, spec: str) -> None:
        if spec == "latest":
            ckpts = sorted(self.output_dir.glob("checkpoint-*"))
            if not ckpts:
                return
            path = ckpts[-1]
        else:
            path = Path(spec)
            if not path.is_dir():
                raise ConfigError(f"resume_from: no checkpoint directory at {path}")
        self.accelerator.load_state(str(path))
        # load_state gave every process the main process's trainer RNG; restore this process's own.
        own = path / _rng_file(self.accelerator.process_index)
        if own.is_file():
            self.rng.bit_generator.state = json.loads(own.read_text(encoding="utf-8"))
        elif self.accelerator.num_processes > 1:
            raise ConfigError(f"resume_from: {path} has no {own.name}; it was saved by fewer processes than this run has")
        self.kl_ctl.value = self.state.kl_coef
        self._last_saved_step = self.state.step
        self.jsonl.truncate_after(self.state.step)


def _rng_file(process_index: int) -> str:
    return f"trainer_rng_{process_index}.json"


def _check_trackers(trackers: Sequence[str]) -> None:
    """accelerate silently drops a tracker whose package is missing; a run asked to log must not do that."""
    if not trackers or trackers == ["all"]:
        return
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [t for t in trackers if t != "all" and t not in available]
    if missing:
        raise ConfigError(f"report_to {missing}: not installed here (pip install {' '.join(missing)}), or use report_to none")


def _flat_config(config: PPOConfig) -> dict[str, Any]:
    """Tracker hyper-parameters must be scalars: lists and dicts go in as JSON strings."""
    out: dict[str, Any] = {}
    for k, v in config.to_dict().items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
    return out


def train_ppo(config: PPOConfig) -> list[dict[str, Any]]:
    """Build a :class:`PPOTrainer` from ``config`` alone and train it (the CLI's entry)."""
    trainer = PPOTrainer(config)
    history = trainer.train()
    # Close the process group before the interpreter exits: with gloo a process leaving with the group's
    # threads alive can abort ("terminate called without an active exception") after a successful run.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return history
