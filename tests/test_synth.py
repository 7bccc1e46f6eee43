"""The ALFA-style preference-pair pipeline (training.synth), its SFT data and the ``synth`` command.

Every model here is a ScriptedBackend following a rule, and every record is made up for the test; the one
test that reads the real AskDocs questions skips when ../shared is absent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediq_env.backends.base import Chat
from mediq_env.backends.scripted import ScriptedBackend
from mediq_env.errors import BackendError, CaseFormatError, ConfigError
from training.sft_data import sft_rows
from training.synth import (
    PAIR_KINDS,
    SynthConfig,
    check_rewrite,
    load_questions,
    new_medical_terms,
    new_numbers,
    overall_rows,
    parse_rewrite,
    read_unit_log,
    run_synth,
    split_of,
    synthesize,
)
from training.synth_prompts import asker_chat, rewrite_chat

# ---------------------------------------------------------------------------------------------------
# Made-up records and rule-based models

POSTS = {
    "cough": "I have had a dry cough for two weeks and a mild fever. I am 30 and otherwise healthy.",
    "knee": "My left knee hurts after running, mostly on stairs. No injury that I remember.",
    "rash": "An itchy red rash appeared on my arm three days ago after gardening.",
    "sleep": "I wake up at 4am every night and cannot fall asleep again. This started a month ago.",
}
QUESTIONS = [
    ("q1", "cough", "Do you smoke?"),
    ("q2", "cough", "Have you coughed up any blood?"),
    ("q3", "knee", "Is the knee swollen after you run?"),
    ("q4", "rash", "Does the rash spread or stay in one place?"),
    ("q5", "sleep", "Do you drink coffee in the evening?"),
    ("q6", "sleep", "How is your mood during the day?"),
]


def plain_records() -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    for qid, post, question in QUESTIONS:
        rec: dict[str, Any] = {"id": qid, "post": POSTS[post], "question": question, "post_id": post}
        if qid == "q2":
            rec["history"] = [["Do you smoke?", "No, never."]]
            rec["diagnosis"] = "Viral bronchitis"
        recs.append(rec)
    return recs


def write(path: Path, records: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def questions_file(tmp_path: Path) -> Path:
    return write(tmp_path / "questions.jsonl", plain_records())


_DOCTOR_Q = re.compile(r"^Doctor's question: (.*)$", re.M)


def rewriter(chat: Chat) -> str:
    """Enhanced: a clarifying lead-in (with a label the parser must strip); corrupted: hedging filler."""
    user = chat[-1]["content"]
    m = _DOCTOR_Q.search(user)
    assert m, user
    q = m.group(1)
    if "better on" in user:
        return f'Rewritten question: "To be clear, {q[0].lower()}{q[1:]}"'
    return f"So, um, {q[0].lower()}{q[1:-1]} or whatever?\nThis version is vaguer."


def quality(q: str) -> int:
    return int("To be clear" in q) - int("um," in q)


def _ab(chat: Chat) -> tuple[str, str]:
    user = chat[-1]["content"]
    a = re.search(r"^Question A: (.*)$", user, re.M)
    b = re.search(r"^Question B: (.*)$", user, re.M)
    assert a and b, user
    return a.group(1), b.group(1)


def fair_judge(chat: Chat) -> str:
    a, b = _ab(chat)
    return "A" if quality(a) > quality(b) else "B" if quality(a) < quality(b) else "TIE"


def backends(judge: Any = fair_judge) -> tuple[ScriptedBackend, ScriptedBackend]:
    return ScriptedBackend(rewriter, model_id="rule-gen"), ScriptedBackend(judge, model_id="rule-judge")


def config(tmp_path: Path, input_path: Path, **kw: Any) -> SynthConfig:
    kw.setdefault("attributes", ("clarity", "diagnostic_relevance"))
    kw.setdefault("eval_fraction", 0.5)
    kw.setdefault("batch_size", 4)
    kw.setdefault("save_hf_dataset", False)
    return SynthConfig(input=input_path, out_dir=tmp_path / "out", **kw)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def all_pairs(out: Path, name: str = "pairs") -> list[dict[str, Any]]:
    return read_jsonl(out / name / "train.jsonl") + read_jsonl(out / name / "eval.jsonl")


# ---------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"attributes": ("clarity", "nonsense")}, "unknown attribute"),
        ({"attributes": ()}, "at least one"),
        ({"attributes": ("clarity", "clarity")}, "repeated"),
        ({"pair_kinds": ("better>worse",)}, "pair_kinds"),
        ({"judge_min_win": 0.5}, "judge_min_win"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"corrupt_level": 5}, "corrupt_level"),
        ({"max_token_jaccard": 0.0}, "max_token_jaccard"),
        ({"batch_size": 0}, "batch_size"),
        ({"limit": 0}, "limit"),
        ({"input_format": "csv"}, "input_format"),
    ],
)
def test_config_rejects_bad_values(tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SynthConfig(input=tmp_path / "x.jsonl", out_dir=tmp_path / "out", **kw)


def test_config_defaults_and_derived_settings(tmp_path: Path) -> None:
    cfg = SynthConfig(input=str(tmp_path / "x.jsonl"), out_dir=str(tmp_path / "o"), attributes="clarity, medical_accuracy")
    assert cfg.attributes == ("clarity", "medical_accuracy")
    assert cfg.checked_attributes == ("clarity",)  # general group only by default
    assert cfg.directions == ("enhanced", "corrupted")
    assert SynthConfig(input="x", out_dir="o", pair_kinds=("enhanced>original",)).directions == ("enhanced",)
    settings = cfg.unit_settings()
    assert "batch_size" not in settings and "generator" in settings and settings["prompt_version"]


# ---------------------------------------------------------------------------------------------------
# Input


def test_load_plain_questions(questions_file: Path) -> None:
    qs = load_questions(questions_file)
    assert [q.id for q in qs] == [q[0] for q in QUESTIONS]
    q2 = qs[1]
    assert q2.history == (("Do you smoke?", "No, never."),) and q2.diagnosis == "Viral bronchitis"
    assert q2.post_id == "cough" and qs[0].diagnosis is None
    assert load_questions(questions_file, limit=2)[-1].id == "q2"


def test_plain_post_id_defaults_to_a_hash_of_the_post(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", [
        {"id": 1, "post": "Same post.", "question": "A?"},
        {"id": 2, "post": "  same   POST. ", "question": "B?"},
        {"id": 3, "post": "Other post.", "question": "C?"},
    ])
    a, b, c = load_questions(path)
    assert a.id == "1" and a.post_id == b.post_id != c.post_id


def askdocs_record(**over: Any) -> dict[str, Any]:
    rec = {
        "thread_id": "t_x-0", "id_post": "p1", "qid": "t_x-0-c1-q0", "title": "Sore throat",
        "post": "My throat has hurt for five days.", "question": "Do you have a fever?",
        "patient_answer": "No.", "question_type": "Hypotheses testing", "final_diagnosis": "None",
        # The export stores some list fields as strings.
        "prev_additional_contexts": json.dumps([{"question": "How old are you?", "patient_answer": None}]),
    }
    rec.update(over)
    return rec


def test_load_askdocs_format_with_string_typed_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [askdocs_record(), askdocs_record(qid="q2", final_diagnosis="Strep throat",
                                                                        prev_additional_contexts=[])])
    a, b = load_questions(path)
    assert (a.id, a.post_id, a.title) == ("t_x-0-c1-q0", "p1", "Sore throat")
    assert a.history == (("How old are you?", ""),) and a.diagnosis is None  # "None" is no diagnosis
    assert b.history == () and b.diagnosis == "Strep throat"
    assert "Earlier exchanges:\nDoctor: How old are you?\nPatient: (no answer)" in a.chat()[-1]["content"]


@pytest.mark.parametrize(
    ("lines", "where", "field"),
    [
        ([{"id": "a", "post": "p", "question": "q"}, "{not json"], ":2:", None),
        ([{"id": "a", "question": "q"}], ":1:", "post"),
        ([{"id": "a", "post": "p", "question": "  "}], ":1:", "question"),
        ([{"id": "a", "post": "p", "question": 3}], ":1:", "question"),
        ([{"id": "a", "post": "p", "question": "q", "history": "yesterday"}], ":1:", "history"),
        ([{"id": "a", "post": "p", "question": "q", "history": [["only a question"]]}], ":1:", "history[0]"),
        ([{"id": "a", "post": "p", "question": "q"}, "", {"id": "a", "post": "p", "question": "r"}], ":3:", "id"),
        (["[1, 2]"], ":1:", None),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path: Path, lines: list[Any], where: str, field: str | None) -> None:
    path = write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(CaseFormatError) as exc:
        load_questions(path)
    msg = str(exc.value)
    assert "\n" not in msg and f"{path}{where}" in msg
    if field:
        assert exc.value.field == field and f" {field}: " in msg


def test_bad_askdocs_history_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [askdocs_record(), askdocs_record(qid="q2", prev_additional_contexts=[{"x": 1}])])
    with pytest.raises(CaseFormatError, match=r":2: prev_additional_contexts\[0\]"):
        load_questions(path)


def test_missing_or_empty_input_file(tmp_path: Path) -> None:
    with pytest.raises(CaseFormatError, match="not found"):
        load_questions(tmp_path / "nope.jsonl")
    with pytest.raises(CaseFormatError, match="no records"):
        load_questions(write(tmp_path / "empty.jsonl", [""]))


# ---------------------------------------------------------------------------------------------------
# Parsing generator output


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Do you smoke?", "Do you smoke?"),
        ('"Do you smoke?"', "Do you smoke?"),
        ("“Do you smoke”?", "Do you smoke?"),
        ("Rewritten question: Do you smoke?", "Do you smoke?"),
        ("**Enhanced question:** Do you smoke?", "Do you smoke?"),
        ("Sure! Here is a clearer version:\n\nDo you smoke?", "Do you smoke?"),
        ("Here's the rewritten question: 'Do you smoke?'", "Do you smoke?"),
        ("- Do you smoke cigarettes?", "Do you smoke cigarettes?"),
        ("```\nDo you smoke?\n```", "Do you smoke?"),
        ("Do you smoke?\nThis asks about one thing only.", "Do you smoke?"),
        ("Do you smoke, drink, or use drugs?", "Do you smoke, drink, or use drugs?"),  # several asks on one line
        ("Is the pain at level 4 or worse on most days?", "Is the pain at level 4 or worse on most days?"),
    ],
)
def test_parse_rewrite_accepts_one_question(reply: str, expected: str) -> None:
    assert parse_rewrite(reply, min_chars=5).question == expected


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty"),
        ("   \n  ", "empty"),
        ("Here is the rewritten question:", "empty"),
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("The original question is already clear.", "meta_comment"),
        ("This question scores 5 on clarity.", "meta_comment"),
        ("Clarity: it scores 4", "meta_comment"),
        ("Attribute: Clarity", "echoed_prompt"),
        ("The patient's post:\nMy knee hurts after running.", "echoed_prompt"),
        ("1. Do you smoke?\n2. Do you vape?", "multiple_candidates"),
        ("Why?", "too_short"),
        ("Do you " + "really " * 100 + "smoke?", "too_long"),
    ],
)
def test_parse_rewrite_rejects_with_reason(reply: str, reason: str) -> None:
    parsed = parse_rewrite(reply)
    assert parsed.question is None and parsed.reason == reason


_REASONS = {"empty", "refusal", "echoed_prompt", "meta_comment", "multiple_candidates", "too_short", "too_long"}


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_parse_rewrite_never_fails_and_returns_one_line(text: str) -> None:
    parsed = parse_rewrite(text)
    if parsed.question is None:
        assert parsed.reason in _REASONS
    else:
        assert parsed.reason is None and "\n" not in parsed.question and 8 <= len(parsed.question) <= 500


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_read_unit_log_returns_the_whole_lines_before_any_cut(tmp_path_factory: pytest.TempPathFactory, cut: int) -> None:
    lines = [json.dumps({"key": f"k{i}", "payload": "é" * (i * 7)}) + "\n" for i in range(12)]
    data = "".join(lines).encode("utf-8")
    cut = min(cut, len(data))
    path = tmp_path_factory.mktemp("log") / "units.jsonl"
    path.write_bytes(data[:cut])
    done = read_unit_log(path, repair=True)
    ends = [len("".join(lines[: i + 1]).encode("utf-8")) for i in range(len(lines))]
    whole = sum(end <= cut for end in ends)
    assert list(done) == [f"k{i}" for i in range(whole)]
    assert path.read_bytes() == "".join(lines[:whole]).encode("utf-8")  # the torn tail is cut off


# ---------------------------------------------------------------------------------------------------
# Filters


def test_near_duplicates_are_dropped(tmp_path: Path) -> None:
    cfg = SynthConfig(input="x", out_dir=tmp_path)
    src = "post Do you smoke?"
    assert check_rewrite("Do you smoke?", "do you  smoke?", src, check_content=False, config=cfg)[0] == "identical"
    reason, detail = check_rewrite("Do you smoke?", "Do you smoke ?!", src, check_content=False, config=cfg)
    assert reason == "near_duplicate" and detail["token_jaccard"] == 1.0
    long_q = "Have you noticed whether the pain in your left knee gets worse when you climb the stairs at home?"
    assert check_rewrite(long_q, long_q.replace("home", "work"), long_q, check_content=False, config=cfg)[0] == "near_duplicate"
    assert check_rewrite("Do you smoke?", "Do you smoke cigarettes at all?", src, check_content=False, config=cfg)[0] is None
    assert check_rewrite("Do you smoke?", "The doctor", src, check_content=False, config=cfg)[0] == "not_a_question"
    # An original without a question mark (real clinicians write requests too) imposes no form.
    assert check_rewrite("Tell me your CBC values.", "Please tell me your blood count results.", src + " CBC",
                         check_content=False, config=cfg)[0] is None
    # The threshold is config: a stricter one lets the small edit through.
    loose = SynthConfig(input="x", out_dir=tmp_path, max_token_jaccard=1.0, max_char_ratio=1.0)
    assert check_rewrite(long_q, long_q.replace("home", "work"), long_q, check_content=False, config=loose)[0] is None


def test_a_rewrite_copied_from_the_post_is_dropped(tmp_path: Path) -> None:
    cfg = SynthConfig(input="x", out_dir=tmp_path)
    post = "My wife has a specialist appointment next week and what I read online has me fearing the worst."
    q = "Has he had any recent blood tests?"
    copied = "My wife has a specialist appointment next week and what I read online has me"
    reason, detail = check_rewrite(q, copied, f"{post} {q}", check_content=False, config=cfg)
    assert reason == "copied_context" and detail["context_copy"] == 1.0
    # A rubric line echoed from the generator's prompt is caught the same way (and is not a question).
    rubric = "Immediately clear, specific and phrased in words any patient understands."
    assert check_rewrite(q, rubric, f"{post} {q}", check_content=False, config=cfg)[0] == "not_a_question"
    assert check_rewrite("Has he had blood tests", rubric, post, check_content=False, config=cfg,
                         prompt=f"Scale:\n5: {rubric}")[0] == "copied_context"
    # Quoting a short phrase of the post inside a real question is fine.
    quoting = "Has he had any recent blood tests, given that you are worried it is something serious?"
    assert check_rewrite(q, quoting, f"{post} {q}", check_content=False, config=cfg)[0] is None


def test_content_filter_catches_new_numbers_and_medical_terms(tmp_path: Path) -> None:
    cfg = SynthConfig(input="x", out_dir=tmp_path)
    post = "I have had a cough for two weeks. My bloodwork came back fine."
    q = "Do you smoke?"
    src = f"{post} {q}"
    assert new_numbers("Did it start 2 weeks or 3 weeks ago?", src) == ["3"]
    assert new_medical_terms("Was your CBC normal?", src) == ["cbc"]
    assert new_medical_terms("Do you take ibuprofen or any antibiotics?", src) == ["antibiotics", "ibuprofen"]
    assert new_medical_terms("Did the blood tests show anything about your cough?", src) == []  # blood ← bloodwork
    assert new_medical_terms("Could this be bronchitis?", src) == ["bronchitis"]  # suffix rule
    assert new_medical_terms("Are you OK to answer a quick question?", src) == []  # acronym stop list

    def reason(rewrite: str, check: bool = True) -> str | None:
        return check_rewrite(q, rewrite, src, check_content=check, config=cfg)[0]

    assert reason("Do you smoke, and have you had a chest X-ray?") == "new_medical_terms"
    assert reason("Have you smoked more than 10 cigarettes a day?") == "new_numbers"
    assert reason("Do you smoke cigarettes or anything else, even now and then?") is None
    # Clinical attributes are exempt: changing the medical content is their point.
    assert reason("Do you smoke, and have you had a chest X-ray?", check=False) is None
    relaxed = SynthConfig(input="x", out_dir=tmp_path, max_new_medical_terms=2)
    assert check_rewrite(q, "Do you smoke, and have you had a chest X-ray?", src, check_content=True, config=relaxed)[0] is None


# ---------------------------------------------------------------------------------------------------
# Prompts


def test_prompts_are_built_from_the_attribute_and_thread() -> None:
    from mediq_env.attributes import get_attribute

    attr = get_attribute("focus")
    chat = rewrite_chat(attr, "corrupted", "Do you smoke?", "My post.", [("Age?", "30")], title="Cough")
    user = chat[-1]["content"]
    assert chat[0]["role"] == "system" and attr.definition in user and attr.rubric[2] in user
    assert "worse on focus" in user and "Title: Cough" in user and "Doctor: Age?\nPatient: 30" in user
    dx = rewrite_chat(get_attribute("diagnostic_relevance"), "enhanced", "Q?", "Post.", diagnosis="Gout",
                      keep_medical_content=False)
    assert "Gout" in dx[-1]["content"] and "better on diagnostic relevance" in dx[-1]["content"]
    asker = asker_chat("x" * 50, max_post_chars=10)
    assert [m["role"] for m in asker] == ["system", "user"] and "x" * 10 + " [...]" in asker[1]["content"]


# ---------------------------------------------------------------------------------------------------
# The pipeline


def test_end_to_end_schema_stats_and_one_call_per_stage(tmp_path: Path, questions_file: Path) -> None:
    gen, judge = backends()
    cfg = config(tmp_path, questions_file, save_hf_dataset=True)
    result = synthesize(cfg, generator=gen, judge=judge)
    out = cfg.out_dir
    assert isinstance(out, Path)

    # 12 units in batches of 4: one generator call and one judge call per batch.
    assert len(gen.calls) == 3 and len(judge.calls) == 3
    assert [len(chats) for chats, _ in gen.calls] == [8, 8, 8]  # enhanced + corrupted per unit
    assert [len(chats) for chats, _ in judge.calls] == [24, 24, 24]  # 3 pairs x 2 orders per unit

    rows = all_pairs(out)
    assert len(rows) == 6 * 2 * 3 == result.stats["pairs_kept"]
    expected = {"prompt", "chosen", "rejected", "attribute", "source_attribute", "source_id", "post_id", "pair_kind",
                "uses_diagnosis", "judge_win_rate"}
    for r in rows:
        assert set(r) == expected
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]
        assert [m["role"] for m in r["chosen"]] == ["assistant"] == [m["role"] for m in r["rejected"]]
        assert r["pair_kind"] in PAIR_KINDS and r["judge_win_rate"] == 1.0
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
    by_kind = {r["pair_kind"]: r for r in rows if r["source_id"] == "q1" and r["attribute"] == "clarity"}
    assert by_kind["enhanced>original"]["chosen"][0]["content"] == "To be clear, do you smoke?"  # label/quotes gone
    assert by_kind["enhanced>original"]["rejected"][0]["content"] == "Do you smoke?"
    assert by_kind["original>corrupted"]["rejected"][0]["content"] == "So, um, do you smoke or whatever?"
    # The prompt shows the post and earlier turns, never the question being asked.
    q2 = next(r for r in rows if r["source_id"] == "q2")
    assert "Doctor: Do you smoke?\nPatient: No, never." in q2["prompt"][1]["content"]
    assert "coughed up" not in q2["prompt"][1]["content"]

    stats = json.loads((out / "stats.json").read_text())
    clarity = stats["per_attribute"]["clarity"]
    assert clarity["units"] == 6 and clarity["rewrites"]["enhanced"]["kept"] == 6
    assert clarity["pairs"]["enhanced>corrupted"]["kept"] == 6 and clarity["judge"]["position_consistent_rate"] == 1.0
    assert clarity["lengths"]["enhanced"]["chars_mean"] > clarity["lengths"]["original"]["chars_mean"]
    assert "| clarity | 6 | 6/6 | 6/6 |" in (out / "stats.md").read_text()
    assert stats["run"]["generate_calls"] == 3 and stats["run"]["judge_chats"] == 72

    # The Hugging Face copy has the same rows and explicit features.
    from datasets import load_from_disk

    dd = load_from_disk(str(out / "hf" / "pairs"))
    assert set(dd) == {"train", "eval"} and len(dd["train"]) + len(dd["eval"]) == len(rows)
    assert set(dd["train"].column_names) == expected
    overall = load_from_disk(str(out / "hf" / "pairs_overall"))
    assert set(overall["train"]["attribute"]) == {"overall"}


def test_splits_never_share_a_post(tmp_path: Path) -> None:
    # Many posts with several questions each, so both splits are populated.
    recs = [{"id": f"p{p}-q{k}", "post_id": f"post{p}", "post": f"Post number {p}: my head hurts.", "question": f"Question {k} about it?"}
            for p in range(20) for k in range(3)]
    path = write(tmp_path / "many.jsonl", recs)
    gen, judge = backends()
    cfg = config(tmp_path, path, attributes=("clarity",), eval_fraction=0.3, batch_size=64)
    run_synth(cfg, generator=gen, judge=judge)
    out = Path(cfg.out_dir)
    for name in ("pairs", "pairs_overall", "sft"):
        train = {r["post_id"] for r in read_jsonl(out / name / "train.jsonl")}
        evals = {r["post_id"] for r in read_jsonl(out / name / "eval.jsonl")}
        assert train and evals and not train & evals, name
    # The three outputs agree on which post is where.
    assert {r["post_id"] for r in read_jsonl(out / "sft" / "eval.jsonl")} == {
        r["post_id"] for r in read_jsonl(out / "pairs" / "eval.jsonl")}
    assert all(split_of(r["post_id"], 0.3, 0) == "eval" for r in read_jsonl(out / "pairs" / "eval.jsonl"))


def test_split_of_is_seeded_and_roughly_proportional() -> None:
    ids = [f"post{i}" for i in range(2000)]
    share = sum(split_of(i, 0.2) == "eval" for i in ids) / len(ids)
    assert 0.17 < share < 0.23
    assert [split_of(i, 0.2, 1) for i in ids] != [split_of(i, 0.2, 0) for i in ids]
    assert all(split_of(i, 0.0) == "train" for i in ids)


@pytest.mark.parametrize(
    ("judge", "reason"),
    [
        (lambda chat: "A", "judge_undecided"),  # always the first slot: both orders disagree
        (lambda chat: "TIE", "judge_undecided"),
        (lambda chat: "B" if fair_judge(chat) == "A" else "A", "judge_prefers_rejected"),
        (lambda chat: "I think the first one is nicer", "judge_unparsed"),
    ],
)
def test_the_judge_filters_pairs(tmp_path: Path, questions_file: Path, judge: Any, reason: str) -> None:
    gen, jdg = backends(judge)
    result = synthesize(config(tmp_path, questions_file, attributes=("focus",)), generator=gen, judge=jdg)
    assert result.stats["pairs_kept"] == 0
    for kind in PAIR_KINDS:
        assert result.stats["per_attribute"]["focus"]["pairs"][kind]["dropped"] == {reason: 6}
    assert all_pairs(result.out_dir) == []


def test_position_biased_judge_is_reported(tmp_path: Path, questions_file: Path) -> None:
    gen, jdg = backends(lambda chat: "A")
    stats = synthesize(config(tmp_path, questions_file, attributes=("focus",)), generator=gen, judge=jdg).stats
    judge_stats = stats["per_attribute"]["focus"]["judge"]
    assert judge_stats["first_position_rate_mean"] == 1.0 and judge_stats["position_consistent_rate"] == 0.0


def test_unparseable_and_filtered_rewrites_are_counted(tmp_path: Path, questions_file: Path) -> None:
    def gen_fn(chat: Chat) -> str:
        q = _DOCTOR_Q.search(chat[-1]["content"])
        assert q
        if "better on" in chat[-1]["content"]:
            return q.group(1) if "smoke" in q.group(1) else "I'm sorry, I cannot rewrite medical questions."
        # Corruptions that smuggle in new medical content (the general attribute clarity must keep it).
        return "Um, so, what about your MRI results from 2019?"

    gen = ScriptedBackend(gen_fn, model_id="g")
    result = synthesize(config(tmp_path, questions_file, attributes=("clarity",)), generator=gen,
                        judge=ScriptedBackend(fair_judge, model_id="j"))
    rw = result.stats["per_attribute"]["clarity"]["rewrites"]
    assert rw["enhanced"]["dropped"] == {"refusal": 5, "identical": 1}
    assert rw["corrupted"]["dropped"] == {"new_numbers": 6}
    assert rw["enhanced"]["drop_rate"] == 1.0
    pairs = result.stats["per_attribute"]["clarity"]["pairs"]
    assert pairs["enhanced>original"]["dropped"] == {"enhanced_unusable": 6}
    assert pairs["original>corrupted"]["dropped"] == {"corrupted_unusable": 6}
    units = read_unit_log(result.out_dir / "units.jsonl")
    u = units["q1::clarity"]
    assert u["rewrites"]["enhanced"]["raw"] == "Do you smoke?" and u["rewrites"]["corrupted"]["detail"]["new_numbers"] == ["2019"]


def test_without_verification_every_filtered_pair_is_kept(tmp_path: Path, questions_file: Path) -> None:
    gen = ScriptedBackend(rewriter, model_id="g")
    result = synthesize(config(tmp_path, questions_file, attributes=("clarity",), verify=False), generator=gen)
    rows = all_pairs(result.out_dir)
    assert len(rows) == 18 and all(r["judge_win_rate"] is None for r in rows)
    assert len(gen.calls) == 2  # the generator is not asked to judge


def test_use_diagnosis_conditions_clinical_enhancements_only(tmp_path: Path, questions_file: Path) -> None:
    gen, judge = backends()
    cfg = config(tmp_path, questions_file, attributes=("clarity", "diagnostic_relevance"), use_diagnosis=True, batch_size=64)
    synthesize(cfg, generator=gen, judge=judge)
    chats = gen.calls[0][0]
    with_dx = [c[-1]["content"] for c in chats if "Viral bronchitis" in c[-1]["content"]]
    assert len(with_dx) == 1 and "better on diagnostic relevance" in with_dx[0]
    rows = all_pairs(Path(cfg.out_dir))
    flagged = {(r["source_id"], r["attribute"], r["pair_kind"]) for r in rows if r["uses_diagnosis"]}
    assert flagged == {("q2", "diagnostic_relevance", "enhanced>corrupted"), ("q2", "diagnostic_relevance", "enhanced>original")}


def test_pair_kinds_limit_what_is_generated(tmp_path: Path, questions_file: Path) -> None:
    gen, judge = backends()
    cfg = config(tmp_path, questions_file, attributes=("clarity",), pair_kinds=("original>corrupted",), batch_size=64)
    synthesize(cfg, generator=gen, judge=judge)
    assert all("worse on" in c[-1]["content"] for c in gen.calls[0][0])
    assert {r["pair_kind"] for r in all_pairs(Path(cfg.out_dir))} == {"original>corrupted"}


def test_overall_variant_pools_dedupes_and_drops_contradictions() -> None:
    def row(attr: str, chosen: str, rejected: str) -> dict[str, Any]:
        return {"prompt": [], "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], "attribute": attr, "source_attribute": attr,
                "source_id": "q", "post_id": "p", "pair_kind": "enhanced>original"}

    rows = [row("clarity", "A?", "B?"), row("focus", "A?", "B?"), row("focus", "C?", "D?"), row("answerability", "D?", "C?"),
            row("clarity", "E?", "F?")]
    pooled, contradictory = overall_rows(rows)
    assert contradictory == 2
    assert [(r["chosen"][0]["content"], r["source_attribute"], r["attribute"]) for r in pooled] == [
        ("A?", "clarity", "overall"), ("E?", "clarity", "overall")]


# ---------------------------------------------------------------------------------------------------
# Resume


def test_resume_after_a_crash_mid_run(tmp_path: Path, questions_file: Path) -> None:
    calls = {"n": 0}

    def flaky(chat: Chat) -> str:
        return rewriter(chat)

    class Crashing(ScriptedBackend):
        def generate(self, chats, params):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 2:
                raise BackendError("server went away")
            return super().generate(chats, params)

    cfg = config(tmp_path, questions_file)
    with pytest.raises(BackendError):
        synthesize(cfg, generator=Crashing(flaky, model_id="rule-gen"), judge=ScriptedBackend(fair_judge, model_id="rule-judge"))
    log = Path(cfg.out_dir) / "units.jsonl"
    assert len(read_jsonl(log)) == 4  # the first batch was logged before the crash

    gen, judge = backends()
    result = synthesize(cfg, generator=gen, judge=judge)
    assert sum(len(c) for c, _ in gen.calls) == 2 * 8  # only the 8 missing units were generated
    keys = [u["key"] for u in read_jsonl(log)]
    assert len(keys) == len(set(keys)) == 12
    assert result.stats["run"]["units_resumed"] == 4 and result.stats["pairs_kept"] == 36

    # A third run has nothing to do and produces the same dataset.
    gen3, judge3 = backends()
    again = synthesize(cfg, generator=gen3, judge=judge3)
    assert gen3.calls == [] and judge3.calls == [] and again.stats["pairs_kept"] == 36


def test_resume_cuts_off_a_torn_last_line(tmp_path: Path, questions_file: Path) -> None:
    cfg = config(tmp_path, questions_file)
    gen, judge = backends()
    synthesize(cfg, generator=gen, judge=judge)
    log = Path(cfg.out_dir) / "units.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    full = [json.loads(x)["key"] for x in lines]
    # Simulate a kill in the middle of writing line 6: 5 whole lines and half of the 6th.
    log.write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2], encoding="utf-8")
    assert len(read_unit_log(log)) == 5

    gen2, judge2 = backends()
    result = synthesize(cfg, generator=gen2, judge=judge2)
    assert sum(len(c) for c, _ in gen2.calls) == 2 * 7
    keys = [json.loads(x)["key"] for x in log.read_text(encoding="utf-8").splitlines()]
    assert len(keys) == len(set(keys)) == 12 and set(keys) == set(full)
    assert result.stats["pairs_kept"] == 36 and len(all_pairs(result.out_dir)) == 36


def test_resume_refuses_other_settings_but_allows_scope_changes(tmp_path: Path, questions_file: Path) -> None:
    gen, judge = backends()
    synthesize(config(tmp_path, questions_file, limit=2), generator=gen, judge=judge)
    with pytest.raises(ConfigError, match="max_token_jaccard"):
        synthesize(config(tmp_path, questions_file, max_token_jaccard=0.5), generator=gen, judge=judge)
    with pytest.raises(ConfigError, match="generator_model"):
        synthesize(config(tmp_path, questions_file), generator=ScriptedBackend(rewriter, model_id="other"), judge=judge)
    # A folder whose manifest has no logged units behind it takes new settings.
    fresh = tmp_path / "fresh"
    synthesize(SynthConfig(input=questions_file, out_dir=fresh, limit=1, attributes=("clarity",), verify=False,
                           save_hf_dataset=False, write_sft=False), generator=gen)
    (fresh / "units.jsonl").write_text("")
    synthesize(SynthConfig(input=questions_file, out_dir=fresh, limit=1, attributes=("clarity",), verify=False,
                           max_char_ratio=0.9, save_hf_dataset=False), generator=gen)
    # More questions, another attribute, another batch size: fine, and only new units are generated.
    gen2, judge2 = backends()
    result = synthesize(config(tmp_path, questions_file, attributes=("clarity", "diagnostic_relevance", "focus"), batch_size=7),
                        generator=gen2, judge=judge2)
    assert sum(len(c) for c, _ in gen2.calls) == 2 * (18 - 4)
    assert result.stats["units"] == 18


def test_response_cache_makes_a_rerun_free(tmp_path: Path, questions_file: Path) -> None:
    gen, judge = backends()
    cache = tmp_path / "cache"
    synthesize(config(tmp_path, questions_file, cache_dir=cache), generator=gen, judge=judge)
    n_gen, n_judge = len(gen.calls), len(judge.calls)
    # A fresh output folder (nothing to resume) but the same cache: no request reaches the models.
    cfg2 = SynthConfig(input=questions_file, out_dir=tmp_path / "out2", attributes=("clarity", "diagnostic_relevance"),
                       eval_fraction=0.5, batch_size=4, cache_dir=cache, save_hf_dataset=False)
    result = synthesize(cfg2, generator=gen, judge=judge)
    assert (len(gen.calls), len(judge.calls)) == (n_gen, n_judge)
    assert result.stats["run"]["generator_cache"]["misses"] == 0 and result.stats["pairs_kept"] == 36


# ---------------------------------------------------------------------------------------------------
# SFT data


def test_sft_examples(tmp_path: Path, questions_file: Path) -> None:
    qs = load_questions(questions_file)
    rows = sft_rows([*qs, qs[0]])  # an exact repeat is kept once
    assert len(rows) == 6
    r2 = next(r for r in rows if r["source_id"] == "q2")
    assert r2["completion"] == [{"role": "assistant", "content": "Have you coughed up any blood?"}]
    assert r2["prompt"] == [dict(m) for m in asker_chat(qs[1].post, qs[1].history)]
    assert set(r2) == {"prompt", "completion", "source_id", "post_id"}

    # --sft-only needs no model and writes the SFT dataset alone, with the same prompt as the pairs.
    cfg = config(tmp_path, questions_file, sft_only=True, save_hf_dataset=True)
    result = run_synth(cfg)
    out = Path(cfg.out_dir)
    assert result["pairs"] is None and not (out / "pairs").exists()
    sft = read_jsonl(out / "sft" / "train.jsonl") + read_jsonl(out / "sft" / "eval.jsonl")
    assert sorted(r["source_id"] for r in sft) == [q[0] for q in QUESTIONS]
    from datasets import load_from_disk

    assert set(load_from_disk(str(out / "hf" / "sft"))["train"].column_names) == {"prompt", "completion", "source_id", "post_id"}


# ---------------------------------------------------------------------------------------------------
# The command


def test_cli_synth_and_errors(tmp_path: Path, questions_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    out = tmp_path / "cli"
    code = main(["synth", "--input", str(questions_file), "--out", str(out), "--generator", "scripted", "--judge", "none",
                 "--attributes", "clarity,focus", "--limit", "3", "--no-hf-dataset"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pairs kept:" in printed and "SFT examples" in printed
    stats = json.loads((out / "stats.json").read_text())
    # The scripted backend's canned "I am not sure." is parsed as a question and then kept unverified, since
    # nothing filters it: a reminder that the judge is what catches off-topic rewrites.
    assert stats["attributes"] == ["clarity", "focus"] and stats["questions"] == 3

    bad = write(tmp_path / "bad.jsonl", [{"id": "a", "post": "p", "question": "q"}, {"id": "b", "question": "q"}])
    assert main(["synth", "--input", str(bad), "--out", str(tmp_path / "x"), "--sft-only"]) == 2
    assert f"{bad}:2: post: missing" in capsys.readouterr().err
    assert main(["synth", "--input", str(questions_file), "--out", str(tmp_path / "y")]) == 2
    assert "--generator is required" in capsys.readouterr().err


def test_register_adds_the_synth_command() -> None:
    import argparse

    from training.cli import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--input", "q.jsonl", "--out", "o", "--generator", "smollm2", "--judge", "none",
                              "--pair-kinds", "enhanced>original", "--use-diagnosis", "--judge-min-win", "1",
                              "--generator-option", "batch_size=4", "--generator-option", "device=cpu"])
    cfg = config_from_args(args)
    assert cfg.verify is False and cfg.pair_kinds == ("enhanced>original",) and cfg.use_diagnosis
    assert cfg.generator_options == {"batch_size": 4, "device": "cpu"}
    assert cfg.generator == "smollm2" and cfg.judge_min_win == 1.0


def test_importing_training_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, training.synth, training.sft_data, training.cli, training.synth_prompts; "
            "print(sorted(m for m in ('trl', 'datasets', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# ---------------------------------------------------------------------------------------------------
# Training on the output


@pytest.mark.slow
def test_dpo_trainer_takes_a_step_on_the_produced_dataset(tmp_path: Path, questions_file: Path) -> None:
    pytest.importorskip("trl")
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from mediq_env.backends.tiny import build_tiny_causal_lm

    gen, judge = backends()
    cfg = config(tmp_path, questions_file, attributes=("clarity",), save_hf_dataset=True)
    synthesize(cfg, generator=gen, judge=judge)
    dataset = load_from_disk(str(Path(cfg.out_dir) / "hf" / "pairs"))

    model_dir = build_tiny_causal_lm(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=2,
                     report_to=[], max_length=512, logging_steps=1, save_strategy="no")
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=dataset["train"], processing_class=tok)
    trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed


@pytest.mark.slow
def test_reward_trainer_takes_the_produced_dataset(tmp_path: Path, questions_file: Path) -> None:
    pytest.importorskip("trl")
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from mediq_env.backends.tiny import build_tiny_causal_lm

    gen, judge = backends()
    cfg = config(tmp_path, questions_file, attributes=("focus",), save_hf_dataset=True)
    synthesize(cfg, generator=gen, judge=judge)
    dataset = load_from_disk(str(Path(cfg.out_dir) / "hf" / "pairs"))["train"]

    model_dir = build_tiny_causal_lm(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(output_dir=str(tmp_path / "rm"), use_cpu=True, bf16=False, max_steps=1,
                        per_device_train_batch_size=2, report_to=[], max_length=512, save_strategy="no")
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1


# ---------------------------------------------------------------------------------------------------
# The real AskDocs questions (skipped where ../shared is absent)


@pytest.mark.shared
def test_real_askdocs_questions_load(shared_data: Path) -> None:
    path = shared_data / "askdocs_questions_eval.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    qs = load_questions(path)
    assert len(qs) == len({q.id for q in qs}) > 400
    assert any(q.history for q in qs) and any(q.diagnosis for q in qs)
    assert len({q.post_id for q in qs}) < len(qs)  # several questions per post: the split must group them
    assert sum(q.diagnosis is not None and q.diagnosis.lower() == "none" for q in qs) == 0
