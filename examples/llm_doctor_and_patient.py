"""A language-model doctor interviewing a language-model patient on built-in cases, transcripts printed.

The doctor is a language model using MediQ's implicit strategy: by default the shipped offline doctor, what
``--agent smollm2`` runs: SmolLM2-135M with the SFT adapter (``mediq_env/data/adapters/smollm2-doctor``)
answering, the rejection-sampling adapter on top of it (``smollm2-doctor-rft``) deciding and asking, and a
question that restates an earlier one redrawn. ``--backend smollm2-sft`` is the SFT doctor alone;
``--backend smollm2-base`` is the untouched model, which follows no output format.
The patient is the faithful default (question-form gate, then a learned decision per fact, abstaining when
none answers) or, with ``--patient llm``, the same language model selecting the facts that answer each
question. All episodes run together: each turn is one batched generation per role.

    python examples/llm_doctor_and_patient.py                      # SmolLM2 doctor, faithful patient
    python examples/llm_doctor_and_patient.py --patient llm        # SmolLM2 plays the patient too
    python examples/llm_doctor_and_patient.py --backend hf:<model> --cases 5 --max-questions 5

SmolLM2-135M is tiny: expect format slips that the agent's documented fallbacks absorb (shown in the
transcript as "fallback: ..."). A 1B-8B instruction model follows the formats.
"""

from __future__ import annotations

import argparse

from agents import LLMAgent, make_agent
from agents.rollout import EpisodeSpec, rollout
from mediq_env import BatchedEnv, Patient, builtin_cases, make_patient
from mediq_env.backends.factory import make_backend
from mediq_env.llm_patient import LLMPatient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="smollm2", help="backend spec (smollm2, hf:<id>, openai:<model>, scripted)")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--max-questions", type=int, default=3)
    parser.add_argument("--patient", choices=["faithful", "llm", "bm25"], default="faithful")
    args = parser.parse_args(argv)

    # "llm:smollm2" loads the doctor adapters; an LLM patient gets the model as distributed (the adapters were
    # trained on doctor prompts only), other backends are shared by both roles.
    agent = make_agent(f"llm:{args.backend}")
    assert isinstance(agent, LLMAgent)
    cases = builtin_cases()[: args.cases]
    patient: Patient
    if args.patient == "llm":
        backend = make_backend(args.backend) if args.backend.strip().lower() == "smollm2" else agent.backend
        patient = LLMPatient(backend, mode="select")
    else:
        patient = make_patient(args.patient)
    envs = BatchedEnv(len(cases), cases, patient=patient, max_questions=args.max_questions)
    records = sorted(rollout(agent, envs, [EpisodeSpec(c.id, seed=i) for i, c in enumerate(cases)]), key=lambda r: r.case_id)
    by_id = {c.id: c for c in cases}
    for rec in records:
        case = by_id[rec.case_id]
        print(f"=== {case.id} ({case.specialty}) — {case.initial_info}")
        print(f"    {case.question}")
        for turn in rec.turns:
            if turn.action_type == "question":
                print(f"  Doctor:  {turn.action['question'] if isinstance(turn.action, dict) else turn.action}")
                print(f"  Patient: {turn.reply}   [facts {turn.revealed}]")
            else:
                print(f"  Doctor answers: {turn.action}")
            if turn.agent.get("fallback"):
                print(f"           (fallback {turn.agent['fallback']}: {turn.agent.get('fallback_detail')})")
        print(f"  -> answer {rec.answer}, correct {rec.correct_answer}: {'right' if rec.correct else 'wrong'}; "
              f"{rec.questions_asked} questions, {rec.n_facts_revealed}/{rec.n_facts} facts revealed{'; ERROR ' + rec.error if rec.error else ''}\n")
    accuracy = sum(r.correct for r in records) / len(records)
    print(f"accuracy {accuracy:.0%} over {len(records)} episodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
