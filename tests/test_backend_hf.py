"""TransformersBackend on the tiny locally built model: batching, seeds, stop strings, logprobs, imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from mediq_env.backends.base import Backend, Chat, SamplingParams
from mediq_env.backends.hf import TransformersBackend, truncate_at_stop
from mediq_env.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

CHATS: list[Chat] = [
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "You are a patient. Answer the doctor's questions briefly."},
        {"role": "user", "content": "Do you have a fever or a cough, and since when did the pain start?"},
    ],
    [
        {"role": "user", "content": "Where is the pain?"},
        {"role": "assistant", "content": "In my chest."},
        {"role": "user", "content": "Is it sharp?"},
    ],
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backend(tiny_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_dir), batch_size=16)


def test_truncate_at_stop_takes_earliest_position() -> None:
    assert truncate_at_stop("abc STOP def END", ["END", "STOP"]) == ("abc ", True)
    assert truncate_at_stop("abc", ["x", ""]) == ("abc", False)
    assert truncate_at_stop("xabc", ["x"]) == ("", True)


def test_tiny_model_loads_with_auto_classes(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert (
        tok.pad_token == "<|pad|>" and tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    )
    text = tok.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in CHATS[0]],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(" the patient has a severe headache", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == " the patient has a severe headache"
    assert len(ids) <= 8  # word-level merges were learnt from the built-in word list


def test_tiny_build_is_seeded(tmp_path: Path, tiny_dir: Path) -> None:
    from mediq_env.backends.tiny import build_tiny_causal_lm

    same = build_tiny_causal_lm(tmp_path / "same", seed=0)
    other = build_tiny_causal_lm(tmp_path / "other", seed=1)
    ref = (tiny_dir / "model.safetensors").read_bytes()
    assert (same / "model.safetensors").read_bytes() == ref
    assert (other / "model.safetensors").read_bytes() != ref


def test_batch_equals_one_at_a_time_greedy(backend: TransformersBackend) -> None:
    assert isinstance(backend, Backend)
    params = SamplingParams(max_new_tokens=16)
    batched = backend.generate(CHATS, params)
    single = [backend.generate([c], params)[0] for c in CHATS]
    assert [g.text for g in batched] == [g.text for g in single]
    # The rows really differ (the test would be vacuous if the model said the same thing to everyone).
    assert len({g.text for g in batched}) == 3
    prompt_lens = [g.usage["prompt_tokens"] for g in batched]
    assert len(set(prompt_lens)) == 3  # different lengths, so left padding was exercised
    for g in batched:
        assert g.finish_reason in ("stop", "length")
        assert 1 <= g.usage["completion_tokens"] <= 16


def test_chunking_matches_one_batch(tiny_dir: Path, backend: TransformersBackend) -> None:
    small = TransformersBackend(backend.model, tokenizer=backend.tokenizer, batch_size=2)
    params = SamplingParams(max_new_tokens=12)
    chats = CHATS + CHATS[::-1]
    assert [g.text for g in small.generate(chats, params)] == [
        g.text for g in backend.generate(chats, params)
    ]


def test_sampling_is_reproducible_per_seed(backend: TransformersBackend) -> None:
    import torch

    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=11)
    torch.manual_seed(123)
    before = torch.rand(1).item()
    torch.manual_seed(123)
    a = [g.text for g in backend.generate(CHATS, params)]
    after = torch.rand(1).item()
    assert before == after  # the call used a forked RNG and left the global one alone
    b = [g.text for g in backend.generate(CHATS, params)]
    assert a == b
    c = [g.text for g in backend.generate(CHATS, SamplingParams(max_new_tokens=12, temperature=1.0, seed=12))]
    assert c != a
    greedy = [g.text for g in backend.generate(CHATS, SamplingParams(max_new_tokens=12))]
    assert greedy != a
    # Identical sampled requests in one batch are different samples.
    dup = backend.generate([CHATS[0]] * 4, params)
    assert len({g.text for g in dup}) > 1


def test_stop_strings_cut_text(backend: TransformersBackend) -> None:
    params = SamplingParams(max_new_tokens=16)
    full = backend.generate([CHATS[1]], params)[0].text
    assert len(full) >= 8
    stop = full[4:7]
    cut = full[: full.find(stop)]
    g = backend.generate([CHATS[1]], SamplingParams(max_new_tokens=16, stop=(stop,), logprobs=True))[0]
    assert g.text == cut
    assert g.finish_reason == "stop"
    assert g.tokens is not None and stop in "".join(g.tokens)  # kept up to the token that completed it
    assert g.usage["completion_tokens"] == len(g.tokens) < 16
    # In a batch, the stopped row ends early while the others run on unaffected.
    batch = backend.generate(CHATS, SamplingParams(max_new_tokens=16, stop=(stop,)))
    plain = backend.generate(CHATS, params)
    assert batch[1].text == cut
    for got, ref in zip(batch, plain, strict=True):
        assert got.text == truncate_at_stop(ref.text, (stop,))[0]


def test_empty_generation_is_returned_not_raised(backend: TransformersBackend) -> None:
    # The documented contract for local models: ending at once is a real (empty) output, unlike a remote
    # server's null content, which the OpenAI-compatible backend raises.
    eos, pad = backend._eos_ids[0], backend._pad_id
    g = backend._finish_row([5, 6, 7], [eos, pad, pad], [-0.5, 0.0, 0.0], SamplingParams(logprobs=True))
    assert (g.text, g.finish_reason, g.usage["completion_tokens"]) == ("", "stop", 1)
    assert g.token_logprobs == [-0.5]
    full = backend.generate([CHATS[0]], SamplingParams(max_new_tokens=8))[0].text
    stopped = backend.generate([CHATS[0]], SamplingParams(max_new_tokens=8, stop=(full[:1],)))[0]
    assert (stopped.text, stopped.finish_reason) == ("", "stop")


def test_logprobs(backend: TransformersBackend) -> None:
    import math

    params = SamplingParams(max_new_tokens=10, logprobs=True)
    gens = backend.generate(CHATS, params)
    for g in gens:
        assert g.tokens is not None and g.token_logprobs is not None
        assert len(g.tokens) == len(g.token_logprobs) == g.usage["completion_tokens"]
        assert all(lp <= 0.0 and math.isfinite(lp) for lp in g.token_logprobs)
    # Greedy picks the most likely token, so its logprob must equal the max of the softmax at that step.
    import torch

    ids = backend.encode_chat(CHATS[0])
    with torch.no_grad():
        logits = backend.model(torch.tensor([ids])).logits[0, -1]
    assert gens[0].token_logprobs is not None
    assert gens[0].token_logprobs[0] == pytest.approx(torch.log_softmax(logits, -1).max().item(), abs=1e-4)
    assert backend.generate(CHATS[:1], SamplingParams(max_new_tokens=4))[0].token_logprobs is None


def test_built_model_needs_tokenizer_and_keeps_training_mode(backend: TransformersBackend) -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        TransformersBackend(backend.model)
    with pytest.raises(ConfigError):
        TransformersBackend(12345)
    backend.model.train()
    try:
        TransformersBackend(backend.model, tokenizer=backend.tokenizer).generate(
            CHATS[:1], SamplingParams(max_new_tokens=2)
        )
        assert backend.model.training  # generate switched to eval and back
    finally:
        backend.model.eval()


def test_pad_falls_back_to_eos(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.pad_token = None
    b = TransformersBackend(str(tiny_dir), tokenizer=tok)
    assert b._pad_id == tok.eos_token_id
    ref = TransformersBackend(str(tiny_dir))
    params = SamplingParams(max_new_tokens=8)
    assert [g.text for g in b.generate(CHATS, params)] == [g.text for g in ref.generate(CHATS, params)]


def test_missing_chat_template_is_a_config_error(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        TransformersBackend(str(tiny_dir), tokenizer=tok)


def test_factory_hf_spec(tiny_dir: Path) -> None:
    from mediq_env.backends.factory import make_backend

    b = make_backend(f"hf:{tiny_dir}", batch_size=4)
    assert isinstance(b, TransformersBackend) and b.batch_size == 4 and b.model_id == str(tiny_dir)
    assert b.device == "cpu" and str(b.model.dtype) == "torch.float32"


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, json; import mediq_env.backends.hf, mediq_env.backends.smollm, mediq_env.backends.tiny, "
        "mediq_env.backends.factory, mediq_env.backends.vllm_backend, mediq_env.backends.cache, "
        "mediq_env.backends.scripted, mediq_env.backends.openai_compat; "
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == []
