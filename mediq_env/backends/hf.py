"""In-process generation with Hugging Face ``transformers``: the backend for local and offline models.

Why it looks the way it does:

* **Real batching.** Prompts are rendered with the tokenizer's chat template, sorted by length, split into
  ``batch_size`` chunks and *left*-padded with an attention mask, so one ``model.generate`` call serves a
  whole chunk. Left padding keeps every row's last prompt token at the same position, which is what
  decoder-only generation needs; greedy outputs are therefore the same as one chat at a time.
* **Reproducible sampling.** Each call seeds a *forked* torch RNG with ``params.seed``, so the same call
  gives the same samples and the caller's global RNG is left alone.
* **Import cost.** ``torch``/``transformers`` are imported in the constructor and methods only, so importing
  this module (and mediq_env) stays cheap for users of remote backends.
* **Reuse.** ``.model`` and ``.tokenizer`` are public: training code generates rollouts through this
  backend and updates the very same weights.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mediq_env.backends.base import Chat, Generation, SamplingParams
from mediq_env.errors import BackendError, ConfigError, MissingDependencyError

if TYPE_CHECKING:
    import torch

__all__ = ["TransformersBackend", "dtype_kwarg", "resolve_device", "resolve_dtype", "truncate_at_stop"]


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest occurrence of any stop string; say whether one was found.

    The earliest *position* wins (not the first string in ``stop``), which is what OpenAI-style servers and
    vLLM do, so every backend returns the same text for the same raw output.
    """
    cut = -1
    for s in stop:
        if not s:
            continue
        pos = text.find(s)
        if pos != -1 and (cut == -1 or pos < cut):
            cut = pos
    return (text, False) if cut == -1 else (text[:cut], True)


def _import_torch_transformers(purpose: str) -> tuple[Any, Any]:
    try:
        import torch
    except ImportError as err:
        raise MissingDependencyError("torch", "hf", purpose) from err
    try:
        import transformers
    except ImportError as err:
        raise MissingDependencyError("transformers", "hf", purpose) from err
    return torch, transformers


def dtype_kwarg(transformers: Any) -> str:
    """The ``from_pretrained`` keyword for the weights' dtype: ``dtype`` since transformers 4.56, before
    that ``torch_dtype`` (which newer versions still accept but deprecate)."""
    version = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    return "dtype" if version >= (4, 56) else "torch_dtype"


def resolve_device(device: str | None) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else is returned as given."""
    torch, _ = _import_torch_transformers("resolve_device")
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    """``"auto"`` → bfloat16 on CUDA (half the memory, same range as float32) and float32 on CPU (CPU
    bfloat16 matmuls are slow and less exact). Strings like ``"float16"`` name torch dtypes."""
    torch, _ = _import_torch_transformers("resolve_dtype")
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(resolved, torch.dtype):
            return resolved
    raise ConfigError(
        f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16', 'float16' or a torch.dtype"
    )


class TransformersBackend:
    """A :class:`~mediq_env.backends.base.Backend` over a ``transformers`` causal LM.

    ``model`` is a hub id, a local directory, or an already-built ``PreTrainedModel`` (then ``tokenizer``
    is required). For a built model, ``device="auto"``/``dtype="auto"`` leave it where and as it is, so a
    model being trained is never moved or cast behind the trainer's back; explicit values move/cast it.

    Sampling: ``temperature == 0`` is greedy; otherwise temperature + nucleus (``top_p``) sampling with no
    top-k cut. ``token_logprobs`` are log-probabilities under the model's *raw* distribution (before
    temperature/top-p), one per generated token including the EOS token when one was generated; they need
    ``batch_size × max_new_tokens × vocab`` floats of memory per chunk, so lower ``batch_size`` for long
    generations with large vocabularies.

    An empty generation (the first token is EOS, or the text starts with a stop string) is returned as
    ``text=""`` with ``finish_reason="stop"``, not raised: for an in-process model it is a real output,
    not a transport failure (see :class:`~mediq_env.backends.base.Backend`).
    """

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        device: str | None = "auto",
        dtype: Any = "auto",
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        batch_size: int = 16,
        revision: str | None = None,
        model_id: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        _, transformers = _import_torch_transformers("TransformersBackend")
        self.batch_size = batch_size

        load_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if revision is not None:
            load_kwargs["revision"] = revision
        if gguf_file is not None:
            load_kwargs["gguf_file"] = gguf_file

        if isinstance(model, (str, os.PathLike)):
            source = os.fspath(model)
            resolved_device = resolve_device(device)
            resolved_dtype = resolve_dtype(dtype, resolved_device)
            try:
                built = transformers.AutoModelForCausalLM.from_pretrained(
                    source, **{dtype_kwarg(transformers): resolved_dtype}, **load_kwargs
                )
            except (OSError, ValueError) as err:
                raise BackendError(f"could not load model {source!r}: {err}") from err
            built.to(resolved_device)
            self.model_id = model_id or source
        elif isinstance(model, transformers.PreTrainedModel):
            if tokenizer is None:
                raise ConfigError("an already-built model needs its tokenizer: pass tokenizer=...")
            built = model
            if device not in (None, "auto"):
                built.to(device)
            if dtype not in (None, "auto"):
                built.to(resolve_dtype(dtype, str(built.device)))
            self.model_id = model_id or str(
                getattr(built.config, "_name_or_path", "") or type(built).__name__
            )
        else:
            raise ConfigError(
                f"model must be a hub id, a local path or a PreTrainedModel, got {type(model).__name__}"
            )

        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tok_source = os.fspath(tokenizer) if tokenizer is not None else os.fspath(model)
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(tok_source, **load_kwargs)
            except (OSError, ValueError) as err:
                raise BackendError(f"could not load tokenizer {tok_source!r}: {err}") from err
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"the tokenizer of {self.model_id!r} has no chat template; set tokenizer.chat_template "
                "(a base model without one cannot be used as a chat backend)"
            )

        self.model = built
        self.tokenizer = tokenizer
        self._eos_ids = self._collect_eos_ids()
        pad_id = tokenizer.pad_token_id
        # Models without a pad token (most Llama-style checkpoints) pad with EOS: pad positions are masked
        # out anyway, so any id is correct; EOS is the conventional choice and keeps the vocab unchanged.
        if pad_id is None:
            pad_id = self._eos_ids[0] if self._eos_ids else None
        if pad_id is None:
            raise ConfigError(f"the tokenizer of {self.model_id!r} has neither a pad nor an EOS token")
        self._pad_id: int = int(pad_id)
        # Seeding uses torch's process-wide RNG (forked per call), so concurrent calls from several threads
        # would interleave their random streams; serialising them keeps every call reproducible.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TransformersBackend(model_id={self.model_id!r}, device={self.device!r})"

    @property
    def device(self) -> str:
        return str(self.model.device)

    def _collect_eos_ids(self) -> list[int]:
        ids: list[int] = []
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for candidate in (gen_eos, self.tokenizer.eos_token_id):
            if candidate is None:
                continue
            for i in candidate if isinstance(candidate, (list, tuple)) else [candidate]:
                if int(i) not in ids:
                    ids.append(int(i))
        return ids

    def encode_chat(self, chat: Chat) -> list[int]:
        """Prompt token ids for ``chat``, ending with the assistant-turn header.

        Renders to text and tokenizes without special tokens, because the template already contains them
        (tokenizing with them would add a second BOS for tokenizers that prepend one).
        """
        text = self.tokenizer.apply_chat_template(list(chat), add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        if not chats:
            return []
        prompts = [self.encode_chat(chat) for chat in chats]
        # Sorting by length puts similar lengths in one chunk, so little compute is spent on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, Generation] = {}
        torch, _ = _import_torch_transformers("TransformersBackend.generate")
        with self._lock:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.random.fork_rng(devices=self._rng_devices(torch)), torch.inference_mode():
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    for start in range(0, len(order), self.batch_size):
                        idx = order[start : start + self.batch_size]
                        chunk = self._generate_chunk([prompts[i] for i in idx], params)
                        results.update(zip(idx, chunk, strict=True))
            finally:
                if was_training:
                    self.model.train()
        return [results[i] for i in range(len(prompts))]

    def _rng_devices(self, torch: Any) -> list[int]:
        device = self.model.device
        if device.type == "cuda":
            return [device.index if device.index is not None else torch.cuda.current_device()]
        return []

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        torch, transformers = _import_torch_transformers("TransformersBackend.generate")
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            if p:
                input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                attention_mask[row, width - len(p) :] = 1
        input_ids = input_ids.to(self.model.device)
        attention_mask = attention_mask.to(self.model.device)

        # An explicit config, not the model's generation_config: the same SamplingParams must mean the same
        # decoding for every model (a checkpoint's default top_k or repetition penalty would change that).
        config_kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": not params.greedy,
            "pad_token_id": self._pad_id,
            "eos_token_id": list(self._eos_ids) or None,
            "return_dict_in_generate": True,
            "output_logits": params.logprobs,
        }
        if not params.greedy:
            config_kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        generation_config = transformers.GenerationConfig(**config_kwargs)

        stopping = None
        if params.stop:
            stopping = transformers.StoppingCriteriaList(
                [_stop_string_criteria(transformers, torch, self.tokenizer, params.stop, width)]
            )
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=generation_config,
            stopping_criteria=stopping,
        )
        generated = out.sequences[:, width:].tolist()
        logprob_rows: list[list[float]] | None = None
        if params.logprobs and out.logits:
            steps = torch.stack([step.float() for step in out.logits], dim=1)  # (batch, steps, vocab)
            chosen = out.sequences[:, width : width + steps.shape[1]].unsqueeze(-1)
            logprob_rows = torch.log_softmax(steps, dim=-1).gather(-1, chosen).squeeze(-1).tolist()

        return [
            self._finish_row(
                prompts[row], generated[row], logprob_rows[row] if logprob_rows else None, params
            )
            for row in range(len(prompts))
        ]

    def _finish_row(
        self, prompt: list[int], ids: list[int], logprobs: list[float] | None, params: SamplingParams
    ) -> Generation:
        """Turn one row of ``generate`` output into a Generation: find where the row really ended (EOS,
        stop string, or the token limit), drop the padding after it, and cut the text at the stop string."""
        eos = set(self._eos_ids)
        end = len(ids)
        finish = "length"
        for pos, tok in enumerate(ids):
            if tok in eos:
                end, finish = pos + 1, "stop"
                break
        ids = ids[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, hit = truncate_at_stop(text, params.stop)
        if hit:
            finish = "stop"
            # Keep the tokens up to and including the one that completed the stop string: those were
            # generated (and their logprobs are what a trainer needs); later ones, if any, were padding.
            for k in range(1, len(ids) + 1):
                if truncate_at_stop(self.tokenizer.decode(ids[:k], skip_special_tokens=True), params.stop)[1]:
                    ids = ids[:k]
                    break
        gen = Generation(
            text=text,
            finish_reason=finish,
            usage={"prompt_tokens": len(prompt), "completion_tokens": len(ids)},
        )
        if params.logprobs:
            gen.tokens = [self.tokenizer.decode([t]) for t in ids]
            gen.token_logprobs = list(logprobs[: len(ids)]) if logprobs is not None else []
        return gen


def _stop_string_criteria(
    transformers: Any, torch: Any, tokenizer: Any, stop: Sequence[str], width: int
) -> Any:
    """A per-row stopping criterion that ends a row once its decoded continuation contains a stop string.

    Checking the decoded text (not token ids) is what makes it exact: a stop string can span several
    tokens, or sit inside one. Defined in a function because the base class lives in ``transformers``,
    which this module must not import at import time.
    """

    class _StopOnStrings(transformers.StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [
                truncate_at_stop(tokenizer.decode(row[width:], skip_special_tokens=True), stop)[1]
                for row in input_ids.tolist()
            ]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _StopOnStrings()
