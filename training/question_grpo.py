"""Question-level GRPO: the doctor's next turn, trained as a one-step bandit on real interview states.

Why this exists beside the episode-level trainers (:mod:`training.ppo`, :mod:`training.grpo`): on CPU they
could afford 120–192 episodes, and an episode's return mixes up to three questions and an answer, so the
learning curve could not be told from noise and neither beat the SFT doctor on held-out cases. Here the
unit of credit is one decision:

1. **States.** Interview states on *train* cases only (:func:`training.demos.doctor_split`): the
   demonstration episodes of :func:`training.demos.build_demos` (team-written questions played through the
   environment with the faithful patient) are cut at every turn where the doctor may still ask. Each state is
   written as the agent's own prompt, ``decision_chat(state, "implicit")`` — exactly what
   :class:`agents.llm_agent.LLMAgent` sends at every turn — so the policy is trained on what it will see when
   it is plugged back in (the episode trainers' multi-turn chat differs from it after the first turn).
2. **Rollouts.** TRL's ``GRPOTrainer`` samples ``num_generations`` replies per state.
3. **Reward.** Each reply is played from its state through the environment: reset with the state's seed and
   case, replay the earlier questions (the patient is deterministic, and the replayed prompt is checked to
   be identical), then step the reply, read with the agent's parser. The reward is that step's reward under
   the project's ``info_gain_only`` configuration (:func:`training.pipeline.reward_configs`: new facts the
   reply revealed − 0.02 per question; an answer earns 0; an invalid action is charged). It is the same
   definition the hack suite attacks (``benchmarks/results/hacks.md``): keyword soups, catch-alls, repeats,
   paraphrases, option probes and joined questions all reveal fewer facts than honest questions.
4. **Update.** Advantage = reward − its group's mean, not divided by a standard deviation (see
   ``QuestionGRPOConfig.scale_rewards``); KL to the starting (SFT) policy; LoRA.

The run recorded in ``benchmarks/results/question_grpo.md``:

    python -m training.question_grpo --model runs/ppo-from-sft/sft/model --output-dir runs/question-grpo \\
        --max-steps 50 --demo-rounds 2 --learning-rate 1e-4 --beta 0.04 --torch-threads 2 --save-steps 10
    python -m training.question_grpo curve runs/question-grpo       # its learning curve as markdown

The policy is saved merged to ``<output_dir>/policy`` (adapter in ``adapter/``); per-step metrics go to
``metrics.jsonl``; a killed run resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediq_env.errors import ConfigError
from training.grpo import GRPOEnvConfig, lora_config, trl_args

__all__ = ["DecisionReplayer", "QuestionGRPOConfig", "curve_markdown", "decision_states", "main", "train_question_grpo"]


@dataclass
class QuestionGRPOConfig(GRPOEnvConfig):
    """A question-level GRPO run. Episode fields of :class:`training.grpo.GRPOEnvConfig` keep their meaning
    (``max_questions`` is the interview budget of the states); ``cases`` is not used: the states come from
    the train split of ``sources``. The reward defaults to ``info_gain_only``.

    ``demo_rounds``: how many demonstration sets (seeds ``0..demo_rounds-1``: other option orders and
    question counts) the states are cut from.
    """

    output_dir: str = "runs/question-grpo"
    # info_gain_only (training.pipeline.reward_configs): new facts − 0.02 per question, nothing for the answer.
    reward_weights: dict[str, float] = field(default_factory=lambda: {"proxy_info_gain": 1.0})
    question_cost: float = 0.02
    correct: float = 0.0
    repeat_penalty: float = 0.0
    sources: str = "builtin,askdocs,medqa"
    data_dir: str | None = None
    demo_rounds: int = 2
    # Advantages are the raw reward minus the group mean, not divided by a standard deviation (Dr. GRPO).
    # Dividing blows tiny differences up to full size: in a group where no question found a fact, an answer
    # (0) beats the failed questions (−0.02 each) by several standard deviations, so the policy learns to stop
    # asking. Measured on this task (share of replies that ask, mean over steps 1–5 → 11–15): per-group
    # scaling (TRL's default) 0.57 → 0.47, and 0.31 at step 16; per-batch scaling (2 groups per batch)
    # 0.59 → 0.41; unscaled 0.60 → 0.62, then 0.90 over steps 16–20 (benchmarks/results/question_grpo.md).
    scale_rewards: str = "none"
    num_generations: int = 8
    per_device_train_batch_size: int = 16
    max_new_tokens: int = 40
    max_steps: int = 150
    learning_rate: float = 5e-5
    beta: float = 0.05
    use_lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    use_cpu: bool = True
    save_steps: int = 10
    # Wall-clock budget: after the step that crosses it, training stops, saves a checkpoint and writes
    # adapter/ and policy/ as at the end of a full run (a lent GPU machine is held for minutes, not hours).
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.cases is not None:
            raise ConfigError("question-level GRPO cuts its states from the train split of --sources; do not pass --cases")
        super().__post_init__()
        if self.scorer != "environment":
            raise ConfigError("question-level GRPO scores replies with the environment's proxies: scorer must be 'environment'")
        if self.scale_rewards not in ("batch", "group", "none"):
            raise ConfigError(f"scale_rewards must be 'batch', 'group' or 'none', got {self.scale_rewards!r}")
        if self.demo_rounds < 1:
            raise ConfigError(f"demo_rounds must be >= 1, got {self.demo_rounds}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")

    def source_list(self) -> list[str]:
        return [s.strip() for s in self.sources.split(",") if s.strip()]


def decision_states(sources: Sequence[str], *, max_questions: int, rounds: int, data_dir: str | None = None,
                    patient: Any = None) -> list[dict[str, Any]]:
    """One row per train-split interview state where the doctor may still ask: the agent's prompt and what is
    needed to rebuild the state (source, case, seed, budget, the questions asked before it)."""
    from training.demos import build_demos

    rows: list[dict[str, Any]] = []
    for r in range(rounds):
        for ep in build_demos(sources, budgets=(max_questions,), seed=r, data_dir=data_dir, patient=patient):
            for ex in ep.examples:
                if ex["kind"] not in ("ask", "answer"):  # forced and intermediate-answer prompts are not decisions
                    continue
                rows.append({
                    "prompt": ex["prompt"], "source": ep.source, "case_id": ep.case_id, "seed": ep.seed,
                    "max_questions": ep.max_questions, "prefix": json.dumps(ep.questions[: ex["turn"]]),
                })
    if not rows:
        raise ConfigError(f"no train-split states in sources {list(sources)} (is the data directory present?)")
    return rows


@dataclass
class Outcome:
    reward: float
    new_facts: int
    asked: bool  # the reply became a question the gate accepted
    answered: bool
    invalid: bool


class DecisionReplayer:
    """Plays one reply from a stored interview state through the environment and returns its step reward.

    One env per source (its train cases), all sharing one patient; outcomes are memoised by (state, reply)
    because TRL calls every reward function on the same replies.
    """

    def __init__(self, config: QuestionGRPOConfig, patient: Any = None, cache_size: int = 4096) -> None:
        from mediq_env.env import MediQEnv
        from mediq_env.patient import default_patient
        from mediq_env.rewards import CorrectnessReward
        from mediq_env.wrappers import AttributeReward
        from training.demos import split_cases
        from training.rl_common import make_prompt_format

        self.patient = patient if patient is not None else default_patient()
        self.fmt = make_prompt_format("agent")
        self.envs: dict[str, Any] = {}
        self.shuffle_options = config.shuffle_options  # policy rollouts build their envs the same way
        scorer = config.build_scorer()
        assert scorer is not None  # the config refuses scorer="none"
        for source in config.source_list():
            cases, _probes = split_cases(source, "train", config.data_dir)
            if not cases:
                continue
            reward_fn = CorrectnessReward(config.correct, config.incorrect, config.question_cost, config.invalid_penalty)
            env = MediQEnv(cases, patient=self.patient, max_questions=config.max_questions, reward_fn=reward_fn,
                           shuffle_options=config.shuffle_options)
            self.envs[source] = AttributeReward(env, scorer, config.reward_config())
        self._cache: OrderedDict[tuple[Any, ...], Outcome] = OrderedDict()
        self.cache_size = cache_size

    def state(self, row: Mapping[str, Any]) -> tuple[Any, Any]:
        """Rebuild the state of ``row``: (env, DialogueState)."""
        env = self.envs[row["source"]]
        env.unwrapped.max_questions = int(row["max_questions"])
        _obs, info = env.reset(seed=int(row["seed"]), options={"case_id": row["case_id"]})
        for q in json.loads(row["prefix"]):
            _obs, _r, terminated, truncated, info = env.step(q)
            if terminated or truncated:
                raise ConfigError(f"{row['source']}:{row['case_id']}: replaying the prefix ended the episode")
        return env, info["state"]

    def check(self, row: Mapping[str, Any]) -> None:
        """Raise if replaying ``row`` does not give back the prompt it was stored with (a non-deterministic
        patient or a changed prompt would silently train on the wrong states)."""
        from agents.prompts import decision_chat

        _env, state = self.state(row)
        if [dict(m) for m in decision_chat(state, "implicit")] != [dict(m) for m in row["prompt"]]:
            raise ConfigError(f"{row['source']}:{row['case_id']} seed {row['seed']}: the replayed state differs from the stored prompt")

    def outcome(self, row: Mapping[str, Any], text: str) -> Outcome:
        from mediq_env.question_gate import check_question

        key = (row["source"], row["case_id"], int(row["seed"]), int(row["max_questions"]), row["prefix"], text)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        env, state = self.state(row)
        action = self.fmt.to_action(text, state)
        _obs, reward, _terminated, _truncated, info = env.step(action)
        question = action.get("question") if isinstance(action, dict) else None
        asked = question is not None and check_question(question, state.options).ok
        answered = isinstance(action, dict) and "answer" in action
        result = Outcome(float(reward), len(info.get("new_facts") or ()), asked, answered,
                         invalid=bool(info.get("invalid_action")) or not (asked or answered))
        self._cache[key] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return str(completion[-1]["content"]) if completion else ""
    return str(completion)


def make_reward_funcs(replayer: DecisionReplayer) -> list[Any]:
    """The reward (weight 1) and zero-weighted functions that only log: new facts, share asked, share
    answered, share invalid."""

    def rows(kwargs: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
        keys = ("source", "case_id", "seed", "max_questions", "prefix")
        return [{k: kwargs[k][i] for k in keys} for i in range(n)]

    def outcomes(completions: list[Any], kwargs: Mapping[str, Any]) -> list[Outcome]:
        return [replayer.outcome(r, _text(c)) for r, c in zip(rows(kwargs, len(completions)), completions, strict=True)]

    def step_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [o.reward for o in outcomes(completions, kwargs)]

    def new_facts(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [float(o.new_facts) for o in outcomes(completions, kwargs)]

    def asked(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [float(o.asked) for o in outcomes(completions, kwargs)]

    def answered(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [float(o.answered) for o in outcomes(completions, kwargs)]

    def invalid(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [float(o.invalid) for o in outcomes(completions, kwargs)]

    return [step_reward, new_facts, asked, answered, invalid]


def _metrics_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class MetricsLog(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not logs or "reward" not in logs:
                return
            now = time.perf_counter()
            row = {"step": int(state.global_step), **logs, "time/step_s": round(now - self.last, 1)}
            self.last = now
            facts = logs.get("rewards/new_facts/mean")
            asked = logs.get("rewards/asked/mean")
            row["facts_per_question"] = facts / asked if facts is not None and asked else None
            if state.is_world_process_zero:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row, default=float) + "\n")
                fpq = row["facts_per_question"]
                print(f"[question-grpo] step {row['step']}: reward {logs['reward']:.3f}, asked {asked or 0:.2f}, "
                      f"facts/q {fpq if fpq is not None else float('nan'):.3f}, kl {logs.get('kl', float('nan')):.4f}, "
                      f"{row['time/step_s']:.0f} s", flush=True)

    return MetricsLog()


def _time_budget_callback(minutes: float) -> Any:
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.stopped_at: int | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if time.perf_counter() - self.start >= minutes * 60:
                control.should_training_stop = True
                control.should_save = True  # the checkpoint a resumed run continues from
                self.stopped_at = int(state.global_step)

    return TimeBudget()


def train_question_grpo(config: QuestionGRPOConfig) -> dict[str, Any]:
    """Build the states, train (resuming from the newest checkpoint), save ``adapter/`` and ``policy/``."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl import GRPOTrainer

    from training.pipeline import latest_checkpoint, truncate_metrics
    from training.ppo import load_policy

    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    replayer = DecisionReplayer(config)
    rows = decision_states(config.source_list(), max_questions=config.max_questions, rounds=config.demo_rounds,
                           data_dir=config.data_dir, patient=replayer.patient)
    for row in rows:
        replayer.check(row)
    by_source: dict[str, int] = {}
    for row in rows:
        by_source[row["source"]] = by_source.get(row["source"], 0) + 1
    (out / "states.json").write_text(json.dumps({"states": len(rows), "by_source": by_source}, indent=2) + "\n", encoding="utf-8")
    print(f"[question-grpo] {len(rows)} train states {by_source}", flush=True)

    # bf16 weights when the config trains in bf16 (GPU); LoRA keeps its own weights in float32.
    model, tokenizer = load_policy(config.model, "bfloat16" if config.bf16 else "float32", "cpu" if config.use_cpu else "cuda")
    funcs = make_reward_funcs(replayer)
    args = trl_args(config, reward_weights=[1.0] + [0.0] * (len(funcs) - 1), max_completion_length=config.max_new_tokens,
                    lr_scheduler_type="constant", save_total_limit=2, scale_rewards=config.scale_rewards)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora_config(config))
    metrics = out / "metrics.jsonl"
    resume = latest_checkpoint(out)
    if resume is not None:
        step = int(json.loads((resume / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
        print(f"[question-grpo] resuming from {resume} (step {step} of {config.max_steps})", flush=True)
        truncate_metrics(metrics, step)
    elif metrics.exists():
        metrics.unlink()
    trainer.add_callback(_metrics_callback(metrics))
    budget = _time_budget_callback(config.max_minutes) if config.max_minutes is not None else None
    if budget is not None:
        trainer.add_callback(budget)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if config.use_lora:
        policy.save_pretrained(out / "adapter")
        policy = policy.merge_and_unload()
    policy.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    stopped = budget.stopped_at if budget is not None else None
    if stopped is not None:
        print(f"[question-grpo] stopped at step {stopped} of {config.max_steps}: the {config.max_minutes:g}-minute budget "
              "was spent (run the same command again to continue)", flush=True)
    return {"states": len(rows), "global_step": int(trainer.state.global_step), "resumed_from": str(resume) if resume else None,
            "stopped_by_time_budget": stopped is not None}


def curve_markdown(metrics_path: str | Path, block: int = 10) -> str:
    """The learning curve of a run's ``metrics.jsonl``: one row per step, then means over blocks of steps."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    cols = [("mean reward", "reward"), ("asks", "rewards/asked/mean"), ("answers", "rewards/answered/mean"),
            ("invalid", "rewards/invalid/mean"), ("new facts / reply", "rewards/new_facts/mean"),
            ("new facts / question", "facts_per_question"), ("KL (per token)", "kl"), ("s / step", "time/step_s")]

    def cell(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    for r in rows:  # whole seconds read better than 76.200
        r["time/step_s"] = None if r.get("time/step_s") is None else round(r["time/step_s"])

    lines = ["| step | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {r['step']} | " + " | ".join(cell(r.get(k)) for _, k in cols) + " |" for r in rows]
    lines += ["", f"Means over blocks of {block} steps (new facts / question pooled: facts over questions):", "",
              "| steps | mean reward | asks | answers | invalid | new facts / question |", "|---|---|---|---|---|---|"]
    for i in range(0, len(rows), block):
        b = rows[i: i + block]
        mean = {k: sum(float(r.get(k) or 0.0) for r in b) / len(b) for k in
                ("reward", "rewards/asked/mean", "rewards/answered/mean", "rewards/invalid/mean", "rewards/new_facts/mean")}
        fpq = mean["rewards/new_facts/mean"] / mean["rewards/asked/mean"] if mean["rewards/asked/mean"] else None
        lines.append(f"| {b[0]['step']}–{b[-1]['step']} | {mean['reward']:.3f} | {mean['rewards/asked/mean']:.2f} | "
                     f"{mean['rewards/answered/mean']:.2f} | {mean['rewards/invalid/mean']:.2f} | {cell(fpq)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    from training.cli_rl import add_config_arguments, config_from_args

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["curve"]:  # python -m training.question_grpo curve RUN_DIR [BLOCK]: the learning curve as markdown
        if len(argv) not in (2, 3) or (len(argv) == 3 and not argv[2].isdigit()):
            raise SystemExit("usage: python -m training.question_grpo curve RUN_DIR [STEPS_PER_BLOCK]")
        print(curve_markdown(Path(argv[1]) / "metrics.jsonl", block=int(argv[2]) if len(argv) == 3 else 10), end="")
        return 0
    parser = argparse.ArgumentParser(prog="python -m training.question_grpo", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, QuestionGRPOConfig)
    args = parser.parse_args(argv)
    config = config_from_args(QuestionGRPOConfig, args)
    print(json.dumps(train_question_grpo(config)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
