"""The training scripts on a tiny locally built model: configs, data handling, two-step runs, reloads, fusion.

Every trainer runs two optimizer steps on CPU; each test then checks that the saved weights differ from the
starting ones and that the checkpoint loads where the project uses it (the transformers backend and an
agent for SFT/DPO, RewardModelScorer for reward models). Fusion is checked against a direct elementwise
mean of the inputs' tensors.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mediq_env.errors import ConfigError
from training.config import (
    DPOTrainConfig,
    FusionConfig,
    LoraSettings,
    RewardTrainConfig,
    SFTTrainConfig,
    parse_weights,
)
from training.dpo import mix_pairs, prepare_pairs
from training.reward import pair_texts, select_pairs, state_from_prompt

REPO = Path(__file__).resolve().parents[1]

SYSTEM = "You are a physician. Ask the patient exactly one follow-up question."


def thread_prompt(post: str, history: list[tuple[str, str]] | None = None, title: str | None = None) -> list[dict[str, str]]:
    """A prompt in the layout of the synthesised data (title, post, earlier exchanges, instruction)."""
    lines = [f"Title: {title}"] if title else []
    lines.append(f"Patient's post:\n{post}")
    if history:
        lines += ["", "Earlier exchanges:"]
        for q, a in history:
            lines += [f"Doctor: {q}", f"Patient: {a}"]
    user = "\n".join(lines) + "\n\nWrite the one question you would ask this patient next."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


POSTS = [
    ("Chest pain", "I have had chest pain for two days and it is worse when I breathe."),
    (None, "My child has a fever and a rash on the arm since yesterday."),
    ("Cough", "I have a dry cough and shortness of breath at night."),
    (None, "I feel dizzy and weak in the morning, and my appetite is poor."),
]


def sft_records() -> list[dict[str, Any]]:
    questions = ["How long have you had the pain?", "Do you have a fever?", "Do you smoke?", "Any nausea?"]
    return [
        {"prompt": thread_prompt(post, title=title), "completion": [{"role": "assistant", "content": q}]}
        for (title, post), q in zip(POSTS, questions, strict=True)
    ]


def pair_records() -> list[dict[str, Any]]:
    out = []
    for i, (title, post) in enumerate(POSTS):
        history = [("How old are you?", "I am 40 years old.")] if i % 2 else None
        prompt = thread_prompt(post, history, title)
        out.append({
            "prompt": prompt, "attribute": "clarity", "source_id": f"q{i}", "post_id": f"p{i}", "pair_kind": "enhanced>corrupted",
            "chosen": [{"role": "assistant", "content": "How long have you had the pain?"}],
            "rejected": [{"role": "assistant", "content": "Duration of the thing and the other thing?"}],
        })  # fmt: skip
        out.append({
            "prompt": prompt, "attribute": "focus", "source_id": f"q{i}", "post_id": f"p{i}", "pair_kind": "enhanced>corrupted",
            "chosen": [{"role": "assistant", "content": "Do you have a fever?"}],
            "rejected": [{"role": "assistant", "content": "Do you have a fever, a cough, pain, a rash or nausea?"}],
        })  # fmt: skip
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def fast(**kw: Any) -> dict[str, Any]:
    """Trainer settings for two quick CPU steps."""
    base: dict[str, Any] = {
        "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "device": "cpu", "progress": False,
        "logging_steps": 1, "max_length": 256,
    }  # fmt: skip
    base.update(kw)
    return base


# ---------------------------------------------------------------------------------------------------
# Configs (no torch needed)


def test_configs_reject_bad_values(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", sft_records())
    ok: dict[str, Any] = {"model": "some-org/some-model", "output_dir": tmp_path / "out", "data": data}
    SFTTrainConfig(**ok)  # a hub id is accepted without looking it up
    bad: list[tuple[dict[str, Any], str]] = [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"max_steps": 0}, "max_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"data": tmp_path / "missing.jsonl"}, "does not exist"),
        ({"model": str(tmp_path / "no-such-model")}, "does not exist"),
        ({"model": "./no-such-model"}, "does not exist"),
        ({"device": "tpu"}, "device"),
        ({"device": "cpu", "precision": "bf16"}, "needs a GPU"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"trl_overrides": ["x"]}, "trl_overrides"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            SFTTrainConfig(**{**ok, **change})
    with pytest.raises(ConfigError, match=r"lora\.r"):
        LoraSettings(r=0)
    with pytest.raises(ConfigError, match=r"lora\.dropout"):
        LoraSettings(dropout=1.0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        SFTTrainConfig(**{**ok, "output_dir": tmp_path / "full"})
    SFTTrainConfig(**{**ok, "output_dir": tmp_path / "full", "overwrite": True})

    with pytest.raises(ConfigError, match="unknown attribute"):
        RewardTrainConfig(**ok, attributes=("clarity", "charm"))
    with pytest.raises(ConfigError, match="one string"):
        RewardTrainConfig(**ok, attributes="clarity")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="beta"):
        DPOTrainConfig(**ok, beta=0)
    with pytest.raises(ConfigError, match=">= 0"):
        DPOTrainConfig(**ok, weights={"clarity": -1.0})
    with pytest.raises(ConfigError, match="not trained"):
        DPOTrainConfig(**ok, attributes=("clarity",), weights={"focus": 1.0})
    with pytest.raises(ConfigError, match="mix_size"):
        DPOTrainConfig(**ok, mix_size=10)
    with pytest.raises(ConfigError, match="per_attribute"):
        DPOTrainConfig(**ok, fuse=True)

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with pytest.raises(ConfigError, match="does not exist"):
        FusionConfig(models={"x": tmp_path / "nope"}, output_dir=tmp_path / "f")
    with pytest.raises(ConfigError, match="not among"):
        FusionConfig(models={"x": a, "y": b}, output_dir=tmp_path / "f", leave_out=("z",))
    with pytest.raises(ConfigError, match="every model"):
        FusionConfig(models={"x": a, "y": b}, output_dir=tmp_path / "f", leave_out=("x", "y"))
    with pytest.raises(ConfigError, match="exactly the models' keys"):
        FusionConfig(models={"x": a, "y": b}, output_dir=tmp_path / "f", weights={"x": 1.0})
    assert FusionConfig(models=[a, b], output_dir=tmp_path / "f", weights=[1, 3]).weights == {str(a): 1.0, str(b): 3.0}
    assert parse_weights("clarity=2, focus=0.5") == {"clarity": 2.0, "focus": 0.5}
    with pytest.raises(ConfigError):
        parse_weights("clarity:2")


def test_importing_training_does_not_import_trl_or_torch() -> None:
    code = (
        "import sys, training, training.config, training.common, training.sft, training.reward, training.dpo,"
        " training.fusion, training.cli_train; training.cli_train.build_parser();"
        "print(','.join(m for m in ('trl', 'torch', 'transformers', 'peft', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------------
# Data handling


def test_reward_inputs_are_what_the_scorer_renders() -> None:
    from mediq_env.dialogue import DialogueState
    from mediq_env.patient import Turn
    from mediq_env.scoring import ScoreItem, render_reward_input

    # Forum-thread prompts (the synthesised data): the state the synthesis judge saw.
    record = pair_records()[2]  # has a title and one earlier exchange
    chosen, rejected, exact = pair_texts(record)
    title, post = POSTS[1][0], POSTS[1][1]
    assert title is None
    state = DialogueState("", post, "", {}, (Turn("How old are you?", "I am 40 years old."),))
    assert exact and chosen == render_reward_input(ScoreItem("How long have you had the pain?", state))
    assert rejected.endswith("Doctor's next question: Duration of the thing and the other thing?")
    titled = state_from_prompt(thread_prompt("Line one.\n\nLine two.", [("Fever?", "(no answer)")], "Pain"))
    assert titled is not None and titled.initial_info == "Pain\nLine one.\n\nLine two."
    assert titled.turns == (Turn("Fever?", "(no answer)"),)

    # A state carried in the record wins; an unknown layout falls back (and says so).
    carried = dict(record, state={"initial_info": "Carried.", "question": "Q?", "options": {"A": "x"}, "turns": []})
    assert pair_texts(carried)[0].startswith("Patient's initial information: Carried.")
    odd = dict(record, prompt=[{"role": "user", "content": "Free text."}])
    text, _, exact = pair_texts(odd)
    assert not exact and text == "Free text.\n\nDoctor's next question: How long have you had the pain?"


def test_state_from_prompt_inverts_the_agent_case_prompts() -> None:
    from agents.prompts import decision_chat, question_chat
    from mediq_env.env import MediQEnv
    from mediq_env.scoring import render_context

    env = MediQEnv(max_questions=4)
    _, info = env.reset(seed=3)
    states = [info["state"]]
    for q in ("Do you have a fever?", "How long has this been going on?"):
        _, _, _, _, info = env.step(q)
        states.append(info["state"])
    for state in states:
        for chat in (question_chat(state), decision_chat(state, "likert", rationale=True)):
            parsed = state_from_prompt(chat)
            assert parsed is not None
            assert render_context(parsed) == render_context(state)
            assert parsed.questions_left == state.questions_left


def test_state_from_prompt_inverts_the_synthesis_prompt_when_present() -> None:
    synth_prompts = pytest.importorskip("training.synth_prompts")
    from mediq_env.dialogue import DialogueState
    from mediq_env.patient import Turn
    from mediq_env.scoring import render_context

    history = [("How long?", "Two days,\nmaybe three."), ("Any fever?", "")]
    chat = synth_prompts.asker_chat("My chest hurts.\n\nMostly at night.", history, title="Chest pain")
    parsed = state_from_prompt(chat)
    expected = DialogueState(
        "", "Chest pain\nMy chest hurts.\n\nMostly at night.", "", {}, tuple(Turn(q, a or "(no answer)") for q, a in history)
    )
    assert parsed is not None and render_context(parsed) == render_context(expected)


def test_pair_selection_and_mixing() -> None:
    pairs = prepare_pairs(pair_records())
    assert {p["attribute"] for p in pairs} == {"clarity", "focus"}
    assert len(select_pairs(pairs, "clarity")) == 4
    assert select_pairs(pairs, "overall") == []
    assert len(select_pairs(pairs, "overall", pool_overall=True)) == 8

    natural = mix_pairs(pairs, seed=0)
    assert len(natural) == 8 and natural == mix_pairs(pairs, seed=0) and natural != mix_pairs(pairs, seed=1)
    weighted = mix_pairs(pairs, {"clarity": 3, "focus": 1}, size=12, seed=0)
    counts = {a: sum(p["attribute"] == a for p in weighted) for a in ("clarity", "focus")}
    assert counts == {"clarity": 9, "focus": 3}
    # Up-weighting repeats whole passes: every clarity pair appears twice, one of them a third time.
    reps = sorted(sum(p == q for q in weighted) for p in pairs if p["attribute"] == "clarity")
    assert reps == [2, 2, 2, 3]
    only = mix_pairs(pairs, {"clarity": 1, "focus": 0}, seed=0)
    assert len(only) == 4 and {p["attribute"] for p in only} == {"clarity"}
    with pytest.raises(ConfigError, match="no pairs"):
        mix_pairs(pairs, {"medical_accuracy": 1.0})
    with pytest.raises(ConfigError, match="identical"):
        prepare_pairs([dict(pair_records()[0], rejected=pair_records()[0]["chosen"])])


# ---------------------------------------------------------------------------------------------------
# Trainers on the tiny model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """A 64-wide model gains nothing from threads, and on a shared CPU they slow it down."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from mediq_env.backends.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "m0", seed=0)


def weights_of(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    files = sorted(path.glob("*.safetensors"))
    assert files, f"no safetensors in {path}"
    for f in files:
        out.update(load_file(str(f)))
    return out


def changed_tensors(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    import torch

    return [k for k in before if k.startswith(prefix) and k in after and not torch.equal(before[k], after[k])]


def needs_trl() -> None:
    pytest.importorskip("trl")
    pytest.importorskip("datasets")


def test_to_trl_sets_cpu_safe_defaults(tmp_path: Path) -> None:
    needs_trl()
    config = SFTTrainConfig(model="x/y", output_dir=tmp_path / "o", device="cpu", max_steps=3)
    args = config.to_trl()
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert not args.gradient_checkpointing and args.max_steps == 3 and args.completion_only_loss
    assert args.save_strategy == "no"
    with pytest.raises(ConfigError, match="no field"):
        SFTTrainConfig(model="x/y", output_dir=tmp_path / "o", device="cpu", trl_overrides={"nonsense": 1}).to_trl()
    rm = RewardTrainConfig(model="x/y", output_dir=tmp_path / "o", device="cpu").to_trl()
    assert rm.max_length is None  # we truncate like the scorer; TRL must not filter on top
    dpo = DPOTrainConfig(model="x/y", output_dir=tmp_path / "o", device="cpu", beta=0.2).to_trl()
    assert dpo.beta == 0.2 and dpo.loss_type == ["sigmoid"]


def test_sft_two_steps_reload_and_generate(tiny_dir: Path, tmp_path: Path) -> None:
    needs_trl()
    from agents import make_agent
    from mediq_env.backends.base import SamplingParams
    from mediq_env.backends.hf import TransformersBackend
    from training.sft import train_sft

    data = write_jsonl(tmp_path / "sft.jsonl", sft_records())
    out = train_sft(SFTTrainConfig(model=str(tiny_dir), data=data, output_dir=tmp_path / "sft", **fast()))
    assert changed_tensors(weights_of(tiny_dir), weights_of(out))
    meta = json.loads((out / "mediq_training.json").read_text())
    assert meta["kind"] == "sft" and meta["examples"] == 4 and meta["config"]["max_steps"] == 2

    backend = TransformersBackend(str(out), device="cpu")
    [gen] = backend.generate([sft_records()[0]["prompt"]], SamplingParams(max_new_tokens=5))
    assert isinstance(gen.text, str) and gen.usage["completion_tokens"] >= 1
    agent = make_agent(f"llm:hf:{out}", backend_options={"device": "cpu"})
    assert str(out) in agent.name


def test_reward_models_two_steps_load_into_scorer(tiny_dir: Path, tmp_path: Path) -> None:
    needs_trl()
    from mediq_env.dialogue import DialogueState
    from mediq_env.scoring import RewardModelScorer, ScoreItem
    from training.reward import INDEX_FILE, train_reward_models

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records())
    config = RewardTrainConfig(
        model=str(tiny_dir), data=data, output_dir=tmp_path / "rm", attributes=("clarity", "overall"),
        pool_overall=True, **fast(),
    )  # fmt: skip
    paths = train_reward_models(config)
    assert set(paths) == {"clarity", "overall"}
    base = weights_of(tiny_dir)
    for attribute, path in paths.items():
        trained = weights_of(path)
        assert changed_tensors(base, trained, "model."), attribute  # the backbone moved, not only the new head
        meta = json.loads((path / "mediq_training.json").read_text())
        assert meta["pairs"] == (4 if attribute == "clarity" else 8) and meta["pairs_rendered_exactly"] == meta["pairs"]

    index = json.loads((tmp_path / "rm" / INDEX_FILE).read_text())
    scorer = RewardModelScorer(index)
    state = DialogueState("c", POSTS[0][1], "", {})
    records = scorer.score([ScoreItem("How long have you had the pain?", state), ScoreItem("Pain?", state)])
    assert scorer.keys == ("clarity", "overall")
    for rec in records:
        assert all(math.isfinite(v) for v in rec.scores.values())
    assert records[0].scores != records[1].scores
    # The single-head checkpoint also names its attribute, so it loads on its own path too.
    assert RewardModelScorer(str(paths["clarity"])).keys == ("clarity",)


def test_dpo_mixed_two_steps_reload(tiny_dir: Path, tmp_path: Path) -> None:
    needs_trl()
    from transformers import AutoModelForCausalLM

    from training.dpo import train_dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records())
    config = DPOTrainConfig(
        model=str(tiny_dir), data=data, output_dir=tmp_path / "dpo", weights={"clarity": 1.0, "focus": 3.0}, **fast()
    )
    out = train_dpo(config)
    assert changed_tensors(weights_of(tiny_dir), weights_of(out))
    meta = json.loads((out / "mediq_training.json").read_text())
    assert meta["pairs_by_attribute"] == {"clarity": 2, "focus": 6}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(tiny_dir).config.vocab_size


@pytest.mark.slow
def test_dpo_per_attribute_with_lora_and_fusion(tiny_dir: Path, tmp_path: Path) -> None:
    needs_trl()
    pytest.importorskip("peft")
    import torch

    from training.dpo import train_dpo_per_attribute

    config = DPOTrainConfig(
        model=str(tiny_dir), output_dir=tmp_path / "dpo", mode="per_attribute", fuse=True,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0), **fast(learning_rate=1e-2),
    )  # fmt: skip
    paths = train_dpo_per_attribute(config, pair_records())
    assert set(paths) == {"clarity", "focus", "fused"}
    assert not (paths["clarity"] / "adapter_config.json").exists()  # merged into plain checkpoints
    a, b, fused = (weights_of(paths[k]) for k in ("clarity", "focus", "fused"))
    assert changed_tensors(weights_of(tiny_dir), a)
    for key in a:
        assert torch.allclose(fused[key], (a[key] + b[key]) / 2, atol=1e-6)


@pytest.mark.slow
def test_sft_with_lora_adapter_kept_then_fused(tiny_dir: Path, tmp_path: Path) -> None:
    needs_trl()
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.fusion import fuse_checkpoints
    from training.sft import train_sft

    lora = LoraSettings(r=4, alpha=8, dropout=0.0, merge=False)
    out = train_sft(SFTTrainConfig(model=str(tiny_dir), output_dir=tmp_path / "sft", lora=lora, **fast(learning_rate=1e-2)), sft_records())
    assert (out / "adapter_config.json").is_file()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(out)).merge_and_unload()
    merged_sd = merged.state_dict()
    fused = fuse_checkpoints(FusionConfig(models={"lora": out, "base": tiny_dir}, output_dir=tmp_path / "fused"))
    base, result = weights_of(tiny_dir), weights_of(fused)
    assert changed_tensors(base, {k: merged_sd[k] for k in base})
    for key in base:
        assert torch.allclose(result[key], (merged_sd[key] + base[key]) / 2, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Fusion


@pytest.fixture(scope="module")
def three_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> dict[str, Path]:
    from mediq_env.backends.tiny import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("three")
    return {
        "clarity": tiny_dir,
        "focus": build_tiny_causal_lm(root / "m1", seed=1),
        "answerability": build_tiny_causal_lm(root / "m2", seed=2),
    }


def test_fusion_is_the_elementwise_mean_and_leave_one_out_excludes(three_tiny: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from mediq_env.backends.base import SamplingParams
    from mediq_env.backends.hf import TransformersBackend
    from training.fusion import fuse_checkpoints, fuse_leave_one_out

    w = {name: weights_of(path) for name, path in three_tiny.items()}
    two = {k: three_tiny[k] for k in ("clarity", "focus")}
    mean = weights_of(fuse_checkpoints(FusionConfig(models=two, output_dir=tmp_path / "mean")))
    assert set(mean) == set(w["clarity"])
    for key in mean:
        assert torch.allclose(mean[key], (w["clarity"][key] + w["focus"][key]) / 2, atol=1e-7)

    weighted = weights_of(
        fuse_checkpoints(FusionConfig(models=two, output_dir=tmp_path / "weighted", weights={"clarity": 3, "focus": 1}))
    )
    for key in weighted:
        assert torch.allclose(weighted[key], 0.75 * w["clarity"][key] + 0.25 * w["focus"][key], atol=1e-6)

    loo = fuse_checkpoints(FusionConfig(models=three_tiny, output_dir=tmp_path / "loo", leave_out=("answerability",)))
    assert all(torch.equal(v, mean[k]) for k, v in weights_of(loo).items())
    meta = json.loads((loo / "mediq_training.json").read_text())
    assert meta["left_out"] == ["answerability"] and set(meta["weights"]) == {"clarity", "focus"}

    every = fuse_leave_one_out(FusionConfig(models=three_tiny, output_dir=tmp_path / "every"))
    assert set(every) == set(three_tiny)
    without_focus = weights_of(every["focus"])
    for key in without_focus:
        assert torch.allclose(without_focus[key], (w["clarity"][key] + w["answerability"][key]) / 2, atol=1e-7)

    # Sharded output (tiny shard limit) loads back as the same model and generates.
    sharded = fuse_checkpoints(FusionConfig(models=two, output_dir=tmp_path / "sharded", max_shard_bytes=64 * 1024))
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("model-*.safetensors"))) > 1
    assert all(torch.equal(v, mean[k]) for k, v in weights_of(sharded).items())
    backend = TransformersBackend(str(sharded), device="cpu")
    [gen] = backend.generate([[{"role": "user", "content": "Where is the pain?"}]], SamplingParams(max_new_tokens=3))
    assert isinstance(gen.text, str)


def test_fusion_rejects_different_architectures(tiny_dir: Path, tmp_path: Path) -> None:
    from mediq_env.backends.tiny import build_tiny_causal_lm
    from training.fusion import fuse_checkpoints

    wider = build_tiny_causal_lm(tmp_path / "wide", hidden_size=128)
    with pytest.raises(ConfigError, match="shape"):
        fuse_checkpoints(FusionConfig(models=[tiny_dir, wider], output_dir=tmp_path / "f"))


# ---------------------------------------------------------------------------------------------------
# Command line


def test_cli_train_fuse_and_errors(three_tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli_train import build_parser, main

    parser = build_parser()
    out = tmp_path / "cli-loo"
    argv = ["train", "fuse", "--out", str(out), "--leave-one-out"]
    for name, path in three_tiny.items():
        argv += ["--model", f"{name}={path}"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["without_answerability", "without_clarity", "without_focus"]
    assert "without clarity" in capsys.readouterr().out

    # Every sub-command parses into a validated config; a bad value is a one-line error, not a traceback.
    assert main(["sft", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x"), "--model", str(three_tiny["focus"])]) == 2
    assert "does not exist" in capsys.readouterr().err
    data = write_jsonl(tmp_path / "p.jsonl", pair_records())
    assert main(["dpo", "--data", str(data), "--out", str(tmp_path / "y"), "--model", "x/y", "--lr", "0"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert main(["reward", "--data", str(data), "--out", str(tmp_path / "z"), "--attributes", "charm"]) == 2
    assert "unknown attribute" in capsys.readouterr().err


def test_train_command_is_shared_with_other_registrations() -> None:
    import argparse

    from training.cli_train import register

    def other(sub: Any) -> None:  # another package adding 'mediq train ppo', in the same way
        choices = getattr(sub, "choices", {})
        train = choices.get("train") or sub.add_parser("train")
        action = next((a for a in train._actions if isinstance(a, argparse._SubParsersAction)), None)
        (action or train.add_subparsers(dest="train_command", required=True)).add_parser("ppo")

    for order in ((register, other), (other, register)):
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command", required=True)
        for reg in order:
            reg(sub)
        assert parser.parse_args(["train", "ppo"]).train_command == "ppo"
        assert parser.parse_args(["train", "fuse", "--model", "a", "--out", "b"]).train_command == "fuse"
