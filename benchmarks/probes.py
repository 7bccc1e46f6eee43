"""The labelled patient probe set: team-written doctor questions over built-in and public dev cases.

Each line of ``benchmarks/data/probes/<source>.jsonl`` is one question asked of one case, labelled with
every fact that answers it. Public case text is never stored here: a fact is named by its index in the
loaded case *and* a short hash of its text, so a label that no longer points at the fact it was written
for (a changed file, a changed loader) is an error, not a silently wrong label. The labelling rule is
``benchmarks/data/probes/LABELLING.md``.

Record fields:

``source``     ``builtin`` | ``askdocs`` | ``medqa`` (which case file; see :data:`SOURCES`)
``case_id``    the case's id as loaded (MedQA's integer ids as strings)
``kind``       ``targeted`` (a paraphrase aimed at one fact) | ``opening`` (written from the opening alone,
               then labelled) | ``history`` (a broad history-taking question — medicines, tests so far,
               family history… — labelled with every fact that answers; may be empty) | ``unanswerable``
               (no fact answers) | ``adversarial`` (not a real question)
``attack``     for adversarial probes: ``keywords`` | ``catchall`` | ``statement`` | ``multi`` | ``option``
``question``   the doctor's action, verbatim
``answers``    ``[[fact index, fact hash], ...]``: every fact that answers; empty when none does

Split: a case belongs to the calibration half or the test half by a hash of ``source:case_id``
(:func:`split_of`); everything tuned (thresholds, the relevance head) sees calibration probes only.

CLI (for labellers and reviewers)::

    python -m benchmarks.probes show askdocs t_cg6uht7-0     # the doctor's view and the facts with index+hash
    python -m benchmarks.probes check                        # validate every probe file against the cases
    python -m benchmarks.probes stats
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from benchmarks.common import DATA_DIR
from mediq_env import builtin_cases
from mediq_env.case import Case, load_cases
from mediq_env.errors import CaseFormatError, ConfigError

__all__ = [
    "ATTACKS",
    "KINDS",
    "PROBE_DIR",
    "SOURCES",
    "DoctorSplit",
    "Probe",
    "doctor_split",
    "fact_hash",
    "load_probe_cases",
    "load_probes",
    "shared_data_dir",
    "source_path",
    "split_of",
]

PROBE_DIR = DATA_DIR / "probes"
KINDS = ("targeted", "opening", "history", "unanswerable", "adversarial")
ATTACKS = ("keywords", "catchall", "statement", "multi", "option")
SOURCES = {"builtin": None, "askdocs": "mediq_askdocs_dev.jsonl", "medqa": "medqa_dev.jsonl"}
Split = Literal["calibration", "test"]
DoctorSplit = Literal["train", "heldout"]


def shared_data_dir() -> Path:
    """Where the public MediQ data lives: ``$MEDIQ_DATA_DIR``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("MEDIQ_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def source_path(source: str, data_dir: str | Path | None = None) -> Path:
    """The cases file of a source: the built-in cases, or a public file under ``data_dir`` (default
    :func:`shared_data_dir`). Whether a public file exists is the caller's question."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    if source == "builtin":
        from mediq_env.cases import builtin_cases_path

        return builtin_cases_path()
    return (Path(data_dir) if data_dir else shared_data_dir()) / str(SOURCES[source])


def fact_hash(fact: str) -> str:
    """Eight hex digits of the SHA-256 of a fact's text as loaded: enough to catch a label gone stale."""
    return hashlib.sha256(fact.encode("utf-8")).hexdigest()[:8]


def split_of(source: str, case_id: str) -> Split:
    """The half a case belongs to, fixed by a hash of its source and id (not by file order)."""
    digest = hashlib.sha256(f"{source}:{case_id}".encode()).digest()
    return "calibration" if digest[0] % 2 == 0 else "test"


def doctor_split(source: str, case_id: str) -> DoctorSplit:
    """Which side of the doctor's split a case is on: ``train`` cases give demonstrations and RL states, ``heldout``
    cases are only ever evaluated (``benchmarks.heldout``).

    Built-in cases (``bi-NNN``): even NNN train, odd held out. Public dev cases (askdocs, medqa): the probe
    set's calibration half trains, its test half is held out — the same halves the patient's relevance head
    was fitted / reported on, so held-out numbers touch neither the doctor's nor the patient's training data.
    """
    if source == "builtin":
        try:
            number = int(case_id.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            raise ConfigError(f"built-in case id {case_id!r} does not end in a number") from None
        return "train" if number % 2 == 0 else "heldout"
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    return "train" if split_of(source, case_id) == "calibration" else "heldout"


@dataclass(frozen=True)
class Probe:
    source: str
    case_id: str
    kind: str
    question: str
    answers: tuple[int, ...]
    attack: str | None = None
    line: int = 0

    @property
    def split(self) -> Split:
        return split_of(self.source, self.case_id)

    @property
    def answerable(self) -> bool:
        return self.kind != "adversarial" and bool(self.answers)


@cache
def load_probe_cases(source: str, data_dir: str | None = None) -> dict[str, Case]:
    """The cases a source's probes refer to, by id (public sources need the data directory)."""
    if source == "builtin":
        return {c.id: c for c in builtin_cases()}
    return {c.id: c for c in load_cases(source_path(source, data_dir), strict=False)}


def _fail(path: Path, line: int, fld: str, msg: str) -> CaseFormatError:
    return CaseFormatError(str(path), line, fld, msg)


def _parse(path: Path, line: int, raw: str, cases: dict[str, Case]) -> Probe:
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _fail(path, line, "record", f"not JSON: {exc.msg}") from None
    if not isinstance(rec, dict):
        raise _fail(path, line, "record", "expected a JSON object")
    source = rec.get("source")
    if source not in SOURCES:
        raise _fail(path, line, "source", f"expected one of {sorted(SOURCES)}, got {source!r}")
    case_id = str(rec.get("case_id", ""))
    case = cases.get(case_id)
    if case is None:
        raise _fail(path, line, "case_id", f"no case {case_id!r} in source {source}")
    kind = rec.get("kind")
    if kind not in KINDS:
        raise _fail(path, line, "kind", f"expected one of {KINDS}, got {kind!r}")
    attack = rec.get("attack")
    if (kind == "adversarial") != (attack is not None):
        raise _fail(path, line, "attack", "adversarial probes need an attack, other kinds must not have one")
    if attack is not None and attack not in ATTACKS:
        raise _fail(path, line, "attack", f"expected one of {ATTACKS}, got {attack!r}")
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _fail(path, line, "question", "must be a non-empty string")
    answers = rec.get("answers")
    if not isinstance(answers, list):
        raise _fail(path, line, "answers", "must be a list of [fact index, fact hash] pairs")
    indices: list[int] = []
    for pair in answers:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int) and isinstance(pair[1], str)):
            raise _fail(path, line, "answers", f"bad entry {pair!r}: expected [index, hash]")
        i, h = pair
        if not 0 <= i < len(case.facts):
            raise _fail(path, line, "answers", f"fact index {i} out of range (case {case_id} has {len(case.facts)} facts)")
        if fact_hash(case.facts[i]) != h:
            raise _fail(path, line, "answers", f"fact {i} of case {case_id} has hash {fact_hash(case.facts[i])}, label says {h}: stale label")
        indices.append(i)
    if len(set(indices)) != len(indices):
        raise _fail(path, line, "answers", "a fact is listed twice")
    if kind in ("unanswerable", "adversarial") and indices:
        raise _fail(path, line, "answers", f"{kind} probes must have no answering facts")
    if kind == "targeted" and not indices:
        raise _fail(path, line, "answers", "targeted probes need at least one answering fact")
    return Probe(source, case_id, kind, question, tuple(sorted(indices)), attack, line)


def load_probes(
    sources: Iterable[str] = tuple(SOURCES), *, data_dir: str | None = None, split: Split | None = None
) -> list[Probe]:
    """Every probe of the given sources (public sources are skipped when their data is absent)."""
    out: list[Probe] = []
    for source in sources:
        path = PROBE_DIR / f"{source}.jsonl"
        if not path.exists():
            continue
        if source != "builtin" and not source_path(source, data_dir).exists():
            continue
        cases = load_probe_cases(source, data_dir)
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if raw.strip():
                probe = _parse(path, n, raw, cases)
                if probe.source != source:
                    raise _fail(path, n, "source", f"file is for {source}, record says {probe.source}")
                if split is None or probe.split == split:
                    out.append(probe)
    return out


def _load_files(paths: Sequence[Path]) -> list[Probe]:
    out: list[Probe] = []
    for path in paths:
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if raw.strip():
                try:
                    source = json.loads(raw).get("source")
                except (json.JSONDecodeError, AttributeError):
                    source = None
                if source not in SOURCES:
                    raise _fail(path, n, "source", f"expected one of {sorted(SOURCES)}, got {source!r}")
                out.append(_parse(path, n, raw, load_probe_cases(source)))
    return out


def _show(source: str, case_ids: Sequence[str]) -> None:
    cases = load_probe_cases(source)
    for cid in case_ids:
        case = cases[cid]
        print(f"=== {source} {cid} ({split_of(source, cid)})")
        print(f"OPENING: {case.initial_info}")
        print(f"QUESTION: {case.question}")
        for letter, text in case.options.items():
            print(f"  {letter}. {text}")
        print("FACTS:")
        for i, fact in enumerate(case.facts):
            print(f"  [{i}, \"{fact_hash(fact)}\"] {fact}")


def _second_labels() -> list[tuple[Probe, tuple[int, ...]]]:
    from benchmarks.probe_agreement import load_second_labels  # it imports this module

    return load_second_labels()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="print a case as a labeller sees it")
    show.add_argument("source", choices=sorted(SOURCES))
    show.add_argument("case_ids", nargs="+")
    check = sub.add_parser("check", help="validate every probe file (or the files given)")
    check.add_argument("files", nargs="*", type=Path)
    sub.add_parser("stats", help="counts per source, kind and split")
    args = parser.parse_args(argv)
    if args.cmd == "show":
        _show(args.source, args.case_ids)
        return 0
    every_file = not getattr(args, "files", None)
    try:
        probes = load_probes() if every_file else _load_files(args.files)
        # Checking every file covers the second labeller's labels too (benchmarks.probe_agreement).
        second = len(_second_labels()) if args.cmd == "check" and every_file else 0
    except CaseFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.cmd == "check":
        print(f"ok: {len(probes)} probes" + (f", {second} second labels" if second else ""))
        return 0
    counts = Counter((p.source, p.split, p.kind) for p in probes)
    for key in sorted(counts):
        print(*key, counts[key], sep="\t")
    by_source = Counter(p.source for p in probes)
    cases = Counter((p.source, p.case_id) for p in probes)
    print("total", len(probes), "probes over", len(cases), "cases", dict(by_source), sep=" ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
