"""A backend for any OpenAI-compatible ``/chat/completions`` server (OpenAI, vLLM serve, llama.cpp, TGI...).

Why it is built this way:

* **Every answer goes to the request that asked for it.** A batch is fanned out over a bounded thread pool
  and gathered back *by index*, so retries and out-of-order completions can never swap two episodes'
  answers.
* **Transient failures are retried, permanent ones are not.** 429 (honouring ``Retry-After``), 5xx,
  timeouts, connection errors, connections dropped mid-response and malformed or incomplete JSON bodies
  are retried with exponential backoff and jitter (``tenacity``); other 4xx mean the request itself is
  wrong, so they fail at once with :class:`~mediq_env.errors.BackendResponseError`.
* **The API key stays secret.** It is read only from the environment variable named by ``api_key_env``
  (local servers need none), sent only as a Bearer header, and scrubbed from every log line, repr and
  exception message; httpx exceptions (whose request objects carry the header) are not chained.
* ``transport=`` takes an ``httpx`` transport (e.g. ``httpx.MockTransport``) so tests run offline.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, retry_if_exception_type, stop_after_attempt

from mediq_env.backends.base import Chat, Generation, SamplingParams
from mediq_env.backends.cache import occurrence_indices
from mediq_env.backends.hf import truncate_at_stop
from mediq_env.errors import BackendError, BackendResponseError, BackendTimeoutError, ConfigError

__all__ = ["OpenAICompatBackend", "build_request_body", "parse_chat_completion", "parse_retry_after"]

logger = logging.getLogger(__name__)


class _Retryable(Exception):
    """A failure worth another attempt; becomes a public error once the attempts run out."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        timeout: bool = False,
        malformed: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.timeout = timeout
        self.malformed = malformed


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; ``None`` if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def build_request_body(
    model: str,
    chat: Chat,
    params: SamplingParams,
    *,
    occurrence: int = 0,
    extra_body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body for one chat. ``extra_body`` keys are merged last, so they can override anything.

    For sampled requests the seed is offset by ``occurrence`` (see
    :func:`~mediq_env.backends.cache.occurrence_indices`), so identical requests in one batch are distinct
    samples; greedy requests keep the plain seed so identical requests stay byte-identical.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in chat],
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.seed is not None:
        body["seed"] = params.seed + (0 if params.greedy else occurrence)
    if params.stop:
        body["stop"] = list(params.stop)
    if params.logprobs:
        body["logprobs"] = True
    if extra_body:
        body.update(extra_body)
    return body


def parse_chat_completion(data: Any, params: SamplingParams) -> Generation:
    """A :class:`Generation` from a decoded ``/chat/completions`` response body.

    Raises ``ValueError`` for a body that is not a complete chat completion (the caller retries those:
    proxies and overloaded servers do return truncated or error-shaped 200s).
    """
    if not isinstance(data, dict):
        raise ValueError("response body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("response has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise ValueError("response choice has no message")
    content = message.get("content")
    if content is None:
        content = ""  # e.g. a refusal or a tool call: no text, which is a valid (empty) answer
    if not isinstance(content, str):
        raise ValueError("response message content is not a string")
    # Servers apply `stop` themselves; cutting again is a no-op for them and covers servers that ignore it.
    text, hit = truncate_at_stop(content, params.stop)
    finish = choice.get("finish_reason")
    gen = Generation(
        text=text, finish_reason="stop" if hit else (finish if isinstance(finish, str) else None)
    )
    usage = data.get("usage")
    if isinstance(usage, dict):
        gen.usage = {k: int(v) for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    if params.logprobs:
        lp = choice.get("logprobs")
        items = lp.get("content") if isinstance(lp, dict) else None
        if isinstance(items, list):
            tokens: list[str] = []
            logprobs: list[float] = []
            for item in items:
                if not isinstance(item, dict) or "logprob" not in item:
                    raise ValueError("malformed logprobs entry")
                tokens.append(str(item.get("token", "")))
                logprobs.append(float(item["logprob"]))
            gen.tokens, gen.token_logprobs = tokens, logprobs
    return gen


class _Secret:
    """Holds the API key; prints as ``***`` so it cannot leak through ``vars()``, reprs or debuggers' dumps."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


class OpenAICompatBackend:
    """Chat completions over HTTP with retries, bounded concurrency and results in request order.

    ``timeout`` is per attempt (seconds); ``max_retries`` is the number of *re*-tries after the first
    attempt. Backoff before retry ``n`` is ``backoff * 2**(n-1)`` capped at ``max_backoff``, half of it
    random (jitter spreads out clients that failed together); a 429's ``Retry-After`` is a lower bound,
    capped at ``max_retry_after``.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60,
        max_retries: int = 5,
        max_concurrency: int = 8,
        extra_body: Mapping[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        model_id: str | None = None,
    ) -> None:
        if not model:
            raise ConfigError("OpenAICompatBackend needs a model name")
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if backoff < 0 or max_backoff < 0 or max_retry_after < 0:
            raise ConfigError("backoff, max_backoff and max_retry_after must be >= 0")
        self.model = model
        self.model_id = model_id or model
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self._api_key = _Secret(key)
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self._jitter = random.Random()
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            transport=transport,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAICompatBackend(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r}, key_set={bool(self._api_key.reveal())})"
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompatBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scrub(self, text: str) -> str:
        key = self._api_key.reveal()
        return text.replace(key, "***") if key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._api_key.reveal()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        if not chats:
            return []
        occurrences = occurrence_indices(chats)
        bodies = [
            build_request_body(self.model, chat, params, occurrence=k, extra_body=self.extra_body)
            for chat, k in zip(chats, occurrences, strict=True)
        ]
        abort = threading.Event()
        if len(bodies) == 1:
            return [self._request(bodies[0], params, abort)]
        pool = ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(bodies)), thread_name_prefix="mediq-http"
        )
        futures: list[Future[Generation]] = []
        try:
            futures = [pool.submit(self._request, body, params, abort) for body in bodies]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:  # in request order, so the reported error is deterministic
                exc = f.exception() if f in done else None
                if exc is not None:
                    raise exc
            return [f.result() for f in futures]
        finally:
            # On failure: stop queued requests and cut retry sleeps short, so the error surfaces promptly.
            abort.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _wait_seconds(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        ceiling = min(self.max_backoff, self.backoff * 2 ** (state.attempt_number - 1))
        delay = ceiling / 2 + self._jitter.uniform(0, ceiling / 2)
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self.max_retry_after))
        return delay

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait_s = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "%s: attempt %d failed (%s); retrying in %.2fs",
            self.model_id,
            state.attempt_number,
            self._scrub(str(exc)),
            wait_s,
        )

    def _request(self, body: dict[str, Any], params: SamplingParams, abort: threading.Event) -> Generation:
        def sleep(seconds: float) -> None:
            abort.wait(seconds)  # returns early once the batch is abandoned

        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait_seconds,
            retry=retry_if_exception_type(_Retryable) & retry_if_exception(lambda _: not abort.is_set()),
            before_sleep=self._log_retry,
            sleep=sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, body, params)
        except _Retryable as err:
            attempts = retrying.statistics.get("attempt_number", self.max_retries + 1)
            message = f"{self.model_id}: {self._scrub(str(err))} (gave up after {attempts} attempts)"
            if err.timeout:
                raise BackendTimeoutError(message) from None
            if err.status is not None or err.malformed:
                raise BackendResponseError(message, status=err.status) from None
            raise BackendError(message) from None

    def _attempt(self, body: dict[str, Any], params: SamplingParams) -> Generation:
        try:
            response = self._client.post(self.url, json=body, headers=self._headers())
        except httpx.TimeoutException as err:
            raise _Retryable(
                f"timed out after {self.timeout:g}s ({type(err).__name__})", timeout=True
            ) from None
        except httpx.TransportError as err:
            raise _Retryable(f"connection failed: {type(err).__name__}: {self._scrub(str(err))}") from None
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise _Retryable("HTTP 429 rate limited", status=status, retry_after=retry_after)
        if status >= 500:
            raise _Retryable(f"HTTP {status}: {self._snippet(response)}", status=status)
        if not 200 <= status < 300:
            hint = ""
            if status in (401, 403) and not self._api_key.reveal() and self.api_key_env:
                hint = f" (no API key: set ${self.api_key_env})"
            raise BackendResponseError(
                f"{self.model_id}: HTTP {status}{hint}: {self._snippet(response)}", status=status
            )
        try:
            data = response.json()
        except ValueError:
            raise _Retryable(f"malformed JSON body: {self._snippet(response)}", malformed=True) from None
        try:
            return parse_chat_completion(data, params)
        except (ValueError, TypeError) as err:
            raise _Retryable(f"malformed response: {err}", malformed=True) from None

    def _snippet(self, response: httpx.Response, limit: int = 300) -> str:
        try:
            text = response.text
        except (httpx.HTTPError, UnicodeDecodeError):
            return "<unreadable body>"
        text = " ".join(text.split())
        return self._scrub(text[:limit] + ("…" if len(text) > limit else ""))
