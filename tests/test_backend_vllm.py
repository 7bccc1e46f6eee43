"""VLLMBackend: the pure mapping functions, the missing-dependency error, a fake ``vllm`` module for the
request/response plumbing, and (only where vLLM and a GPU exist) the real engine on the tiny model."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mediq_env.backends.base import Chat, SamplingParams
from mediq_env.backends.vllm_backend import VLLMBackend, generation_from_output, sampling_kwargs
from mediq_env.errors import BackendError, MissingDependencyError


def chat(text: str) -> Chat:
    return [{"role": "user", "content": text}]


def test_sampling_kwargs_greedy() -> None:
    assert sampling_kwargs(SamplingParams(max_new_tokens=9, seed=4)) == {
        "max_tokens": 9,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": [],
        "logprobs": None,
        "seed": 4,
    }
    # Greedy requests ignore the occurrence index: identical requests stay identical.
    assert sampling_kwargs(SamplingParams(seed=4), occurrence=3)["seed"] == 4


def test_sampling_kwargs_sampled() -> None:
    params = SamplingParams(
        max_new_tokens=20, temperature=0.7, top_p=0.9, seed=100, stop=("\n", "END"), logprobs=True
    )
    kw = sampling_kwargs(params, occurrence=2)
    assert kw == {
        "max_tokens": 20,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "logprobs": 0,
        "seed": 102,
    }
    assert "seed" not in sampling_kwargs(SamplingParams(temperature=1.0, seed=None))


def test_missing_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingDependencyError) as info:
        VLLMBackend("some/model")
    assert "CUDA" in str(info.value) and "mediq-env[vllm]" in str(info.value)
    assert info.value.extra == "vllm"


# --------------------------------------------------------------------------- fake vllm


@dataclass
class FakeLogprob:
    logprob: float
    decoded_token: str | None


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[dict[int, FakeLogprob]] | None = None


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion] = field(default_factory=list)


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeLLM:
    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.model = model
        self.kwargs = kwargs
        self.calls: list[tuple[list[Any], list[FakeSamplingParams]]] = []
        FakeLLM.instances.append(self)

    def chat(
        self, conversations: list[Any], sampling_params: list[FakeSamplingParams], use_tqdm: bool
    ) -> list[Any]:
        self.calls.append((conversations, sampling_params))
        outs = []
        for conv, sp in zip(conversations, sampling_params, strict=True):
            text = f"{conv[-1]['content']}/seed={sp.kwargs.get('seed')}"
            ids = list(range(len(text.split("/"))))
            lps = [{i: FakeLogprob(-0.5 * (i + 1), f"t{i}"), 99: FakeLogprob(-9.0, "x")} for i in ids]
            outs.append(
                FakeRequestOutput(
                    prompt_token_ids=[1, 2, 3],
                    outputs=[FakeCompletion(text, ids, "stop", lps if sp.kwargs["logprobs"] == 0 else None)],
                )
            )
        return outs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    return module


def test_fake_vllm_plumbing(fake_vllm: types.ModuleType) -> None:
    backend = VLLMBackend("org/model", gpu_memory_utilization=0.3, enforce_eager=True)
    assert backend.model_id == "org/model"
    llm = FakeLLM.instances[0]
    assert llm.model == "org/model" and llm.kwargs == {"gpu_memory_utilization": 0.3, "enforce_eager": True}

    batch = [chat("a"), chat("b"), chat("a")]
    gens = backend.generate(batch, SamplingParams(temperature=0.9, seed=7, logprobs=True))
    assert [g.text for g in gens] == ["a/seed=7", "b/seed=7", "a/seed=8"]  # in order; duplicates re-seeded
    conversations, sps = llm.calls[0]
    assert conversations == batch and [sp.kwargs["seed"] for sp in sps] == [7, 7, 8]
    assert gens[0].tokens == ["t0", "t1"] and gens[0].token_logprobs == [-0.5, -1.0]
    assert gens[0].usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert gens[0].finish_reason == "stop"
    assert backend.generate([], SamplingParams()) == []
    assert backend.generate(batch[:1], SamplingParams())[0].token_logprobs is None


def test_factory_vllm_spec(fake_vllm: types.ModuleType) -> None:
    from mediq_env.backends.factory import make_backend

    backend = make_backend("vllm:org/model", enforce_eager=True)
    assert isinstance(backend, VLLMBackend) and backend.model_id == "org/model"
    assert FakeLLM.instances[-1].kwargs == {"enforce_eager": True}


def test_generation_from_output_errors() -> None:
    with pytest.raises(BackendError):
        generation_from_output(FakeRequestOutput([1], []), SamplingParams())
    out = FakeRequestOutput([1], [FakeCompletion("x", [5], "length", None)])
    with pytest.raises(BackendError, match="no logprobs"):
        generation_from_output(out, SamplingParams(logprobs=True))
    assert generation_from_output(out, SamplingParams()).finish_reason == "length"


# --------------------------------------------------------------------------- real vllm (GPU machines only)


def test_real_vllm_on_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from mediq_env.backends.tiny import build_tiny_causal_lm

    model_dir = build_tiny_causal_lm(tmp_path / "tiny")
    backend = VLLMBackend(str(model_dir), gpu_memory_utilization=0.2, enforce_eager=True, max_model_len=512)
    chats = [chat("Do you have a fever?"), chat("Where is the pain?"), chat("Do you have a fever?")]
    greedy = backend.generate(chats, SamplingParams(max_new_tokens=8, logprobs=True))
    assert len(greedy) == 3 and greedy[0].text == greedy[2].text
    for g in greedy:
        assert g.token_logprobs is not None and g.tokens is not None
        assert len(g.token_logprobs) == len(g.tokens) == g.usage["completion_tokens"] <= 8
    sampled = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)
    assert [g.text for g in backend.generate(chats, sampled)] == [
        g.text for g in backend.generate(chats, sampled)
    ]
