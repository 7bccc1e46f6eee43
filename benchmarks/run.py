"""The interactive clinical QA benchmark: run an agent on cases, record every episode, resume after a crash.

    mediq bench --agent llm:smollm2 --max-questions 5 --out runs/smollm2
    python -m benchmarks.run --agent checklist --cases ../shared/data/mediq_askdocs_dev.jsonl

A run directory holds:

* ``manifest.json`` — the full config, package versions, git revision, seeds and the cases' checksum;
* ``episodes.jsonl`` — one line per finished episode, appended and flushed as it finishes (transcript,
  facts revealed per question, the agent's intermediate answer and confidence at every turn, per-question
  scores, final answer, correctness, error);
* ``summary.json``, ``report.md`` and ``plots/`` — written at the end from ``episodes.jsonl`` alone.

Rerunning the same command resumes: finished episodes are skipped, a half-written last line (a crash
mid-write) is cut off, and a different config in the same directory is refused. Besides the interactive
mode, reference modes run the same agent on the same cases: ``no_interaction`` (initial information only,
no questions) and ``full_information`` (every fact given up front).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mediq_env import BatchedEnv, Case, FactLookupPatient, Patient, builtin_cases, load_cases
from mediq_env.cases import builtin_cases_path
from mediq_env.errors import ConfigError

__all__ = ["MODES", "BenchConfig", "RunDir", "build_agent", "build_patient", "episode_specs", "run_benchmark"]

MODES = ("interactive", "no_interaction", "full_information")
BASELINE_AGENTS = ("answer-now", "checklist", "random")
PATIENTS = ("lookup", "lookup+minilm", "llm-select:<backend>", "llm-freeform:<backend>")


@dataclass
class BenchConfig:
    """Everything that determines a run's results (the run directory is not part of it)."""

    agent: str = "llm:smollm2"
    strategy: str = "implicit"
    threshold: float | None = None
    rationale: bool = False
    self_consistency: int = 1
    question_model: str | None = None
    patient: str = "lookup"
    cases: str | None = None
    initial_info: str = "auto"
    max_questions: int = 5
    repeats: int = 1
    seed: int = 0
    shuffle_options: bool = True
    limit: int | None = None
    scorer: str = "env"
    modes: tuple[str, ...] = MODES
    batch_size: int = 16
    cache_dir: str | None = None

    # Settings that change speed, not results: a resumed run may use different values.
    RESUMABLE_CHANGES = ("batch_size", "cache_dir")

    def __post_init__(self) -> None:
        self.modes = tuple(self.modes)
        if self.max_questions < 0:
            raise ConfigError(f"max_questions must be >= 0, got {self.max_questions}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if self.self_consistency < 1:
            raise ConfigError(f"self_consistency must be >= 1, got {self.self_consistency}")
        if "interactive" not in self.modes or any(m not in MODES for m in self.modes):
            raise ConfigError(f"modes must include 'interactive' and come from {MODES}, got {self.modes}")
        if self.initial_info not in ("auto", "given", "derived"):
            raise ConfigError(f"initial_info must be auto, given or derived, got {self.initial_info!r}")
        kind = self.patient.split(":", 1)[0]
        if kind not in ("lookup", "lookup+minilm", "llm-select", "llm-freeform") or (kind.startswith("llm") and ":" not in self.patient):
            raise ConfigError(f"unknown patient {self.patient!r}; use one of {', '.join(PATIENTS)}")

    def result_fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.RESUMABLE_CHANGES}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    if config.threshold is not None:
        kw["threshold"] = config.threshold
    if config.question_model:
        kw["question_backend"] = config.question_model
    if config.cache_dir:
        kw["backend_options"] = {"cache_dir": config.cache_dir}
    return make_agent(spec, **kw)


def build_patient(config: BenchConfig) -> Patient:
    kind, _, backend_spec = config.patient.partition(":")
    if kind == "lookup":
        return FactLookupPatient()
    if kind == "lookup+minilm":
        return FactLookupPatient(embedder="minilm")
    from mediq_env.backends.factory import make_backend
    from mediq_env.llm_patient import LLMPatient

    options = {"cache_dir": config.cache_dir} if config.cache_dir else {}
    return LLMPatient(make_backend(backend_spec, **options), mode="select" if kind == "llm-select" else "freeform")


def build_scorer(config: BenchConfig) -> Any | None:
    """The per-question scorer named by ``config.scorer``: ``none``, or parts joined by ``+``: ``env`` (model-free
    proxies), ``judge:<backend>`` (rubric judge), ``rm:<dir>`` (reward models: a ``reward_models.json`` index
    written by ``mediq train reward``, or one multi-head model directory)."""
    if config.scorer == "none":
        return None
    from mediq_env.scoring import CompositeScorer, EnvironmentScorer, JudgeScorer

    parts: list[Any] = []
    for part in config.scorer.split("+"):
        if part == "env":
            parts.append(EnvironmentScorer())
        elif part.startswith("judge:"):
            from mediq_env.backends.factory import make_backend

            options = {"cache_dir": config.cache_dir} if config.cache_dir else {}
            parts.append(JudgeScorer(make_backend(part.removeprefix("judge:"), **options)))
        elif part.startswith("rm:"):
            from mediq_env.scoring import RewardModelScorer

            target = Path(part.removeprefix("rm:"))
            index = target / "reward_models.json" if target.is_dir() else target
            if index.suffix == ".json" and index.exists():
                mapping = json.loads(index.read_text(encoding="utf-8"))
                parts.append(RewardModelScorer({k: (index.parent / v if not Path(v).is_absolute() else Path(v)) for k, v in mapping.items()}))
            else:
                parts.append(RewardModelScorer(target))
        else:
            raise ConfigError(f"unknown scorer {part!r}; use none, env, judge:<backend>, rm:<dir>, joined with '+'")
    return parts[0] if len(parts) == 1 else CompositeScorer(*parts)


def load_bench_cases(config: BenchConfig) -> tuple[list[Case], str]:
    """The cases (limited, in file order) and the sha256 of the file(s) they came from."""
    if config.cases:
        path = Path(config.cases)
        cases = load_cases(path, initial_info=config.initial_info)  # type: ignore[arg-type]
    else:
        path = builtin_cases_path()
        cases = builtin_cases()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if config.limit:
        cases = cases[: config.limit]
    return cases, digest


def full_information(case: Case) -> Case:
    return case.model_copy(update={"initial_info": f"{case.initial_info} Further facts: {' '.join(case.facts)}"})


@dataclass(frozen=True)
class Spec:
    mode: str
    case_id: str
    repeat: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.mode}/{self.case_id}#r{self.repeat}"


def episode_specs(cases: Sequence[Case], config: BenchConfig) -> list[Spec]:
    """Every episode of the run; each seed depends only on (run seed, repeat, case position)."""
    out = []
    for mode in config.modes:
        for r in range(config.repeats):
            for i, case in enumerate(cases):
                seed = int(np.random.SeedSequence([config.seed, r, i]).generate_state(1)[0])
                out.append(Spec(mode, case.id, r, seed))
    return out


# -- the run directory ------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mediq-env", "gymnasium", "numpy", "bm25s", "torch", "transformers", "vllm", "httpx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, cwd=Path(__file__).parent
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, check=False, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        return None
    return f"{rev}{'+dirty' if dirty else ''}" if rev else None


@dataclass
class RunDir:
    path: Path
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def episodes_path(self) -> Path:
        return self.path / "episodes.jsonl"

    def open(self, config: BenchConfig, cases_sha256: str, n_cases: int) -> None:
        """Create the directory, or check that an existing one holds this same config, and load its episodes."""
        self.path.mkdir(parents=True, exist_ok=True)
        manifest_path = self.path / "manifest.json"
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            old_config = BenchConfig.from_dict(old["config"]).result_fields()
            new_config = config.result_fields()
            diff = {k: (old_config.get(k), v) for k, v in new_config.items() if old_config.get(k) != v and k != "modes"}
            if diff:
                pairs = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                raise ConfigError(f"{self.path} holds a run with a different config ({pairs}); use another --out")
            if old.get("cases_sha256") != cases_sha256:
                raise ConfigError(f"{self.path}: the cases file changed since this run started; use another --out")
        manifest = {
            "config": asdict(config),
            "cases_sha256": cases_sha256,
            "n_cases": n_cases,
            "versions": _versions(),
            "git": _git_revision(),
            "command": sys.argv,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, manifest_path)
        self.done = self._load_done()

    def _load_done(self) -> dict[str, dict[str, Any]]:
        path = self.episodes_path
        if not path.exists():
            return {}
        raw = path.read_bytes()
        done: dict[str, dict[str, Any]] = {}
        good_end = 0
        pos = 0
        for line in raw.split(b"\n"):
            end = pos + len(line) + 1
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn write: everything from here on is cut off and re-run
                if end > len(raw):
                    break  # no newline yet: the write did not finish
                done[rec["key"]] = rec
            good_end = min(end, len(raw))
            pos = end
        if good_end < len(raw):
            with path.open("r+b") as fh:
                fh.truncate(good_end)
        return done

    def append(self, record: dict[str, Any]) -> None:
        with self.episodes_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done[record["key"]] = record


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


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


def run_benchmark(
    config: BenchConfig,
    out: str | Path,
    *,
    agent: Any | None = None,
    patient: Patient | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a benchmark into ``out`` and return its summary. ``agent``/``patient`` override the config's."""
    from agents.rollout import EpisodeSpec, rollout
    from benchmarks.report import write_reports

    cases, digest = load_bench_cases(config)
    run = RunDir(Path(out))
    run.open(config, digest, len(cases))
    specs = episode_specs(cases, config)
    todo = [s for s in specs if s.key not in run.done]
    if todo:
        agent = agent if agent is not None else build_agent(config)
        patient = patient if patient is not None else build_patient(config)
        scorer = build_scorer(config)
        bar = _progress(len(specs), len(specs) - len(todo), progress)
        for mode in config.modes:
            mode_specs = [s for s in todo if s.mode == mode]
            if not mode_specs:
                continue
            mode_cases = [full_information(c) for c in cases] if mode == "full_information" else cases
            max_q = config.max_questions if mode == "interactive" else 0
            envs = _make_envs(config, mode_cases, patient, max_q, scorer if mode == "interactive" else None)
            by_key = {s.key: s for s in mode_specs}
            episodes = [EpisodeSpec(s.case_id, s.seed, s.key) for s in mode_specs]
            for record in rollout(agent, envs, episodes):
                spec = by_key[record.key]
                row = {"mode": spec.mode, "repeat": spec.repeat, **record.to_dict()}
                run.append(row)
                bar.update(row)
        bar.close()
    return write_reports(run.path, config, [run.done[s.key] for s in specs if s.key in run.done])


class _Progress:
    def __init__(self, total: int, done: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, disable=not enabled, unit="ep", dynamic_ncols=True)
        self.correct = 0
        self.seen = 0

    def update(self, row: dict[str, Any]) -> None:
        if row["mode"] == "interactive":
            self.seen += 1
            self.correct += bool(row.get("correct"))
            self.bar.set_postfix(acc=f"{self.correct / self.seen:.1%}", mode=row["mode"])
        else:
            self.bar.set_postfix(mode=row["mode"])
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _progress(total: int, done: int, enabled: bool) -> _Progress:
    return _Progress(total, done, enabled)


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
    p.add_argument("--patient", default=d.patient, help=" | ".join(PATIENTS))
    p.add_argument("--cases", help="cases file in any MediQ variant (default: the built-in cases)")
    p.add_argument("--initial-info", default=d.initial_info, choices=["auto", "given", "derived"])
    p.add_argument("--max-questions", type=int, default=d.max_questions)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-shuffle", action="store_true", help="keep each file's option order (default: shuffle)")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--scorer", default=d.scorer, help="none, or parts joined by '+': env | judge:<backend> | rm:<reward model dir>")
    p.add_argument("--modes", default=",".join(d.modes), help=f"comma-separated, from {','.join(MODES)}")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--cache-dir", help="response cache directory for model backends (reruns are free)")
    p.add_argument("--out", help="run directory (default: runs/<agent>-<cases>-q<max questions>)")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        agent=args.agent,
        strategy=args.strategy,
        threshold=args.threshold,
        rationale=args.rationale,
        self_consistency=args.self_consistency,
        question_model=args.question_model,
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
    )


def default_out(config: BenchConfig) -> Path:
    cases = Path(config.cases).stem if config.cases else "builtin"
    agent = config.agent.replace(":", "-").replace("/", "_")
    return Path("runs") / f"{agent}-{cases}-q{config.max_questions}"


def main_from_args(args: argparse.Namespace) -> int:
    from benchmarks.report import format_summary

    config = config_from_args(args)
    out = Path(args.out) if args.out else default_out(config)
    summary = run_benchmark(config, out, progress=not args.no_progress)
    print(format_summary(summary))
    print(f"\nrun directory: {out}")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return main_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
