"""Turn episode records into ``summary.json``, ``report.md`` and PNG plots; put runs side by side.

``mediq report RUN [RUN ...]`` prints a leaderboard of finished runs (recomputed from their episodes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.metrics import summarise

__all__ = ["format_summary", "leaderboard", "load_run", "write_reports"]


def _by_mode(episodes: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in episodes:
        out.setdefault(e.get("mode", "interactive"), []).append(e)
    return out


def write_reports(run_path: Path, config: Any, episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Compute the summary of every mode, write summary.json, report.md and plots; return the summary."""
    from dataclasses import asdict

    modes = _by_mode(episodes)
    summary: dict[str, Any] = {
        "config": asdict(config),
        "modes": {m: summarise(eps, max_questions=config.max_questions if m == "interactive" else 0, seed=config.seed) for m, eps in modes.items()},
    }
    (run_path / "summary.json").write_text(json.dumps(summary, indent=2, default=_nan_safe) + "\n", encoding="utf-8")
    plots = _plots(run_path, summary)
    (run_path / "report.md").write_text(markdown(summary, plots), encoding="utf-8")
    return summary


def _nan_safe(obj: Any) -> Any:
    return None if isinstance(obj, float) and math.isnan(obj) else str(obj)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _ci(d: dict[str, float], pct: bool = True) -> str:
    if pct:
        return f"{_pct(d['mean'])} [{_pct(d['ci_low'])}, {_pct(d['ci_high'])}]"
    if math.isnan(d["mean"]):
        return "n/a"
    return f"{d['mean']:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]"


def format_summary(summary: dict[str, Any]) -> str:
    """The few lines a person wants after a run."""
    m = summary["modes"]
    inter = m["interactive"]
    lines = [
        f"agent: {summary['config']['agent']}   cases: {summary['config']['cases'] or 'built-in'}   episodes: {inter['episodes']} ({inter['failed']} failed)",
        f"accuracy: {_ci(inter['accuracy'])}   (95% bootstrap interval)",
        f"questions asked: {_ci(inter['questions_asked'], pct=False)}   forced answers: {_pct(inter['forced_answer_rate'])}   fact coverage: {_ci(inter['fact_coverage'])}",
        f"majority-letter baseline: {_pct(inter['majority_letter']['accuracy'])} (always {inter['majority_letter']['letter']} as shown); "
        f"in the file's own lettering {_pct(inter['majority_letter']['file_accuracy'])} (always {inter['majority_letter']['file_letter']})",
    ]
    for mode in ("no_interaction", "full_information"):
        if mode in m:
            lines.append(f"{mode.replace('_', ' ')}: accuracy {_ci(m[mode]['accuracy'])}")
    return "\n".join(lines)


def markdown(summary: dict[str, Any], plots: Sequence[str] = ()) -> str:
    m = summary["modes"]
    inter = m["interactive"]
    cfg = summary["config"]
    out = [
        f"# Benchmark: {cfg['agent']} on {cfg['cases'] or 'built-in cases'}",
        "",
        f"Strategy `{cfg['strategy']}`, patient `{cfg['patient']}`, at most {cfg['max_questions']} questions, "
        f"{cfg['repeats']} repeat(s), options {'shuffled' if cfg['shuffle_options'] else 'in file order'}, seed {cfg['seed']}.",
        "",
        "| mode | episodes | failed | accuracy [95% CI] | questions asked | forced answers | fact coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, s in m.items():
        out.append(
            f"| {mode} | {s['episodes']} | {s['failed']} | {_ci(s['accuracy'])} | {_ci(s['questions_asked'], pct=False)} | "
            f"{_pct(s['forced_answer_rate'])} | {_ci(s['fact_coverage'])} |"
        )
    ml = inter["majority_letter"]
    out += [
        "",
        f"Majority-letter baseline on the same episodes: **{_pct(ml['accuracy'])}** (always {ml['letter']}, as shown); "
        f"with the file's own option order: **{_pct(ml['file_accuracy'])}** (always {ml['file_letter']}).",
        "",
    ]
    out += ["## Accuracy after k questions (intermediate answers)", "", "| k | accuracy | n |", "|---|---|---|"]
    out += [f"| {r['questions']} | {_pct(r['accuracy'])} | {r['n']} |" for r in inter["accuracy_by_questions"]]
    cal = inter["calibration"]
    if cal["n"]:
        out += ["", f"Calibration over {cal['n']} confident answers: ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}."]
    if inter["attributes"]:
        out += ["", "## Per-question scores", "", "| score | mean | scored | unscored |", "|---|---|---|---|"]
        for name, a in inter["attributes"].items():
            mean = "n/a" if math.isnan(a["mean"]) else f"{a['mean']:.3f}"
            out.append(f"| {name} | {mean} | {a['scored']} | {a['unscored']} |")
    if inter["failed"]:
        out += ["", f"Failed episodes: {inter['failure_reasons']}"]
    out += [""] + [f"![{p}](plots/{p})" for p in plots]
    return "\n".join(out) + "\n"


def _plots(run_path: Path, summary: dict[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    plot_dir = run_path / "plots"
    plot_dir.mkdir(exist_ok=True)
    inter = summary["modes"]["interactive"]
    made = []

    rows = [r for r in inter["accuracy_by_questions"] if not math.isnan(r["accuracy"])]
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["questions"] for r in rows], [r["accuracy"] for r in rows], marker="o", label="interactive")
        for mode, style in (("no_interaction", ":"), ("full_information", "--")):
            if mode in summary["modes"]:
                ax.axhline(summary["modes"][mode]["accuracy"]["mean"], linestyle=style, color="grey", label=mode.replace("_", " "))
        ax.axhline(inter["majority_letter"]["accuracy"], linestyle="-.", color="red", alpha=0.5, label="majority letter")
        ax.set(xlabel="questions asked", ylabel="accuracy", ylim=(0, 1), title="Accuracy vs questions asked")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot_dir / "accuracy_vs_questions.png", dpi=120)
        plt.close(fig)
        made.append("accuracy_vs_questions.png")

    attrs = {k: v["mean"] for k, v in inter["attributes"].items() if not math.isnan(v["mean"])}
    if attrs:
        fig, ax = plt.subplots(figsize=(5, 0.4 * len(attrs) + 1.2))
        ax.barh(list(attrs), list(attrs.values()))
        ax.set(xlabel="mean score per question", title="Question-quality profile")
        fig.tight_layout()
        fig.savefig(plot_dir / "attribute_profile.png", dpi=120)
        plt.close(fig)
        made.append("attribute_profile.png")

    bins = inter["calibration"]["bins"]
    if bins:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o")
        ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Calibration")
        fig.tight_layout()
        fig.savefig(plot_dir / "calibration.png", dpi=120)
        plt.close(fig)
        made.append("calibration.png")
    return made


def load_run(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's manifest and its episode records."""
    run = Path(path)
    manifest_path = run / "manifest.json"
    if not manifest_path.exists():
        from mediq_env.errors import ConfigError

        raise ConfigError(f"{run} is not a run directory (no manifest.json)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    episodes_path = run / "episodes.jsonl"
    episodes = []
    if episodes_path.exists():
        for line in episodes_path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                try:
                    episodes.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    return manifest, episodes


def leaderboard(paths: Sequence[str | Path]) -> str:
    """A Markdown table of several runs, best interactive accuracy first."""
    rows = []
    for p in paths:
        manifest, episodes = load_run(p)
        cfg = manifest["config"]
        inter = [e for e in episodes if e.get("mode", "interactive") == "interactive"]
        s = summarise(inter, max_questions=cfg["max_questions"], seed=cfg.get("seed", 0))
        base = {m: summarise([e for e in episodes if e.get("mode") == m], max_questions=0) for m in ("no_interaction", "full_information")}
        rows.append((s["accuracy"]["mean"], str(p), cfg, s, base))
    rows.sort(key=lambda r: -(r[0] if not math.isnan(r[0]) else -1))
    out = [
        "| run | agent | cases | episodes | accuracy [95% CI] | questions | no interaction | full information | majority letter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, path, cfg, s, base in rows:
        out.append(
            f"| {path} | {cfg['agent']} | {Path(cfg['cases']).name if cfg['cases'] else 'built-in'} | {s['episodes']} | {_ci(s['accuracy'])} | "
            f"{_ci(s['questions_asked'], pct=False)} | {_pct(base['no_interaction']['accuracy']['mean'])} | "
            f"{_pct(base['full_information']['accuracy']['mean'])} | {_pct(s['majority_letter']['accuracy'])} |"
        )
    return "\n".join(out)
