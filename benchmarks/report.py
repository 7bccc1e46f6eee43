"""Turn episode records into ``summary.json``, ``report.md`` and PNG plots; put runs side by side.

``mediq report RUN [RUN ...]`` prints a leaderboard of finished runs (recomputed from their episodes).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.metrics import FALLBACK_WARN_RATE, summarise

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
        "modes": {
            m: summarise(eps, max_questions=config.max_questions if m == "interactive" else 0, seed=config.seed, mode=m)
            for m, eps in modes.items()
        },
    }
    # allow_nan=False: summarise gives None for undefined values, and a NaN slipping through must fail
    # loudly here rather than write a file that strict JSON readers reject.
    text = json.dumps(summary, indent=2, default=_json_default, allow_nan=False)
    (run_path / "summary.json").write_text(text + "\n", encoding="utf-8")
    plots = _plots(run_path, summary)
    (run_path / "report.md").write_text(markdown(summary, plots), encoding="utf-8")
    return summary


def _json_default(obj: Any) -> Any:
    return str(obj)


def _undefined(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: float | None) -> str:
    return "n/a" if _undefined(x) else f"{x:.1%}"


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if _undefined(x) else f"{x:.{digits}f}"


def _ci(d: dict[str, Any] | None, pct: bool = True) -> str:
    """``mean [low, high]``; ``n/a`` when the mean is undefined (the interval alone is never shown)."""
    if d is None or _undefined(d.get("mean")):
        return "n/a"
    fmt = _pct if pct else _num
    return f"{fmt(d['mean'])} [{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]"


def _fallback_rate(s: dict[str, Any]) -> str:
    """The share of agent turns taken by fallbacks; a dash for agents that have none (baselines)."""
    fb = s.get("fallback")
    return "—" if fb is None else _pct(fb["rate"])


def fallback_warning(s: dict[str, Any]) -> str | None:
    """One plain sentence when fallbacks took more than FALLBACK_WARN_RATE of the agent's turns, else None."""
    fb = s.get("fallback")
    if fb is None or fb["rate"] is None or fb["rate"] <= FALLBACK_WARN_RATE:
        return None
    return (
        f"Fallbacks made {fb['rate']:.0%} of this agent's {fb['turns']} turns (over {FALLBACK_WARN_RATE:.0%}): "
        "these numbers measure the fallback (checklist questions, fixed letters), not the model."
    )


def redraw_line(s: dict[str, Any]) -> str | None:
    """One plain sentence on repeat redraws (``--redraw-repeats``), or None when the agent does not redraw."""
    rd = s.get("question_redraws")
    if not isinstance(rd, dict) or not rd.get("questions"):
        return None
    return (f"repeat redraws: {rd['redrawn']} of {rd['questions']} questions ({_pct(rd['share'])}) were drawn again, sampled, "
            f"because the model's first choice restated an earlier question; {rd['still_repeating']} still did")


def format_summary(summary: dict[str, Any]) -> str:
    """The few lines a person wants after a run."""
    m = summary["modes"]
    inter = m["interactive"]
    lines = [
        f"agent: {summary['config']['agent']}   cases: {summary['config']['cases'] or 'built-in'}   episodes: {inter['episodes']} ({inter['failed']} failed)",
        f"accuracy: {_ci(inter['accuracy'])}   (95% bootstrap interval)",
        f"questions asked: {_ci(inter['questions_asked'], pct=False)}   forced answers: {_pct(inter['forced_answer_rate'])}   fact coverage: {_ci(inter['fact_coverage'])}",
        f"new facts per question: {_ci(inter.get('facts_per_question'), pct=False)}   fallback rate: {_fallback_rate(inter)}"
        + (f" {inter['fallback']['by_kind']}" if inter.get("fallback", {}).get("by_kind") else ""),
        f"majority-letter baseline: {_pct(inter['majority_letter']['accuracy'])} (always {inter['majority_letter']['letter']} as shown); "
        f"in the file's own lettering {_pct(inter['majority_letter']['file_accuracy'])} (always {inter['majority_letter']['file_letter']})",
    ]
    for mode in ("no_interaction", "full_information"):
        if mode in m:
            lines.append(f"{mode.replace('_', ' ')}: accuracy {_ci(m[mode]['accuracy'])}")
    for extra in (redraw_line(inter), fallback_warning(inter)):
        if extra:
            lines.append(extra)
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
    ]
    warning = fallback_warning(inter)
    if warning:
        out += [f"**{warning}**", ""]
    out += [
        "| mode | episodes | failed | accuracy [95% CI] | questions asked | forced answers | fact coverage | new facts per question | fallback rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for mode, s in m.items():
        coverage = s["fact_coverage"]
        if coverage.get("note"):
            notes.append(f"Fact coverage ({mode}): {coverage['note']}.")
        out.append(
            f"| {mode} | {s['episodes']} | {s['failed']} | {_ci(s['accuracy'])} | {_ci(s['questions_asked'], pct=False)} | "
            f"{_pct(s['forced_answer_rate'])} | {_ci(coverage)} | {_ci(s.get('facts_per_question'), pct=False)} | {_fallback_rate(s)} |"
        )
    fb = inter.get("fallback")
    if fb is not None:
        notes.append(
            f"Fallback rate: share of the agent's {fb['turns']} turns whose action came from a documented fallback, "
            f"not the model's own output; by kind: {fb['by_kind'] or 'none'}."
        )
    redraws = redraw_line(inter)
    if redraws:
        notes.append(redraws)
    out += ["", *notes] if notes else []
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
            mean = _num(a["mean"], 3)
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

    fig = accuracy_figure(summary)
    if fig is not None:
        # bbox_inches="tight" keeps the reference-line labels drawn right of the axes.
        fig.savefig(plot_dir / "accuracy_vs_questions.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        made.append("accuracy_vs_questions.png")

    attrs = {k: v["mean"] for k, v in inter["attributes"].items() if not _undefined(v["mean"])}
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


_REFERENCES = (
    # (label, linestyle, colour) of each reference line; distinct styles so that equal values stay readable.
    ("no interaction", ":", "tab:grey"),
    ("full information", "--", "tab:green"),
    ("majority letter", "-.", "tab:red"),
)
_LABEL_GAP = 0.06  # the least vertical distance (accuracy units) between two reference labels


def _spread(values: Sequence[float], gap: float) -> list[float]:
    """Label heights for ``values`` (same order), moved apart to at least ``gap`` and kept inside [0, 1]."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    placed: list[float] = []
    for i in order:
        placed.append(max(values[i], placed[-1] + gap) if placed else values[i])
    overflow = max(0.0, (placed[-1] if placed else 0.0) - 1.0)
    heights = [0.0] * len(values)
    for i, y in zip(order, placed, strict=True):
        heights[i] = y - overflow
    return heights


def accuracy_figure(summary: dict[str, Any]) -> Any | None:
    """The accuracy-vs-questions figure (matplotlib), or None when there is nothing to draw.

    Integer ticks only (a question is asked or not); each reference line (no interaction, full information,
    majority letter) has a legend entry with its value and a label at the right edge, pushed apart when
    lines overlap so every one stays readable.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    inter = summary["modes"]["interactive"]
    rows = [r for r in inter["accuracy_by_questions"] if not _undefined(r["accuracy"])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ks = [r["questions"] for r in rows]
    ax.plot(ks, [r["accuracy"] for r in rows], marker="o", color="tab:blue", label="interactive (answer after k questions)")
    values = {
        "no interaction": summary["modes"].get("no_interaction", {}).get("accuracy", {}).get("mean"),
        "full information": summary["modes"].get("full_information", {}).get("accuracy", {}).get("mean"),
        "majority letter": inter["majority_letter"]["accuracy"],
    }
    refs = [(label, style, colour, values[label]) for label, style, colour in _REFERENCES if not _undefined(values[label])]
    heights = _spread([v for *_, v in refs], _LABEL_GAP)
    for (label, style, colour, value), y in zip(refs, heights, strict=True):
        ax.axhline(value, linestyle=style, color=colour, linewidth=1.4, label=f"{label} ({value:.0%})")
        ax.annotate(
            f"{label} {value:.0%}", xy=(1.0, value), xycoords=("axes fraction", "data"), xytext=(1.02, y),
            textcoords=("axes fraction", "data"), va="center", fontsize=7, color=colour,
            arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.6} if abs(y - value) > 1e-9 else None,
        )
    lo, hi = min(ks), max(ks)
    ax.set_xlim(lo - 0.3, hi + 0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set(xlabel="questions asked (k)", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy vs questions asked")
    ax.legend(fontsize=7, loc="best")
    return fig


def load_run(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's manifest and its episode records, read the way ``mediq bench`` reads them (never writing).

    Each episode key gives its last valid record (a retried episode's earlier attempts are not counted
    twice). Damaged lines of ``episodes.jsonl`` are skipped and counted in one note on stderr, so every
    valid record is still used; a missing or damaged manifest is refused with a one-line
    :class:`~mediq_env.errors.ConfigError`, since without it the episodes' config is unknown.
    """
    from benchmarks.run import RunDir, RunDirError
    from mediq_env.errors import ConfigError

    run = Path(path)
    if not (run / "manifest.json").exists():
        raise ConfigError(f"{run} is not a run directory (no manifest.json)")
    try:
        state = RunDir(run).read()
    except RunDirError as exc:
        raise ConfigError(f"cannot report on {run}: {exc}") from None
    assert state.manifest is not None  # read() returns None only for a missing manifest, checked above
    if state.damaged:
        shown = "; ".join(f"line {d.line}: {d.reason}" for d in state.damaged[:3])
        more = f"; +{len(state.damaged) - 3} more" if len(state.damaged) > 3 else ""
        print(
            f"note: {run / 'episodes.jsonl'}: skipped {len(state.damaged)} damaged line(s) ({shown}{more}); "
            f"using the {len(state.records)} valid episode record(s). Rerunning `mediq bench` with this --out "
            "moves the damaged lines aside and runs those episodes again.",
            file=sys.stderr,
        )
    return state.manifest, list(state.records.values())


def leaderboard(paths: Sequence[str | Path]) -> str:
    """A Markdown table of several runs, best interactive accuracy first.

    ``fallback`` is the share of the agent's turns taken by documented fallbacks ("—" for agents without
    any, the baselines); a run over 20% is marked, since its numbers describe the fallback, not the model.
    """
    rows = []
    for p in paths:
        manifest, episodes = load_run(p)
        cfg = manifest["config"]
        inter = [e for e in episodes if e.get("mode", "interactive") == "interactive"]
        s = summarise(inter, max_questions=cfg["max_questions"], seed=cfg.get("seed", 0), mode="interactive")
        base = {
            m: summarise([e for e in episodes if e.get("mode") == m], max_questions=0, mode=m)
            for m in ("no_interaction", "full_information")
        }
        rows.append((s["accuracy"]["mean"], str(p), cfg, s, base))
    rows.sort(key=lambda r: -(r[0] if not _undefined(r[0]) else -1))
    out = [
        "| run | agent | cases | episodes | accuracy [95% CI] | questions | new facts per question | fallback | "
        "no interaction | full information | majority letter |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    flagged = []
    for _, path, cfg, s, base in rows:
        fallback = _fallback_rate(s)
        if fallback_warning(s):
            fallback += " ⚠"
            flagged.append(path)
        out.append(
            f"| {path} | {cfg['agent']} | {Path(cfg['cases']).name if cfg['cases'] else 'built-in'} | {s['episodes']} | {_ci(s['accuracy'])} | "
            f"{_ci(s['questions_asked'], pct=False)} | {_ci(s.get('facts_per_question'), pct=False)} | {fallback} | "
            f"{_pct(base['no_interaction']['accuracy']['mean'])} | "
            f"{_pct(base['full_information']['accuracy']['mean'])} | {_pct(s['majority_letter']['accuracy'])} |"
        )
    if flagged:
        out += ["", f"⚠ fallbacks made over {FALLBACK_WARN_RATE:.0%} of the agent's turns in {', '.join(flagged)}: "
                "those numbers measure the fallback, not the model."]
    return "\n".join(out)
