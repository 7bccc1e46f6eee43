"""Question-level PPO (training/question_ppo.py): the shared-prompt log-probabilities are exact, advantages are
group-relative, samples from another policy are refused, and a tiny run moves the policy towards the replies
that found facts, starts at ratio 1 and resumes to the same result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mediq_env.errors import ConfigError
from training.question_ppo import (
    QuestionPPOConfig,
    _load_samples,
    group_advantages,
    reply_logprobs,
    reply_logprobs_batch,
)


def _reply(text: str, reward: float) -> dict[str, Any]:
    asked = text.startswith("ASK")
    return {"text": text, "reward": reward, "new_facts": max(0, round(reward + 0.02)) if asked else 0, "asked": asked,
            "answered": text.startswith("ANSWER"), "invalid": False}


def _write_samples(folder: Path, model: str, temperature: float = 0.7) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model": model, "temperature": temperature, "max_new_tokens": 12, "dtype": "float32"}),
                                        encoding="utf-8")
    records = []
    for i, case in enumerate(["a", "b", "c", "d"]):
        prompt = [{"role": "system", "content": "You interview a patient."},
                  {"role": "user", "content": f"Case {case}: a {30 + i}-year-old with a cough. Ask or answer."}]
        replies = [_reply("ASK: Do you have a fever?", 0.98), _reply("ASK: Tell me more.", -0.02),
                   _reply("ANSWER: A", 0.0), _reply("ASK: How long has the cough lasted?", 1.98 if i % 2 else -0.02)]
        records.append({"key": json.dumps(["builtin", case, 0, 3, "[]"]), "source": "builtin", "case_id": case, "prompt": prompt,
                        "replies": replies})
    # A state whose replies all earned the same has no signal.
    records.append({"key": "flat", "source": "builtin", "case_id": "e", "prompt": records[0]["prompt"],
                    "replies": [_reply("ASK: Any pain?", -0.02), _reply("ASK: Any rash?", -0.02)]})
    path = folder / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + json.dumps({"key": "x", "error": "boom"}) + "\n", encoding="utf-8")
    return path


def test_advantages_are_reward_minus_the_states_mean_and_flat_states_are_left_out() -> None:
    recs = [{"key": "a", "replies": [_reply("ASK: q", 0.98), _reply("ASK: r", -0.02), _reply("ANSWER: B", 0.0)]},
            {"key": "b", "replies": [_reply("ASK: q", -0.02), _reply("ASK: r", -0.02)]}]
    groups, summary = group_advantages(recs)
    assert [g["key"] for g in groups] == ["a"]
    assert groups[0]["advantages"] == pytest.approx([0.98 - 0.32, -0.02 - 0.32, -0.32])
    assert summary["states"] == 2 and summary["states_without_signal"] == 1 and summary["states_used"] == 1
    assert summary["share_asking"] == pytest.approx(4 / 5) and summary["facts_per_question_sampled"] == pytest.approx(1 / 4)


def test_samples_from_another_policy_or_mixed_temperatures_are_refused(tmp_path: Path) -> None:
    path = _write_samples(tmp_path / "s1", model="policy-a")
    records, temperature, max_new = _load_samples(QuestionPPOConfig(model="policy-a", samples=str(path)))
    assert len(records) == 5 and temperature == 0.7 and max_new == 12  # the failed line carries no replies
    with pytest.raises(ConfigError, match=r"s1/config\.json: field 'model' is 'policy-a'.*samples drawn from the policy it updates"):
        _load_samples(QuestionPPOConfig(model="policy-b", samples=str(path)))
    other = _write_samples(tmp_path / "s2", model="policy-a", temperature=1.0)
    with pytest.raises(ConfigError, match="different"):
        _load_samples(QuestionPPOConfig(model="policy-a", samples=f"{path},{other}"))
    # Drawn in bfloat16: the float32 old log-probabilities would not be the sampling distribution's.
    meta = json.loads((tmp_path / "s2" / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "s2" / "config.json").write_text(json.dumps({**meta, "temperature": 0.7, "dtype": "bfloat16"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"s2/config\.json: field 'dtype' is 'bfloat16'"):
        _load_samples(QuestionPPOConfig(model="policy-a", samples=str(other)))
    # Files from before the field: float32 only if they were drawn on a CPU (the sampler used bfloat16 on a GPU).
    old_meta = {k: v for k, v in meta.items() if k != "dtype"}
    (tmp_path / "s2" / "config.json").write_text(json.dumps({**old_meta, "temperature": 0.7, "device": "auto"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"field 'dtype' is None \(device 'auto'\)"):
        _load_samples(QuestionPPOConfig(model="policy-a", samples=str(other)))
    (tmp_path / "s2" / "config.json").write_text(json.dumps({**old_meta, "temperature": 0.7, "device": "cpu"}), encoding="utf-8")
    assert len(_load_samples(QuestionPPOConfig(model="policy-a", samples=str(other)))[0]) == 5
    (tmp_path / "s2" / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"s2/config\.json is missing"):
        _load_samples(QuestionPPOConfig(model="policy-a", samples=str(other)))
    with pytest.raises(ConfigError, match="clip"):
        QuestionPPOConfig(clip=1.5)
    with pytest.raises(ConfigError, match="states_per_step"):
        QuestionPPOConfig(states_per_step=0)


def test_load_policy_puts_the_weights_on_the_device_it_was_asked_for(tiny_dir: Path) -> None:
    """Rejection sampling and question PPO take their device from here; a directory once stayed on the CPU, and
    the first GPU run sampled on the machine's CPU (question_ppo_gpu.md). "meta" stands in for a GPU in CI."""
    from training.ppo import load_policy

    model, _tok = load_policy(str(tiny_dir), "float32", "meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_shared_prompt_logprobs_and_gradients_equal_separate_sequences(tiny_dir: Path, one_torch_thread: None) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from training.ppo import load_policy

    model, _tok = load_policy(str(tiny_dir), "float32", "cpu")
    torch.manual_seed(0)  # LoRA A is drawn from the global generator: the same test whatever ran before it
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a LoRA that changes the prompt's keys and values too
    prompt, replies, temperature = [5, 9, 13, 2, 7, 11], [[3, 4, 8], [6], [12, 10, 3, 5]], 0.7
    logp, mask = reply_logprobs(model, prompt, replies, temperature, pad_id=0)
    assert mask.sum(1).tolist() == [3, 1, 4]
    logp.sum().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0
    for i, r in enumerate(replies):
        logits = model(input_ids=torch.tensor([prompt + r])).logits[0, len(prompt) - 1:-1] / temperature
        alone = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        assert torch.allclose(logp[i, : len(r)], alone, atol=1e-5)
        assert float(logp[i, len(r):].detach().abs().sum()) == 0.0  # padding contributes nothing
        total = total + alone.sum()
    total.backward()
    assert shared and any("lora_A" in n for n in shared)
    for name, grad in shared.items():
        alone_grad = dict(model.named_parameters())[name].grad
        assert torch.allclose(grad, alone_grad, rtol=1e-4, atol=1e-5), (name, float((grad - alone_grad).abs().max()))



def test_batched_states_give_each_states_logprobs_and_gradients(tiny_dir: Path, one_torch_thread: None) -> None:
    """Several states in one left-padded call (the GPU update's batch_states): prompts of different lengths and
    reply counts give what each state gives alone, gradients included."""
    import torch
    from peft import LoraConfig, get_peft_model

    from training.ppo import load_policy

    model, _tok = load_policy(str(tiny_dir), "float32", "cpu")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    items = [([5, 9, 13, 2, 7, 11], [[3, 4, 8], [6], [12, 10, 3, 5]]), ([4, 6], [[9, 9], [2, 3, 4, 5, 6]]),
             ([8, 1, 14, 3], [[7]])]
    model.double()  # float64: what is left of any gap is the method, not the order of float32 sums
    together = reply_logprobs_batch(model, items, 0.7, pad_id=0)
    sum(lp.sum() for lp, _ in together).backward()
    batched = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0
    for (prompt, replies), (lp, mask) in zip(items, together, strict=True):
        alone, alone_mask = reply_logprobs(model, prompt, replies, 0.7, pad_id=0)
        assert lp.shape == alone.shape and torch.equal(mask, alone_mask)
        assert torch.allclose(lp, alone, atol=1e-6), float((lp - alone).abs().max())
        total = total + alone.sum()
    total.backward()
    assert batched and any("lora_A" in n for n in batched)
    for name, grad in batched.items():  # float32 would differ by its rounding (1e-5 of the scale); float64 leaves the method
        alone_grad = dict(model.named_parameters())[name].grad
        gap, scale = float((grad - alone_grad).abs().max()), float(alone_grad.abs().max())
        assert gap <= 1e-9 * scale, (name, gap, scale)


@pytest.mark.slow
def test_tiny_run_moves_towards_replies_that_found_facts_and_resumes_exactly(tiny_dir: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import training.question_ppo as qp
    from training.ppo import load_policy
    from training.rl_common import JsonlLogger

    samples = _write_samples(tmp_path / "samples", model=str(tiny_dir))
    kw: dict[str, Any] = dict(model=str(tiny_dir), samples=str(samples), rescore=False, epochs=3, states_per_step=2,
                              learning_rate=5e-3, save_steps=1, torch_threads=1, device="cpu")
    full = qp.train_question_ppo(QuestionPPOConfig(**kw, output_dir=str(tmp_path / "full")))
    assert full["states_used"] == 4 and full["states_without_signal"] == 1 and full["steps"] == 6
    curve = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [1, 2, 3, 4, 5, 6]
    assert curve[0]["ratio"] == pytest.approx(1.0, abs=1e-6) and curve[0]["kl_ref"] == pytest.approx(0.0, abs=1e-7)
    assert curve[-1]["mean_abs_log_ratio"] > 0

    # The update raises what found facts and lowers what did not: sum of A * (log pi_new - log pi_old) > 0.
    records, temperature, max_new = _load_samples(QuestionPPOConfig(**kw, output_dir=str(tmp_path / "full")))
    groups, _ = group_advantages(records)
    before, tok = load_policy(str(tiny_dir), "float32", "cpu")
    after, _ = load_policy(str(tmp_path / "full" / "policy"), "float32", "cpu")
    eos = int(tok.eos_token_id)
    gain = 0.0
    with torch.no_grad():
        for g in groups:
            p, rs = qp._tokenize(tok, g, eos, max_new)
            old = reply_logprobs(before, p, rs, temperature, eos)[0].sum(1)
            new = reply_logprobs(after, p, rs, temperature, eos)[0].sum(1)
            gain += float((torch.tensor(g["advantages"]) * (new - old)).sum())
    assert gain > 0
    # The same, as the shift report reads it: the best reply of each state gained more than the others.
    (shift,) = qp.policy_shift(str(tiny_dir), [str(tmp_path / "full" / "policy")], str(samples))
    assert shift["states"] == 4 and shift["advantage_weighted_dlogp"] > 0
    assert shift["best_reply_dlogp"] > shift["other_replies_dlogp"]
    assert shift["best_is_most_likely_after"] >= shift["best_is_most_likely_before"]

    # A crash after step 3 (its checkpoint not yet written): the same command resumes at step 2's checkpoint
    # and ends with the uninterrupted run's adapter and a curve with one line per step.
    real_log = JsonlLogger.log
    calls = {"n": 0}

    def crash(self: Any, record: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        real_log(self, record)

    monkeypatch.setattr(JsonlLogger, "log", crash)
    with pytest.raises(RuntimeError, match="killed"):
        qp.train_question_ppo(QuestionPPOConfig(**kw, output_dir=str(tmp_path / "cut")))
    monkeypatch.setattr(JsonlLogger, "log", real_log)
    assert torch.load(tmp_path / "cut" / "checkpoint" / "state.pt", weights_only=True)["step"] == 2
    with pytest.raises(ConfigError, match=r"state\.pt: field 'learning_rate' was 0\.005 .* now 0\.001"):
        qp.train_question_ppo(QuestionPPOConfig(**{**kw, "learning_rate": 1e-3}, output_dir=str(tmp_path / "cut")))
    # Samples that changed under the same path (their sampling resumed and added a state) make another schedule.
    original = samples.read_text()
    grown = json.loads(original.splitlines()[0])
    grown["key"] = "one more state"
    samples.write_text(original + json.dumps(grown) + "\n")
    with pytest.raises(ConfigError, match=r"state\.pt: field 'samples_digest' was"):
        qp.train_question_ppo(QuestionPPOConfig(**kw, output_dir=str(tmp_path / "cut")))
    samples.write_text(original)
    # The clock goes on from the checkpoint: say the first call spent 1,000 s on its two steps.
    metrics = tmp_path / "cut" / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    lines[-1]["seconds"] = 1000.0
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    resumed = qp.train_question_ppo(QuestionPPOConfig(**kw, output_dir=str(tmp_path / "cut")))
    cut_curve = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [c["step"] for c in cut_curve] == [1, 2, 3, 4, 5, 6]
    assert cut_curve[2]["seconds"] >= 1000.0 and resumed["train_seconds"] >= 1000.0
    assert cut_curve[-1]["loss"] == pytest.approx(curve[-1]["loss"], abs=1e-6)
    a = load_policy(str(tmp_path / "cut" / "policy"), "float32", "cpu")[0].state_dict()
    b = after.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in b)

    # The step's states in one batched call: the same curve and policy up to float32 rounding (summed in another
    # order, then carried through six Adam steps).
    batched = qp.train_question_ppo(QuestionPPOConfig(**kw, batch_states=True, output_dir=str(tmp_path / "batched")))
    assert batched["steps"] == 6
    b_curve = [json.loads(line) for line in (tmp_path / "batched" / "metrics.jsonl").read_text().splitlines()]
    assert b_curve[0]["ratio"] == pytest.approx(1.0, abs=1e-6)
    # rel 1e-4 held in earlier CI runs. A fresh install on 2026-11-27 (transformers 5.24.0, torch 2.13.0) differs
    # by up to 6e-4 after six Adam steps, on the commit that had passed before too.
    assert [c["loss"] for c in b_curve] == pytest.approx([c["loss"] for c in curve], rel=2e-3, abs=1e-5)
    c = load_policy(str(tmp_path / "batched" / "policy"), "float32", "cpu")[0].state_dict()
    assert all(torch.allclose(c[k], b[k], rtol=1e-4, atol=1e-5) for k in b)


def test_cli_flags_reach_the_config(tmp_path: Path) -> None:
    import argparse

    from training.cli_rl import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "question-ppo", "--model", "m", "--samples", "a.jsonl,b.jsonl", "--epochs", "3",
                              "--no-rescore", "--clip", "0.3", "--ref-model", "sft", "--output-dir", str(tmp_path / "o"), "--batch-states"])
    config = config_from_args(QuestionPPOConfig, args)
    assert (config.model, config.samples, config.epochs, config.rescore, config.clip, config.ref_model) == ("m", "a.jsonl,b.jsonl", 3, False, 0.3, "sft")
    assert config.batch_states is True
    assert config.states_per_step == 4 and config.kl_coef == 0.0


def test_sampled_quality_compares_files_on_the_states_they_share(tmp_path: Path) -> None:
    from training.question_ppo import sampled_quality

    def write(name: str, rows: dict[str, list[dict[str, Any]]]) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"key": k, "replies": v}) + "\n" for k, v in rows.items()), encoding="utf-8")
        return str(path)

    a = write("a.jsonl", {"s1": [_reply("ASK: q", 0.98), _reply("ANSWER: A", 0.0)], "s2": [_reply("ASK: r", -0.02)] * 2,
                          "only-a": [_reply("ASK: z", 2.98)] * 2})
    b = write("b.jsonl", {"s1": [_reply("ASK: q", 1.98), _reply("ASK: p", -0.02)], "s2": [_reply("ASK: r", 0.98)] * 2})
    ra, rb = sampled_quality([a, b])
    assert ra["states"] == rb["states"] == 2 and ra["replies"] == 4  # the state only one file has is left out
    assert ra["share_asking"] == pytest.approx(3 / 4) and ra["facts_per_question"] == pytest.approx(1 / 3)
    assert rb["facts_per_question"] == pytest.approx(4 / 4) and rb["facts_per_reply"] == pytest.approx(1.0)
    assert ra["best_of_n_facts_per_state"] == pytest.approx(0.5) and rb["best_of_n_facts_per_state"] == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="share no state"):
        sampled_quality([a, write("c.jsonl", {"other": [_reply("ASK: q", 0.98)]})])


def test_iterations_table_reads_each_iterations_samples_and_update(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m training.question_ppo iterations STAGE``: one row per qs-<i>, numbered as numbers (10 after 2),
    an update that never ran says so, and a folder of anything else is one clear error."""
    from training.question_ppo import iterations_markdown, main

    stage = tmp_path / "stage"
    for i, model in ((1, "/x/sft/model"), (2, str(stage / "qp-1" / "policy")), (10, str(stage / "qp-2" / "policy"))):
        _write_samples(stage / f"qs-{i}", model=model)
    for i, kl in ((1, 0.01), (2, 0.03)):
        (stage / f"qp-{i}").mkdir()
        (stage / f"qp-{i}" / "summary.json").write_text(json.dumps({"steps": 4, "train_seconds": 12.34}), encoding="utf-8")
        rows = [{"step": s, "epoch": 1 if s <= 2 else 2, "kl_ref": 9.0 if s <= 2 else kl, "clip_fraction": 0.1 * s, "ratio": 1.0}
                for s in range(1, 5)]
        (stage / f"qp-{i}" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    table = iterations_markdown(stage).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| 1", "| 2", "| 10"]
    # 5 states, 18 replies, 14 ask; facts: 1 per fever question (4), 2 per cough question on states b and d (4);
    # best per state 1, 2, 1, 2, 0.
    first = table[2].split(" | ")
    assert first[1:6] == ["`sft/model`", "5", f"{14 / 18:.1%}", f"{8 / 14:.3f}", f"{6 / 5:.2f}"]
    assert first[6:] == ["4", "12", "0.0100", "0.3500", "1.0000 |"]  # the last epoch's means, not the whole run's
    assert table[3].split(" | ")[1] == "`qp-1/policy`" and table[3].split(" | ")[8] == "0.0300"
    assert "not run" in table[4]
    assert main(["iterations", str(stage)]) == 0 and capsys.readouterr().out.splitlines() == table
    with pytest.raises(ConfigError, match="not an iterated question-PPO run"):
        iterations_markdown(tmp_path)
