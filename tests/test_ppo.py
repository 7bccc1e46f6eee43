"""Multi-turn PPO (training/ppo.py, training/rl_common.py): token layout and masking, reward placement, GAE
and clipped losses on hand-computed examples, updates that move the weights, exact resume, LoRA, export.

Everything runs on the tiny locally built Llama (2 layers, hidden 64) with short generations, so the whole
module takes seconds on one CPU core.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mediq_env.case import Case  # noqa: E402
from mediq_env.errors import ConfigError  # noqa: E402
from training.ppo import PPOConfig, PPOTrainer  # noqa: E402
from training.rl_common import (  # noqa: E402
    ChatLayout,
    EnvPromptFormat,
    Episode,
    TurnLog,
    action_positions,
    gae_advantages,
    masked_whiten,
    ppo_losses,
)

CASES = [
    Case(
        id=f"t{i}",
        initial_info=f"A man has had a cough for {i + 2} days.",
        facts=("The patient has a fever.", "The patient does smoke.", "The patient has chest pain.", "The patient sleeps badly."),
        question="Most likely cause?",
        options={"A": "flu", "B": "cold"},
        answer="A",
    )
    for i in range(3)
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(tiny_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


def length_reward(outcome: Any) -> dict[str, float]:
    """A reward that varies with what the policy writes, so every update has a non-zero advantage."""
    return {"length": len(outcome.text) / 10.0}


def make_config(out: Path, **kw: Any) -> PPOConfig:
    base: dict[str, Any] = {
        "model": "unused",
        "output_dir": str(out),
        "prompt_format": "env",
        "max_questions": 1,
        "max_new_tokens": 4,
        "episodes_per_update": 4,
        "mini_batch_size": 2,
        "micro_batch_size": 1,
        "ppo_epochs": 1,
        "learning_rate": 1e-3,
        "use_cpu": True,
        "max_seq_len": 400,
        "reward_weights": {"proxy_answerable": 1.0},
        "num_updates": 2,
        "export_policy_on_save": False,
    }
    base.update(kw)
    return PPOConfig(**base)


def make_trainer(tiny_dir: Path, out: Path, **kw: Any) -> PPOTrainer:
    reward_fn = kw.pop("reward_fn", length_reward)
    config = make_config(out, **kw)
    model, tok = load(tiny_dir)
    env = config.build_env(config.episodes_per_update, cases=CASES)
    return PPOTrainer(config, model=model, tokenizer=tok, env=env, reward_fn=reward_fn)


def params(trainer: PPOTrainer) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in trainer.unwrapped.named_parameters()}


# -- config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"mini_batch_size": 32, "episodes_per_update": 16},
        {"micro_batch_size": 8, "mini_batch_size": 4, "episodes_per_update": 4},
        {"cliprange": 0.0},
        {"gamma": 1.5},
        {"kl_coef": -0.1},
        {"critic": "twin"},
        {"report_to": ["none", "tensorboard"]},
        {"report_to": ["mystery"]},
        {"mode": "single_turn", "scorer": "none"},
        {"reward_weights": {"proxy_info_gian": 1.0}},
        {"max_seq_len": 10, "max_new_tokens": 48},
        {"ppo_epochs": 0},
        {"temperature": 0.0},  # greedy rollouts: PPO would optimise a deterministic policy's ratio
        {"top_p": 0.9},  # a nucleus gives -inf log-probs outside it: refused, see training.ppo's notes
    ],
)
def test_config_rejects_bad_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PPOConfig(**kw)


def test_config_round_trips_through_a_dict() -> None:
    config = PPOConfig(max_questions=2, reward_weights={"proxy:info_gain": 0.5})
    again = PPOConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ConfigError, match="unknown"):
        PPOConfig.from_dict({"max_questoins": 2})


# -- token layout and masking ---------------------------------------------------------------------------


def test_chat_layout_reproduces_the_chat_template(tiny_dir: Path) -> None:
    """prompt + sampled turn (ending in EOS) + glue + next user message == the template's own rendering."""
    _, tok = load(tiny_dir)
    layout = ChatLayout(tok, [tok.eos_token_id])
    first = [{"role": "user", "content": "Where does it hurt?"}]
    turn = tok("Do you smoke?", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = layout.prompt_ids(first) + turn + layout.continuation_ids("Yes, I smoke.", turn[-1])
    full = [*first, {"role": "assistant", "content": "Do you smoke?"}, {"role": "user", "content": "Yes, I smoke."}]
    expected = tok.apply_chat_template(full, add_generation_prompt=True, tokenize=False)
    assert tok.decode(ids) == expected
    # A turn cut at the token limit (no EOS) gets the end-of-message text added.
    cut = tok("Do you", add_special_tokens=False)["input_ids"]
    assert layout.glue_text("ok", cut[-1]).startswith("<|im_end|>")
    assert not layout.glue_text("ok", tok.eos_token_id).startswith("<|im_end|>")


def test_only_the_doctors_sampled_tokens_are_actions(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path)
    tok = trainer.tokenizer
    episodes = trainer.rollout()
    for ep in episodes:
        assert len(ep.ids) == len(ep.action_mask)
        assert ep.action_mask[: ep.prompt_len] == [0] * ep.prompt_len
        positions = action_positions(ep.action_mask)
        # Each turn's sampled tokens are a contiguous block of actions ending at the turn's recorded end, and
        # they decode to the turn's text; everything else (prompt, patient replies, chat markup) is masked.
        blocks: list[list[int]] = []
        for p in positions:
            if blocks and blocks[-1][-1] == p - 1:
                blocks[-1].append(p)
            else:
                blocks.append([p])
        ends = [t.end for t in ep.turns]
        assert all(e in positions for e in ends)
        masked_text = tok.decode([t for t, m in zip(ep.ids, ep.action_mask, strict=True) if not m])
        # Every turn that did not end the episode is followed by a masked user message (the patient's reply
        # and what to do next); the opening is the first one.
        assert masked_text.count("<|im_start|>user") == 1 + len(ep.turns[:-1])
        action_text = tok.decode([ep.ids[p] for p in positions], skip_special_tokens=True)
        assert action_text == "".join(t.text for t in ep.turns)
        assert "Initial information" not in action_text

    # The forward pass scores exactly the action tokens: targets at (rows, cols + 1) are the doctor's tokens.
    ids, attn, rows, cols = trainer._pad(episodes)
    targets = ids[rows, cols + 1].tolist()
    expected = [ep.ids[p] for ep in episodes for p in action_positions(ep.action_mask)]
    assert targets == expected
    logp, entropy, values = trainer.ac(ids, attn, rows, cols)
    assert logp.shape == entropy.shape == values.shape == (len(expected),)


def test_a_hand_built_sequence_masks_prompt_and_patient_tokens(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path)
    tok, layout = trainer.tokenizer, trainer.layout
    prompt = layout.prompt_ids([{"role": "user", "content": "case"}])
    q = tok("Do you smoke?", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    glue = layout.continuation_ids("Patient: yes.", q[-1])
    a = tok("ANSWER: A", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = prompt + q + glue + a
    mask = [0] * len(prompt) + [1] * len(q) + [0] * len(glue) + [1] * len(a)
    ep = Episode("t0", 0, ids, mask, len(prompt))
    _, _, _rows, cols = trainer._pad([ep])
    trained = sorted((cols + 1).tolist())
    assert trained == list(range(len(prompt), len(prompt) + len(q))) + list(range(len(ids) - len(a), len(ids)))
    # No trained position falls on a prompt or patient token.
    patient = set(range(len(prompt) + len(q), len(prompt) + len(q) + len(glue)))
    assert not patient & set(trained)


# -- log-probabilities of the sampling distribution -----------------------------------------------------


def test_training_logprobs_are_those_of_the_sampling_distribution(tiny_dir: Path, tmp_path: Path) -> None:
    """At temperature 0.7 the rollout samples from softmax(logits / 0.7): the scoring pass (old log-probs)
    and the first-epoch forward (new log-probs) must give every sampled token that same log-probability, so
    the first ratio against the behaviour policy is 1. Scoring raw logits was off by ~0.35 nats."""
    trainer = make_trainer(tiny_dir, tmp_path, temperature=0.7, record_rollout_logprobs=True, kl_coef=0.0)
    episodes = trainer.rollout()
    assert all(e.logprobs is not None and len(e.logprobs) == e.n_action_tokens for e in episodes)
    batch = trainer.prepare_batch(episodes)
    with torch.no_grad():
        ids, attn, rows, cols = trainer._pad(episodes)
        new_logp, _, _ = trainer.ac(ids, attn, rows, cols)
    sampled = torch.tensor([lp for e in episodes for lp in e.logprobs or []])
    old = torch.cat(batch.old_logp)
    assert sampled.numel() == old.numel() > 0
    torch.testing.assert_close(torch.exp(old - sampled), torch.ones_like(old), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.exp(new_logp - sampled), torch.ones_like(old), atol=1e-4, rtol=0)
    assert batch.stats["rollout_logp_gap_max"] < 1e-4


def _tiny_model(kind: str) -> Any:
    import transformers

    common = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
    if kind == "granite":
        cfg: Any = transformers.GraniteConfig(**common, logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3)
        model = transformers.GraniteForCausalLM(cfg)
    else:
        cfg = transformers.Gemma2Config(**common, head_dim=16, final_logit_softcapping=0.5)
        model = transformers.Gemma2ForCausalLM(cfg)
    return model.eval()


@pytest.mark.parametrize("kind", ["granite", "gemma2"])
def test_action_logprobs_use_the_models_own_logit_transforms(kind: str) -> None:
    """Granite divides its logits by ``logits_scaling``, Gemma-2 soft-caps them: the training log-probs must
    be log_softmax of what the model's own forward returns (what ``generate`` samples from), / temperature."""
    from training.ppo import action_logprobs

    torch.manual_seed(0)
    model = _tiny_model(kind)
    ids = torch.randint(0, 96, (2, 9))
    attn = torch.ones_like(ids)
    attn[1, 7:] = 0  # right padding, as in training batches
    rows = torch.tensor([0, 0, 0, 1, 1])
    cols = torch.tensor([2, 3, 7, 4, 5])
    with torch.no_grad():
        logp, entropy, _ = action_logprobs(model, ids, attn, rows, cols, temperature=0.7)
        full = model(input_ids=ids, attention_mask=attn).logits[rows, cols].float() / 0.7
    want_all = torch.log_softmax(full, -1)
    want = want_all.gather(-1, ids[rows, cols + 1].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, -(want_all.exp() * want_all).sum(-1), atol=1e-5, rtol=1e-5)


def test_separate_critic_never_computes_vocabulary_logits(tiny_dir: Path, tmp_path: Path) -> None:
    """The critic's value needs its final hidden states only; its LM head must not run."""
    trainer = make_trainer(tiny_dir, tmp_path, critic="separate")
    critic = trainer.unwrapped.critic
    episodes = trainer.rollout()
    ids, attn, rows, cols = trainer._pad(episodes)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the critic computed vocabulary logits")

    head = critic.get_output_embeddings()
    head.forward = refuse
    with torch.no_grad():
        torch.nn.init.normal_(trainer.unwrapped.v_head.weight)  # a zero-initialised head would hide the values
        logp, _, values = trainer.ac(ids, attn, rows, cols)
        # The values are the value head on the critic body's last hidden states at the action states.
        body = critic.model(input_ids=ids, attention_mask=attn).last_hidden_state[rows, cols]
        want = trainer.unwrapped.v_head(body).squeeze(-1)
    assert values is not None and values.shape == logp.shape
    torch.testing.assert_close(values, want)


# -- rewards --------------------------------------------------------------------------------------------


def test_rewards_sit_on_each_turns_last_token() -> None:
    # prompt (3 tokens) | question (positions 3-5) | patient (6-7) | answer (8-9)
    mask = [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    ep = Episode("c", 0, list(range(10)), mask, 3)
    ep.turns = [
        TurnLog("q", "q", "question", 0.7, {"proxy:info_gain": 0.5, "question_cost": 0.2}, end=5),
        TurnLog("ANSWER: A", "a", "answer", 1.0, {"correctness": 1.0}, end=9),
    ]
    assert ep.action_rewards() == [0.0, 0.0, 0.7, 0.0, 1.0]
    assert ep.total_reward == pytest.approx(1.7)
    assert ep.components() == {"proxy:info_gain": 0.5, "question_cost": 0.2, "correctness": 1.0}


def test_kl_penalty_and_returns_in_the_scoring_pass(tiny_dir: Path, tmp_path: Path) -> None:
    """With gamma = lambda = 1 and the untrained zero value head, each token's return is the reward still
    to come: the scores at turn ends minus kl_coef × (log π − log π_ref) summed from that token on."""
    trainer = make_trainer(tiny_dir, tmp_path, gamma=1.0, lam=1.0, kl_coef=0.5, whiten_advantages=False)
    episodes = trainer.rollout()
    with torch.no_grad():
        for p in trainer.unwrapped.policy.parameters():  # move the policy away from the reference
            p.add_(0.01 * torch.randn_like(p))
    batch = trainer.prepare_batch(episodes)
    for ep, lp, rp, ret, adv in zip(episodes, batch.old_logp, batch.ref_logp, batch.returns, batch.advantages, strict=True):
        kl = (lp - rp).double().numpy()
        assert np.abs(kl).sum() > 0
        rewards = np.asarray(ep.action_rewards()) - 0.5 * kl
        to_go = np.cumsum(rewards[::-1])[::-1]
        np.testing.assert_allclose(ret.numpy(), to_go, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(adv.numpy(), to_go, rtol=1e-5, atol=1e-5)  # values are 0
    assert batch.stats["kl"] != 0


# -- PPO arithmetic on hand examples --------------------------------------------------------------------


def test_gae_against_a_hand_computed_example() -> None:
    # Two episodes in one stream: [r=0, 0, 1] then [r=0.5]; gamma=0.9, lambda=0.8.
    r = [0.0, 0.0, 1.0, 0.5]
    v = [0.1, 0.2, 0.3, 0.4]
    d = [False, False, True, True]
    adv, ret = gae_advantages(r, v, d, gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.3  # last token: r + 0 - V
    d1 = 0.0 + 0.9 * 0.3 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.1
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    a3 = 0.5 - 0.4
    np.testing.assert_allclose(adv, [a0, a1, a2, a3])
    np.testing.assert_allclose(ret, [a0 + 0.1, a1 + 0.2, a2 + 0.3, a3 + 0.4])
    # lambda = 1, gamma = 1: advantages are the plain reward-to-go minus the value.
    adv1, _ = gae_advantages(r, v, d, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv1, [1 - 0.1, 1 - 0.2, 1 - 0.3, 0.5 - 0.4])


def test_clipped_policy_and_value_losses_on_a_hand_example() -> None:
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7]))  # ratios 1.5, 0.5, 1.1, 0.7
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    values = torch.tensor([1.0, 0.0, 0.5, 2.0])
    old_values = torch.tensor([0.5, 0.5, 0.5, 0.5])
    returns = torch.tensor([2.0, 0.0, 0.5, 0.0])
    out = ppo_losses(logp, old, adv, values, old_values, returns, cliprange=0.2, cliprange_value=0.2)
    # policy: max(-A r, -A clip(r)): A>0 r=1.5 -> -1.2 (clipped); A>0 r=0.5 -> -0.5; A<0 r=1.1 -> 1.1; A<0 r=0.7 -> 0.8 (clipped)
    torch.testing.assert_close(out["policy"], torch.tensor([-1.2, -0.5, 1.1, 0.8]))
    torch.testing.assert_close(out["clipped"], torch.tensor([1.0, 0.0, 0.0, 1.0]))
    # value: V clipped to old ± 0.2 = [0.7, 0.3, 0.5, 0.7]; 0.5·max((V−R)², (Vc−R)²)
    torch.testing.assert_close(out["value"], 0.5 * torch.tensor([max(1.0, 1.69), max(0.0, 0.09), 0.0, max(4.0, 0.49)]))
    torch.testing.assert_close(out["approx_kl"], 0.5 * logp**2)


def test_masked_whiten() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    w = masked_whiten(x, mask)
    torch.testing.assert_close(w, torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-4, rtol=0)


# -- training -------------------------------------------------------------------------------------------


def _surrogate(trainer: PPOTrainer, batch: Any) -> tuple[float, float, torch.Tensor]:
    """The clipped policy loss and value loss of ``batch`` under the current weights, and the log-probs."""
    cfg = trainer.config
    with torch.no_grad():
        ids, attn, rows, cols = trainer._pad(batch.episodes)
        logp, _, values = trainer.ac(ids, attn, rows, cols)
        parts = ppo_losses(
            logp, torch.cat(batch.old_logp), torch.cat(batch.advantages), values, torch.cat(batch.old_values), torch.cat(batch.returns),
            cliprange=cfg.cliprange, cliprange_value=cfg.cliprange_value,
        )
    return float(parts["policy"].mean()), float(parts["value"].mean()), logp


def test_an_update_raises_the_logprob_of_rewarded_actions(tiny_dir: Path, tmp_path: Path) -> None:
    """One PPO update must move the weights the right way on its own batch: the clipped surrogate and the
    value loss go down, and the advantage-weighted change of the action log-probs is positive (actions
    with a positive advantage became likelier, those with a negative one less likely)."""
    trainer = make_trainer(tiny_dir, tmp_path, ppo_epochs=2)
    batch = trainer.prepare_batch(trainer.rollout())
    policy_before, value_before, logp_before = _surrogate(trainer, batch)
    trainer.update(batch)
    policy_after, value_after, logp_after = _surrogate(trainer, batch)
    adv = torch.cat(batch.advantages)
    assert adv.abs().sum() > 0
    assert float((adv * (logp_after - logp_before)).sum()) > 0
    assert policy_after < policy_before
    assert value_after < value_before


def test_two_updates_log_metrics_and_save(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, save_steps=0)
    history = trainer.train()
    assert len(history) == 2 and trainer.step_count == 2
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for key in ("reward/mean", "reward/length", "kl", "loss/policy", "loss/value", "clipfrac", "entropy", "tokens_per_s", "approx_kl"):
        assert key in lines[0] and math.isfinite(lines[0][key]), key
    assert (tmp_path / "checkpoint-000002").is_dir()
    assert (tmp_path / "policy" / "config.json").is_file()


def test_env_reward_components_reach_the_episode(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, reward_fn=None, reward_weights={"proxy_focus": 1.0}, question_cost=0.1)
    episodes = trainer.rollout()
    for ep in episodes:
        assert ep.done or ep.cut
        first = ep.turns[0]
        if first.kind == "question":
            assert set(first.components) >= {"proxy:focus", "question_cost", "repeat_penalty"}
            assert first.reward == pytest.approx(sum(first.components.values()))
        if ep.turns[-1].kind in ("answer", "timeout", "invalid") and ep.done:
            assert "correctness" in ep.turns[-1].components


def test_resume_continues_exactly(tiny_dir: Path, tmp_path: Path) -> None:
    """2 updates in one go == 1 update, save, a fresh trainer resumed from the checkpoint, 1 more update."""
    straight = make_trainer(tiny_dir, tmp_path / "a")
    straight.step()
    straight.step()

    first = make_trainer(tiny_dir, tmp_path / "b")
    first.step()
    ckpt = first.save()
    opt_state = first.optimizer.state_dict()
    torch_rng = torch.get_rng_state().clone()
    np_state = first.rng.bit_generator.state

    resumed = make_trainer(tiny_dir, tmp_path / "b", resume_from=str(ckpt))
    assert resumed.step_count == 1
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert resumed.rng.bit_generator.state == np_state
    new_state = resumed.optimizer.state_dict()
    for k, v in opt_state["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(new_state["state"][k][name])), (k, name)
    resumed.step()

    a, b = params(straight), params(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert straight.history[-1]["reward/mean"] == resumed.history[-1]["reward/mean"]
    # "latest" finds the newest checkpoint; the JSONL log keeps one record per step.
    latest = make_trainer(tiny_dir, tmp_path / "b", resume_from="latest")
    assert latest.step_count == 1


def test_lora_trains_adapters_only_and_exports_a_merged_policy(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, use_lora=True, lora_r=4, kl_coef=0.1, num_updates=1)
    assert trainer.ref_model is None  # the reference is the base with adapters disabled
    before = params(trainer)
    trainer.train()
    after = params(trainer)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or k.startswith("v_head.") for k in changed)
    assert any("lora_" in k for k in changed)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    from mediq_env.backends.base import SamplingParams
    from mediq_env.backends.hf import TransformersBackend

    backend = TransformersBackend(str(tmp_path / "policy"), device="cpu")
    gen = backend.generate([[{"role": "user", "content": "Hello"}]], SamplingParams(max_new_tokens=3))
    assert len(gen) == 1
    # The merged export computes what the adapted policy computes.
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = trainer.policy(input_ids=ids).logits
        got = backend.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_trained_checkpoint_plugs_back_into_the_agent(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, num_updates=1)
    trainer.train()
    from agents import make_agent
    from mediq_env.backends.hf import TransformersBackend

    path = tmp_path / "policy"
    backend = TransformersBackend(str(path), device="cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(backend.model(input_ids=ids).logits, trainer.policy(input_ids=ids).logits)
    agent = make_agent(f"llm:hf:{path}", backend_options={"device": "cpu"})
    assert agent.name.startswith("llm(")


def test_separate_critic_and_single_turn_mode(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path / "sep", critic="separate", num_updates=1)
    assert trainer.unwrapped.critic is not None
    before = params(trainer)
    trainer.train()
    after = params(trainer)
    assert any(k.startswith("critic.") and not torch.equal(before[k], after[k]) for k in before)

    single = make_trainer(tiny_dir, tmp_path / "single", mode="single_turn", reward_weights={"proxy_focus": 1.0}, num_updates=1)
    episodes = single.rollout()
    assert all(len(e.turns) == 1 and e.turns[0].kind == "question" for e in episodes)
    assert all("proxy:focus" in e.turns[0].components for e in episodes)
    single.train()
    assert single.step_count == 1


def test_single_turn_with_attribute_reward_models(tiny_dir: Path, tmp_path: Path) -> None:
    """ALFA's PPO setting: each question scored by a (here untrained, tiny) two-head attribute reward model
    through RewardModelScorer; the reward is the weighted head outputs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_dir = tmp_path / "rm"
    rm = AutoModelForSequenceClassification.from_pretrained(
        tiny_dir, num_labels=2, id2label={0: "clarity", 1: "focus"}, label2id={"clarity": 0, "focus": 1}
    )
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(rm_dir)
    trainer = make_trainer(
        tiny_dir, tmp_path / "run", reward_fn=None, mode="single_turn", scorer="reward_model", reward_models=str(rm_dir),
        reward_weights={"clarity": 1.0, "focus": 0.5}, num_updates=1,
    )
    assert type(trainer.scorer).__name__ == "RewardModelScorer"
    episodes = trainer.rollout()
    for e in episodes:
        c = e.turns[0].components
        assert {"attr:clarity", "attr:focus"} <= set(c)
        assert e.turns[0].reward == pytest.approx(sum(c.values()))
    trainer.train()
    assert trainer.step_count == 1


def test_adaptive_kl_controller() -> None:
    from training.rl_common import AdaptiveKLController

    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_steps=10)  # error 1.0, clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctl.update(current_kl=5.4, n_steps=10)  # error -0.1
    assert ctl.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))


def test_single_turn_prompts_from_given_states(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mediq_env.dialogue import DialogueState
    from mediq_env.scoring import EnvironmentScorer
    from mediq_env.wrappers import RewardConfig

    state = DialogueState("x", "A woman has a rash.", "Cause?", {"A": "eczema", "B": "measles"}, questions_left=3)
    config = make_config(tmp_path, mode="single_turn", reward_weights={"proxy_focus": 1.0})
    model, tok = load(tiny_dir)
    trainer = PPOTrainer(
        config, model=model, tokenizer=tok, env=config.build_env(4, cases=CASES), single_turn_items=[(state, None)],
        scorer=EnvironmentScorer(["proxy_focus"], embedder=None), reward_config=RewardConfig(weights={"proxy_focus": 2.0}),
        prompt_format=EnvPromptFormat(),
    )
    # Scripted doctor: alternately one focused question (proxy_focus 1 -> reward 2 × 1) and a bare keyword
    # (rejected by the question-form gate: focus 0 -> reward 0).
    scripts = ["Do you smoke?", "smoke"]

    def scripted(model: Any, contexts: Any, settings: Any, **kw: Any) -> list[list[int]]:
        return [tok(scripts[i % 2], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for i in range(len(contexts))]

    monkeypatch.setattr("training.rl_common.generate_batch", scripted)
    episodes = trainer.rollout()
    assert {e.case_id for e in episodes} == {"x"}
    assert [e.turns[0].text for e in episodes] == ["Do you smoke?", "smoke"] * 2
    assert [e.turns[0].reward for e in episodes] == [2.0, 0.0, 2.0, 0.0]
    assert [e.turns[0].components["proxy:focus"] for e in episodes] == [2.0, 0.0, 2.0, 0.0]


def test_agent_prompt_format_speaks_the_agents_language() -> None:
    from agents.prompts import decision_chat
    from mediq_env.dialogue import DialogueState, Turn
    from training.rl_common import AgentPromptFormat

    fmt = AgentPromptFormat()
    state = DialogueState("x", "A woman has a rash.", "Cause?", {"A": "eczema", "B": "measles"}, questions_left=2)
    assert fmt.first_messages(state, "ignored") == decision_chat(state, "implicit")
    assert fmt.to_action("ASK: Do you have a fever?", state) == {"question": "Do you have a fever?"}
    assert fmt.to_action("ANSWER: B", state) == {"answer": "B"}
    assert fmt.to_action("no idea", state) == "no idea"  # the env decides: a question
    later = DialogueState("x", "A woman has a rash.", "Cause?", {"A": "eczema", "B": "measles"},
                          turns=(Turn("Fever?", "Yes, 39 degrees.", (0,)),), questions_left=0, must_answer=True)
    msg = fmt.next_user_message(later)
    assert msg.startswith("Patient: Yes, 39 degrees.") and "ANSWER: <letter>" in msg and "ASK" not in msg


def test_cli_builds_the_config(tmp_path: Path) -> None:
    import argparse

    from training.cli_rl import config_from_args, register

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"max_questions": 5, "learning_rate": 3e-5}))
    args = parser.parse_args(
        ["train", "ppo", "--config", str(cfg_file), "--max-questions", "2", "--reward-weights", "proxy_info_gain=0.5,proxy_focus=0.1",
         "--report-to", "none", "--use-lora", "--output-dir", str(tmp_path / "o")]
    )
    config = config_from_args(PPOConfig, args)
    assert config.max_questions == 2 and config.learning_rate == 3e-5 and config.use_lora
    assert config.reward_weights == {"proxy_info_gain": 0.5, "proxy_focus": 0.1}
    assert config.output_dir == str(tmp_path / "o")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "ppo", "--critic", "twin"])


def test_cli_trains_from_a_model_directory_and_a_cases_file(tiny_dir: Path, tmp_path: Path) -> None:
    import argparse

    from training.cli_rl import register

    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        "\n".join(
            json.dumps({"id": c.id, "initial_info": c.initial_info, "atomic_facts": list(c.facts), "question": c.question,
                        "options": c.options, "answer_idx": c.answer, "answer": c.options[c.answer]})
            for c in CASES
        ) + "\n"
    )
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "run"
    args = parser.parse_args(
        ["train", "ppo", "--model", str(tiny_dir), "--cases", str(cases), "--output-dir", str(out), "--prompt-format", "env",
         "--max-questions", "1", "--max-new-tokens", "3", "--episodes-per-update", "2", "--mini-batch-size", "2",
         "--micro-batch-size", "2", "--ppo-epochs", "1", "--num-updates", "1", "--use-cpu", "--max-seq-len", "400",
         "--no-export-policy-on-save"]
    )
    assert args.func(args) == 0
    assert (out / "policy" / "config.json").is_file() and (out / "checkpoint-000001").is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_requested_tracker_logs_or_fails_loudly(tiny_dir: Path, tmp_path: Path) -> None:
    """report_to tensorboard: with the package, the run writes event files; without it, building the
    trainer fails naming the package (accelerate would silently drop the tracker)."""
    import importlib.util

    from training.ppo import _check_trackers

    _check_trackers([])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="tensorboard"):
            make_trainer(tiny_dir, tmp_path, report_to=["tensorboard"], num_updates=1)
        assert not (tmp_path / "metrics.jsonl").exists()
    else:
        trainer = make_trainer(tiny_dir, tmp_path, report_to=["tensorboard"], num_updates=1)
        trainer.train()
        events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
        assert events and all(e.stat().st_size > 0 for e in events)


@pytest.mark.slow
def test_ppo_learns_the_known_optimum(tmp_path: Path) -> None:
    """benchmarks/ppo_learning.py's setting: a warm-started tiny policy must learn which short questions the
    faithful patient answers, about two different facts (1 per question revealing a new fact, optimum 2 per
    episode): the mean reward of the last 5 of 24 updates clearly beats the first 5, and what it asks in the
    end passes the question-form gate (gibberish does not pay). Measured 1.20 -> 1.89 with the patient
    refitted on 2026-11-27 and restatements judged in its tuned encoder (1.13 -> 1.83 before that)."""
    from benchmarks.ppo_learning import run
    from mediq_env.question_gate import check_question

    result = run(updates=24, seed=0, episodes=32, work_dir=tmp_path)
    rewards = [c["reward"] for c in result["curve"]]
    first, last = float(np.mean(rewards[:5])), float(np.mean(rewards[-5:]))
    assert last > first + 0.2, rewards
    assert last > 1.5, rewards
    questions = [qs[0] for qs in result["sample_questions_after_training"]]
    assert all(check_question(q).ok for q in questions), questions
