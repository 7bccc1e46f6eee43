"""Team-written demonstration episodes for supervised fine-tuning of the offline doctor (SmolLM2-135M).

Why demonstrations of this shape: out of the box SmolLM2-135M follows none of the agent's output formats, so
nearly every turn of :class:`agents.llm_agent.LLMAgent` ends in a fallback and the benchmark measures the
fallback rules, not the model. Each example here is *exactly* a chat the agent sends at benchmark time
(:func:`agents.prompts.decision_chat` under the ``implicit`` strategy, and :func:`agents.prompts.answer_chat`
for the intermediate / forced answer) with the completion the agent's parsers expect (``ASK: <question>`` or
``ANSWER: <letter>``), so the model learns the protocol on the very prompts it will see.

Where the content comes from:

* **Questions**: the team-written probe questions of ``benchmarks/data/probes`` (kinds ``opening`` and
  ``targeted`` with at least one answering fact; in the style of real clinician questions). Opening
  questions come first (they are what a doctor asks from the opening alone), then targeted ones; a question
  whose facts are all known from the opening or already covered by an earlier demo question is skipped.
  Every question must pass :func:`mediq_env.question_gate.check_question`: the few probes the gate rejects
  (e.g. "Where did the pain begin, and has it shifted?" reads as two questions) are left out, since a
  rejected question would teach the doctor to ask what the patient refuses to answer.
* **Patient replies**: played through :class:`mediq_env.MediQEnv` with the default ``FaithfulPatient`` and
  option shuffling on, so the interview in each prompt is what the real patient says, abstentions included.
* **Answers**: the correct letter in the *shown* (shuffled) lettering, from ``env.grader.case.answer``.

Policy demonstrated: ask until the key information is gathered (2–5 questions, fewer when the budget is
smaller), then answer. With a budget of ``m`` questions and ``k < m`` asked, the answer is a decision
(``ANSWER:`` to the implicit decision prompt); with ``k == m`` the env forces the answer, and the agent's
forced answer is the answer prompt, so that is the example.

Split (:func:`benchmarks.probes.doctor_split`, re-exported here): built-in cases with an even number train, odd ones are held out; for the
public dev sets (askdocs, medqa) the probe set's calibration half trains and its test half is held out.
Only train-split cases produce demonstrations.

    python -m training.demos --out runs/demos/sft.jsonl          # writes the JSONL and prints the counts
    python -m training.demos ship runs/sft-doctor/adapter         # fp16 copy + SHA256SUMS into the package
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.prompts import answer_chat, decision_chat
from benchmarks.probes import SOURCES, DoctorSplit, Probe, doctor_split, load_probe_cases, load_probes
from mediq_env import MediQEnv
from mediq_env.backends.base import Chat
from mediq_env.case import Case
from mediq_env.dialogue import DialogueState
from mediq_env.errors import ConfigError
from mediq_env.patient import Patient, default_patient
from mediq_env.question_gate import check_question

__all__ = [
    "DEFAULT_BUDGETS",
    "DemoEpisode",
    "build_demos",
    "demo_records",
    "doctor_split",
    "main",
    "order_questions",
    "play_demo",
    "sample_records",
    "ship_adapter",
    "split_cases",
    "summarise",
]

#: The question budgets the demos are played under. 3 is the README's main job; 5 is the benchmark default.
#: Both are shown so the model reads "Questions you may still ask: N" rather than memorising one count.
DEFAULT_BUDGETS: tuple[int, ...] = (3, 5)

MIN_QUESTIONS = 2
MAX_QUESTIONS = 5


def order_questions(probes: Sequence[Probe], case: Case) -> list[Probe]:
    """The usable probe questions of one case in the order a doctor would ask them.

    Opening questions first (written from the opening alone, the natural first moves), then targeted ones,
    each group in file order (the labellers wrote them case by case). A question is dropped when every fact
    it answers is already known from the opening or covered by an earlier question: re-asking teaches
    nothing and the prompt tells the model not to. Questions the gate rejects are left out.
    """
    usable = [p for p in probes if p.kind in ("opening", "targeted") and p.answers]
    usable.sort(key=lambda p: (p.kind != "opening", p.line))
    covered = set(case.known_facts)
    out: list[Probe] = []
    for probe in usable:
        if not check_question(probe.question, case.options).ok:
            continue
        if set(probe.answers) <= covered:
            continue
        covered |= set(probe.answers)
        out.append(probe)
    return out


@dataclass
class DemoEpisode:
    """One played demonstration: the questions asked, the patient's replies, the answer, and the examples."""

    source: str
    case_id: str
    seed: int
    max_questions: int
    questions: list[str]
    replies: list[str]
    answer: str
    correct: bool
    new_facts: list[list[int]]
    examples: list[dict[str, Any]] = field(default_factory=list)


def _example(chat: Chat, target: str, *, kind: str, episode: DemoEpisode, turn: int) -> dict[str, Any]:
    return {
        "prompt": [dict(m) for m in chat],
        "completion": [{"role": "assistant", "content": target}],
        "kind": kind,
        "source": episode.source,
        "case_id": episode.case_id,
        "seed": episode.seed,
        "max_questions": episode.max_questions,
        "turn": turn,
    }


def play_demo(
    env: MediQEnv,
    source: str,
    case: Case,
    questions: Sequence[str],
    *,
    seed: int,
    max_questions: int,
    intermediate: bool = True,
) -> DemoEpisode:
    """Play one demonstration in ``env`` (whose cases include ``case``) and build its training examples.

    ``questions`` are asked in order (at most ``max_questions``), then the correct shown letter is answered.
    Examples: one decision example per turn that the agent would decide on (``ASK: q`` while asking, then
    ``ANSWER: X`` if budget is left), the forced answer prompt when the budget is spent, and with
    ``intermediate`` an answer-prompt example on every earlier turn too (the agent asks for an intermediate
    answer every turn; its format must parse there as well).
    """
    env.max_questions = max_questions
    _obs, info = env.reset(seed=seed, options={"case_id": case.id})
    shown = env.grader.case
    letter = shown.answer
    asked = list(questions)[:max_questions]
    episode = DemoEpisode(source, case.id, seed, max_questions, [], [], letter, False, [])
    state: DialogueState = info["state"]
    for turn, question in enumerate(asked):
        verdict = check_question(question, state.options)
        if not verdict.ok:  # order_questions already refused these; guard against a changed gate
            raise ConfigError(f"demo question fails the gate ({verdict.reason}): {question!r}")
        episode.examples.append(_example(decision_chat(state, "implicit"), f"ASK: {question}", kind="ask", episode=episode, turn=turn))
        if intermediate:
            episode.examples.append(_example(answer_chat(state), f"ANSWER: {letter}", kind="intermediate", episode=episode, turn=turn))
        _obs, _reward, terminated, truncated, info = env.step(question)
        if terminated or truncated:
            raise ConfigError(f"demo {source}:{case.id}: the episode ended on a question")
        episode.questions.append(question)
        episode.replies.append(str(info.get("reply", "")))
        episode.new_facts.append(list(info.get("new_facts", [])))
        state = info["state"]
    if state.must_answer or state.questions_left <= 0:
        episode.examples.append(_example(answer_chat(state), f"ANSWER: {letter}", kind="forced", episode=episode, turn=len(asked)))
    else:
        episode.examples.append(_example(decision_chat(state, "implicit"), f"ANSWER: {letter}", kind="answer", episode=episode, turn=len(asked)))
    _obs, _reward, terminated, _truncated, info = env.step(f"ANSWER: {letter}")
    if not terminated:
        raise ConfigError(f"demo {source}:{case.id}: the answer did not end the episode")
    episode.correct = bool(info.get("correct"))
    return episode


def build_demos(
    sources: Iterable[str] = tuple(SOURCES),
    *,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    seed: int = 0,
    data_dir: str | None = None,
    patient: Patient | None = None,
    intermediate: bool = True,
) -> list[DemoEpisode]:
    """Play one demonstration per (train-split case with at least two usable questions, budget).

    The number of questions per episode is drawn from 2–5 (capped by the usable questions) with a generator
    seeded by ``seed``; the env seed of each episode (which fixes the option shuffle) is drawn from the same
    generator, so the whole set is a function of ``seed``. Public sources without their data are skipped.
    """
    rng = np.random.default_rng(seed)
    patient = patient if patient is not None else default_patient()
    episodes: list[DemoEpisode] = []
    for source in sources:
        train_cases, by_case = split_cases(source, "train", data_dir)
        if not train_cases:
            continue
        env = MediQEnv(train_cases, patient=patient, shuffle_options=True)
        for case in train_cases:
            ordered = order_questions(by_case[case.id], case)
            if len(ordered) < MIN_QUESTIONS:
                continue
            for budget in budgets:
                k = int(rng.integers(MIN_QUESTIONS, MAX_QUESTIONS + 1))
                k = min(k, len(ordered), budget)
                env_seed = int(rng.integers(2**31 - 1))
                episodes.append(
                    play_demo(env, source, case, [p.question for p in ordered[:k]], seed=env_seed,
                              max_questions=budget, intermediate=intermediate)
                )
    return episodes


def split_cases(source: str, split: DoctorSplit, data_dir: str | None = None) -> tuple[list[Case], dict[str, list[Probe]]]:
    """The probed cases of one side of :func:`doctor_split` in a stable order, with their probes by case id
    (empty when a public source's data is absent). Demonstrations and RL states are built from ``train``."""
    probes = [p for p in load_probes([source], data_dir=data_dir) if doctor_split(p.source, p.case_id) == split]
    if not probes:
        return [], {}
    cases = load_probe_cases(source, data_dir)
    by_case: dict[str, list[Probe]] = {}
    for p in probes:
        by_case.setdefault(p.case_id, []).append(p)
    return [cases[cid] for cid in sorted(by_case, key=_case_sort_key)], by_case


def _case_sort_key(case_id: str) -> tuple[int, str]:
    # MedQA ids are integers as strings; sort them numerically so the order (and so the seeds) is stable.
    return (int(case_id), "") if case_id.isdigit() else (0, case_id)


def demo_records(episodes: Iterable[DemoEpisode]) -> list[dict[str, Any]]:
    """Every example of every episode, in order (TRL conversational prompt–completion rows + metadata)."""
    return [ex for ep in episodes for ex in ep.examples]


def sample_records(records: Sequence[dict[str, Any]], per_kind: dict[str, int], *, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded subset with at most ``per_kind[kind]`` examples of each kind, kept in their original order.

    Why: on a 2-core CPU a LoRA step costs ~15 s per 350-token example, so the shipped adapter is trained on
    a few hundred examples; this picks them reproducibly while keeping every kind (asking, deciding to
    answer, forced and intermediate answers) represented. Kinds not named are dropped.
    """
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for kind, n in per_kind.items():
        idx = [i for i, r in enumerate(records) if r["kind"] == kind]
        if n < len(idx):
            idx = [int(i) for i in rng.choice(idx, size=n, replace=False)]
        keep.update(idx)
    return [r for i, r in enumerate(records) if i in keep]


def summarise(episodes: Sequence[DemoEpisode]) -> dict[str, Any]:
    """Counts for the recipe: episodes and examples per source, example kinds, questions per episode."""
    records = demo_records(episodes)
    return {
        "episodes": len(episodes),
        "cases": len({(e.source, e.case_id) for e in episodes}),
        "examples": len(records),
        "episodes_by_source": dict(Counter(e.source for e in episodes)),
        "examples_by_kind": dict(Counter(r["kind"] for r in records)),
        "questions_per_episode": dict(sorted(Counter(len(e.questions) for e in episodes).items())),
        "facts_revealed_per_question": round(
            sum(len(f) for e in episodes for f in e.new_facts) / max(1, sum(len(e.questions) for e in episodes)), 3
        ),
        "all_correct": all(e.correct for e in episodes),
    }


def ship_adapter(trained: str | Path, dest: str | Path, *, base_model: str = "SmolLM2-135M-Instruct") -> str:
    """Copy a LoRA adapter saved by ``mediq train sft --keep-adapter`` into ``dest`` as the package ships it:
    the weights as fp16 safetensors (half the size; the update is merged into fp32 weights at load, and fp16
    keeps LoRA's small values to ~3 significant digits), ``adapter_config.json`` with the local base path
    replaced by the model's name (a path on the training machine means nothing elsewhere), and a
    ``SHA256SUMS`` over both that the loader verifies. Returns the weights' sha256. Other files in ``dest``
    (``RECIPE.md``) are kept."""
    import hashlib

    import torch
    from safetensors.torch import load_file, save_file

    src, out = Path(trained), Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    sums = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ("adapter_config.json", "adapter_model.safetensors")}
    (out / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in sums.items()), encoding="utf-8")
    return sums["adapter_model.safetensors"]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["ship"]:
        ship = argparse.ArgumentParser(prog="python -m training.demos ship", description=ship_adapter.__doc__)
        ship.add_argument("trained", help="the adapter directory written by mediq train sft --keep-adapter")
        ship.add_argument("--dest", default=str(Path(__file__).resolve().parents[1] / "mediq_env" / "data" / "adapters" / "smollm2-doctor"))
        a = ship.parse_args(args_list[1:])
        print(f"sha256 {ship_adapter(a.trained, a.dest)}  {a.dest}/adapter_model.safetensors")
        return 0
    argv = args_list
    parser = argparse.ArgumentParser(prog="python -m training.demos", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSONL file to write (one example a line)")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated probe sources")
    parser.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)), help="question budgets to play")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-intermediate", action="store_true", help="leave out the per-turn answer examples")
    parser.add_argument("--sample", help="seeded subset per kind, e.g. ask=120,answer=40,forced=40,intermediate=40")
    parser.add_argument("--data-dir", help="public MediQ data (default: $MEDIQ_DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)
    try:
        budgets = tuple(int(b) for b in args.budgets.split(",") if b.strip())
    except ValueError:
        print(f"error: --budgets must be integers, got {args.budgets!r}", file=sys.stderr)
        return 2
    episodes = build_demos(
        [s.strip() for s in args.sources.split(",") if s.strip()], budgets=budgets, seed=args.seed,
        data_dir=args.data_dir, intermediate=not args.no_intermediate,
    )
    records = demo_records(episodes)
    if args.sample:
        try:
            per_kind = {k.strip(): int(v) for k, v in (part.split("=") for part in args.sample.split(","))}
        except ValueError:
            print(f"error: --sample must look like ask=120,answer=40, got {args.sample!r}", file=sys.stderr)
            return 2
        records = sample_records(records, per_kind, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = summarise(episodes)
    summary["written"] = {"examples": len(records), "by_kind": dict(Counter(r["kind"] for r in records)),
                          "by_source": dict(Counter(r["source"] for r in records))}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
