"""In-process vLLM: the fast backend for large batched runs on a CUDA GPU.

The whole batch goes to one ``LLM.chat`` call (vLLM schedules it with continuous batching and paged
attention). The mapping from our :class:`SamplingParams` to vLLM's and from vLLM's outputs back to
:class:`Generation` are pure functions (:func:`sampling_kwargs`, :func:`generation_from_output`), so they
are unit-tested on machines without vLLM, which is all CPU-only machines: vLLM's wheels target CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mediq_env.backends.base import Chat, Generation, SamplingParams
from mediq_env.backends.cache import occurrence_indices
from mediq_env.errors import BackendError, MissingDependencyError

__all__ = ["VLLMBackend", "generation_from_output", "sampling_kwargs"]

_PURPOSE = (
    "VLLMBackend (vLLM's wheels are built for CUDA GPUs only; on a CPU-only machine use the 'hf:' or "
    "'smollm2' backend instead)"
)


def sampling_kwargs(params: SamplingParams, *, occurrence: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` equivalent to ``params``.

    vLLM seeds each request separately, so ``k`` identical sampled requests with one seed would return
    the same sample ``k`` times; adding the request's ``occurrence`` index (see
    :func:`~mediq_env.backends.cache.occurrence_indices`) keeps them distinct and still reproducible.
    ``logprobs=0`` asks vLLM for the sampled token's log-probability only (no top-k alternatives).
    """
    kwargs: dict[str, Any] = {
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
        "logprobs": 0 if params.logprobs else None,
    }
    if params.seed is not None:
        kwargs["seed"] = params.seed + (0 if params.greedy else occurrence)
    return kwargs


def generation_from_output(request_output: Any, params: SamplingParams) -> Generation:
    """A :class:`Generation` from one ``vllm.RequestOutput`` (its first completion)."""
    outputs = getattr(request_output, "outputs", None)
    if not outputs:
        raise BackendError("vLLM returned a request output with no completions")
    out = outputs[0]
    token_ids = list(getattr(out, "token_ids", None) or [])
    prompt_ids = getattr(request_output, "prompt_token_ids", None) or []
    gen = Generation(
        text=str(out.text),
        finish_reason=getattr(out, "finish_reason", None),
        usage={"prompt_tokens": len(prompt_ids), "completion_tokens": len(token_ids)},
    )
    if params.logprobs:
        steps = getattr(out, "logprobs", None)
        if steps is None:
            raise BackendError("vLLM returned no logprobs although they were requested")
        tokens: list[str] = []
        logprobs: list[float] = []
        # One dict per generated position, keyed by token id; the sampled token is always among them.
        for token_id, step in zip(token_ids, steps, strict=False):
            entry = step[token_id]
            logprobs.append(float(entry.logprob))
            tokens.append(str(entry.decoded_token) if entry.decoded_token is not None else "")
        gen.tokens, gen.token_logprobs = tokens, logprobs
    return gen


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise MissingDependencyError("vllm", "vllm", _PURPOSE) from err
    return vllm


class VLLMBackend:
    """A :class:`~mediq_env.backends.base.Backend` over ``vllm.LLM``; ``engine_kwargs`` go to ``vllm.LLM``
    (e.g. ``gpu_memory_utilization=0.5``, ``max_model_len=4096``, ``dtype="bfloat16"``).
    Needs a vLLM whose ``LLM.chat`` accepts a list of conversations and a list of sampling params."""

    def __init__(self, model: str, *, model_id: str | None = None, **engine_kwargs: Any) -> None:
        vllm = _import_vllm()
        self.model_id = model_id or str(model)
        self._sampling_params_cls = vllm.SamplingParams
        self.llm = vllm.LLM(model=model, **engine_kwargs)

    def __repr__(self) -> str:
        return f"VLLMBackend(model_id={self.model_id!r})"

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        if not chats:
            return []
        sampling = [
            self._sampling_params_cls(**sampling_kwargs(params, occurrence=k))
            for k in occurrence_indices(chats)
        ]
        conversations = [[{"role": m["role"], "content": m["content"]} for m in chat] for chat in chats]
        outputs = self.llm.chat(conversations, sampling_params=sampling, use_tqdm=False)
        if len(outputs) != len(chats):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(chats)} chats")
        return [generation_from_output(o, params) for o in outputs]
