"""Train a doctor with TRL's own multi-turn GRPO: ``GRPOTrainer(environment_factory=...)``.

The model talks to the simulated patient through two tools, ``ask_patient(question)`` and
``give_answer(letter)``, backed by :class:`mediq_env.MediQEnv` (same patient, reward and option shuffling);
TRL runs the tool-calling loop, masks the tool results out of the loss and takes the env's return as the
reward. No code of ours runs in the training loop beyond the environment itself.

    python examples/trl_environment.py Qwen/Qwen3-0.6B     # any model whose chat template TRL can parse tools for

Two ways to run GRPO on MediQ:

| | TRL ``environment_factory`` (this file) | our ``rollout_func`` (``training/grpo.py``, ``mediq train-rl``) |
|---|---|---|
| Code of ours in the loop | the env only | rollout loop, prompt formats, tokenisation |
| How the model acts | tool calls (chat template must support tools; TRL parses them) | plain text: a question or ``ANSWER: X`` (any chat model, several prompt formats) |
| Patient tokens masked from the loss | yes (TRL's tool mask) | yes (``env_mask``) |
| Reward | episode return (``get_reward``); per-question rewards are summed into it | episode return; per-question components logged separately |
| Per-question credit | no (one advantage per episode, as GRPO) | no in GRPO; yes in our PPO (``training/ppo.py``) |
| Patient calls batched across episodes | no: one call per tool call | yes: ``BatchedEnv``, one patient call per turn for the whole batch (matters for LLM patients) |
| Option order per group / per step | per dataset row (``seeds_per_case`` rows per case) | reshuffled every step, shared by the group |
| Length limit | ``max_completion_length`` over the whole episode | ``max_new_tokens`` per turn, ``max_seq_len`` per episode |
| Generation | TRL's (transformers, vLLM colocate/server) | transformers ``generate`` through TRL's unwrap |
| Multi-environment runs (mix MediQ with other tasks) | yes (dict factory) | no |
"""

from __future__ import annotations

import os
import sys


def main(model: str, max_steps: int = 10) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    from mediq_env.integrations.trl_env import component_reward, episode_dataset, make_environment_factory
    from mediq_env.rewards import CorrectnessReward

    trainer = GRPOTrainer(
        model=model,
        # Weight 0: the question costs only show in the logs; the reward is the env's return (get_reward).
        reward_funcs=[component_reward("question_cost")],
        args=GRPOConfig(
            output_dir="runs/trl_environment",
            num_generations=4,
            per_device_train_batch_size=4,
            max_completion_length=1024,
            max_steps=max_steps,
            learning_rate=1e-6,
            reward_weights=[0.0],
            report_to=[],
        ),
        train_dataset=episode_dataset(seeds_per_case=4),
        environment_factory=make_environment_factory(max_questions=5, reward=CorrectnessReward(question_cost=0.02)),
    )
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Qwen/Qwen3-0.6B")
