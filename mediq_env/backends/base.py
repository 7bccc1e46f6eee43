"""The one generation interface every model role uses: doctor agent, patient, judge, synthesiser.

A backend takes a batch of chat conversations and returns one :class:`Generation` per conversation.
Implementations import their heavy libraries inside ``__init__`` so that importing mediq_env stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

from mediq_env.errors import ConfigError

__all__ = ["Backend", "Chat", "Generation", "Message", "SamplingParams"]


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


Chat = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. ``temperature == 0`` means greedy; ``seed`` makes sampling reproducible."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    """One completion. ``token_logprobs`` is filled when ``SamplingParams.logprobs`` is set and supported."""

    text: str
    finish_reason: str | None = None
    token_logprobs: list[float] | None = None
    tokens: list[str] | None = None
    usage: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A batch of chats in, a batch of generations out (same length, same order).

    ``model_id`` names the model for caches and run manifests.

    **Empty text.** A generation's ``text`` may be ``""`` only when the model really generated nothing
    usable: a local model whose first token is end-of-sequence, or whose output began with a stop
    string (``finish_reason == "stop"``). That is a legitimate model output, and the in-process
    backends (transformers, SmolLM2, vLLM) return it as is; deciding what an empty answer means is the
    caller's job. A *remote* server that sends no text (``content: null`` or empty) is a different thing:
    a refusal, a spent token budget or a broken proxy, not a model's answer. The OpenAI-compatible
    backend retries it and then raises :class:`~mediq_env.errors.BackendResponseError`, so a run records
    a failed episode instead of silently scoring a fallback answer.
    """

    model_id: str

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]: ...
