"""OpenAICompatBackend against a real local HTTP server that injects faults, and against httpx.MockTransport.

The fake server echoes each request's unique marker (and seed) back, so every test checks that each answer
reached the request that asked for it: retries and concurrency must never lose or swap an episode.
"""

from __future__ import annotations

import contextlib
import email.utils
import itertools
import json
import logging
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from mediq_env.backends.base import Chat, SamplingParams
from mediq_env.backends.factory import make_backend
from mediq_env.backends.openai_compat import (
    EmptyCompletionError,
    OpenAICompatBackend,
    build_request_body,
    parse_chat_completion,
    parse_retry_after,
)
from mediq_env.errors import BackendError, BackendResponseError, BackendTimeoutError, ConfigError

SECRET = "sk-test-SECRET-4f9a1c"
KEY_ENV = "MEDIQ_TEST_OPENAI_KEY"
CLIENT_TIMEOUT = 0.4
EMPTY_CONTENT: dict[str, str | None] = {"null": None, "empty": "", "blank": " \n "}
SETTINGS_ENV = ("MEDIQ_OPENAI_TIMEOUT", "MEDIQ_OPENAI_MAX_RETRIES", "MEDIQ_OPENAI_MAX_RETRY_AFTER")


def chat(marker: str) -> Chat:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": marker}]


class FakeServer:
    """``/v1/chat/completions`` with a per-marker fault plan: ``faults[marker]`` lists what each successive
    attempt for that marker gets (``default``, normally ``ok``, once the list runs out)."""

    def __init__(self) -> None:
        self.faults: dict[str, list[str]] = {}
        self.default = "ok"
        self.attempts: dict[str, list[float]] = defaultdict(list)
        self.auth: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                marker = body["messages"][-1]["content"]
                with fake.lock:
                    fake.auth.append(self.headers.get("Authorization"))
                    fake.bodies.append(body)
                    attempt = len(fake.attempts[marker])
                    fake.attempts[marker].append(time.monotonic())
                    plan = fake.faults.get(marker, [])
                    fault = plan[attempt] if attempt < len(plan) else fake.default
                # The client may have given up on a slow answer, as intended.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._serve(fault, marker, body)

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _serve(self, fault: str, marker: str, body: dict[str, Any]) -> None:
                if fault == "sleep":
                    time.sleep(CLIENT_TIMEOUT * 2.5)
                elif fault in ("500", "502", "503"):
                    # Echo the Authorization header back, as a misbehaving proxy might, to test scrubbing.
                    self._send(
                        int(fault), f"upstream error; auth was {self.headers.get('Authorization')}".encode()
                    )
                    return
                elif fault.startswith("429"):
                    self._send(429, b'{"error": "rate limited"}', {"Retry-After": fault.split(":")[1]})
                    return
                elif fault == "400":
                    echo = json.dumps({"error": f"bad request from {self.headers.get('Authorization')}"})
                    self._send(400, echo.encode())
                    return
                elif fault == "malformed":
                    self._send(200, b'{"choices": [{"message": {"content": "trunc')
                    return
                elif fault == "incomplete":
                    self._send(200, b'{"id": "x", "object": "chat.completion"}')
                    return
                elif fault == "drop":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "500")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [{"mess')
                    self.wfile.flush()
                    self.close_connection = True
                    return
                elif fault == "reset":
                    self.close_connection = True
                    return  # no response at all
                elif fault in EMPTY_CONTENT:
                    # A well-formed 200 with no text, as some servers send for refusals or spent budgets.
                    message = {"role": "assistant", "content": EMPTY_CONTENT[fault]}
                    empty = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
                    self._send(200, json.dumps(empty).encode())
                    return
                text = f"echo:{marker}|seed={body.get('seed')}"
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                if body.get("logprobs"):
                    choice["logprobs"] = {
                        "content": [{"token": ch, "logprob": -0.1 * (i + 1)} for i, ch in enumerate(text[:5])]
                    }
                payload = {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "choices": [choice],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                }
                self._send(200, json.dumps(payload).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_settings_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own $MEDIQ_OPENAI_* must not change what these tests measure.
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return KEY_ENV


def make(server: FakeServer, key_env: str | None = None, **kw: Any) -> OpenAICompatBackend:
    opts: dict[str, Any] = {
        "api_key_env": key_env,
        "timeout": CLIENT_TIMEOUT,
        "max_retries": 3,
        "max_concurrency": 4,
        "backoff": 0.01,
        "max_backoff": 0.05,
    }
    opts.update(kw)
    return OpenAICompatBackend("fake-model", server.base_url, **opts)


# --------------------------------------------------------------------------- fake server


def test_every_answer_reaches_its_request_despite_faults(server: FakeServer, keyed: str) -> None:
    server.faults = {
        "req-0": ["500"],
        "req-1": ["502", "503"],
        "req-2": ["429:1"],
        "req-3": ["malformed"],
        "req-4": ["incomplete"],
        "req-5": ["drop"],
        "req-6": ["sleep"],
        "req-7": ["reset", "503", "malformed"],
    }
    markers = [f"req-{i}" for i in range(16)]
    backend = make(server, keyed)
    start = time.monotonic()
    gens = backend.generate([chat(m) for m in markers], SamplingParams(seed=5))
    assert [g.text for g in gens] == [f"echo:{m}|seed=5" for m in markers]
    assert all(g.finish_reason == "stop" and g.usage["total_tokens"] == 8 for g in gens)
    for m in markers:
        assert len(server.attempts[m]) == len(server.faults.get(m, [])) + 1, m
    # The 429 said "retry after 1 s"; the backoff alone would have been ~0.01 s.
    first, second = server.attempts["req-2"]
    assert second - first >= 0.95
    assert time.monotonic() - start < 10
    assert set(server.auth) == {f"Bearer {SECRET}"}


def test_duplicate_sampled_requests_get_distinct_seeds_in_order(server: FakeServer) -> None:
    backend = make(server)
    batch = [chat("dup"), chat("solo"), chat("dup"), chat("dup")]
    gens = backend.generate(batch, SamplingParams(temperature=0.7, seed=10))
    assert [g.text for g in gens] == [
        "echo:dup|seed=10",
        "echo:solo|seed=10",
        "echo:dup|seed=11",
        "echo:dup|seed=12",
    ]
    greedy = backend.generate(batch, SamplingParams(seed=10))
    assert {g.text.split("|")[1] for g in greedy} == {"seed=10"}


def test_client_errors_fail_fast_and_never_leak_the_key(server: FakeServer, keyed: str) -> None:
    server.faults = {"bad": ["400"]}
    backend = make(server, keyed)
    with pytest.raises(BackendResponseError) as info:
        backend.generate([chat("ok-1"), chat("bad"), chat("ok-2")], SamplingParams())
    assert info.value.status == 400
    assert len(server.attempts["bad"]) == 1  # not retried
    assert "bad request from" in str(info.value)  # the server's message is kept...
    for text in (str(info.value), repr(info.value), repr(backend), str(vars(backend))):
        assert SECRET not in text  # ...but the echoed key is not
    assert SECRET not in "".join(traceback.format_exception(info.value))  # chained exceptions included


def test_retries_exhausted(server: FakeServer, keyed: str, caplog: pytest.LogCaptureFixture) -> None:
    server.faults = {"down": ["503"] * 10, "slow": ["sleep"] * 10, "garbage": ["malformed"] * 10}
    backend = make(server, keyed, max_retries=2)
    with (
        caplog.at_level(logging.WARNING, logger="mediq_env.backends.openai_compat"),
        pytest.raises(BackendResponseError) as info,
    ):
        backend.generate([chat("down")], SamplingParams())
    assert info.value.status == 503 and len(server.attempts["down"]) == 3
    assert "gave up after 3 attempts" in str(info.value)
    assert SECRET not in str(info.value)
    assert "retrying" in caplog.text and SECRET not in caplog.text

    with pytest.raises(BackendTimeoutError):
        backend.generate([chat("slow")], SamplingParams())
    assert len(server.attempts["slow"]) == 3

    with pytest.raises(BackendResponseError, match="malformed"):
        backend.generate([chat("garbage")], SamplingParams())


def test_batch_failure_does_not_wait_for_the_rest(server: FakeServer) -> None:
    # One request fails at once; the others would keep failing for a long while. The error must come back
    # promptly: pending requests are cancelled and retry sleeps are cut short.
    server.faults = {"bad": ["400"], **{f"slow-{i}": ["503"] * 50 for i in range(6)}}
    backend = make(server, max_retries=50, backoff=0.2, max_backoff=0.2, max_concurrency=2)
    start = time.monotonic()
    with pytest.raises(BackendResponseError):
        backend.generate([chat("bad")] + [chat(f"slow-{i}") for i in range(6)], SamplingParams())
    assert time.monotonic() - start < 3


def test_connection_refused_is_a_backend_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    backend = OpenAICompatBackend(
        "m", f"http://127.0.0.1:{port}/v1", api_key_env=None, max_retries=1, backoff=0.01, timeout=1
    )
    with pytest.raises(BackendError, match="connection failed") as info:
        backend.generate([chat("x")], SamplingParams())
    assert not isinstance(info.value, (BackendResponseError, BackendTimeoutError))


def test_no_key_sends_no_authorization(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    make(server, KEY_ENV).generate([chat("x")], SamplingParams())
    assert server.auth == [None]


def test_logprobs_over_http(server: FakeServer) -> None:
    g = make(server).generate([chat("lp")], SamplingParams(logprobs=True))[0]
    assert server.bodies[-1]["logprobs"] is True
    assert g.tokens == list(g.text[:5]) and g.token_logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5])


# --------------------------------------------------------------------------- MockTransport / pure functions


def mock_backend(handler: Any, **kw: Any) -> OpenAICompatBackend:
    opts: dict[str, Any] = {"api_key_env": None, "backoff": 0.0, "max_retries": 2}
    opts.update(kw)
    return OpenAICompatBackend(
        "m", "https://api.example.invalid/v1", transport=httpx.MockTransport(handler), **opts
    )


def ok(text: str, **extra: Any) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop", **extra}]
        },
    )


def test_request_body_mapping() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions" and request.method == "POST"
        seen.append(json.loads(request.content))
        return ok("fine")

    params = SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3, stop=("\n",), logprobs=True)
    mock_backend(handler, extra_body={"max_completion_tokens": 7, "top_p": 0.8}).generate([chat("q")], params)
    assert seen == [
        {
            "model": "m",
            "messages": chat("q"),
            "max_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.8,  # extra_body wins
            "seed": 3,
            "stop": ["\n"],
            "logprobs": True,
            "max_completion_tokens": 7,
        }
    ]
    plain = build_request_body("m", chat("q"), SamplingParams(seed=None))
    assert "seed" not in plain and "stop" not in plain and "logprobs" not in plain


def test_parse_chat_completion() -> None:
    params = SamplingParams(logprobs=True, stop=("END",))
    data = {
        "choices": [
            {
                "message": {"content": "yes END no"},
                "finish_reason": "length",
                "logprobs": {
                    "content": [{"token": "yes", "logprob": -0.25}, {"token": " END", "logprob": -1.0}]
                },
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "flag": True},
    }
    g = parse_chat_completion(data, params)
    assert g.text == "yes " and g.finish_reason == "stop"
    assert g.tokens == ["yes", " END"] and g.token_logprobs == [-0.25, -1.0]
    assert g.usage == {"prompt_tokens": 4, "completion_tokens": 2}
    bad: Any
    for bad in ([], {}, {"choices": []}, {"choices": [{}]}, {"choices": [{"message": {"content": 3}}]}):
        with pytest.raises(ValueError):
            parse_chat_completion(bad, SamplingParams())


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1.5)


def test_mock_retries_transport_errors_then_succeeds() -> None:
    errors = [
        httpx.RemoteProtocolError("peer closed"),
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
    ]
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return ok("done")

    assert mock_backend(handler, max_retries=3).generate([chat("x")], SamplingParams())[0].text == "done"
    assert len(calls) == 4


def test_mock_timeout_becomes_backend_timeout() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(BackendTimeoutError, match="timed out"):
        mock_backend(handler, max_retries=2).generate([chat("x")], SamplingParams())
    assert len(calls) == 3


def test_mock_401_without_key_hints_at_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        assert "authorization" not in request.headers
        return httpx.Response(401, json={"error": "no key"})

    with pytest.raises(BackendResponseError, match=f"set \\${KEY_ENV}") as info:
        mock_backend(handler, api_key_env=KEY_ENV).generate([chat("x")], SamplingParams())
    assert info.value.status == 401 and calls == [1]


def test_mock_key_in_header_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(418, text=f"teapot {SECRET}")

    backend = mock_backend(handler, api_key_env=KEY_ENV)
    with pytest.raises(BackendResponseError) as info:
        backend.generate([chat("x")], SamplingParams())
    assert seen == [f"Bearer {SECRET}"]
    assert SECRET not in str(info.value) and "teapot ***" in str(info.value)
    assert SECRET not in repr(backend) and "key_set=True" in repr(backend)


def test_constructor_validation() -> None:
    bad_options: list[dict[str, Any]] = [
        {"timeout": 0},
        {"max_retries": -1},
        {"max_concurrency": 0},
        {"backoff": -1},
    ]
    for kw in bad_options:
        with pytest.raises(ConfigError):
            OpenAICompatBackend("m", "http://x/v1", **kw)
    with pytest.raises(ConfigError):
        OpenAICompatBackend("m", "ftp://x")
    with pytest.raises(ConfigError):
        OpenAICompatBackend("", "http://x/v1")


def test_empty_batch_makes_no_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    assert mock_backend(handler).generate([], SamplingParams()) == []


# --------------------------------------------------------------------------- empty completions


@pytest.mark.parametrize("fault", sorted(EMPTY_CONTENT))
def test_empty_completion_is_retried_then_raised(server: FakeServer, fault: str) -> None:
    # Returning "" here let the doctor fall back to letter A on every turn of a run reported as 0 failed.
    server.faults = {"gone": [fault] * 10, "ok-1": []}
    backend = make(server, max_retries=2)
    with pytest.raises(BackendResponseError, match="empty completion") as info:
        backend.generate([chat("ok-1"), chat("gone")], SamplingParams())
    assert len(server.attempts["gone"]) == 3  # retried like any transient failure, then raised
    assert "gave up after 3 attempts" in str(info.value)


def test_empty_completion_then_text_succeeds(server: FakeServer) -> None:
    server.faults = {"flaky": ["null", "empty", "blank"]}
    gens = make(server, max_retries=3).generate([chat("flaky"), chat("steady")], SamplingParams(seed=1))
    assert [g.text for g in gens] == ["echo:flaky|seed=1", "echo:steady|seed=1"]
    assert len(server.attempts["flaky"]) == 4


def test_parse_chat_completion_rejects_empty_content() -> None:
    def body(content: Any, **message: Any) -> dict[str, Any]:
        return {"choices": [{"message": {"content": content, **message}, "finish_reason": "length"}]}

    for content in (None, "", "  \n\t"):
        with pytest.raises(EmptyCompletionError, match="empty completion"):
            parse_chat_completion(body(content), SamplingParams())
    with pytest.raises(EmptyCompletionError, match=r"refusal='I cannot help'.*more max_tokens"):
        parse_chat_completion(body(None, refusal="I cannot help"), SamplingParams())
    # Text that *our* stop cut to nothing is the model's real output (a server that ignored `stop`), so it is
    # returned like a local backend returns it.
    g = parse_chat_completion(body("END of it"), SamplingParams(stop=("END",)))
    assert g.text == "" and g.finish_reason == "stop"


def test_benchmark_counts_empty_completions_as_failed_episodes(
    server: FakeServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents import make_agent
    from benchmarks.run import BenchConfig, run_benchmark

    server.default = "null"  # every request, whatever its prompt
    agent = make_agent(
        "llm:openai:fake-model",
        backend_options={"base_url": server.base_url, "api_key_env": None, "max_retries": 1, "backoff": 0.01},
    )
    config = BenchConfig(
        agent="openai:fake-model", limit=2, max_questions=1, modes=("interactive",), scorer="none"
    )
    summary = run_benchmark(config, tmp_path / "run", agent=agent, progress=False)
    inter = summary["modes"]["interactive"]
    assert inter["episodes"] == 2 and inter["failed"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert all("empty completion" in row["error"] for row in rows)


# --------------------------------------------------------------------------- timeout, retries, Retry-After cap


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIQ_OPENAI_TIMEOUT", "2.5")
    monkeypatch.setenv("MEDIQ_OPENAI_MAX_RETRIES", "0")
    monkeypatch.setenv("MEDIQ_OPENAI_MAX_RETRY_AFTER", "7")
    b = OpenAICompatBackend("m", "http://x/v1")
    assert (b.timeout, b.max_retries, b.max_retry_after) == (2.5, 0, 7.0)
    assert b._client.timeout.read == 2.5
    explicit = OpenAICompatBackend("m", "http://x/v1", timeout=1, max_retries=3, max_retry_after=0)
    assert (explicit.timeout, explicit.max_retries, explicit.max_retry_after) == (1.0, 3, 0.0)
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name)
    d = OpenAICompatBackend("m", "http://x/v1")
    assert (d.timeout, d.max_retries, d.max_retry_after) == (60.0, 5, 60.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MEDIQ_OPENAI_TIMEOUT", "soon"),
        ("MEDIQ_OPENAI_TIMEOUT", "0"),
        ("MEDIQ_OPENAI_TIMEOUT", "-1"),
        ("MEDIQ_OPENAI_TIMEOUT", "inf"),
        ("MEDIQ_OPENAI_TIMEOUT", "nan"),
        ("MEDIQ_OPENAI_MAX_RETRIES", "-1"),
        ("MEDIQ_OPENAI_MAX_RETRIES", "1.5"),
        ("MEDIQ_OPENAI_MAX_RETRIES", "three"),
        ("MEDIQ_OPENAI_MAX_RETRY_AFTER", "-0.5"),
        ("MEDIQ_OPENAI_MAX_RETRY_AFTER", "forever"),
        ("MEDIQ_OPENAI_MAX_RETRY_AFTER", "inf"),
    ],
)
def test_bad_setting_in_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"\\${name} must be .*{value!r}"):
        OpenAICompatBackend("m", "http://x/v1")
    monkeypatch.setenv("MEDIQ_OPENAI_BASE_URL", "http://x/v1")
    with pytest.raises(ConfigError, match=name):
        make_backend("openai:m")


def test_hung_server_times_out_after_timeout_times_attempts(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "sleep" holds the answer for 1 s (bounded, so the server's threads end); the client gives up sooner.
    server.faults = {"hung": ["sleep"] * 10}
    monkeypatch.setenv("MEDIQ_OPENAI_TIMEOUT", "0.15")
    monkeypatch.setenv("MEDIQ_OPENAI_MAX_RETRIES", "2")
    backend = make_backend("openai:fake-model", base_url=server.base_url, api_key_env=None, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(BackendTimeoutError, match=r"timed out after 0\.15s.*gave up after 3 attempts"):
        backend.generate([chat("hung")], SamplingParams())
    elapsed = time.monotonic() - start
    assert len(server.attempts["hung"]) == 3
    assert 3 * 0.15 <= elapsed < 3 * 0.15 + 0.6  # timeout x attempts, plus small backoffs


def test_huge_retry_after_waits_at_most_the_cap(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults = {"a": ["429:100000", "429:100000"], "b": ["429:100000"]}
    monkeypatch.setenv("MEDIQ_OPENAI_MAX_RETRY_AFTER", "0.3")
    backend = make_backend(
        "openai:fake-model", base_url=server.base_url, api_key_env=None, backoff=0.01, max_backoff=0.01
    )
    result: list[Any] = []
    # In a thread with a deadline, so a cap that is not applied fails the test instead of stalling it.
    worker = threading.Thread(
        target=lambda: result.append(backend.generate([chat("a"), chat("b")], SamplingParams(seed=0))),
        daemon=True,
    )
    with caplog.at_level(logging.WARNING, logger="mediq_env.backends.openai_compat"):
        worker.start()
        worker.join(timeout=5)
    assert not worker.is_alive(), "Retry-After was not capped"
    assert [g.text for g in result[0]] == ["echo:a|seed=0", "echo:b|seed=0"]
    for marker in ("a", "b"):
        times = server.attempts[marker]
        gaps = [t1 - t0 for t0, t1 in itertools.pairwise(times)]
        assert gaps and all(0.28 <= gap < 1.0 for gap in gaps), (marker, gaps)
    capped = [r for r in caplog.records if "waiting at most 0.3s" in r.getMessage()]
    assert len(capped) == 1 and "100000" in capped[0].getMessage()  # three capped waits, one warning
