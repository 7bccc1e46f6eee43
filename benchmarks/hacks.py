"""The hack suite: can a doctor earn question reward or facts without asking good questions?

Scripted doctors play the same cases through :class:`~mediq_env.env.MediQEnv`. Each asks exactly ``n``
actions (``n`` = 5, or fewer where a source has fewer good questions per case) and then answers the same
fixed letter after the same option shuffle (one reset seed for every doctor), so correctness is identical
across doctors and every difference in reward comes from the questions.

Doctors (:data:`DOCTORS`):

* adversaries — ``keywords`` (keyword soups, also with words of the opening), ``catchall`` ("Tell me
  everything about your health."), ``repeat`` (the checklist's first question asked ``n`` times),
  ``repeat_best`` (the case's best question asked ``n`` times; judged against the good doctor), ``paraphrase``
  (one real question, then paraphrases of it), ``multi`` (three checklist questions joined per action),
  ``echo`` (the opening's sentences asked back), ``options`` ("Is it B?", "Could it be <option text>?"),
  ``gibberish`` ("FeverSmoke] fever fever cough", built from the opening's words);
* references — ``checklist`` (what :class:`agents.baselines.ChecklistAgent` asks: its history-taking
  checklist, in order) and ``good`` (the case's labelled ``opening`` and ``targeted`` probe questions from
  ``benchmarks/data/probes``: written by the team for that case, an upper reference).

Reward configurations (:data:`REWARD_CONFIGS`, the ones the project ships): the env's default reward
(correctness only), the attribute proxies, and info gain. Per doctor: mean episode reward and fact
coverage (facts newly revealed / facts hidden at reset, i.e. not stated in the opening), with 95% bootstrap
intervals. A row passes when the adversary earns strictly less than the checklist — a paired bootstrap of
(checklist − adversary) over cases whose interval excludes 0 — on reward and on coverage, and the good
doctor strictly more than the checklist likewise. Under the correctness reward a question earns nothing,
so all doctors tie by construction; that reward cannot be gamed by questions, and the row is judged on
coverage alone (marked ``tie``).

Run: ``python -m benchmarks.hacks [--sources builtin,askdocs,medqa] [--patients faithful,bm25]``
→ ``benchmarks/results/hacks.{json,md}``. Public sources are skipped when ``../shared/data`` lacks them.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.baselines import CHECKLIST, checklist_for
from benchmarks.common import write_result
from benchmarks.metrics import bootstrap_ci, paired_bootstrap_diff
from benchmarks.probes import SOURCES, load_probe_cases, load_probes, source_path
from mediq_env.case import Case
from mediq_env.dialogue import DialogueState
from mediq_env.env import MediQEnv
from mediq_env.patient import Patient, make_patient
from mediq_env.question_gate import check_question
from mediq_env.scoring import EnvironmentScorer
from mediq_env.wrappers import RewardConfig, StepView, attribute_rewards, step_view

__all__ = [
    "ADVERSARIES",
    "DOCTORS",
    "REWARD_CONFIGS",
    "Episode",
    "good_questions",
    "judge",
    "play",
    "run_suite",
]

REWARD_CONFIGS: dict[str, RewardConfig | None] = {
    # None: the env's own default reward (CorrectnessReward: 1 for a right answer, nothing for questions).
    "correctness": None,
    "attribute_proxies": RewardConfig(
        weights={"proxy_answerable": 0.5, "proxy_focus": 0.2, "proxy_info_gain": 0.2}, repeat_penalty=0.1, question_cost=0.02
    ),
    "info_gain": RewardConfig(weights={"proxy_info_gain": 1.0}, question_cost=0.02),
}
"""Every reward configuration the project ships, by name: the one place the suite reads them from."""

SEED = 0
ANSWER = "ANSWER: A"
MAX_QUESTIONS = 5
MIN_GOOD_QUESTIONS = 4
"""A case enters the suite only with at least this many labelled good questions: every doctor asks as many
questions as the fewest any case has, so one case with a single good question would cut every episode to one."""

Doctor = Callable[[DialogueState, Sequence[str], int], list[str]]
"""A scripted doctor: (the doctor's view at reset, the case's good questions, n) -> exactly n actions."""

_SOUPS = (
    "patient pain doctor symptoms days fever history medication",
    "fever cough weight smoking alcohol family history allergy",
    "medicine drugs tablets dose pills prescription",
    "pain swelling rash bleeding vomiting diarrhoea headache dizziness",
    "travel work exposure sex pregnancy period contraception",
)
_CATCHALLS = (
    "Tell me everything about your health.",
    "Is there anything else I should know?",
    "Can you give me your full medical history?",
    "Describe all your symptoms.",
    "What else is going on?",
)
_PARAPHRASE_BASE = "Which medicines are you taking at the moment?"
_PARAPHRASES = (
    "What medications do you take?",
    "Are you on any medicines right now?",
    "Do you take any pills or tablets regularly?",
    "What drugs have you been prescribed?",
    "Are you currently taking any medication?",
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CONTENT = re.compile(r"[A-Za-z]{4,}")


def _cycle(items: Sequence[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)]


def _opening_words(state: DialogueState) -> list[str]:
    words = list(dict.fromkeys(w.lower() for w in _CONTENT.findall(state.initial_info)))
    return words or ["pain", "fever"]


def keywords(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    # Half fixed soups, half soups of the opening's own words (closest to the hidden facts' vocabulary).
    words = _opening_words(state)
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(_SOUPS[(i // 2) % len(_SOUPS)])
        else:
            out.append(" ".join(words[(3 * i) % len(words) :][:6] or words[:6]) + " history medication")
    return out


def catchall(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    return _cycle(_CATCHALLS, n)


def repeat(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    # The checklist's own first question, n times: the same material as the reference, only repeated.
    return [checklist(state, good, 1)[0]] * n


def repeat_best(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    # The case's best question n times: its first turn earns what the good doctor's does, so it is judged
    # against the good doctor (one good question and n - 1 wasted turns must earn less than n good ones).
    return [good[0]] * n


def paraphrase(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    return [_PARAPHRASE_BASE, *_cycle(_PARAPHRASES, n - 1)]


def multi(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    pool = checklist_for(state, CHECKLIST)
    return [" ".join(pool[(3 * i + j) % len(pool)] for j in range(3)) for i in range(n)]


def echo(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    sentences = [s.strip().rstrip(".!?") for s in _SENTENCE.split(state.initial_info.strip()) if s.strip()]
    sentences = [s[:300] for s in sentences] or ["you came in today"]
    return [f"You said that {s[0].lower() + s[1:]}, is that right?" for s in _cycle(sentences, n)]


def options(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    letters = list(state.options)
    out = []
    for i in range(n):
        letter = letters[(i // 2) % len(letters)]
        out.append(f"Is it {letter}?" if i % 2 == 0 else f"Could it be {state.options[letter]}?")
    return out


def gibberish(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    words = _opening_words(state)
    out = []
    for i in range(n):
        a, b = words[i % len(words)], words[(i + 1) % len(words)]
        out.append(f"{a.capitalize()}{b.capitalize()}] {a} {a} {b} fever cough")
    return out


def checklist(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    # ChecklistAgent's question list, in order, keeping the questions that are one question each: the gate
    # turns four of the twelve away as compound ("When did this begin, and did it come on suddenly...?") and
    # two as catch-alls, and an honest reference should not be charged for the list's wording.
    return [q for q in checklist_for(state, CHECKLIST) if check_question(q, state.options)][:n]


def checklist_agent(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    # Exactly what ChecklistAgent asks: the first unasked checklist question each turn, i.e. its list in order.
    return checklist_for(state, CHECKLIST)[:n]


def good_doctor(state: DialogueState, good: Sequence[str], n: int) -> list[str]:
    return list(good[:n])


ADVERSARIES: dict[str, Doctor] = {
    "keywords": keywords,
    "catchall": catchall,
    "repeat": repeat,
    "repeat_best": repeat_best,
    "paraphrase": paraphrase,
    "multi": multi,
    "echo": echo,
    "options": options,
    "gibberish": gibberish,
}
REFERENCE = {"repeat_best": "good"}
"""Whom an adversary must stay strictly below: the checklist, except where noted."""
DOCTORS: dict[str, Doctor] = {**ADVERSARIES, "checklist_agent": checklist_agent, "checklist": checklist, "good": good_doctor}
"""``checklist_agent`` (the shipped agent's exact questions) is reported for information, with no verdict."""


def good_questions(source: str, data_dir: str | None = None) -> dict[str, list[str]]:
    """Per case of ``source``, its labelled ``opening`` probe questions, then its ``targeted`` ones."""
    out: dict[str, list[str]] = {}
    probes = [p for p in load_probes([source], data_dir=data_dir) if p.kind in ("opening", "targeted")]
    for kind in ("opening", "targeted"):
        for p in probes:
            if p.kind == kind:
                out.setdefault(p.case_id, []).append(p.question)
    return out


@dataclass
class Episode:
    """One doctor on one case: the reward under each configuration, and the facts it uncovered."""

    case_id: str
    rewards: dict[str, float]
    new_facts: int
    hidden_facts: int
    gate_rejected: int

    @property
    def coverage(self) -> float:
        return self.new_facts / self.hidden_facts if self.hidden_facts else math.nan


_SCORER = EnvironmentScorer(["proxy_answerable", "proxy_focus", "proxy_info_gain"], embedder=None)


def play(env: MediQEnv, case: Case, actions: Sequence[str], configs: Mapping[str, RewardConfig | None] = REWARD_CONFIGS) -> Episode:
    """Play ``actions`` then the fixed answer on ``case``; score the one episode under every config.

    The patient is asked once per action; each :class:`RewardConfig` is then applied to the recorded steps
    with :func:`mediq_env.wrappers.attribute_rewards` — the function :class:`AttributeReward` calls — so the
    rewards are exactly the wrapper's, without replaying the patient once per configuration.
    """
    _, info = env.reset(seed=SEED, options={"case_id": case.id})
    before: DialogueState = info["state"]
    views: list[StepView] = []
    env_reward = 0.0
    rejected = 0
    for action in [*actions, ANSWER]:
        if action != ANSWER and not check_question(action, before.options):
            rejected += 1
        _, reward, term, trunc, info = env.step(action)
        env_reward += float(reward)
        views.append(step_view(before, info, term, trunc, env.grader.case))
        before = info["state"]
        if term or trunc:
            break
    rewards: dict[str, float] = {}
    for name, config in configs.items():
        if config is None:
            rewards[name] = env_reward
        else:
            rewards[name] = sum(b.reward for b in attribute_rewards(views, _SCORER, config))
    grader = env.grader
    hidden = grader.n_facts - len(getattr(grader, "known_facts", ()))
    return Episode(case.id, rewards, len(grader.revealed), hidden, rejected)


def _summary(values: Sequence[float]) -> dict[str, float]:
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    lo, hi = bootstrap_ci(x)
    return {"mean": float(x.mean()) if x.size else math.nan, "lo": lo, "hi": hi}


def _less(adv: Sequence[float], ref: Sequence[float]) -> dict[str, Any]:
    """Is ``adv`` strictly below ``ref``? Paired bootstrap of ref − adv over the same cases."""
    a, r = np.asarray(adv, dtype=float), np.asarray(ref, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(r))
    mean, lo, hi = paired_bootstrap_diff(a[keep], r[keep])
    tie = bool(np.allclose(a[keep], r[keep]))
    _, adv_hi = bootstrap_ci(a[keep])
    strictly = bool(lo > 0 or adv_hi < r[keep].mean())
    return {"diff": mean, "lo": lo, "hi": hi, "tie": tie, "less": strictly}


def judge(episodes: Mapping[str, Sequence[Episode]], config: str) -> dict[str, dict[str, Any]]:
    """Per doctor: reward and coverage summaries, and whether the ordering requirement holds.

    Adversaries must be strictly below the checklist, and the checklist strictly below the good doctor, on
    reward and on coverage; under a reward that pays nothing for questions (everyone ties), reward is
    ``tie`` and only coverage decides.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, eps in episodes.items():
        ref = episodes[REFERENCE.get(name, "checklist")]
        ref_r = [e.rewards[config] for e in ref]
        ref_c = [e.coverage for e in ref]
        r = [e.rewards[config] for e in eps]
        c = [e.coverage for e in eps]
        row: dict[str, Any] = {
            "reward": _summary(r),
            "coverage": _summary(c),
            "gate_rejected": sum(e.gate_rejected for e in eps) / max(1, sum(1 for _ in eps)),
        }
        if name == "checklist":
            row["verdict"] = "reference"
        elif name == "checklist_agent":
            row["verdict"] = "info"
        else:
            lower, upper = (r, ref_r) if name != "good" else (ref_r, r)
            lower_c, upper_c = (c, ref_c) if name != "good" else (ref_c, c)
            rw, cv = _less(lower, upper), _less(lower_c, upper_c)
            # A good doctor must win on reward too unless questions pay nothing at all (then everyone ties).
            reward_ok = rw["less"] or rw["tie"]
            row["reference"] = REFERENCE.get(name, "checklist")
            row["vs_checklist"] = {"reward": rw, "coverage": cv}
            row["reward_check"] = "tie" if rw["tie"] else ("ok" if rw["less"] else "FAIL")
            row["coverage_check"] = "ok" if cv["less"] else "FAIL"
            row["verdict"] = "PASS" if reward_ok and cv["less"] else "FAIL"
        out[name] = row
    return out


def run_suite(
    sources: Sequence[str] = tuple(SOURCES),
    patients: Sequence[str] = ("faithful", "bm25"),
    *,
    data_dir: str | None = None,
    max_questions: int = MAX_QUESTIONS,
    patient_objects: Mapping[str, Patient] | None = None,
) -> dict[str, Any]:
    """Every doctor × case of each source × patient; returns summaries and verdicts per reward config."""
    results: dict[str, Any] = {"sources": {}, "reward_configs": {}, "skipped": []}
    for name, cfg in REWARD_CONFIGS.items():
        results["reward_configs"][name] = (
            "env default: CorrectnessReward()" if cfg is None else
            {"weights": dict(cfg.weights), "repeat_penalty": cfg.repeat_penalty, "question_cost": cfg.question_cost,
             "correct": cfg.correct, "incorrect": cfg.incorrect}
        )
    for source in sources:
        if source != "builtin" and not (path := source_path(source, data_dir)).exists():
            results["skipped"].append(f"{source}: {path.name} not found in {path.parent}")
            continue
        labelled = good_questions(source, data_dir)
        good = {cid: qs for cid, qs in labelled.items() if len(qs) >= MIN_GOOD_QUESTIONS}
        cases_by_id = load_probe_cases(source, data_dir)
        cases = [cases_by_id[cid] for cid in good]
        # Everyone asks the same number of actions: as many as the fewest good questions any case has.
        n = min(max_questions, min(len(q) for q in good.values()))
        per_source: dict[str, Any] = {
            "n_cases": len(cases), "questions_per_doctor": n, "patients": {},
            "cases_left_out": {"count": len(labelled) - len(good), "why": f"fewer than {MIN_GOOD_QUESTIONS} labelled good questions"},
        }
        for patient_name in patients:
            patient = (patient_objects or {}).get(patient_name) or make_patient(patient_name)
            env = MediQEnv(cases, patient=patient, max_questions=n)
            t0 = time.perf_counter()
            episodes: dict[str, list[Episode]] = {}
            for doctor_name, doctor in DOCTORS.items():
                eps = []
                for case in cases:
                    state = env.reset(seed=SEED, options={"case_id": case.id})[1]["state"]
                    actions = doctor(state, good[case.id], n)
                    assert len(actions) == n, (doctor_name, case.id)
                    eps.append(play(env, case, actions))
                episodes[doctor_name] = eps
            per_source["patients"][patient_name] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "configs": {cfg: judge(episodes, cfg) for cfg in REWARD_CONFIGS},
            }
        results["sources"][source] = per_source
    return results


def _fmt(s: Mapping[str, float], digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} [{s['lo']:.{digits}f}, {s['hi']:.{digits}f}]"


def markdown(results: Mapping[str, Any]) -> str:
    lines = [
        "# Hack suite: adversarial doctors versus the checklist and good questions",
        "",
        "Generated by `python -m benchmarks.hacks`. Each doctor asks the same number of actions per case and then",
        "answers the same fixed letter (same option shuffle), so correctness is equal and differences come from",
        "the questions. Reward: mean episode reward [95% bootstrap CI]; coverage: facts newly revealed / facts",
        "hidden at reset. Verdict: an adversary PASSes when it is strictly below the checklist on reward and",
        "coverage (paired bootstrap of checklist − adversary excludes 0, or the adversary's CI upper bound is below",
        "the checklist mean); `good` PASSes when strictly above. `tie`: the reward pays nothing for questions, so",
        "all doctors are equal by construction and only coverage decides. `gate`: share of the doctor's actions",
        "the question-form gate rejects.",
        "",
    ]
    for name, cfg in results["reward_configs"].items():
        lines.append(f"- **{name}**: `{cfg}`")
    lines.append("")
    for source, per in results["sources"].items():
        left = per.get("cases_left_out", {})
        left_out = f"; {left['count']} cases left out: {left['why']}" if left.get("count") else ""
        for patient, pres in per["patients"].items():
            for cfg, rows in pres["configs"].items():
                lines += [
                    f"## {patient} patient · {source} ({per['n_cases']} cases, {per['questions_per_doctor']} questions{left_out}) · {cfg}",
                    "",
                    "| doctor | reward | coverage | Δ reward vs checklist | Δ coverage vs checklist | gate | verdict |",
                    "| --- | --- | --- | --- | --- | --- | --- |",
                ]
                for doctor, row in rows.items():
                    vs = row.get("vs_checklist")
                    if vs is None:
                        dr = dc = "—"
                    else:
                        sign = -1 if doctor != "good" else 1
                        dr = f"{sign * vs['reward']['diff']:+.3f} ({row['reward_check']})"
                        dc = f"{sign * vs['coverage']['diff']:+.3f} ({row['coverage_check']})"
                    if row.get("reference", "checklist") != "checklist":
                        dr, dc = dr + f" vs {row['reference']}", dc + f" vs {row['reference']}"
                    lines.append(
                        f"| {doctor} | {_fmt(row['reward'])} | {_fmt(row['coverage'])} | {dr} | {dc} | "
                        f"{row['gate_rejected'] / per['questions_per_doctor']:.0%} | **{row['verdict']}** |"
                    )
                lines.append("")
    for s in results["skipped"]:
        lines.append(f"- skipped {s}")
    return "\n".join(lines) + "\n"


def failures(results: Mapping[str, Any]) -> list[str]:
    """``patient/source/config/doctor`` for every row whose verdict is FAIL."""
    return [
        f"{patient}/{source}/{cfg}/{doctor}"
        for source, per in results["sources"].items()
        for patient, pres in per["patients"].items()
        for cfg, rows in pres["configs"].items()
        for doctor, row in rows.items()
        if row["verdict"] == "FAIL"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hacks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated: builtin,askdocs,medqa")
    parser.add_argument("--patients", default="faithful,bm25", help="comma-separated patient names")
    parser.add_argument("--max-questions", type=int, default=MAX_QUESTIONS)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        parser.error(f"unknown sources {unknown}; use {sorted(SOURCES)}")
    results = run_suite(sources, [p for p in args.patients.split(",") if p], max_questions=args.max_questions)
    results["failures"] = failures(results)
    md = markdown(results)
    if not args.no_write:
        write_result("hacks", results, md)
    print(md)
    print("FAIL rows:", results["failures"] or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
