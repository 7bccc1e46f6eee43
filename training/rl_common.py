"""What the on-environment RL trainers share: the episode config, the token layout of a chat episode,
batched multi-turn rollouts through :class:`~mediq_env.BatchedEnv`, and the PPO arithmetic.

Why one module: PPO (:mod:`training.ppo`) and GRPO (:mod:`training.grpo`) must see *the same* episodes —
the same prompts, the same token sequence, the same reward — or comparing them says nothing. So both call
:func:`run_episodes`, which plays whole episodes for many cases at once (one ``generate`` call for all
active episodes per turn, one patient call per turn through the batched env) and returns each episode as
one token sequence in chat format with a mask of the tokens the doctor generated.

Token layout (token-in, token-out): the tokens the policy is trained on are exactly the tokens it was
conditioned on and sampled, never a re-tokenisation of the decoded text. The first prompt is rendered with
the tokenizer's chat template; each doctor turn is the sampled ids as they came out (including the EOS
that closed the turn); what follows a turn (the end of the assistant message, the next user message with
the patient's reply, the next assistant header) is rendered from the template's own text around probe
markers (:class:`ChatLayout`), so any prefix-stable template (ChatML, Llama-3, ...) works.

torch and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from mediq_env.backends.base import Chat
from mediq_env.dialogue import ANSWER_INSTRUCTIONS, FORCED_INSTRUCTIONS, DialogueState
from mediq_env.errors import ConfigError
from mediq_env.patient import PatientQuery, PatientReply

if TYPE_CHECKING:
    import torch

    from mediq_env.case import Case
    from mediq_env.patient import Patient
    from mediq_env.scoring import Scorer
    from mediq_env.wrappers import RewardConfig

__all__ = [
    "AdaptiveKLController",
    "AgentPromptFormat",
    "ChatLayout",
    "EnvPromptFormat",
    "Episode",
    "EpisodeConfig",
    "FixedKLController",
    "GenerationSettings",
    "JsonlLogger",
    "PromptFormat",
    "TurnLog",
    "TurnOutcome",
    "action_positions",
    "dataclass_from_dict",
    "eos_token_ids",
    "explained_variance",
    "gae_advantages",
    "generate_batch",
    "make_prompt_format",
    "masked_mean",
    "masked_whiten",
    "pad_token_id",
    "ppo_losses",
    "run_episodes",
    "run_single_turn",
    "seed_everything",
]


# ---------------------------------------------------------------------------------------------------
# Config shared by PPO and GRPO


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def dataclass_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """``cls(**data)`` for a config dataclass; an unknown key is an error naming it, not silently ignored."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}")
    return cls(**dict(data))


@dataclass
class EpisodeConfig:
    """The environment, its reward, the prompt format and the sampling of doctor turns.

    Shared (as a base class) by :class:`training.ppo.PPOConfig` and :class:`training.grpo.GRPOEnvConfig`, so
    that both trainers are driven by one description of the task.

    Reward: ``scorer="environment"`` scores questions with the model-free proxies of
    :class:`~mediq_env.scoring.EnvironmentScorer` (the weighted ones only); ``"reward_model"`` with
    :class:`~mediq_env.scoring.RewardModelScorer` over ``reward_models`` (a path to one multi-head model, or
    ``attr=path,attr=path``); ``"none"`` keeps only the env's correctness reward and costs. ``reward_weights``
    and the costs form a :class:`~mediq_env.wrappers.RewardConfig` (validated there: a misspelt score name
    fails at construction).
    """

    model: str = "smollm2"
    output_dir: str = "runs/rl"
    seed: int = 0
    # -- environment
    cases: str | None = None
    max_questions: int = 3
    shuffle_options: bool = True
    # -- reward
    scorer: Literal["environment", "reward_model", "none"] = "environment"
    reward_models: str | None = None
    reward_weights: dict[str, float] = field(default_factory=lambda: {"proxy_info_gain": 0.2})
    correct: float = 1.0
    incorrect: float = 0.0
    question_cost: float = 0.0
    repeat_penalty: float = 0.1
    invalid_penalty: float = 0.1
    # -- prompts and sampling
    prompt_format: Literal["agent", "env"] = "agent"
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    max_seq_len: int = 2048
    generation_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.max_questions < 0:
            raise ConfigError(f"max_questions must be >= 0, got {self.max_questions}")
        if self.scorer not in ("environment", "reward_model", "none"):
            raise ConfigError(f"scorer must be 'environment', 'reward_model' or 'none', got {self.scorer!r}")
        if self.scorer == "reward_model" and not self.reward_models:
            raise ConfigError("scorer='reward_model' needs reward_models (a path, or attr=path,attr=path)")
        if self.prompt_format not in ("agent", "env"):
            raise ConfigError(f"prompt_format must be 'agent' or 'env', got {self.prompt_format!r}")
        for name in ("correct", "incorrect", "question_cost", "repeat_penalty", "invalid_penalty", "temperature", "top_p"):
            _finite(name, getattr(self, name))
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("max_new_tokens", "max_seq_len", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_seq_len <= self.max_new_tokens:
            raise ConfigError(f"max_seq_len ({self.max_seq_len}) must exceed max_new_tokens ({self.max_new_tokens})")
        self.reward_weights = dict(self.reward_weights)
        # Validates weight names and costs now rather than at the first rollout.
        if self.scorer != "none":
            self.reward_config()

    # -- builders -------------------------------------------------------------------------------------

    def reward_config(self) -> RewardConfig:
        from mediq_env.wrappers import RewardConfig

        extra: tuple[str, ...] = ()
        if self.scorer == "reward_model":
            # Reward-model heads may carry names that are registered attributes or not; let the scorer's
            # own key check (in the wrapper) catch a mismatch.
            extra = tuple(k for k in self.reward_weights if ":" not in k)
        return RewardConfig(
            weights=self.reward_weights,
            correct=self.correct,
            incorrect=self.incorrect,
            question_cost=self.question_cost,
            repeat_penalty=self.repeat_penalty,
            invalid_penalty=self.invalid_penalty,
            extra_scores=extra,
        )

    def build_scorer(self) -> Scorer | None:
        """The question scorer of this config (None for ``scorer="none"``)."""
        if self.scorer == "none":
            return None
        if self.scorer == "environment":
            from mediq_env.scoring import EnvironmentScorer

            proxies = [k for k in self.reward_config().weights if k.startswith("proxy_")]
            # Only the weighted proxies are computed; the MiniLM embedder is loaded only if relevance is one.
            return EnvironmentScorer(proxies or ["proxy_answerable"], embedder="auto" if "proxy_relevance" in proxies else None)
        from mediq_env.scoring import RewardModelScorer

        assert self.reward_models is not None
        spec = self.reward_models
        if "=" in spec:
            models = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
            return RewardModelScorer({k.strip(): v.strip() for k, v in models.items()})
        return RewardModelScorer(spec)

    def load_cases(self) -> list[Case] | None:
        if self.cases is None:
            return None
        from mediq_env.case import load_cases

        return load_cases(self.cases)

    def build_env(self, n: int, cases: Sequence[Case] | None = None, patient: Patient | None = None) -> Any:
        """``n`` environments stepped together, with this config's reward (a
        :class:`~mediq_env.wrappers.BatchedAttributeReward`, or a plain BatchedEnv for ``scorer="none"``)."""
        from mediq_env.rewards import CorrectnessReward
        from mediq_env.vector import BatchedEnv

        cases = list(cases) if cases is not None else self.load_cases()
        reward_fn = CorrectnessReward(self.correct, self.incorrect, self.question_cost, self.invalid_penalty)
        batch = BatchedEnv(
            n, cases, patient=patient, max_questions=self.max_questions, shuffle_options=self.shuffle_options, reward_fn=reward_fn
        )
        scorer = self.build_scorer()
        if scorer is None:
            return batch
        from mediq_env.wrappers import BatchedAttributeReward

        return BatchedAttributeReward(batch, scorer, self.reward_config())

    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.temperature, self.top_p)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from a dict (e.g. a JSON config file); unknown keys are an error, not silently ignored."""
        return dataclass_from_dict(cls, data)


# ---------------------------------------------------------------------------------------------------
# Prompt formats: how an episode is written as a chat, and how a doctor turn's text becomes an action


class PromptFormat(Protocol):
    """How the doctor sees an episode (chat messages) and how its text becomes an env action."""

    name: str

    def first_messages(self, state: DialogueState, observation: str) -> Chat: ...

    def next_user_message(self, state: DialogueState) -> str: ...

    def to_action(self, text: str, state: DialogueState) -> Any: ...

    def single_turn_messages(self, state: DialogueState) -> Chat: ...

    def to_question(self, text: str) -> str: ...


def _status_line(state: DialogueState) -> str:
    if state.must_answer:
        return FORCED_INSTRUCTIONS
    return f"Questions left: {state.questions_left}. {ANSWER_INSTRUCTIONS}"


class EnvPromptFormat:
    """The env's own words: the first user message is the Text observation, each later one the patient's
    reply (or the invalid-action message) and what to do next; the doctor's text is the action as is.

    Compact on purpose (no system prompt): it is what tiny models and the learning benchmark use.
    """

    name = "env"

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt

    def _wrap(self, user: str) -> Chat:
        chat: Chat = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        chat.append({"role": "user", "content": user})
        return chat

    def first_messages(self, state: DialogueState, observation: str) -> Chat:
        return self._wrap(observation)

    def next_user_message(self, state: DialogueState) -> str:
        reply = state.turns[-1].reply if state.turns else ""
        return f"{reply}\n{_status_line(state)}"

    def to_action(self, text: str, state: DialogueState) -> Any:
        return text

    def single_turn_messages(self, state: DialogueState) -> Chat:
        from mediq_env.dialogue import render_observation

        return self._wrap(render_observation(state).rsplit("\n", 1)[0] + "\nAsk the patient one question.")

    def to_question(self, text: str) -> str:
        return text.strip()


class AgentPromptFormat:
    """The prompts of :class:`agents.llm_agent.LLMAgent` (implicit strategy), so a policy trained here is in
    distribution when it is plugged back in with ``make_agent("llm:hf:<path>")``.

    The first turn is exactly the agent's ``decision_chat(state, "implicit")``; later user messages carry
    the patient's reply and the questions left (the agent re-renders the whole interview in one user message
    instead — see the module notes of :mod:`training.ppo`). The doctor's ``ASK: <question>`` /
    ``ANSWER: <letter>`` is read with the agent's own parser; unparseable text goes to the env as is (so it
    becomes a question or an invalid action, exactly as the env's grammar says). Single-turn prompts are the
    agent's ``question_chat`` (ALFA's question generator).
    """

    name = "agent"

    def first_messages(self, state: DialogueState, observation: str) -> Chat:
        from agents.prompts import decision_chat

        return decision_chat(state, "implicit")

    def next_user_message(self, state: DialogueState) -> str:
        reply = state.turns[-1].reply if state.turns else ""
        letters = ", ".join(state.options)
        if state.must_answer:
            tail = f"You may ask no more questions. Reply with a single line: 'ANSWER: <letter>' with a letter from {letters}."
        else:
            tail = (
                f"Questions you may still ask: {state.questions_left}. Reply with a single line: either "
                f"'ASK: <one question for the patient>' or 'ANSWER: <letter>' with a letter from {letters}."
            )
        return f"Patient: {reply}\n{tail}"

    def to_action(self, text: str, state: DialogueState) -> Any:
        from agents.parsing import parse_decision

        parsed = parse_decision(text, state.options)
        if parsed.kind == "ask" and parsed.question:
            return {"question": parsed.question}
        if parsed.kind == "answer" and parsed.letter:
            return {"answer": parsed.letter}
        return text

    def single_turn_messages(self, state: DialogueState) -> Chat:
        from agents.prompts import question_chat

        return question_chat(state)

    def to_question(self, text: str) -> str:
        from agents.parsing import parse_question

        parsed = parse_question(text)
        return parsed.question if parsed.question is not None else text.strip()


def make_prompt_format(name: str) -> PromptFormat:
    if name == "env":
        return EnvPromptFormat()
    if name == "agent":
        return AgentPromptFormat()
    raise ConfigError(f"unknown prompt format {name!r}; use 'agent' or 'env'")


# ---------------------------------------------------------------------------------------------------
# Token layout of a chat episode

_PROBE_A = "\u2063MEDIQ_PROBE_ASSISTANT\u2063"
_PROBE_U = "\u2063MEDIQ_PROBE_USER\u2063"


class ChatLayout:
    """Token ids of a chat episode built turn by turn from the tokenizer's chat template.

    The glue between a doctor turn and the next one is read once from the template by rendering a probe
    conversation ``[user, assistant=<A>, user=<U>]`` with the generation prompt: the text between ``<A>``
    and ``<U>`` closes the assistant message and opens the user one, the text after ``<U>`` closes it and
    opens the next assistant message. When the turn already ended with an EOS token whose text starts that
    glue (ChatML's ``<|im_end|>``), it is not repeated.
    """

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = [int(i) for i in eos_ids]
        probe = [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": _PROBE_A},
            {"role": "user", "content": _PROBE_U},
        ]
        text = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        try:
            a_end = text.index(_PROBE_A) + len(_PROBE_A)
            u_start = text.index(_PROBE_U)
        except ValueError as err:
            raise ConfigError("the chat template drops message contents; cannot lay out episodes") from err
        self.close_assistant_open_user = text[a_end:u_start]
        self.close_user_open_assistant = text[u_start + len(_PROBE_U) :]
        self._eos_texts = {i: tokenizer.decode([i]) for i in self.eos_ids}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Chat) -> list[int]:
        """The first prompt, ending with the assistant header (rendered text tokenized without special tokens,
        as :meth:`mediq_env.backends.hf.TransformersBackend.encode_chat` does, so no second BOS appears)."""
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return self.encode(text)

    def glue_text(self, user_content: str, last_token: int | None) -> str:
        head = self.close_assistant_open_user
        if last_token is not None and last_token in self._eos_texts:
            eos_text = self._eos_texts[last_token]
            if eos_text and head.startswith(eos_text):
                head = head[len(eos_text) :]
        return head + user_content + self.close_user_open_assistant

    def continuation_ids(self, user_content: str, last_token: int | None) -> list[int]:
        """Tokens after a doctor turn whose last sampled token was ``last_token``: the rest of the assistant
        message, the user message ``user_content``, and the next assistant header."""
        return self.encode(self.glue_text(user_content, last_token))


# ---------------------------------------------------------------------------------------------------
# Episodes


@dataclass
class TurnLog:
    """One doctor turn: what was generated, what the env made of it, and its reward."""

    text: str
    action: Any
    kind: str
    reward: float
    components: dict[str, float]
    end: int  # index in Episode.ids of the turn's last generated token


@dataclass(frozen=True)
class TurnOutcome:
    """What a custom per-turn reward function sees (``run_episodes(reward_fn=...)``)."""

    text: str
    action: Any
    info: Mapping[str, Any]
    terminated: bool
    truncated: bool
    before: DialogueState


@dataclass
class Episode:
    """One episode as one token sequence: ``ids`` (prompt, doctor turns, patient turns) and ``action_mask``
    (1 exactly on the doctor's sampled tokens). ``prompt_len`` is the length of the first prompt."""

    case_id: str
    seed: int | None
    ids: list[int]
    action_mask: list[int]
    prompt_len: int
    turns: list[TurnLog] = field(default_factory=list)
    done: bool = False
    cut: bool = False
    correct: bool | None = None
    # Log-probabilities of the action tokens under the distribution they were sampled from (filled only when
    # the rollout is asked to record them): the reference the training log-probabilities must reproduce.
    logprobs: list[float] | None = None

    @property
    def total_reward(self) -> float:
        return float(sum(t.reward for t in self.turns))

    @property
    def n_action_tokens(self) -> int:
        return int(sum(self.action_mask))

    def components(self) -> dict[str, float]:
        """Each reward component summed over the episode."""
        out: dict[str, float] = {}
        for t in self.turns:
            for k, v in t.components.items():
                out[k] = out.get(k, 0.0) + float(v)
        return out

    def action_rewards(self) -> list[float]:
        """The env reward of each doctor token in order: a turn's reward sits on its last token, 0 elsewhere."""
        positions = [i for i, m in enumerate(self.action_mask) if m]
        index = {p: j for j, p in enumerate(positions)}
        out = [0.0] * len(positions)
        for t in self.turns:
            if t.end in index:
                out[index[t.end]] += t.reward
        return out


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the generation config and the tokenizer (a chat model often has several)."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for candidate in (gen_eos, tokenizer.eos_token_id):
        if candidate is None:
            continue
        for i in candidate if isinstance(candidate, (list, tuple)) else [candidate]:
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ConfigError("the model has no EOS token: a doctor turn could never end")
    return ids


def pad_token_id(tokenizer: Any, eos_ids: Sequence[int]) -> int:
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else int(eos_ids[0])


def generate_batch(
    model: Any,
    contexts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    batch_size: int,
    synced_gpus: bool = False,
    logprobs_out: list[list[float]] | None = None,
) -> list[list[int]]:
    """Sample one continuation per context (left-padded chunks, one ``generate`` call each), cut after the
    first EOS. The decoding is set explicitly so a checkpoint's own generation defaults (top-k, repetition
    penalty) never change what the policy samples — the PPO ratio assumes plain temperature/top-p sampling.

    ``logprobs_out`` (an empty list): filled with, per context, the log-probability of each sampled token
    under the distribution ``generate`` actually sampled from (its processed scores: logits / temperature,
    nucleus-masked). It costs ``max_new_tokens × batch × vocabulary`` floats per call, so it is opt-in."""
    import torch
    import transformers

    device = next(model.parameters()).device
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    out: list[list[int]] = [[] for _ in contexts]
    want_logprobs = logprobs_out is not None
    lps: list[list[float]] = [[] for _ in contexts]
    config_kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.temperature > 0,
        "pad_token_id": pad_id,
        "eos_token_id": list(eos_ids),
        "use_cache": True,
        "output_scores": want_logprobs,
        "return_dict_in_generate": want_logprobs,
    }
    if settings.temperature > 0:
        config_kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    gen_config = transformers.GenerationConfig(**config_kwargs)
    eos = set(eos_ids)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                width = max(len(contexts[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ctx = contexts[i]
                    input_ids[row, width - len(ctx) :] = torch.tensor(list(ctx), dtype=torch.long)
                    attention[row, width - len(ctx) :] = 1
                gen = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    generation_config=gen_config,
                    synced_gpus=synced_gpus,
                )
                seqs = gen.sequences if want_logprobs else gen
                step_lp: torch.Tensor | None = None
                if want_logprobs:
                    # scores[t] are the processed logits step t sampled from; keep only the sampled token's entry.
                    new_ids = seqs[:, width:]
                    step_lp = torch.stack(
                        [torch.log_softmax(sc.float(), -1).gather(-1, new_ids[:, t : t + 1]).squeeze(-1) for t, sc in enumerate(gen.scores)],
                        dim=1,
                    ).cpu()
                for row, i in enumerate(idx):
                    new = seqs[row, width:].tolist()
                    for k, tok in enumerate(new):
                        if tok in eos:
                            new = new[: k + 1]
                            break
                    out[i] = new
                    if step_lp is not None:
                        lps[i] = step_lp[row, : len(new)].tolist()
    finally:
        if was_training:
            model.train()
    if logprobs_out is not None:
        logprobs_out.extend(lps)
    return out


def run_episodes(
    model: Any,
    tokenizer: Any,
    env: Any,
    fmt: PromptFormat,
    layout: ChatLayout,
    specs: Sequence[tuple[str | None, int | None]],
    settings: GenerationSettings,
    *,
    max_seq_len: int,
    batch_size: int,
    pad_id: int,
    reward_fn: Callable[[TurnOutcome], Mapping[str, float]] | None = None,
    global_active: Callable[[int], int] | None = None,
    synced_gpus: bool = False,
    record_logprobs: bool = False,
) -> list[Episode]:
    """Play one episode per ``(case_id, seed)`` spec (``case_id`` None: drawn by the env from the seed), as
    many at a time as ``env`` has slots; every turn is one batched ``generate`` for all active episodes and
    one ``env.step`` (one patient call).

    Rewards: each turn's reward is the sum of the env's ``info["reward_components"]`` (with an attribute
    reward wrapper: the question's weighted scores and costs, or correctness on the answer turn), or of
    ``reward_fn``'s components when given. An episode whose context would outgrow ``max_seq_len`` is
    abandoned (``cut=True``) after its last complete turn.

    ``global_active`` (multi-process runs whose model is sharded, ZeRO-3/FSDP): given this process's number
    of active episodes, returns the largest over processes; a process with none left keeps calling
    ``generate`` on a dummy row until every process is done, since sharded generation is collective.

    ``record_logprobs``: fill each episode's ``logprobs`` with its action tokens' sampling log-probabilities
    (see :func:`generate_batch`).
    """
    eos_ids = layout.eos_ids
    episodes: list[Episode] = []
    slots = len(env)
    for start in range(0, len(specs), slots):
        chunk = specs[start : start + slots]
        eps: dict[int, Episode] = {}
        states: dict[int, DialogueState] = {}
        for slot, (case_id, seed) in enumerate(chunk):
            obs, info = env.reset_at(slot, seed=seed, case_id=case_id)
            state = info["state"]
            prompt = layout.prompt_ids(fmt.first_messages(state, obs))
            ep = Episode(info["case_id"], seed, list(prompt), [0] * len(prompt), len(prompt), logprobs=[] if record_logprobs else None)
            eps[slot] = ep
            states[slot] = state
            if len(prompt) + settings.max_new_tokens > max_seq_len:
                env.abandon(slot)
                ep.cut = True
        while True:
            active = [i for i in env.active if i in eps]
            n_global = global_active(len(active)) if global_active is not None else len(active)
            if n_global == 0:
                break
            if not active:
                # Keep the collective generate calls of a sharded model in step with the other processes.
                generate_batch(model, [[pad_id]], settings, eos_ids=eos_ids, pad_id=pad_id, batch_size=1, synced_gpus=synced_gpus)
                continue
            new_lps: list[list[float]] | None = [] if record_logprobs else None
            new = generate_batch(
                model, [eps[i].ids for i in active], settings, eos_ids=eos_ids, pad_id=pad_id, batch_size=batch_size, synced_gpus=synced_gpus,
                logprobs_out=new_lps,
            )
            texts = [tokenizer.decode(toks, skip_special_tokens=True) for toks in new]
            actions = [fmt.to_action(text, states[i]) for i, text in zip(active, texts, strict=True)]
            results = env.step(actions)
            for j, (i, toks, text, action, r) in enumerate(zip(active, new, texts, actions, results, strict=True)):
                ep = eps[i]
                ep.ids.extend(toks)
                ep.action_mask.extend([1] * len(toks))
                if ep.logprobs is not None and new_lps is not None:
                    ep.logprobs.extend(new_lps[j])
                if reward_fn is not None:
                    outcome = TurnOutcome(text, action, r.info, r.terminated, r.truncated, states[i])
                    components = {k: float(v) for k, v in reward_fn(outcome).items()}
                else:
                    components = {k: float(v) for k, v in r.info.get("reward_components", {}).items()}
                reward = float(sum(components.values())) if components else float(r.reward)
                ep.turns.append(TurnLog(text, action, str(r.info.get("action_type")), reward, components, len(ep.ids) - 1))
                if r.done:
                    ep.done = True
                    ep.correct = bool(r.info.get("correct"))
                    continue
                state = r.info["state"]
                states[i] = state
                glue = layout.continuation_ids(fmt.next_user_message(state), toks[-1] if toks else None)
                if len(ep.ids) + len(glue) + settings.max_new_tokens > max_seq_len:
                    env.abandon(i)
                    ep.cut = True
                    continue
                ep.ids.extend(glue)
                ep.action_mask.extend([0] * len(glue))
        episodes.extend(eps[s] for s in range(len(chunk)))
    return episodes


def run_single_turn(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    layout: ChatLayout,
    items: Sequence[tuple[DialogueState, Case | None]],
    settings: GenerationSettings,
    *,
    scorer: Scorer,
    reward_config: RewardConfig,
    patient: Patient | None,
    max_seq_len: int,
    batch_size: int,
    pad_id: int,
    synced_gpus: bool = False,
    record_logprobs: bool = False,
) -> list[Episode]:
    """ALFA's PPO setting: one question per prompt (the doctor's view ``state``), scored by ``scorer``.

    The reward is :func:`mediq_env.wrappers.attribute_rewards` of the question — the same weighting,
    normalisation and costs as the multi-turn wrapper. When the item has a case and a patient is given, the
    patient answers the question first, so reply-based proxies can score it; reward models never look at
    the reply.
    """
    from mediq_env.wrappers import StepView, attribute_rewards

    eps: list[Episode] = []
    keep: list[int] = []
    for j, (state, _case) in enumerate(items):
        prompt = layout.prompt_ids(fmt.single_turn_messages(state))
        ep = Episode(state.case_id, None, list(prompt), [0] * len(prompt), len(prompt), logprobs=[] if record_logprobs else None)
        if len(prompt) + settings.max_new_tokens > max_seq_len:
            ep.cut = True
        else:
            keep.append(j)
        eps.append(ep)
    new_lps: list[list[float]] | None = [] if record_logprobs else None
    new = generate_batch(
        model, [eps[j].ids for j in keep], settings, eos_ids=layout.eos_ids, pad_id=pad_id, batch_size=batch_size, synced_gpus=synced_gpus,
        logprobs_out=new_lps,
    )
    questions = [fmt.to_question(tokenizer.decode(toks, skip_special_tokens=True)) for toks in new]
    replies: dict[int, PatientReply] = {}
    asked = [(j, q) for j, q in zip(keep, questions, strict=True) if items[j][1] is not None and patient is not None]
    if asked:
        assert patient is not None
        got = patient.reply_batch([PatientQuery(items[j][1], q, tuple(items[j][0].turns)) for j, q in asked])  # type: ignore[arg-type]
        replies = {j: r for (j, _), r in zip(asked, got, strict=True)}
    views = [
        StepView("question", q, items[j][0], items[j][1], replies.get(j))  # type: ignore[arg-type]
        for j, q in zip(keep, questions, strict=True)
    ]
    outs = attribute_rewards(views, scorer, reward_config)
    for k, (j, toks, q, out) in enumerate(zip(keep, new, questions, outs, strict=True)):
        ep = eps[j]
        ep.ids.extend(toks)
        ep.action_mask.extend([1] * len(toks))
        if ep.logprobs is not None and new_lps is not None:
            ep.logprobs.extend(new_lps[k])
        ep.turns.append(TurnLog(q, {"question": q}, "question", out.reward, dict(out.components), len(ep.ids) - 1))
        ep.done = True
    return eps


# ---------------------------------------------------------------------------------------------------
# PPO arithmetic (pure functions, tested on hand-computed examples)


def action_positions(action_mask: Sequence[int]) -> list[int]:
    """Positions of the doctor's tokens. The logit that scores token ``p`` (and the value of the state it
    is sampled in) sits at position ``p - 1``."""
    return [i for i, m in enumerate(action_mask) if m]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-variance over the masked entries (unbiased variance, as in the PPO-for-LM
    reference implementations); ``shift_mean=False`` keeps the mean (used for rewards)."""
    mean = masked_mean(x, mask)
    n = mask.sum().clamp(min=2)
    var = (((x - mean) * mask) ** 2).sum() / (n - 1)
    out = (x - mean) / (var + eps).sqrt()
    if not shift_mean:
        out = out + mean
    return out * mask


def gae_advantages(
    rewards: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    dones: Sequence[bool] | np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over a flat stream of doctor tokens.

    The stream is every episode's doctor tokens in order, one episode after another; ``dones[i]`` marks an
    episode's last token, after which nothing is bootstrapped (the episode ended, or was cut — then its
    future is treated as worth 0). Patient and prompt tokens are not in the stream: they are the
    environment's transition between two doctor tokens, so ``gamma`` discounts per doctor token.

    Returns ``(advantages, returns)`` with ``returns = advantages + values`` (the value targets).
    """
    r = np.asarray(rewards, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    d = np.asarray(dones, dtype=bool)
    if not (r.shape == v.shape == d.shape):
        raise ValueError("rewards, values and dones must have the same length")
    adv = np.zeros_like(r)
    last = 0.0
    for i in range(len(r) - 1, -1, -1):
        if d[i]:
            next_value, last = 0.0, 0.0
        else:
            next_value = v[i + 1]
        delta = r[i] + gamma * next_value - v[i]
        last = delta + gamma * lam * last
        adv[i] = last
    return adv, adv + v


def ppo_losses(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    *,
    cliprange: float,
    cliprange_value: float,
) -> dict[str, torch.Tensor]:
    """Per-token clipped PPO losses (not yet reduced): ``policy`` = max(-A·r, -A·clip(r, 1±ε)),
    ``value`` = ½·max((V−R)², (clip(V, V_old±ε_v)−R)²), plus ``clipped`` / ``value_clipped`` (1 where the
    clipped branch was taken) and ``approx_kl`` (½(log r)², the k2 estimate of KL(old‖new))."""
    import torch

    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf1 = (values - returns) ** 2
    vf2 = (v_clipped - returns) ** 2
    return {
        "policy": torch.maximum(pg1, pg2),
        "value": 0.5 * torch.maximum(vf1, vf2),
        "clipped": (pg2 > pg1).float(),
        "value_clipped": (vf2 > vf1).float(),
        "approx_kl": 0.5 * log_ratio**2,
        "ratio": ratio,
    }


def explained_variance(pred: np.ndarray, target: np.ndarray) -> float:
    var = float(np.var(target))
    return float("nan") if var == 0 else 1.0 - float(np.var(target - pred)) / var


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        return None

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. (2019): move the coefficient so the policy's KL to the reference tracks ``target``;
    the proportional error is clipped to ±0.2 and scaled by ``n_steps / horizon``."""

    def __init__(self, init: float, target: float, horizon: int) -> None:
        self.value = float(init)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.value = float(state["value"])


# ---------------------------------------------------------------------------------------------------
# Small utilities


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class JsonlLogger:
    """One JSON object per line, appended and flushed per record, so a crashed run keeps its curve.

    ``truncate_after(step)`` drops records past a resumed checkpoint's step: those updates are redone, and
    the log must not hold two versions of them.
    """

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            clean = {k: _finite_or_none(v) for k, v in record.items()}
            fh.write(json.dumps(clean, default=_json_default, allow_nan=False) + "\n")

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    kept.append(line)
            except (ValueError, AttributeError):
                continue
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _finite_or_none(value: Any) -> Any:
    # NaN/inf are not JSON; a metric that is undefined (explained variance of constant returns) is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)
