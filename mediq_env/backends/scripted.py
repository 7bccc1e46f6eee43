"""A deterministic backend that returns scripted replies: the backend for unit tests and smoke runs.

Tests of agents, the environment and the benchmark need a backend whose answers they choose, and a record of
what was asked. :class:`ScriptedBackend` returns replies from a list (in order) or from a function of the
chat, applies stop strings the way real backends do, and records every call.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Sequence

from mediq_env.backends.base import Chat, Generation, SamplingParams
from mediq_env.backends.hf import truncate_at_stop
from mediq_env.errors import BackendError, ConfigError

__all__ = ["ScriptedBackend"]

Reply = Callable[[Chat], str]


class ScriptedBackend:
    """Replies from ``replies`` (a list consumed in order across calls, or a callable ``chat -> str``).

    When a list runs out: with ``cycle=True`` it starts again from the first reply; with ``cycle=False``
    (the default) :class:`~mediq_env.errors.BackendError` is raised, because a test that asks more
    questions than it scripted answers has usually gone wrong and should say so rather than loop.

    Every call (failed ones too) is appended to ``.calls`` as ``(chats, params)`` (chats copied, so later mutation by the
    caller does not rewrite history). Stop strings cut the reply like a real backend would; the token
    limit is not applied (scripted text is not tokenized). With ``params.logprobs`` the reply is split
    into whitespace-led pieces with log-probability 0.0 each: the script emits its reply with certainty.
    """

    def __init__(
        self,
        replies: Sequence[str] | Reply,
        *,
        cycle: bool = False,
        model_id: str = "scripted",
    ) -> None:
        if callable(replies):
            self._fn: Reply | None = replies
            self._replies: list[str] = []
        else:
            if isinstance(replies, str):
                raise ConfigError("replies must be a list of strings or a callable, not a single string")
            self._fn = None
            self._replies = list(replies)
            if not self._replies:
                raise ConfigError("ScriptedBackend needs at least one reply")
        self.cycle = cycle
        self.model_id = model_id
        self.calls: list[tuple[list[Chat], SamplingParams]] = []
        self._next = 0
        # Reply order must not depend on thread scheduling details beyond call order, and ``calls`` must
        # not lose entries when the backend is shared between threads (as CachedBackend tests do).
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        source = "callable" if self._fn is not None else f"{len(self._replies)} replies"
        return f"ScriptedBackend({source}, model_id={self.model_id!r}, calls={len(self.calls)})"

    @property
    def remaining(self) -> int | None:
        """Replies left before the list is exhausted; ``None`` for a callable or a cycling list."""
        if self._fn is not None or self.cycle:
            return None
        return len(self._replies) - self._next

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        copied = [copy.deepcopy(chat) for chat in chats]
        with self._lock:
            self.calls.append((copied, params))
            start = self._next
            try:
                texts = [self._reply(chat) for chat in chats]
            except BaseException:
                self._next = start  # a failed call consumes no replies: the batch is all or nothing
                raise
        return [self._to_generation(text, params) for text in texts]

    def _reply(self, chat: Chat) -> str:
        if self._fn is not None:
            text = self._fn(chat)
            if not isinstance(text, str):
                raise BackendError(f"scripted reply function returned {type(text).__name__}, not str")
            return text
        if self._next >= len(self._replies):
            if not self.cycle:
                raise BackendError(
                    f"ScriptedBackend ran out of replies after {len(self._replies)}; "
                    "script more replies or pass cycle=True"
                )
            self._next = 0
        text = self._replies[self._next]
        self._next += 1
        return text

    @staticmethod
    def _to_generation(text: str, params: SamplingParams) -> Generation:
        text, _ = truncate_at_stop(text, params.stop)
        gen = Generation(text=text, finish_reason="stop", usage={"completion_tokens": len(text.split())})
        if params.logprobs:
            gen.tokens = re.findall(r"\s*\S+|\s+$", text)
            gen.token_logprobs = [0.0] * len(gen.tokens)
        return gen
