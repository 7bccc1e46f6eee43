"""Episodes and preference pairs as training data: ``mediq export PATH --format jsonl|parquet|hf --out OUT``.

``PATH`` is either

* a benchmark run directory (``mediq bench``): one row per episode in the chat format TRL, OpenRLHF and
  veRL read — ``messages`` (a system message holding the doctor's instructions, the case's opening, the
  clinical question and the options as the agent saw them; then ``assistant`` = each doctor action and
  ``user`` = what came back: the patient's reply, or the environment's message for an invalid action),
  ``rewards`` (the environment's reward of each turn, one per assistant message, in order) and metadata:
  ``run``, ``key``, ``mode``, ``case_id``, ``repeat``, ``seed``, ``correct``, ``answer``,
  ``correct_answer``, ``forced``, ``truncated``, ``questions_asked``, ``n_facts_revealed``, ``n_facts``,
  ``total_reward``, ``error``. Failed episodes are kept with ``error`` set (filter them with
  ``ds.filter(lambda r: r["error"] is None)``); the turn on which an agent crashed has no action and is
  left out.
* or a ``mediq synth`` output folder: its preference pairs (``pairs/``, or ``pairs_overall/`` with
  ``--pairs overall``) in TRL's conversational preference format — ``prompt`` (system + user messages),
  ``chosen`` and ``rejected`` (one assistant message each) — with synth's metadata columns.

Formats: ``jsonl`` (one JSON object per line, written with the standard library so numbers round-trip
exactly; ``datasets.load_dataset("json", data_files=OUT)`` reads it), ``parquet``
(``load_dataset("parquet", data_files=OUT)``) and ``hf`` (``datasets.load_from_disk(OUT)``). Synth pairs
keep their train/eval split: as a ``split`` column in jsonl and parquet, as a ``DatasetDict`` in hf.

The case texts are not in ``episodes.jsonl``: they are read from the run's cases file (or ``--cases``),
checked against the checksum in the manifest. Without them the system message cannot be written, so the
export stops with a message that says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mediq_env.errors import ConfigError, MissingDependencyError

__all__ = [
    "FORMATS",
    "episode_features",
    "episode_rows",
    "export",
    "load_export",
    "preference_rows",
    "system_message",
]

FORMATS = ("jsonl", "parquet", "hf")
Format = Literal["jsonl", "parquet", "hf"]
LETTERS = "ABCDEFGHIJ"


def system_message(case: Mapping[str, Any], option_order: Sequence[str] = (), mode: str = "interactive") -> str:
    """The doctor's instructions and the case as the agent saw it (options in the episode's shown lettering)."""
    from agents.prompts import SYSTEM_PROMPT

    options = case["options"]
    order = list(option_order) or list(options)
    opening = case["initial_info"]
    if mode == "full_information":  # what benchmarks.run.full_information showed the agent
        opening = f"{opening} Further facts: {' '.join(case['facts'])}"
    lines = [SYSTEM_PROMPT, "", f"Case summary: {opening}", "", f"Clinical question: {case['question']}", "Options:"]
    lines += [f"  {LETTERS[i]}) {options[old]}" for i, old in enumerate(order)]
    lines += ["", "Ask the patient one question, or answer with 'ANSWER: <letter>'."]
    return "\n".join(lines)


def _messages(episode: Mapping[str, Any], case: Mapping[str, Any]) -> tuple[list[dict[str, str]], list[float]]:
    from benchmarks.view import action_text

    messages = [{"role": "system", "content": system_message(case, episode.get("option_order") or (), episode.get("mode", "interactive"))}]
    rewards: list[float] = []
    for turn in episode.get("turns") or []:
        if turn.get("action_type") == "error" or turn.get("action") is None:
            continue  # the agent crashed on this turn: there is no doctor action to learn from
        messages.append({"role": "assistant", "content": action_text(turn["action"])})
        rewards.append(float(turn.get("reward") or 0.0))
        reply = turn.get("reply") if turn.get("reply") is not None else turn.get("invalid_action")
        if reply is not None:
            messages.append({"role": "user", "content": str(reply)})
    return messages, rewards


def episode_rows(run: str | Path, *, cases: str | Path | None = None, modes: Iterable[str] | None = None,
                 name: str | None = None) -> list[dict[str, Any]]:
    """One chat row per episode of a run (see the module docstring for the columns)."""
    from benchmarks.report import load_run
    from benchmarks.view import load_cases_for

    path = Path(run)
    manifest, episodes = load_run(path)
    case_map, note = load_cases_for(manifest, cases)
    if note:
        raise ConfigError(f"{path}: {note}; pass --cases with the cases file the run used")
    wanted = set(modes) if modes else None
    rows = []
    for e in episodes:
        mode = e.get("mode", "interactive")
        if wanted is not None and mode not in wanted:
            continue
        case = case_map.get(e["case_id"])
        if case is None:
            raise ConfigError(f"{path}: case {e['case_id']!r} is not in the run's cases file")
        messages, rewards = _messages(e, case)
        rows.append({
            "messages": messages,
            "rewards": rewards,
            "run": name or path.resolve().name,
            "key": e.get("key"),
            "mode": mode,
            "case_id": e["case_id"],
            "repeat": e.get("repeat"),
            "seed": e.get("seed"),
            "correct": bool(e.get("correct")) and not e.get("error"),
            "answer": e.get("answer"),
            "correct_answer": e.get("correct_answer"),
            "forced": bool(e.get("forced")),
            "truncated": bool(e.get("truncated")),
            "questions_asked": int(e.get("questions_asked") or 0),
            "n_facts_revealed": int(e.get("n_facts_revealed") or 0),
            "n_facts": int(e.get("n_facts") or 0),
            "total_reward": float(e.get("total_reward") or 0.0),
            "error": e.get("error"),
        })
    return rows


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise MissingDependencyError("datasets", "train", "exporting Hugging Face datasets") from err
    return datasets


def _message_list() -> Any:
    ds = _datasets()
    return ds.List({"role": ds.Value("string"), "content": ds.Value("string")})


def episode_features() -> Any:
    """Explicit column types, so an export with no failed episode still types ``error`` as a string."""
    ds = _datasets()
    v = ds.Value
    return ds.Features({
        "messages": _message_list(), "rewards": ds.List(v("float64")), "run": v("string"), "key": v("string"),
        "mode": v("string"), "case_id": v("string"), "repeat": v("int64"), "seed": v("int64"), "correct": v("bool"),
        "answer": v("string"), "correct_answer": v("string"), "forced": v("bool"), "truncated": v("bool"),
        "questions_asked": v("int64"), "n_facts_revealed": v("int64"), "n_facts": v("int64"),
        "total_reward": v("float64"), "error": v("string"),
    })


def is_synth_dir(path: Path) -> bool:
    return (path / "pairs").is_dir() or (path / "units.jsonl").exists()


def preference_rows(synth_dir: str | Path, *, which: Literal["pairs", "overall"] = "pairs") -> list[dict[str, Any]]:
    """The preference pairs of a ``mediq synth`` output folder, each with its ``split`` (train / eval)."""
    folder = Path(synth_dir) / ("pairs" if which == "pairs" else "pairs_overall")
    if not folder.is_dir():
        raise ConfigError(f"{folder} not found: {synth_dir} is not a finished `mediq synth` output folder")
    rows = []
    for split in ("train", "eval"):
        path = folder / f"{split}.jsonl"
        if not path.exists():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not JSON ({exc.msg})") from None
            for col in ("prompt", "chosen", "rejected"):
                if not isinstance(rec.get(col), list):
                    raise ConfigError(f"{path}:{n}: {col}: expected a list of chat messages")
            rows.append({**rec, "split": split})
    return rows


def _preference_features() -> Any:
    from training.synth import preference_features

    feats = preference_features()
    feats["split"] = _datasets().Value("string")
    return feats


def _dataset(rows: Sequence[Mapping[str, Any]], features: Any) -> Any:
    ds = _datasets()
    return ds.Dataset.from_dict({k: [r.get(k) for r in rows] for k in features}, features=features)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No datasets progress bars while writing (one per shard would drown the path we print); the caller's
    setting is restored afterwards."""
    logging = _datasets().utils.logging
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _replace_path(tmp: Path, out: Path) -> None:
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    os.replace(tmp, out)


def write_rows(rows: Sequence[Mapping[str, Any]], out: str | Path, fmt: Format, features: Any, *, split_column: str | None = None) -> Path:
    """Write ``rows`` as ``fmt`` to ``out`` (to a temporary path first, then moved into place)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent)) / "out"
    try:
        if fmt == "jsonl":
            with tmp.open("w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps({k: r.get(k) for k in features}, ensure_ascii=False, allow_nan=False) + "\n")
        elif fmt == "parquet":
            with _quiet():
                _dataset(rows, features).to_parquet(str(tmp))
        else:
            ds = _datasets()
            if split_column:
                inner = ds.Features({k: v for k, v in features.items() if k != split_column})
                splits = sorted({str(r[split_column]) for r in rows}) or ["train"]
                data: Any = ds.DatasetDict({s: _dataset([r for r in rows if r.get(split_column) == s], inner) for s in splits})
            else:
                data = _dataset(rows, features)
            with _quiet():
                data.save_to_disk(str(tmp))
        _replace_path(tmp, out_path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return out_path


def default_out(path: str | Path, fmt: Format) -> Path:
    """Where an export goes when no ``out`` is given: beside the run's own files."""
    return Path(path) / ("export_hf" if fmt == "hf" else f"export.{fmt}")


def export(path: str | Path, fmt: Format, out: str | Path | None = None, *, cases: str | Path | None = None,
           modes: Iterable[str] | None = None, pairs: Literal["pairs", "overall"] = "pairs") -> tuple[Path, int]:
    """Export a run's episodes or a synth folder's pairs; returns ``(out, rows written)``."""
    source = Path(path)
    out = default_out(source, fmt) if out is None else out
    if (source / "manifest.json").exists() and (source / "episodes.jsonl").exists():
        rows = episode_rows(source, cases=cases, modes=modes)
        return write_rows(rows, out, fmt, episode_features()), len(rows)
    if is_synth_dir(source):
        rows = preference_rows(source, which=pairs)
        return write_rows(rows, out, fmt, _preference_features(), split_column="split"), len(rows)
    raise ConfigError(f"{source} is neither a benchmark run (manifest.json + episodes.jsonl) nor a `mediq synth` output folder")


def load_export(path: str | Path, fmt: Format) -> Any:
    """Read an export back with ``datasets`` (what a training script would do)."""
    ds = _datasets()
    if fmt == "hf":
        return ds.load_from_disk(str(path))
    builder = "json" if fmt == "jsonl" else "parquet"
    return ds.load_dataset(builder, data_files=str(path), split="train")
