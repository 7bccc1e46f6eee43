"""Doctor agents for mediq-env: model-free baselines and a language-model agent with MediQ's strategies.

    >>> from agents import make_agent
    >>> agent = make_agent("checklist")
    >>> agent = make_agent("llm:smollm2", strategy="likert", threshold=4)

Every agent implements :class:`Agent` (``act(states) -> list[AgentStep]``, batched) and records how each
decision was made in ``AgentStep.info``.
"""

from __future__ import annotations

import re
from typing import Any

from agents.base import Agent, AgentStep
from agents.baselines import CHECKLIST, AnswerNowAgent, ChecklistAgent, RandomQuestionAgent
from agents.llm_agent import LLMAgent
from mediq_env.errors import ConfigError

__all__ = [
    "AGENT_SPECS",
    "BASELINE_SPECS",
    "CHECKLIST",
    "Agent",
    "AgentStep",
    "AnswerNowAgent",
    "ChecklistAgent",
    "LLMAgent",
    "RandomQuestionAgent",
    "make_agent",
    "valid_agent_specs",
]

#: How many times the shipped doctor ('llm:smollm2') redraws a question that restates an earlier one.
SHIPPED_REDRAW_REPEATS = 4

BASELINE_SPECS = (
    "'answer-now' or 'answer-now:<letter>'",
    "'checklist'",
    "'random' or 'random:<seed>' (seed 0 unless given)",
)
AGENT_SPECS = (
    *BASELINE_SPECS,
    "'llm:<backend spec>' (e.g. 'llm:smollm2' (the shipped doctor: SFT answers, RFT decides and asks, repeats redrawn), "
    "'llm:smollm2-sft' (the SFT adapter alone), 'llm:smollm2-base', 'llm:hf:<model>')",
)


def _backend_kinds() -> tuple[str, ...]:
    """The backend kinds the factory builds ('scripted', 'smollm2', 'hf', ...), read from its spec forms."""
    from mediq_env.backends.factory import SPEC_FORMS

    return tuple(m.group(1) for m in (re.match(r"'([\w-]+)", form) for form in SPEC_FORMS) if m)


def valid_agent_specs() -> str:
    """Every form an agent spec may take, baselines and model backends, for error messages."""
    from mediq_env.backends.factory import SPEC_FORMS

    return (
        f"baseline agents {', '.join(BASELINE_SPECS)}; or a model, 'llm:<backend spec>' ('mediq bench --agent' "
        f"also takes the backend spec alone), with backend specs {', '.join(SPEC_FORMS)}"
    )


def make_agent(spec: str, **kw: Any) -> Agent:
    """Build an agent from a one-line spec (for configs and the CLI).

    ``kw`` goes to the agent's constructor, except for ``llm:`` specs, where ``backend_options`` (a dict) goes
    to :func:`mediq_env.backends.factory.make_backend`, and ``question_backend`` and ``decision_backend`` may be
    backend spec strings (with ``question_backend_options``, ``decision_backend_options``) as well as backend
    objects.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty agent spec; use one of the {valid_agent_specs()}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "answer-now":
        if arg:
            kw["letter"] = arg
        return AnswerNowAgent(**kw)
    if kind == "checklist" and not sep:
        return ChecklistAgent(**kw)
    if kind == "random":
        seed: Any = kw.pop("seed", 0)
        if arg:
            try:
                seed = int(arg)
            except ValueError as err:
                raise ConfigError(f"invalid agent spec {spec!r}: the seed must be an integer") from err
        return RandomQuestionAgent(seed, **kw)
    if kind == "llm":
        if not arg:
            raise ConfigError(f"invalid agent spec {spec!r}: 'llm:' needs a backend spec after the colon")
        if arg.strip().partition(":")[0].lower() not in _backend_kinds():
            raise ConfigError(f"unknown agent or model backend {arg.strip()!r}; use one of the {valid_agent_specs()}")
        # Imported here: the factory pulls in backend modules that the baselines never need.
        from mediq_env.backends.factory import make_backend

        backend_options = dict(kw.pop("backend_options", {}))
        if arg.strip().lower() == "smollm2":
            # The doctor is the shipped SFT adapter's job (mediq_env/data/adapters/smollm2-doctor): without it
            # the 135M model follows no output format. Only here, where smollm2 *is* the doctor: judges and
            # LLM patients keep the base model (the adapter, trained on doctor prompts only, degrades general
            # instruction following). 'llm:smollm2-base' is the untouched doctor.
            backend_options.setdefault("adapter", "default")
            # The shipped doctor: the SFT model answers; the rejection-sampling adapter decides and writes the
            # questions, and a question that restates an earlier one is redrawn (held-out figures in
            # benchmarks/results/heldout_redraw.md). 'llm:smollm2-sft' is the SFT doctor alone.
            kw.setdefault("decision_backend", "smollm2-rft")
            kw.setdefault("decision_backend_options", {k: v for k, v in backend_options.items() if k != "adapter"})
            if kw.get("redraw_repeats") is None:
                kw["redraw_repeats"] = SHIPPED_REDRAW_REPEATS
        backend = make_backend(arg, **backend_options)
        others: dict[str, Any] = {}
        for role in ("question_backend", "decision_backend"):
            other = kw.pop(role, None)
            options = kw.pop(f"{role}_options", {})
            others[role] = make_backend(other, **options) if isinstance(other, str) else other
        return LLMAgent(backend, question_backend=others["question_backend"], decision_backend=others["decision_backend"], **kw)
    raise ConfigError(f"invalid agent spec {spec!r}; use one of the {valid_agent_specs()}")
