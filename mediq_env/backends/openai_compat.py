"""A backend for any OpenAI-compatible ``/chat/completions`` server (OpenAI, vLLM serve, llama.cpp, TGI...).

Why it is built this way:

* **Every answer goes to the request that asked for it.** A batch is fanned out over a bounded thread pool
  and gathered back *by index*, so retries and out-of-order completions can never swap two episodes'
  answers.
* **Transient failures are retried, permanent ones are not.** 429 (honouring ``Retry-After``, up to a
  cap), 5xx, timeouts, connection errors, connections dropped mid-response, malformed or incomplete JSON
  bodies and *empty completions* are retried with exponential backoff and jitter (``tenacity``); other
  4xx mean the request itself is wrong, so they fail at once with
  :class:`~mediq_env.errors.BackendResponseError`.
* **No output is an error, never an answer.** A 200 whose message content is ``null``, empty or only
  whitespace (a refusal, a tool call, a reasoning model that spent its whole budget thinking, a broken
  proxy) carries nothing a doctor, patient or judge can use. Returning ``""`` let callers fall back to a
  default (the doctor answered "A" on every such turn and the run still reported 0 failed episodes), so it
  is retried and then raised as :class:`~mediq_env.errors.BackendResponseError`: the benchmark records a
  failed episode. (Local backends differ on purpose: see :mod:`mediq_env.backends.base`.)
* **Every wait is bounded and configurable.** ``timeout``, ``max_retries`` and ``max_retry_after`` come
  from the constructor, else from ``$MEDIQ_OPENAI_TIMEOUT``, ``$MEDIQ_OPENAI_MAX_RETRIES`` and
  ``$MEDIQ_OPENAI_MAX_RETRY_AFTER`` (so the CLI, whose backend specs carry no options, can set them),
  else from the defaults below. A bad value is a :class:`~mediq_env.errors.ConfigError` naming its source.
  Worst case for one request that never gets an answer: ``(max_retries + 1) × timeout`` plus the backoffs.
* **The API key stays secret.** It is read only from the environment variable named by ``api_key_env``
  (local servers need none), sent only as a Bearer header, and scrubbed from every log line, repr and
  exception message; httpx exceptions (whose request objects carry the header) are not chained.
* ``transport=`` takes an ``httpx`` transport (e.g. ``httpx.MockTransport``) so tests run offline.
"""

from __future__ import annotations

import email.utils
import logging
import math
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

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_TIMEOUT",
    "MAX_RETRIES_ENV",
    "MAX_RETRY_AFTER_ENV",
    "TIMEOUT_ENV",
    "EmptyCompletionError",
    "OpenAICompatBackend",
    "build_request_body",
    "parse_chat_completion",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "MEDIQ_OPENAI_TIMEOUT"
MAX_RETRIES_ENV = "MEDIQ_OPENAI_MAX_RETRIES"
MAX_RETRY_AFTER_ENV = "MEDIQ_OPENAI_MAX_RETRY_AFTER"
#: Seconds per attempt (httpx applies it to connecting, and to each read/write of the exchange).
DEFAULT_TIMEOUT = 60.0
#: Re-tries after the first attempt.
DEFAULT_MAX_RETRIES = 5
#: The longest a 429's ``Retry-After`` may make us wait before one retry. A server asking for more (a
#: spent daily quota says "come back in 27 hours") would otherwise stall the whole run.
DEFAULT_MAX_RETRY_AFTER = 60.0


def _setting(
    value: float | None, env: str, param: str, default: float, *, integer: bool, positive: bool
) -> float:
    """``value`` if given, else ``$env`` if set, else ``default``; validated, with errors naming the source.

    ``positive``: must be > 0 (else >= 0). ``integer``: must be a whole number. Infinities and NaN are
    rejected: "no limit" is exactly the stall these settings exist to prevent.
    """
    source = param
    raw: object = value
    if value is None:
        text = os.environ.get(env)
        if text is None or not text.strip():
            return default
        source, raw = f"${env}", text.strip()
    bound = "> 0" if positive else ">= 0"
    what = "a whole number" if integer else "a number"
    try:
        if isinstance(raw, bool):
            raise ValueError
        number = int(raw) if integer and isinstance(raw, str) else float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{source} must be {what} {bound}, got {raw!r}") from None
    if not math.isfinite(number) or (integer and number != int(number)):
        raise ConfigError(f"{source} must be {what} {bound}, got {raw!r}")
    if number < 0 or (positive and number == 0):
        raise ConfigError(f"{source} must be {what} {bound}, got {raw!r}")
    return number


class EmptyCompletionError(ValueError):
    """A chat completion whose message has no text (``null``, empty or whitespace-only content)."""


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
    proxies and overloaded servers do return truncated or error-shaped 200s), and its subclass
    :class:`EmptyCompletionError` when the content is ``null``, empty or whitespace only. Emptiness is
    judged on the content *as the server sent it*: a non-empty reply that our own ``stop`` cut down to
    ``""`` (a server that ignores ``stop``, a model that began with the stop string) is the model's real
    output and is returned as ``""``, exactly as the local backends do.
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
    if content is not None and not isinstance(content, str):
        raise ValueError("response message content is not a string")
    if content is None or not content.strip():
        # Not a valid answer: callers would silently substitute a default for it (see the module docstring).
        finish = choice.get("finish_reason")
        detail = "null" if content is None else ("empty" if not content else "whitespace only")
        why = [f"finish_reason={finish!r}"]
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            why.append(f"refusal={refusal[:200]!r}")
        if message.get("tool_calls"):
            why.append("tool_calls present")
        if finish == "length":
            why.append("the token budget ran out before any text: a reasoning model may need more max_tokens")
        raise EmptyCompletionError(f"empty completion: message content is {detail} ({'; '.join(why)})")
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

    ``timeout`` is per attempt (seconds; httpx applies it to connecting and to each read or write, so a
    server that never answers fails the attempt after ``timeout``); ``max_retries`` is the number of
    *re*-tries after the first attempt. Backoff before retry ``n`` is ``backoff * 2**(n-1)`` capped at
    ``max_backoff``, half of it random (jitter spreads out clients that failed together); a 429's
    ``Retry-After`` is a lower bound, capped at ``max_retry_after`` (the first capped value is logged).

    ``timeout``, ``max_retries`` and ``max_retry_after`` left as ``None`` are read from
    ``$MEDIQ_OPENAI_TIMEOUT``, ``$MEDIQ_OPENAI_MAX_RETRIES`` and ``$MEDIQ_OPENAI_MAX_RETRY_AFTER``, else
    default to :data:`DEFAULT_TIMEOUT`, :data:`DEFAULT_MAX_RETRIES` and :data:`DEFAULT_MAX_RETRY_AFTER`.
    """

    #: Blank output is raised, never returned; :class:`~mediq_env.backends.cache.CachedBackend` reads this
    #: to treat blank entries cached before that rule as misses.
    empty_text_is_error = True

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float | None = None,
        max_retries: int | None = None,
        max_concurrency: int = 8,
        extra_body: Mapping[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_retry_after: float | None = None,
        model_id: str | None = None,
    ) -> None:
        if not model:
            raise ConfigError("OpenAICompatBackend needs a model name")
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        timeout = _setting(timeout, TIMEOUT_ENV, "timeout", DEFAULT_TIMEOUT, integer=False, positive=True)
        retries = int(
            _setting(
                max_retries, MAX_RETRIES_ENV, "max_retries", DEFAULT_MAX_RETRIES, integer=True, positive=False
            )
        )
        max_retry_after = _setting(
            max_retry_after,
            MAX_RETRY_AFTER_ENV,
            "max_retry_after",
            DEFAULT_MAX_RETRY_AFTER,
            integer=False,
            positive=False,
        )
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if backoff < 0 or max_backoff < 0:
            raise ConfigError("backoff and max_backoff must be >= 0")
        self.model = model
        self.model_id = model_id or model
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self._api_key = _Secret(key)
        self.timeout = float(timeout)
        self.max_retries = retries
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        # One warning per backend: a rate-limited batch would otherwise log the same cap once per request.
        self._cap_logged = False
        self._cap_lock = threading.Lock()
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
            if exc.retry_after > self.max_retry_after:
                self._log_cap_once(exc.retry_after)
            delay = max(delay, min(exc.retry_after, self.max_retry_after))
        return delay

    def _log_cap_once(self, asked: float) -> None:
        with self._cap_lock:
            if self._cap_logged:
                return
            self._cap_logged = True
        logger.warning(
            "%s: server asked to retry after %.0fs; waiting at most %gs (max_retry_after, $%s)",
            self.model_id,
            asked,
            self.max_retry_after,
            MAX_RETRY_AFTER_ENV,
        )

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
        except EmptyCompletionError as err:
            raise _Retryable(str(err), malformed=True) from None
        except (ValueError, TypeError) as err:
            raise _Retryable(f"malformed response: {err}", malformed=True) from None

    def _snippet(self, response: httpx.Response, limit: int = 300) -> str:
        try:
            text = response.text
        except (httpx.HTTPError, UnicodeDecodeError):
            return "<unreadable body>"
        text = " ".join(text.split())
        return self._scrub(text[:limit] + ("…" if len(text) > limit else ""))
