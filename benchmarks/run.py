"""The interactive clinical QA benchmark: run an agent on cases, record every episode, resume after a crash.

    mediq bench --agent llm:smollm2 --max-questions 5 --out runs/smollm2
    python -m benchmarks.run --agent checklist --cases ../shared/data/mediq_askdocs_dev.jsonl

A run directory holds:

* ``manifest.json`` — the full config, package versions, git revision, seeds, the cases' checksum and any
  records skipped with ``--skip-invalid``;
* ``episodes.jsonl`` — one line per finished episode, appended and flushed as it finishes (transcript,
  facts revealed per question, the agent's intermediate answer and confidence at every turn, per-question
  scores, final answer, correctness, error, attempts);
* ``summary.json``, ``report.md`` and ``plots/`` — written at the end from ``episodes.jsonl`` alone;
* ``episodes.damaged.jsonl`` (damaged lines moved out of ``episodes.jsonl``, with the reason) and
  ``episodes.retried.jsonl`` (failed attempts that were run again), when there were any;
* ``.lock`` — held while a run writes, so that a second run on the same directory is refused.

Rerunning the same command resumes: finished episodes are skipped, failed ones are retried (at most
``--max-attempts`` attempts each), damaged lines are moved aside, and a different config in the same
directory is refused (the cases are compared by content, not by how their path is spelled). Rerunning a
finished run only recomputes and prints its summary and writes nothing. A new run needs a new or empty
directory (one holding other files is refused rather than written over). Besides the interactive mode,
reference modes run the same agent on the same cases: ``no_interaction`` (initial information only, no
questions) and ``full_information`` (every fact given up front).

This module builds the pieces, runs the episodes, summarises and parses the command line (``--openai-*``
flags bound requests to OpenAI-compatible servers); the config is :mod:`benchmarks.config`, the run
directory's reading, repair, lock and writes are :mod:`benchmarks.rundir`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from benchmarks.common import json_safe
from benchmarks.config import BASELINE_AGENTS, MODES, PATIENTS, BenchConfig, Spec, episode_specs
from benchmarks.metrics import FALLBACK_WARN_RATE
from benchmarks.rundir import Plan, RunDir, RunDirError, RunState, note, parse_episode_line, plan_episodes
from mediq_env import BatchedEnv, Case, Patient, builtin_cases, make_patient
from mediq_env.case import read_cases
from mediq_env.cases import builtin_cases_path
from mediq_env.errors import CaseFormatError, ConfigError, MediQError
from mediq_env.patient import patient_model_id

# Re-exported: the config and the run directory live in benchmarks.config and benchmarks.rundir.
__all__ = [
    "MODES",
    "PATIENTS",
    "BenchConfig",
    "RunDir",
    "RunDirError",
    "Spec",
    "build_agent",
    "build_patient",
    "episode_specs",
    "format_run_summary",
    "parse_episode_line",
    "plan_episodes",
    "run_benchmark",
]

# The environment proxy that needs the MiniLM embedder (tens of seconds to load on a CPU); ``--scorer env``
# leaves it out so that a model-free run stays model-free, ``env:all`` asks for it.
EMBEDDING_PROXY = "proxy_relevance"



# -- building the pieces --------------------------------------------------------------------------------


def build_agent(config: BenchConfig) -> Any:
    from agents import make_agent

    spec = config.agent
    if spec.split(":", 1)[0] in BASELINE_AGENTS:
        return make_agent(spec)
    if not spec.startswith("llm:"):
        spec = f"llm:{spec}"  # a bare backend spec ("smollm2", "hf:...") means an LLM agent over it
    kw: dict[str, Any] = {
        "strategy": config.strategy,
        "rationale": config.rationale,
        "self_consistency": config.self_consistency,
    }
    if config.redraw_repeats is not None:
        kw["redraw_repeats"] = config.redraw_repeats
    if config.threshold is not None:
        kw["threshold"] = config.threshold
    if config.question_model:
        kw["question_backend"] = config.question_model
    if config.decision_model:
        kw["decision_backend"] = config.decision_model
    if config.cache_dir:
        kw["backend_options"] = {"cache_dir": config.cache_dir}
    return make_agent(spec, **kw)


def build_patient(config: BenchConfig) -> Patient:
    kind, _, backend_spec = config.patient.partition(":")
    if not kind.startswith("llm"):
        return make_patient(config.patient)  # faithful (default), bm25, bm25+minilm; lookup = bm25's old name
    from mediq_env.backends.factory import make_backend
    from mediq_env.llm_patient import LLMPatient

    options = {"cache_dir": config.cache_dir} if config.cache_dir else {}
    return LLMPatient(make_backend(backend_spec, **options), mode="select" if kind == "llm-select" else "freeform")


def _env_scorer(part: str) -> Any:
    from mediq_env.scoring import PROXIES, EnvironmentScorer

    if part == "env":
        # The model-free proxies only: proxy_relevance would load MiniLM the first time a fact is revealed.
        return EnvironmentScorer([p for p in PROXIES if p != EMBEDDING_PROXY], embedder=None)
    chosen = part.removeprefix("env:")
    if chosen == "all":
        return EnvironmentScorer()
    names = [n.strip() if n.strip().startswith("proxy_") else f"proxy_{n.strip()}" for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROXIES]
    if not names or unknown:
        raise ConfigError(f"unknown proxies in scorer {part!r}: {unknown or chosen!r}; known: {', '.join(PROXIES)}, or env:all")
    return EnvironmentScorer(names, embedder="auto" if EMBEDDING_PROXY in names else None)


def build_scorer(config: BenchConfig) -> Any | None:
    """The per-question scorer named by ``config.scorer``: ``none``, or parts joined by ``+``: ``env`` (the
    model-free proxies), ``env:all`` (those plus ``proxy_relevance``, which loads the MiniLM embedder),
    ``env:<proxy,...>`` (chosen proxies), ``judge:<backend>`` (rubric judge), ``rm:<dir>`` (reward models: a
    ``reward_models.json`` index written by ``mediq train reward``, or one multi-head model directory)."""
    if config.scorer == "none":
        return None
    from mediq_env.scoring import CompositeScorer, JudgeScorer

    parts: list[Any] = []
    for part in config.scorer.split("+"):
        if part == "env" or part.startswith("env:"):
            parts.append(_env_scorer(part))
        elif part.startswith("judge:"):
            from mediq_env.backends.factory import make_backend

            options = {"cache_dir": config.cache_dir} if config.cache_dir else {}
            parts.append(JudgeScorer(make_backend(part.removeprefix("judge:"), **options)))
        elif part.startswith("rm:"):
            from mediq_env.scoring import RewardModelScorer

            target = Path(part.removeprefix("rm:"))
            if not target.exists():
                # Checked here: transformers would read the path as a hub id and fail with a traceback.
                raise ConfigError(f"scorer {part!r}: {target} does not exist; rm: takes a directory written by "
                                  "`mediq train reward` (or its reward_models.json)")
            index = target / "reward_models.json" if target.is_dir() else target
            try:
                if index.suffix == ".json" and index.exists():
                    try:
                        mapping = json.loads(index.read_text(encoding="utf-8"))
                    except (OSError, ValueError) as exc:
                        raise ConfigError(f"{index}: cannot read the reward-model index ({exc})") from None
                    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
                        raise ConfigError(f"{index}: expected a JSON object mapping score names to model directories")
                    parts.append(RewardModelScorer({k: (index.parent / v if not Path(v).is_absolute() else Path(v)) for k, v in mapping.items()}))
                else:
                    parts.append(RewardModelScorer(target))
            except (OSError, ValueError) as exc:
                if isinstance(exc, MediQError):
                    raise
                raise ConfigError(f"scorer {part!r}: cannot load the reward model from {target}: {_short_error(str(exc))}") from None
        else:
            raise ConfigError(f"unknown scorer {part!r}; use none, env, env:all, judge:<backend>, rm:<dir>, joined with '+'")
    return parts[0] if len(parts) == 1 else CompositeScorer(*parts)


def load_bench_cases(config: BenchConfig) -> tuple[list[Case], str, list[str]]:
    """The cases (limited, in file order), the sha256 of the file they came from, and the records skipped
    as invalid (``file:line: field: problem``; only with ``skip_invalid``, else the first one is raised)."""
    skipped: list[str] = []
    if config.cases:
        path = Path(config.cases)
        try:
            report = read_cases(path, initial_info=config.initial_info)  # type: ignore[arg-type]
        except OSError as exc:  # a directory, no permission: one line, not a traceback
            raise CaseFormatError(str(path), None, None, f"cannot read: {exc.strerror or exc}") from None
        if report.errors and not config.skip_invalid:
            err = report.errors[0]
            more = f" (+{len(report.errors) - 1} more problems)" if len(report.errors) > 1 else ""
            raise CaseFormatError(
                err.path, err.line, err.field,
                f"{err.message}{more}; run `mediq validate {path}` to see them all, or `--skip-invalid` to run the valid cases",
            )
        skipped = [str(e) for e in report.errors]
        cases = report.cases
        if not cases:
            raise CaseFormatError(str(path), None, None, f"no valid cases ({len(skipped)} invalid records)")
    else:
        path = builtin_cases_path()
        cases = builtin_cases()
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise CaseFormatError(str(path), None, None, f"cannot read: {exc.strerror or exc}") from None
    if config.limit:
        cases = cases[: config.limit]
    return cases, digest, skipped


def full_information(case: Case) -> Case:
    return case.model_copy(update={"initial_info": f"{case.initial_info} Further facts: {' '.join(case.facts)}"})


# -- running ------------------------------------------------------------------------------------------------


def _make_envs(config: BenchConfig, cases: list[Case], patient: Patient, max_questions: int, scorer: Any) -> Any:
    envs = BatchedEnv(
        min(config.batch_size, len(cases) * config.repeats),
        cases,
        patient=patient,
        max_questions=max_questions,
        shuffle_options=config.shuffle_options,
    )
    if scorer is None:
        return envs
    from mediq_env.wrappers import BatchedAttributeReward

    return BatchedAttributeReward(envs, scorer)


class _Watched:
    """The batched envs as the rollout sees them, reporting every turn to the progress bar and keeping the
    final info of each episode (for fields the episode record does not carry, like ``n_facts_known``)."""

    def __init__(self, envs: Any, on_turns: Any) -> None:
        self.inner = envs
        self.on_turns = on_turns
        self.slot: dict[int, tuple[str | None, int | None]] = {}
        self.final: dict[tuple[str | None, int | None], dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def active(self) -> list[int]:
        return list(self.inner.active)

    def reset_at(self, index: int, *, seed: int | None = None, case_id: str | None = None) -> tuple[str, dict[str, Any]]:
        self.slot[index] = (case_id, seed)
        return self.inner.reset_at(index, seed=seed, case_id=case_id)

    def abandon(self, index: int) -> None:
        self.inner.abandon(index)

    def step(self, actions: Sequence[Any]) -> list[Any]:
        active = list(self.inner.active)
        results = self.inner.step(actions)
        for i, r in zip(active, results, strict=True):
            if r.done:
                self.final[self.slot[i]] = r.info
        self.on_turns(len(active))
        return results


def _turn_budget(config: BenchConfig, mode: str) -> int:
    # Questions (and invalid actions) use up max_questions turns; one forced-answer turn follows.
    return (config.max_questions if mode == "interactive" else 0) + 1


def run_benchmark(
    config: BenchConfig,
    out: str | Path,
    *,
    agent: Any | None = None,
    patient: Patient | None = None,
    progress: bool | TextIO = True,
) -> dict[str, Any]:
    """Run (or resume) a benchmark into ``out`` and return its summary. ``agent``/``patient`` override the config's.

    ``progress``: show a progress bar (on stderr, or on the given text stream). Nothing is written before
    the agent, patient and scorer are built, so a typo in any of them leaves no run directory behind; a
    finished run is summarised without writing anything.
    """
    cases, digest, skipped = load_bench_cases(config)
    if skipped:
        note(f"skipped {len(skipped)} invalid record(s) of {config.cases} (--skip-invalid); each is listed in "
              "the run's manifest.json and report.md")
    run = RunDir(Path(out))
    state = run.read()
    model_id = getattr(patient, "model_id", None) if patient is not None else patient_model_id(config.patient)
    run.check(state, config, digest, model_id)
    specs = episode_specs(cases, config)
    plan = plan_episodes(specs, state, config.max_attempts)
    if plan.gave_up:
        note(f"{len(plan.gave_up)} failed episode(s) not retried: each already failed {config.max_attempts} "
              "times (--max-attempts)")
    built: dict[str, Any] = {}
    if plan.todo:
        run.check_free()
        built = _build(config, agent, patient)  # before writing anything
    if not (plan.todo or state.needs_repair or not run.reports_fresh()):
        return _summarise(run, config, specs, state, skipped, write=False)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run.locked())
        except RunDirError as exc:
            if plan.todo:
                raise
            # Only a repair or a report refresh was due: a finished run stays readable on read-only media.
            note(f"{exc}; summarising without writing")
            return _summarise(run, config, specs, state, skipped, write=False)
        # Read again under the lock: another run may have finished episodes since the first look.
        state = run.read()
        run.check(state, config, digest, model_id)
        plan = plan_episodes(specs, state, config.max_attempts)
        if plan.todo and not built:
            built = _build(config, agent, patient)
        run.write_manifest(config, digest, len(cases), skipped, model_id)
        run.repair(state, plan.retry)
        if plan.todo:
            done = len(specs) - len(plan.todo)
            if done or plan.retry:
                note(f"resuming {run.path}: {done} of {len(specs)} episodes already done; running {len(plan.todo)}"
                      + (f", of which {len(plan.retry)} retry failed episodes" if plan.retry else ""))
            _execute(run, config, cases, plan, built, progress)
        return _summarise(run, config, specs, state, skipped, write=True)


def _build(config: BenchConfig, agent: Any | None, patient: Patient | None) -> dict[str, Any]:
    return {
        "agent": agent if agent is not None else build_agent(config),
        "patient": patient if patient is not None else build_patient(config),
        "scorer": build_scorer(config),
    }


def _execute(run: RunDir, config: BenchConfig, cases: list[Case], plan: Plan, built: dict[str, Any], progress: bool | TextIO) -> None:
    from agents.rollout import EpisodeSpec, rollout

    budgets = {s.key: _turn_budget(config, s.mode) for s in plan.todo}
    bar = _Progress(sum(budgets.values()), len(plan.todo), progress)
    try:
        for mode in config.modes:
            mode_specs = [s for s in plan.todo if s.mode == mode]
            if not mode_specs:
                continue
            mode_cases = [full_information(c) for c in cases] if mode == "full_information" else cases
            max_q = config.max_questions if mode == "interactive" else 0
            envs = _Watched(
                _make_envs(config, mode_cases, built["patient"], max_q, built["scorer"] if mode == "interactive" else None),
                bar.turns,
            )
            by_key = {s.key: s for s in mode_specs}
            episodes = [EpisodeSpec(s.case_id, s.seed, s.key) for s in mode_specs]
            for record in rollout(built["agent"], envs, episodes):  # type: ignore[arg-type]
                spec = by_key[record.key]
                row = {"mode": spec.mode, "repeat": spec.repeat, **record.to_dict(), "attempts": plan.attempts[spec.key]}
                final = envs.final.pop((spec.case_id, spec.seed), {})
                if row.get("n_facts_known") is None and final.get("n_facts_known") is not None:
                    row["n_facts_known"] = final["n_facts_known"]
                run.append(row)
                steps = sum(1 for t in row["turns"] if t.get("action_type") != "error")
                bar.finished(row, max(budgets[spec.key] - steps, 0))
    finally:
        bar.close()


class _Progress:
    """Moves on every agent turn (the unit of work), so the rate and the ETA are measured, not guessed
    from batches finishing together. The total is every episode's turn budget; an episode that answers
    early gives back its unused turns when it finishes."""

    def __init__(self, total_turns: int, episodes: int, enabled: bool | TextIO) -> None:
        from tqdm import tqdm

        stream = None if isinstance(enabled, bool) else enabled
        self.bar = tqdm(
            total=total_turns,
            disable=enabled is False,
            unit="turn",
            dynamic_ncols=True,
            smoothing=0,  # the average over the whole run: turn times vary too much for a moving average
            file=stream,
            mininterval=0 if stream is not None else 0.1,
        )
        self.episodes = episodes
        self.finished_episodes = 0
        self.correct = 0
        self.interactive = 0
        self.failed = 0
        self._postfix()

    def _postfix(self) -> None:
        parts = [f"episodes {self.finished_episodes}/{self.episodes}"]
        if self.interactive:
            parts.append(f"acc {self.correct / self.interactive:.1%} of {self.interactive}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)

    def turns(self, n: int) -> None:
        self.bar.update(n)

    def finished(self, row: dict[str, Any], unused_turns: int) -> None:
        self.finished_episodes += 1
        self.failed += bool(row.get("error"))
        if row["mode"] == "interactive":
            self.interactive += 1
            self.correct += bool(row.get("correct")) and not row.get("error")
        self._postfix()  # counts and bar move together in the same refresh
        if unused_turns:
            self.bar.update(unused_turns)
        elif not self.bar.disable and time.time() - self.bar.last_print_t >= self.bar.mininterval:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# -- summary --------------------------------------------------------------------------------------------------

NULL_NOTE = (
    "null = not defined for this run: a mean or interval over no values (e.g. fact coverage when every episode "
    "failed, calibration when the agent gave no confidences, a score that was never produced)."
)


def _short_error(error: str) -> str:
    line = error.strip().splitlines()[0] if error.strip() else "unknown error"
    return line if len(line) <= 160 else line[:157] + "..."


def _run_facts(config: BenchConfig, specs: Sequence[Spec], episodes: Sequence[dict[str, Any]], skipped: Sequence[str]) -> dict[str, Any]:
    failed = [e for e in episodes if e.get("error")]
    retried = [e for e in episodes if e.get("attempts", 1) > 1]
    inter = [e for e in episodes if e.get("mode") == "interactive" and e.get("option_order")]
    return {
        "failures": {
            "failed": len(failed),
            "episodes": len(episodes),
            "missing": len(specs) - len(episodes),
            "top_errors": [{"error": m, "count": c} for m, c in Counter(_short_error(e["error"]) for e in failed).most_common(5)],
        },
        "retries": {
            "max_attempts": config.max_attempts,
            "retried_episodes": len(retried),
            "extra_attempts": sum(e.get("attempts", 1) - 1 for e in retried),
            "recovered": sum(1 for e in retried if not e.get("error")),
            "gave_up": sum(1 for e in failed if e.get("attempts", 1) >= config.max_attempts),
        },
        "skipped_records": list(skipped),
        # Accuracy of guessing uniformly among each episode's options.
        "chance": float(np.mean([1 / len(e["option_order"]) for e in inter])) if inter else None,
        "notes": [NULL_NOTE],
    }


def _health_markdown(facts: dict[str, Any]) -> str:
    f, r = facts["failures"], facts["retries"]
    out = ["", "## Run health", ""]
    out.append(f"- Failed episodes: {f['failed']} of {f['episodes']} (each counts as incorrect).")
    for row in f["top_errors"]:
        out.append(f"  - {row['count']} × `{row['error']}`")
    out.append(f"- Retried episodes: {r['retried_episodes']} ({r['extra_attempts']} extra attempts, {r['recovered']} "
               f"recovered, {r['gave_up']} failed all {r['max_attempts']} attempts).")
    if facts["skipped_records"]:
        out += ["", f"## Skipped invalid records ({len(facts['skipped_records'])}, `--skip-invalid`)", ""]
        out += [f"- {s}" for s in facts["skipped_records"]]
    return "\n".join(out) + "\n"


def _merge(summary: dict[str, Any], facts: dict[str, Any]) -> None:
    notes = [*summary.get("notes", []), *facts["notes"]]  # keep any notes the report writer added
    summary.update(facts)
    summary["notes"] = notes


def _summarise(run: RunDir, config: BenchConfig, specs: Sequence[Spec], state: RunState, skipped: Sequence[str], *, write: bool) -> dict[str, Any]:
    from benchmarks.report import write_reports

    episodes = [run.done[s.key] for s in specs if s.key in run.done]
    facts = _run_facts(config, specs, episodes, skipped)
    if not write:
        # Summarising a finished run writes nothing in it (it may sit on read-only media): the reports
        # and plots are made in a scratch directory and thrown away.
        with tempfile.TemporaryDirectory() as tmp:
            summary = write_reports(Path(tmp), config, episodes)
        _merge(summary, facts)
        return summary
    with run._writing(run.path / "report.md"):
        summary = write_reports(run.path, config, episodes)
        _merge(summary, facts)
        with (run.path / "report.md").open("a", encoding="utf-8") as fh:
            fh.write(_health_markdown(facts))
    # Strict JSON: NaN is not JSON (json.loads in other languages rejects it); null plus a note instead.
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False, default=str) + "\n"
    run._replace(run.path / "summary.json", text.encode("utf-8"))
    return summary


def _pct(x: Any) -> str:
    return f"{x:.1%}" if _defined(x) else "n/a"


def _defined(x: Any) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)


def _ci(d: dict[str, Any] | None, pct: bool = True) -> str:
    """``mean [low, high]``, or ``n/a`` when the mean is undefined (None or NaN)."""
    if not d or not _defined(d.get("mean")):
        return "n/a"
    fmt = _pct if pct else (lambda x: f"{x:.2f}" if _defined(x) else "n/a")
    return f"{fmt(d['mean'])} [{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]"


def _number(x: Any) -> str:
    if isinstance(x, dict):
        return _ci(x, pct=False)
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def format_run_summary(summary: dict[str, Any], report: str | Path | None = None) -> str:
    """What a person needs after a run, in plain words: how it went, what failed, how to read the numbers."""
    from benchmarks.report import redraw_line

    m = summary["modes"]
    inter = m.get("interactive", {"episodes": 0, "failed": 0})
    cfg = summary["config"]
    f = summary.get("failures") or {"failed": sum(s["failed"] for s in m.values()), "episodes": sum(s["episodes"] for s in m.values()), "top_errors": []}
    lines = [f"agent: {cfg['agent']}   cases: {cfg['cases'] or 'built-in'}   episodes: {f['episodes']} ({f['failed']} failed)"]
    n, n_failed = inter["episodes"], inter["failed"]
    if n == 0 or n_failed == n:
        lines.append(f"accuracy: not measured: {'no' if n == 0 else 'every'} interactive episode {'ran' if n == 0 else 'failed'} "
                     f"({n_failed} of {n} failed); see the errors below")
    else:
        if n_failed:
            lines.append(f"WARNING: {n_failed} of {n} interactive episodes failed; they count as incorrect, so the "
                         "accuracy below understates the agent")
        acc = inter["accuracy"]["mean"]
        lines.append(f"accuracy: {_ci(inter['accuracy'])}   (95% bootstrap interval)")
        chance = summary.get("chance")
        if isinstance(chance, float) and _defined(acc) and acc < chance:
            lines.append(f"  below chance: answering at random would score {chance:.1%} (1 in {round(1 / chance)} options)")
        ml = inter["majority_letter"]
        if _defined(acc) and _defined(ml.get("accuracy")) and acc < ml["accuracy"]:
            lines.append(f"  below the majority-letter baseline: always answering {ml['letter']} would score {ml['accuracy']:.1%}")
        lines.append(f"questions asked: {_ci(inter['questions_asked'], pct=False)} per episode")
        lines.append(f"forced answers: {_pct(inter['forced_answer_rate'])} (episodes where the question budget ran out "
                     "and the agent had to answer)")
        lines.append(f"fact coverage: {_ci(inter['fact_coverage'])} (share of each case's hidden facts the patient revealed)")
        fpq = summary.get("facts_per_question", inter.get("facts_per_question"))
        if fpq is not None:
            lines.append(f"facts found per question: {_number(fpq)}")
        fb = summary.get("fallback", inter.get("fallback"))
        if isinstance(fb, dict) and _defined(fb.get("rate")):
            kinds = ", ".join(f"{k} {_pct(v) if isinstance(v, float) else v}" for k, v in (fb.get("by_kind") or {}).items())
            lines.append(f"fallbacks: {fb['rate']:.1%} of agent turns used a fallback" + (f" (by kind: {kinds})" if kinds else ""))
            if fb["rate"] > FALLBACK_WARN_RATE:
                lines.append(f"WARNING: more than {FALLBACK_WARN_RATE:.0%} of agent turns fell back to a default: the "
                             "numbers above describe the fallbacks as much as the model")
        redraws = redraw_line(inter)
        if redraws:
            lines.append(redraws)
        ml = inter["majority_letter"]
        lines.append(f"majority-letter baseline: {_pct(ml['accuracy'])} (always {ml['letter']} as shown); "
                     f"in the file's own lettering {_pct(ml['file_accuracy'])} (always {ml['file_letter']})")
    for mode in ("no_interaction", "full_information"):
        s = m.get(mode)
        if s is None:
            continue
        name = mode.replace("_", " ")
        if s["episodes"] == 0 or s["failed"] == s["episodes"]:
            lines.append(f"{name}: accuracy not measured (every episode failed)")
        else:
            warn = f"   ({s['failed']} of {s['episodes']} failed, counted as incorrect)" if s["failed"] else ""
            lines.append(f"{name}: accuracy {_ci(s['accuracy'])}{warn}")
    if f["failed"]:
        lines.append(f"{f['failed']} of {f['episodes']} episodes failed; most common errors:")
        lines += [f"  {row['count']} × {row['error']}" for row in f.get("top_errors", [])]
    r = summary.get("retries")
    if r and (r["retried_episodes"] or r["gave_up"]):
        lines.append(f"retries: {r['retried_episodes']} episode(s) retried, {r['recovered']} recovered; {r['gave_up']} "
                     f"failed all {r['max_attempts']} attempts and will not be retried")
    if summary.get("skipped_records"):
        lines.append(f"skipped {len(summary['skipped_records'])} invalid case record(s) (--skip-invalid; listed in the report)")
    if report is not None:
        lines.append(f"report: {report}")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    p.add_argument("--agent", default=d.agent, help="answer-now | checklist | random[:seed] | llm:<backend> | <backend> "
                   "(backends: smollm2, hf:<id-or-path>, vllm:<id>, openai:<model>)")
    p.add_argument("--strategy", default=d.strategy, choices=["implicit", "binary", "numeric", "likert"])
    p.add_argument("--threshold", type=float, help="confidence needed to answer (numeric: 0-1, likert: 1-5)")
    p.add_argument("--rationale", action="store_true", help="ask for a rationale before each decision")
    p.add_argument("--self-consistency", type=int, default=d.self_consistency, metavar="K")
    p.add_argument("--question-model", help="a separate backend for question generation (ALFA swaps only this)")
    p.add_argument("--decision-model", help="a separate backend for the ask-or-answer decision (and the question written "
                   "in it); every answer stays with --agent's model")
    p.add_argument("--redraw-repeats", type=int, default=d.redraw_repeats, metavar="N",
                   help="redraw (sampled, seeded) a question that restates an earlier one word for word, up to N times; "
                   "the summary counts the redraws (default: the agent's own, 4 for the shipped doctor llm:smollm2, else 0)")
    p.add_argument("--patient", default=d.patient, help=" | ".join(PATIENTS))
    p.add_argument("--cases", help="cases file in any MediQ variant (default: the built-in cases)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="run the valid records of --cases and list the invalid ones (default: refuse the file)")
    p.add_argument("--initial-info", default=d.initial_info, choices=["auto", "given", "derived"])
    p.add_argument("--max-questions", type=int, default=d.max_questions)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-shuffle", action="store_true", help="keep each file's option order (default: shuffle)")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--scorer", default=d.scorer, help="none, or parts joined by '+': env (model-free proxies) | env:all "
                   "(also proxy_relevance, loads MiniLM) | judge:<backend> | rm:<reward model dir>")
    p.add_argument("--modes", default=",".join(d.modes), help=f"comma-separated, from {','.join(MODES)}")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-attempts", type=int, default=d.max_attempts,
                   help="attempts per episode: a rerun retries failed episodes until they have had this many")
    p.add_argument("--cache-dir", help="response cache directory for model backends (reruns are free)")
    p.add_argument("--out", help="run directory (default: runs/<agent>-<cases>-q<max questions>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars at all (model loading included)")
    add_openai_arguments(p)


# Flags for OpenAI-compatible servers (agent, patient or judge). Backend specs carry no options, so the
# flags set the environment variables the backend reads ($MEDIQ_OPENAI_*), for this process only.
OPENAI_FLAGS = {
    "openai_timeout": "MEDIQ_OPENAI_TIMEOUT",
    "openai_max_retries": "MEDIQ_OPENAI_MAX_RETRIES",
    "openai_max_retry_after": "MEDIQ_OPENAI_MAX_RETRY_AFTER",
}


def _number_arg(*, integer: bool, positive: bool) -> Any:
    def parse(text: str) -> float:
        bound = "> 0" if positive else ">= 0"
        what = "a whole number" if integer else "a number"
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}") from None
        # No infinity or NaN: "no limit" is exactly the stall these settings exist to prevent.
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}")
        return value

    return parse


def add_openai_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("OpenAI-compatible servers (openai:<model>)",
                             "each flag overrides its environment variable for this run")
    g.add_argument("--openai-timeout", type=_number_arg(integer=False, positive=True), metavar="SECONDS",
                   help="seconds per request attempt (default 60; $MEDIQ_OPENAI_TIMEOUT)")
    g.add_argument("--openai-max-retries", type=_number_arg(integer=True, positive=False), metavar="N",
                   help="retries after a failed attempt (default 5; $MEDIQ_OPENAI_MAX_RETRIES)")
    g.add_argument("--openai-max-retry-after", type=_number_arg(integer=False, positive=False), metavar="SECONDS",
                   help="the longest a server's Retry-After may make a request wait (default 60; $MEDIQ_OPENAI_MAX_RETRY_AFTER)")


def apply_openai_arguments(args: argparse.Namespace) -> None:
    for name, env in OPENAI_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None:
            os.environ[env] = str(value)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        agent=args.agent,
        strategy=args.strategy,
        threshold=args.threshold,
        rationale=args.rationale,
        self_consistency=args.self_consistency,
        question_model=args.question_model,
        decision_model=args.decision_model,
        redraw_repeats=args.redraw_repeats,
        patient=args.patient,
        cases=args.cases,
        initial_info=args.initial_info,
        max_questions=args.max_questions,
        repeats=args.repeats,
        seed=args.seed,
        shuffle_options=not args.no_shuffle,
        limit=args.limit,
        scorer=args.scorer,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        skip_invalid=args.skip_invalid,
        max_attempts=args.max_attempts,
    )


def default_out(config: BenchConfig) -> Path:
    cases = Path(config.cases).stem if config.cases else "builtin"
    agent = config.agent.replace(":", "-").replace("/", "_")
    return Path("runs") / f"{agent}-{cases}-q{config.max_questions}"


def quiet_libraries() -> None:
    """``--no-progress`` means no bars at all: transformers and huggingface_hub draw their own while
    loading weights, and log advisory warnings. The variables cover libraries imported later (they read
    them at import); the calls cover those already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def main_from_args(args: argparse.Namespace) -> int:
    """Run, print the summary; exit status 1 when any episode failed (the numbers are then not the agent's alone)."""
    if args.no_progress:
        quiet_libraries()
    apply_openai_arguments(args)
    config = config_from_args(args)
    out = Path(args.out) if args.out else default_out(config)
    summary = run_benchmark(config, out, progress=not args.no_progress)
    print(format_run_summary(summary, report=out / "report.md"))
    print(f"run directory: {out}")
    # Imported here: running a benchmark never needs the viewer's code.
    from benchmarks.view import write_viewer

    print(f"viewer: {write_viewer(out)}")
    return 1 if summary["failures"]["failed"] else 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        code = main_from_args(args)
        sys.stdout.flush()  # a reader that went away is then caught below, not reported at exit
        return code
    except MediQError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished episodes are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, like `mediq` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
