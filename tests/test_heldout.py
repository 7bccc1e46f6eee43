"""benchmarks.heldout: named agents, run folders, and paired comparisons of each agent with the one before."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import heldout
from benchmarks.metrics import facts_and_questions, paired_ratio_diff


def test_agent_name_forms() -> None:
    assert heldout.agent_name("smollm2") == ("smollm2", "smollm2")
    assert heldout.agent_name("sft=llm:hf:runs/x/model") == ("sft", "llm:hf:runs/x/model")
    assert heldout.agent_name("llm:hf:runs/x/policy") == ("llm_hf_runs_x_policy", "llm:hf:runs/x/policy")
    assert heldout.agent_name("llm:hf:a+decisions=hf:b") == ("llm_hf_a_decisions_hf_b", "llm:hf:a+decisions=hf:b")
    assert heldout.agent_name("mix=llm:hf:a+decisions=hf:b") == ("mix", "llm:hf:a+decisions=hf:b")


def test_a_decisions_spec_runs_with_a_separate_decision_model(tmp_path: Path) -> None:
    heldout.run_heldout(agents=["mix=llm:scripted+decisions=scripted"], sources=["builtin"], limit=1, runs_dir=tmp_path,
                        max_questions=1)
    config = json.loads((tmp_path / "mix-builtin" / "manifest.json").read_text())["config"]
    assert (config["agent"], config["decision_model"]) == ("llm:scripted", "scripted")


def test_three_agents_are_compared_pairwise_in_order(tmp_path: Path) -> None:
    result = heldout.run_heldout(agents=["now=answer-now", "checklist", "rand=random:1"], sources=["builtin"], limit=4,
                                 runs_dir=tmp_path, max_questions=3)
    assert [(c["base"], c["tuned"]) for c in result["comparisons"]] == [("now", "checklist"), ("checklist", "rand")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases", "checklist-builtin", "now-builtin", "rand-builtin"]
    # The facts-per-question difference is the pooled ratio of the two runs' own episodes, paired by case.
    eps = {n: {e["case_id"]: e for e in map(json.loads, (tmp_path / f"{n}-builtin" / "episodes.jsonl").read_text().splitlines())}
           for n in ("checklist", "rand")}
    keys = sorted(eps["checklist"])
    expected = paired_ratio_diff([facts_and_questions(eps["checklist"][k]) for k in keys], [facts_and_questions(eps["rand"][k]) for k in keys])
    got = result["comparisons"][1]["facts_per_question_diff"]
    assert got["mean"] == expected["mean"] and got["pairs"] == 4
    # answer-now asks nothing: no ratio, so no interval, and the table says so rather than inventing one.
    assert result["comparisons"][0]["facts_per_question_diff"]["mean"] is None
    md = heldout.to_markdown({**result, "stem": "x"})
    assert "`rand` = `random:1`" in md and "`rand` − `checklist` over the same 4 episodes" in md
    assert "facts revealed per question —" in md and "--stem x" in md
    assert f"--runs-dir {tmp_path}" in md  # the reproduce line finds the same runs to resume
    # Against the first instead: both variants paired with the reference; finished runs are only re-read.
    first = heldout.run_heldout(agents=["now=answer-now", "checklist", "rand=random:1"], sources=["builtin"], limit=4,
                                runs_dir=tmp_path, max_questions=3, compare_with="first")
    assert [(c["base"], c["tuned"]) for c in first["comparisons"]] == [("now", "checklist"), ("now", "rand")]
    assert first["seconds"] == {} and "--compare-with first" in heldout.to_markdown(first)


def test_repeats_count_word_for_word_restatements_within_an_episode_only() -> None:
    def ep(*questions: str) -> dict[str, object]:
        return {"turns": [{"action_type": "question", "action": q} for q in questions] + [{"action_type": "answer", "action": {"answer": "A"}}]}

    episodes = [ep("What was your blood pressure?", "what was your  blood pressure", {"question": "Any fever?"}),  # type: ignore[arg-type]
                ep("What was your blood pressure?", "Any fever today?")]
    r = heldout.repeats(episodes)
    # One repeat in five questions: the same question in another episode is not a repeat.
    assert r == {"mean": 0.2, "questions": 5, "distinct": 3}
    assert heldout.repeats([ep()]) == {"mean": None, "questions": 0, "distinct": 0}


def test_gate_share_counts_form_failures_and_questions_the_patient_turned_away() -> None:
    from mediq_env.question_gate import ASK_ONE_QUESTION

    options = {"c1": {"A": "Asthma", "B": "Pneumonia"}}
    turns = [
        {"action_type": "question", "action": "How long have you had the cough?", "reply": "Three weeks."},
        {"action_type": "question", "action": "cough fever sputum smoking", "reply": ASK_ONE_QUESTION},  # the form gate's
        # Passes the form gate; the faithful patient turned it away as a guess at an option by meaning.
        {"action_type": "question", "action": "Could this be a chest infection?", "reply": ASK_ONE_QUESTION},
        {"action_type": "answer", "action": {"answer": "A"}},
    ]
    r = heldout.gate_pass([{"case_id": "c1", "turns": turns}], options)
    assert r["questions"] == 3 and abs(r["mean"] - 1 / 3) < 1e-9


def test_seed_sets_the_episodes_and_is_in_the_reproduce_line(tmp_path: Path) -> None:
    """Another seed replicates a comparison on other draws: the runs record it and their episodes differ."""
    runs = {}
    for seed in (0, 1):
        result = heldout.run_heldout(agents=["rand=random:1"], sources=["builtin"], limit=3, runs_dir=tmp_path / str(seed),
                                     max_questions=2, seed=seed)
        manifest = json.loads((tmp_path / str(seed) / "rand-builtin" / "manifest.json").read_text())
        assert manifest["config"]["seed"] == seed and result["seed"] == seed
        runs[seed] = [json.loads(line)["seed"] for line in (tmp_path / str(seed) / "rand-builtin" / "episodes.jsonl").read_text().splitlines()]
        md = heldout.to_markdown({**result, "stem": "x"})
        assert (f"--seed {seed}" in md) == (seed != 0) and f"seed {seed}." in md
    assert runs[0] != runs[1]
