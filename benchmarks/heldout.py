"""Base vs fine-tuned SmolLM2 doctor on held-out cases that no demonstration was built from.

Why a script of its own: the shipped doctor adapter (``mediq_env/data/adapters/smollm2-doctor``) is trained on
demonstrations of the *train* side of :func:`benchmarks.probes.doctor_split`; its effect is only meaningful on
the other side. This writes the held-out cases to files, runs ``mediq bench`` (``benchmarks.run``) for each
agent and source on them, pools the episodes per agent, and reports:

* fallback rate (share of agent turns whose action came from a fallback rule, not the model's own output);
* questions asked per episode, facts revealed per question, fact coverage;
* share of asked questions that pass the patient's gate (the question-form gate, and since 2026-11-27 also not
  turned away by the patient as a guess at an option by meaning; tables made before count the form gate only);
* accuracy with bootstrap 95% intervals, and the paired difference (tuned − base) over the same episodes.

Held-out cases: odd-numbered built-ins; the probe set's test half of MediQ-AskDocs dev and MedQA dev (the
public files are read from ``$MEDIQ_DATA_DIR`` or ``../shared/data``; a source without its data is skipped).
``--limit`` keeps only the first N held-out cases of each source, for a CPU that cannot afford them all.

    python -m benchmarks.heldout --max-questions 3                  # writes benchmarks/results/heldout.{json,md}
    mediq compare runs/heldout/smollm2-base-builtin runs/heldout/smollm2-builtin    # one source, paired
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.parsing import question_key
from benchmarks.metrics import paired_episode_diffs, summarise
from benchmarks.probes import SOURCES, doctor_split, load_probes, source_path
from mediq_env.actions import question_text
from mediq_env.case import load_cases
from mediq_env.errors import ConfigError
from mediq_env.patient import patient_model_id
from mediq_env.question_gate import ASK_ONE_QUESTION, check_question

__all__ = ["agent_name", "gate_pass", "heldout_case_ids", "main", "run_heldout", "write_heldout_cases"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_AGENTS = ("smollm2-base", "smollm2")


def split_case_ids(source: str, split: str, data_dir: str | None = None) -> list[str]:
    """The case ids of one side (``train`` or ``heldout``) of :func:`benchmarks.probes.doctor_split`, in file
    order: built-ins by number; for public sources only the probe set's cases (the split follows its halves)."""
    cases = load_cases(source_path(source, data_dir), strict=False)
    if source == "builtin":
        return [c.id for c in cases if doctor_split(source, c.id) == split]
    probed = {p.case_id for p in load_probes([source], data_dir=data_dir)}
    return [c.id for c in cases if c.id in probed and doctor_split(source, c.id) == split]


def heldout_case_ids(source: str, data_dir: str | None = None) -> list[str]:
    """The held-out case ids of a source, in file order: odd built-ins; for public sources, the probe set's
    cases on the held-out side (its test half) — cases outside the probe set are not part of the split."""
    return split_case_ids(source, "heldout", data_dir)


def case_records(source: str, ids: Sequence[str], data_dir: str | None = None) -> list[str]:
    """The raw JSONL lines of the given cases of a source, verbatim and in file order (so a benchmark loads
    them exactly as it loads the full file)."""
    wanted = set(ids)
    lines = [
        raw
        for raw in source_path(source, data_dir).read_text(encoding="utf-8").splitlines()
        if raw.strip() and str(json.loads(raw).get("id")) in wanted
    ]
    if len(lines) != len(wanted):
        raise RuntimeError(f"{source}: found {len(lines)} records for {len(wanted)} case ids")
    return lines


def write_heldout_cases(source: str, out: Path, *, data_dir: str | None = None, limit: int | None = None) -> list[str]:
    """Copy the held-out records of a source, verbatim, to ``out``; return their ids."""
    ids = heldout_case_ids(source, data_dir)
    if limit is not None:
        ids = ids[:limit]
    lines = case_records(source, ids, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ids


def gate_pass(episodes: Sequence[dict[str, Any]], options_by_case: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Share of the questions asked that pass the patient's gate: :func:`check_question` on the question as
    sent, and not turned away by the patient itself (the faithful patient also refuses a hypothesis that means
    an answer option, which only its embeddings can tell; its reply is then :data:`ASK_ONE_QUESTION`)."""
    verdicts, own = [], []
    for e in episodes:
        for t in e.get("turns", []):
            if t.get("action_type") == "question":
                form_ok = check_question(question_text(t.get("action")), options_by_case.get(e["case_id"])).ok
                verdicts.append(form_ok and t.get("reply") != ASK_ONE_QUESTION)
                # A checklist question is the fallback's, not the model's: it passes the gate by construction.
                own.append((t.get("agent") or {}).get("question_source") not in (None, "checklist"))
    return {
        "mean": float(np.mean(verdicts)) if verdicts else None,
        "questions": len(verdicts),
        "model_written": float(np.mean(own)) if own else None,
        "model_written_pass": float(np.mean([v for v, o in zip(verdicts, own, strict=True) if o])) if any(own) else None,
    }


def repeats(episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share of questions that restate an earlier question of their episode word for word (case and
    punctuation aside), and how many different questions the doctor wrote in all. A repeat earns nothing: the
    patient answers it as before; a doctor that repeats itself has stopped interviewing."""
    flags: list[bool] = []
    distinct: set[str] = set()
    for e in episodes:
        seen: set[str] = set()
        for t in e.get("turns", []):
            if t.get("action_type") == "question":
                q = question_key(question_text(t.get("action")))
                flags.append(q in seen)
                seen.add(q)
                distinct.add(q)
    return {"mean": float(np.mean(flags)) if flags else None, "questions": len(flags), "distinct": len(distinct)}


def _episodes(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "episodes.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("mode") == "interactive"]


def _finished(run_dir: Path, n: int) -> bool:
    """Whether a run directory already holds ``n`` successful interactive episodes (then nothing is loaded)."""
    if not (run_dir / "episodes.jsonl").is_file():
        return False
    return sum(not e.get("error") for e in _episodes(run_dir)) >= n


DECISIONS = "+decisions="
"""In an agent spec, ``SPEC+decisions=BACKEND``: the decisions (ask or answer, and the question) come from
``BACKEND``, every answer from ``SPEC``'s model (``benchmarks.run --decision-model``)."""


def agent_name(entry: str) -> tuple[str, str]:
    """``name=spec`` or a bare spec: (name used in run folders and tables, agent spec). A bare spec is its own
    name with ``/``, ``:``, ``+`` and ``=`` made safe for a folder name (``llm:hf:runs/x/policy`` →
    ``llm_hf_runs_x_policy``). A spec may end in ``+decisions=BACKEND`` (:data:`DECISIONS`)."""
    name, sep, spec = entry.partition("=")
    if sep and re.fullmatch(r"[\w.-]+", name.strip()):  # a name has no ':' or '+' (unlike "llm:hf:a+decisions=…")
        return name.strip(), spec.strip()
    return re.sub(r"[/:+=]", "_", entry.strip()), entry.strip()


def run_heldout(
    *,
    agents: Sequence[str] = DEFAULT_AGENTS,
    sources: Sequence[str] = tuple(SOURCES),
    max_questions: int = 3,
    limit: int | None = None,
    runs_dir: Path = Path("runs/heldout"),
    data_dir: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
    compare_with: str = "previous",
    redraw_repeats: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run every agent on every source's held-out cases (resuming finished runs) and pool the results.

    ``agents`` are ``name=spec`` or bare specs (:func:`agent_name`); each agent is compared, paired over the
    same episodes, with the one listed before it (``compare_with="previous"``: base → SFT → SFT+RL) or with
    the first (``"first"``: several variants against one reference)."""
    if compare_with not in ("previous", "first"):
        raise ConfigError(f"compare_with must be 'previous' or 'first', got {compare_with!r}")
    from benchmarks.run import BenchConfig, build_agent, build_patient, run_benchmark

    case_files: dict[str, Path] = {}
    case_ids: dict[str, list[str]] = {}
    options: dict[str, dict[str, str]] = {}
    for source in sources:
        if source != "builtin" and not source_path(source, data_dir).exists():
            print(f"skipping {source}: {source_path(source, data_dir)} is absent", file=sys.stderr)
            continue
        path = runs_dir / "cases" / f"{source}.jsonl"
        case_ids[source] = write_heldout_cases(source, path, data_dir=data_dir, limit=limit)
        case_files[source] = path
        for c in load_cases(path, strict=False):
            options[f"{source}:{c.id}"] = dict(c.options)
    pooled: dict[str, list[dict[str, Any]]] = {}
    per_source: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    patient = None
    named = [agent_name(a) for a in agents]
    for agent, spec in named:
        pooled[agent] = []
        built = None  # one model load per agent, not one per source (the runner would load it each time)
        agent_spec, _, decisions = spec.partition(DECISIONS)
        for source, path in case_files.items():
            config = BenchConfig(agent=agent_spec, cases=str(path), max_questions=max_questions, decision_model=decisions or None,
                                 modes=("interactive",), batch_size=batch_size, redraw_repeats=redraw_repeats,
                                 seed=seed)
            run_dir = runs_dir / f"{agent}-{source}"
            start = time.perf_counter()
            resumed = _finished(run_dir, len(case_ids[source]))
            if not resumed:
                built = built if built is not None else build_agent(config)
                patient = patient if patient is not None else build_patient(config)
            summary = run_benchmark(config, run_dir, agent=built, patient=patient, progress=progress)
            if not resumed:  # a finished run is only summarised: its time says nothing about the agent
                seconds[f"{agent}/{source}"] = round(time.perf_counter() - start, 1)
            inter = summary["modes"]["interactive"] if "modes" in summary else summary
            per_source[f"{agent}/{source}"] = {
                "episodes": inter.get("episodes"), "accuracy": inter.get("accuracy"),
                "fallback_rate": (inter.get("fallback") or {}).get("rate"), "run_dir": str(run_dir),
            }
            for e in _episodes(run_dir):
                pooled[agent].append({**e, "case_id": f"{source}:{e['case_id']}"})
    results: dict[str, Any] = {}
    for agent, episodes in pooled.items():
        s = summarise(episodes, max_questions=max_questions, mode="interactive")
        results[agent] = {
            "episodes": s["episodes"],
            "failed": s["failed"],
            "fallback": s.get("fallback"),
            "questions_asked": s["questions_asked"],
            "facts_per_question": s["facts_per_question"],
            "fact_coverage": s["fact_coverage"],
            "gate_pass": gate_pass(episodes, options),
            "repeats": repeats(episodes),
            "question_redraws": s.get("question_redraws"),
            "accuracy": s["accuracy"],
            "forced_answer_rate": s["forced_answer_rate"],
        }
    comparisons = []
    names = [n for n, _ in named]
    pairs = itertools.pairwise(names) if compare_with == "previous" else ((names[0], n) for n in names[1:])
    for a, b in pairs:
        if not (pooled[a] and pooled[b]):
            continue
        ea, eb = ({e["case_id"]: e for e in pooled[x]} for x in (a, b))
        shared = sorted(set(ea) & set(eb))
        accuracy, facts = paired_episode_diffs(ea, eb, shared)
        comparisons.append({"base": a, "tuned": b, "pairs": len(shared), "accuracy_diff": accuracy,
                            "facts_per_question_diff": facts})
    return {
        "what": "doctor agents on held-out cases (never used for demonstrations or RL states), each paired with the one before",
        "max_questions": max_questions,
        "limit_per_source": limit,
        "held_out_cases": {s: len(v) for s, v in case_ids.items()},
        "case_ids": case_ids,
        "agents": results,
        "specs": dict(named),
        "per_source": per_source,
        "comparisons": comparisons,
        "compare_with": compare_with,
        "redraw_repeats": redraw_repeats,
        "seed": seed,
        "runs_dir": str(runs_dir),
        "seconds": seconds,
        "patient": "faithful",
        "patient_model": patient_model_id("faithful"),
        "bootstrap": "percentile, 95%, seed 0 (accuracy, questions: episodes; facts per question: cluster over episodes)",
    }


def fmt_ci(d: dict[str, Any] | None, pct: bool = False) -> str:
    """A mean with its interval, as the held-out tables print it ("—" when undefined)."""
    if not d or d.get("mean") is None:
        return "—"
    k = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    if d.get("ci_low") is None:
        return f"{d['mean'] * k:.1f}{unit}" if pct else f"{d['mean']:.2f}"
    if pct:
        return f"{d['mean'] * k:.1f}% [{d['ci_low'] * k:.1f}, {d['ci_high'] * k:.1f}]"
    return f"{d['mean']:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]"


def _share(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


def to_markdown(result: dict[str, Any]) -> str:
    agents = list(result["agents"])
    lines = [
        f"# Held-out: {' vs '.join(agents)}",
        "",
        f"Cases never used for demonstrations ({', '.join(f'{s}: {n}' for s, n in result['held_out_cases'].items())}"
        + (f"; first {result['limit_per_source']} held-out cases per source" if result["limit_per_source"] else "")
        + "), faithful patient" + (f" (model {result['patient_model']})" if result.get("patient_model") else "")
        + f", at most {result['max_questions']} questions, options shuffled, seed {result.get('seed', 0)}. "
        "Intervals are 95% bootstrap.",
        "",
        "| metric | " + " | ".join(f"`{a}`" for a in agents) + " |",
        "|---|" + "---|" * len(agents),
    ]
    rows = [
        ("episodes", lambda r: str(r["episodes"])),
        ("fallback rate (turns)", lambda r: f"{r['fallback']['rate'] * 100:.1f}% of {r['fallback']['turns']}" if r.get("fallback") else "—"),
        ("fallback kinds (turns)", lambda r: ", ".join(f"{k} {v}" for k, v in (r.get("fallback") or {}).get("by_kind", {}).items()) or "none"),
        ("questions asked / episode", lambda r: fmt_ci(r["questions_asked"])),
        ("facts revealed / question", lambda r: fmt_ci(r["facts_per_question"])),
        ("fact coverage", lambda r: fmt_ci(r["fact_coverage"], pct=True)),
        ("questions passing the gate", lambda r: f"{r['gate_pass']['mean'] * 100:.1f}% of {r['gate_pass']['questions']}" if r["gate_pass"]["mean"] is not None else "—"),
        ("questions written by the model (not the checklist fallback)", lambda r: _share(r["gate_pass"].get("model_written"))),
        ("model-written questions passing the gate", lambda r: _share(r["gate_pass"].get("model_written_pass"))),
        ("questions repeating an earlier one of the episode", lambda r: f"{r['repeats']['mean'] * 100:.1f}% of {r['repeats']['questions']}" if (r.get("repeats") or {}).get("mean") is not None else "—"),
        ("questions redrawn (first choice repeated an earlier one)", lambda r: f"{r['question_redraws']['share'] * 100:.1f}% ({r['question_redraws']['still_repeating']} still repeat)" if r.get("question_redraws") else "—"),
        ("different questions written", lambda r: str(r["repeats"]["distinct"]) if r.get("repeats") else "—"),
        ("forced-answer rate", lambda r: f"{r['forced_answer_rate'] * 100:.1f}%"),
        ("accuracy", lambda r: fmt_ci(r["accuracy"], pct=True)),
    ]
    for name, fn in rows:
        lines.append(f"| {name} | " + " | ".join(fn(result["agents"][a]) for a in agents) + " |")
    specs = result.get("specs", {})
    if any(specs.get(a, a) != a for a in agents):
        lines += ["", "Agents: " + "; ".join(f"`{a}` = `{specs[a]}`" for a in agents) + "."]
    for comp in result.get("comparisons", []):
        d, f = comp["accuracy_diff"], comp["facts_per_question_diff"]
        facts = (f"{f['mean']:+.3f} [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}]" if f.get("ci_low") is not None else "—")
        lines += ["", f"Paired, `{comp['tuned']}` − `{comp['base']}` over the same {comp['pairs']} episodes: accuracy "
                  f"{d['mean'] * 100:+.1f} points [{d['ci_low'] * 100:+.1f}, {d['ci_high'] * 100:+.1f}]; "
                  f"facts revealed per question {facts}."]
    lines += ["", "Per source:", "", "| run | episodes | accuracy | fallback rate |", "|---|---|---|---|"]
    for key, r in result["per_source"].items():
        fb = f"{r['fallback_rate'] * 100:.1f}%" if r.get("fallback_rate") is not None else "—"
        lines.append(f"| {key} | {r['episodes']} | {fmt_ci(r['accuracy'], pct=True)} | {fb} |")
    lines += ["", "Wall time per run (seconds, timed by the invocation that ran each; includes model loading; shared, loaded CPU): "
              + (", ".join(f"{k} {v}" for k, v in result["seconds"].items()) or "none (all resumed)"),
              "", "Reproduce: `python -m benchmarks.heldout --max-questions "
              f"{result['max_questions']}" + (f" --limit {result['limit_per_source']}" if result["limit_per_source"] else "")
              + ("" if agents == list(DEFAULT_AGENTS) else " --agents " + ",".join(f"{a}={specs.get(a, a)}" if specs.get(a, a) != a else a for a in agents))
              + ("" if result.get("compare_with", "previous") == "previous" else f" --compare-with {result['compare_with']}")
              + (f" --redraw-repeats {result['redraw_repeats']}" if result.get("redraw_repeats") is not None else "")
              + (f" --seed {result['seed']}" if result.get("seed") else "")
              + ("" if result.get("runs_dir", "runs/heldout") == "runs/heldout" else f" --runs-dir {result['runs_dir']}")
              + ("" if result.get("stem", "heldout") == "heldout" else f" --stem {result['stem']}") + "`"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heldout", description=__doc__.split("\n")[0])
    parser.add_argument("--agents", default=",".join(DEFAULT_AGENTS),
                        help="agents in order (base first), each 'name=spec' or a spec; each is compared with the one before")
    parser.add_argument("--stem", default="heldout", help="result file names: RESULTS_DIR/STEM.{json,md}")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--max-questions", type=int, default=3)
    parser.add_argument("--limit", type=int, help="first N held-out cases per source (CPU budget)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs-dir", default="runs/heldout")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--data-dir")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--compare-with", choices=("previous", "first"), default="previous",
                        help="pair each agent with the one listed before it, or every agent with the first")
    parser.add_argument("--redraw-repeats", type=int, metavar="N",
                        help="every LLM agent redraws a question that restates an earlier one, up to N times (benchmarks.run)")
    parser.add_argument("--seed", type=int, default=0,
                        help="episode seed (option order and each episode's draws); another seed replicates a comparison")
    args = parser.parse_args(argv)
    result = run_heldout(
        agents=[a.strip() for a in args.agents.split(",") if a.strip()],
        sources=[s.strip() for s in args.sources.split(",") if s.strip()],
        max_questions=args.max_questions, limit=args.limit, runs_dir=Path(args.runs_dir),
        data_dir=args.data_dir, batch_size=args.batch_size, progress=args.progress, compare_with=args.compare_with,
        redraw_repeats=args.redraw_repeats, seed=args.seed,
    )
    result["stem"] = args.stem
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / f"{args.stem}.json"
    if previous.is_file():
        # Resumed runs were timed by the invocation that executed them; keep those times.
        try:
            earlier = json.loads(previous.read_text(encoding="utf-8")).get("seconds", {})
        except ValueError:
            earlier = {}
        result["seconds"] = {**{k: v for k, v in earlier.items() if k in result["per_source"]}, **result["seconds"]}
    (out / f"{args.stem}.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n", encoding="utf-8")
    (out / f"{args.stem}.md").write_text(to_markdown(result), encoding="utf-8")
    print(to_markdown(result))
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
