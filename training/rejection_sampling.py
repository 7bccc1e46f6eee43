"""Rejection-sampling fine-tuning (one round of expert iteration) of the doctor's next question.

Why beside question-level GRPO (:mod:`training.question_grpo`): there the policy learned *to ask* (the share
of replies that ask rose from 0.6 to 0.9) but not *to ask better* — new facts per question stayed flat on
CPU (800 replies) and on an H200 (3,840 replies). A group-relative gradient spreads a small push over every
token of every reply; most replies in a group find nothing, so the push towards the one that found a fact
is weak. Rejection sampling keeps exactly that reply and imitates it: a much stronger signal per sample,
at the price of ignoring what failed (RAFT, Dong et al. 2023; ReST, Gulcehre et al. 2023).

1. **States.** ``states="demos"``: the train-split interview states of question-level GRPO
   (:func:`training.question_grpo.decision_states`), cut from team-written demonstrations. ``states="policy"``:
   the states the starting policy itself reaches when it plays the train-split cases greedily, as it is deployed
   (:func:`policy_states`) — a second round of expert iteration needs these, because a doctor trained only on
   demonstration prefixes never saw its own earlier questions and repeats them (round one, ``question_rft.md``).
   Either way each state is the agent's own ``decision_chat`` prompt, checked to replay to its stored prompt.
2. **Sampling.** ``samples_per_state`` replies per state from the starting policy at ``temperature``, seeded
   per state (per batch of ``state_batch`` states; the same seed gives the same samples). Each reply is played
   from its state through the environment by :class:`training.question_grpo.DecisionReplayer`: the reward is that step's
   ``info_gain_only`` reward (new facts the question revealed − the question cost), the definition the hack
   suite attacks.
3. **Selection.** Per state, the best reply if it is a question the gate accepts and it revealed at least
   ``min_new_facts`` new facts; ties go to the first sampled. States where no reply found a fact give no
   example (they say nothing about which question is better).
4. **Training.** LoRA SFT of the starting policy on the kept (prompt, reply) pairs with :func:`training.sft.train_sft`;
   the merged policy goes to ``<output_dir>/policy``, runnable as ``llm:hf:<output_dir>/policy``.

Samples go to ``samples.jsonl`` one state a line as they are scored, so a killed run loses at most one batch
of states and the same command resumes (a resume with other sampling settings is refused); a state whose
sampling or scoring raised is recorded with its error, counted in the summary, and sampled again on resume.

    python -m training.rejection_sampling --model runs/ppo-from-sft/sft/model --output-dir runs/question-rft
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mediq_env.errors import ConfigError
from training.rl_common import dataclass_from_dict

__all__ = ["RejectionSamplingConfig", "main", "policy_states", "replayer_for", "rescore", "run", "sample_states", "sampling_dtype", "select_examples",
           "train_policy"]


@dataclass
class RejectionSamplingConfig:
    """One round of rejection-sampling fine-tuning. ``max_states``: sample only the first N states of the
    shuffled order (tests, quick runs); ``max_minutes``: stop sampling after this long (the next run of the
    same command continues) — training starts only once every state is sampled. ``stage``: ``all`` samples
    then trains; ``states`` only prepares the states (for ``states="demos"`` without ``states_file``, it builds
    them and writes ``demo_states.jsonl``, which a later run's ``states_file`` reuses);
    ``sample`` only samples; ``train`` trains on the states sampled so far (a run cut short on purpose:
    ``selection.json`` says how many states that was)."""

    model: str = "runs/ppo-from-sft/sft/model"
    output_dir: str = "runs/question-rft"
    sources: str = "builtin,askdocs,medqa"
    data_dir: str | None = None
    max_questions: int = 3
    demo_rounds: int = 2
    seed: int = 0
    samples_per_state: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 40
    min_new_facts: int = 1
    max_states: int | None = None
    max_minutes: float | None = None
    epochs: float = 2.0
    learning_rate: float = 1e-4
    batch_size: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    max_length: int = 1024
    torch_threads: int | None = 2
    device: str = "auto"
    # The weights' dtype while sampling. question_ppo takes its ratio against float32 log-probabilities, so samples
    # for PPO must be drawn in float32 (it refuses others); bfloat16 is for rejection sampling of large models.
    dtype: str = "float32"
    # States sampled in one generate call (left-padded). 1: each state's replies depend on its own seed alone;
    # more: a state's replies also depend on its batch (the same command still gives the same samples, but a run
    # resumed mid-way batches the rest differently). A GPU wants 16-64.
    state_batch: int = 1
    # states="demos": read the states from this file (a demo_states.jsonl an earlier run wrote; every state is
    # still replayed and checked against its stored prompt) instead of building them (minutes on a CPU).
    states_file: str | None = None
    stage: str = "all"
    # Where the states come from: "demos" (demonstration prefixes) or "policy" (the starting policy's own greedy
    # interviews of the train cases, seeds 0..rollout_seeds-1, kept in states.jsonl so a resumed run reuses them).
    states: str = "demos"
    rollout_seeds: int = 1
    # Only states after at least this many questions: turn 0 is the same state whichever source cut it.
    min_turn: int = 0
    # Training: also select from these earlier rounds' samples.jsonl (comma-separated), replay every stored
    # reply through the current environment first (rescore: a refitted patient changes which replies found a
    # fact), and fine-tune train_from instead of the model sampled from (ReST: each round restarts from the
    # first policy on everything kept so far, so later rounds cannot erode what earlier ones taught).
    extra_samples: str = ""
    rescore: bool = False
    train_from: str | None = None

    def __post_init__(self) -> None:
        if self.stage not in ("all", "states", "sample", "train"):
            raise ConfigError(f"rejection sampling: stage must be all, states, sample or train, got {self.stage!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"rejection sampling: dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.states_file is not None and self.states != "demos":
            raise ConfigError("rejection sampling: states_file is for states=demos (policy states are kept in output_dir/states.jsonl)")
        if self.states not in ("demos", "policy"):
            raise ConfigError(f"rejection sampling: states must be demos or policy, got {self.states!r}")
        if isinstance(self.min_turn, bool) or not isinstance(self.min_turn, int) or not 0 <= self.min_turn < self.max_questions:
            raise ConfigError(f"rejection sampling: min_turn must be an integer in [0, max_questions), got {self.min_turn!r}")
        for name in ("samples_per_state", "max_new_tokens", "min_new_facts", "batch_size", "lora_r", "lora_alpha", "demo_rounds", "max_questions",
                     "rollout_seeds", "state_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"rejection sampling: {name} must be an integer >= 1, got {value!r}")
        if not self.temperature > 0:
            raise ConfigError(f"rejection sampling: temperature must be > 0 (greedy replies are all the same), got {self.temperature}")
        if self.max_states is not None and self.max_states < 1:
            raise ConfigError(f"rejection sampling: max_states must be >= 1 or None, got {self.max_states}")
        if not self.epochs > 0 or not self.learning_rate > 0:
            raise ConfigError("rejection sampling: epochs and learning_rate must be > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"rejection sampling: device must be auto, cpu or cuda, got {self.device!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RejectionSamplingConfig:
        return dataclass_from_dict(cls, data)


def _state_key(row: Mapping[str, Any]) -> str:
    return json.dumps([row["source"], row["case_id"], int(row["seed"]), int(row["max_questions"]), row["prefix"]])


def select_examples(records: Sequence[Mapping[str, Any]], min_new_facts: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(SFT examples, selection summary) from sampled states: the best accepted question per state."""
    examples: list[dict[str, Any]] = []
    replies = questions = facts = best_facts = 0
    for rec in records:
        outs = rec["replies"]
        replies += len(outs)
        questions += sum(1 for o in outs if o["asked"])
        facts += sum(o["new_facts"] for o in outs if o["asked"])
        best = max(range(len(outs)), key=lambda i: (outs[i]["asked"], outs[i]["reward"], -i))
        chosen = outs[best]
        best_facts += chosen["new_facts"] if chosen["asked"] else 0
        if chosen["asked"] and chosen["new_facts"] >= min_new_facts:
            examples.append({"prompt": rec["prompt"], "completion": [{"role": "assistant", "content": chosen["text"]}],
                             "source": rec["source"], "case_id": rec["case_id"]})
    by_source: dict[str, int] = {}
    for ex in examples:
        by_source[ex["source"]] = by_source.get(ex["source"], 0) + 1
    summary = {
        "states_sampled": len(records),
        "replies": replies,
        "share_asking": questions / replies if replies else None,
        "facts_per_question_sampled": facts / questions if questions else None,
        "best_of_n_facts_per_state": best_facts / len(records) if records else None,
        "states_kept": len(examples),
        "kept_by_source": by_source,
    }
    return examples, summary


def _read_samples(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Scored states by key, and how many lines record a failure (those are sampled again)."""
    done: dict[str, dict[str, Any]] = {}
    failed = 0
    if not path.exists():
        return done, failed
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash: the state is sampled again
            failed += 1
            continue
        if "error" in rec:
            failed += 1
            done.pop(rec["key"], None)
        elif "replies" in rec:
            done[rec["key"]] = rec
        else:
            raise ConfigError(f"{path}:{n}: field 'replies' missing (not a samples file of this tool)")
    return done, failed


def sampling_dtype(meta: Mapping[str, Any]) -> str | None:
    """The precision a samples file's ``config.json`` says its replies were drawn in; None when unknown. Files from
    before the ``dtype`` field were drawn in float32 on a CPU and in bfloat16 on a GPU."""
    return meta.get("dtype", "float32" if meta.get("device") == "cpu" else None)


def _sample(model: Any, tokenizer: Any, prompts: Sequence[Sequence[Mapping[str, str]]], config: RejectionSamplingConfig,
            seed: int) -> list[list[str]]:
    """``samples_per_state`` replies for each prompt, drawn in one generate call at ``config.temperature`` from the
    full distribution (no top-k, no top-p: question_ppo's ratio is against ``logits / T``). Prompts are left-padded
    to one length; one prompt is not padded at all."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer.apply_chat_template(list(p), add_generation_prompt=True, return_dict=True)["input_ids"] for p in prompts]
    width = max(len(e) for e in encoded)
    input_ids = torch.tensor([[pad_id] * (width - len(e)) + list(e) for e in encoded], device=model.device)
    attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=config.temperature, top_p=1.0,
                             top_k=0, max_new_tokens=config.max_new_tokens, num_return_sequences=config.samples_per_state, pad_token_id=pad_id)
    texts = [tokenizer.decode(seq[width:], skip_special_tokens=True).strip() for seq in out]
    n = config.samples_per_state
    if len(texts) != n * len(prompts):
        raise RuntimeError(f"generate returned {len(texts)} sequences for {len(prompts)} prompts x {n} samples")
    return [texts[i * n: (i + 1) * n] for i in range(len(prompts))]  # generate repeats each prompt n times in place


_STATE_FIELDS = ("policy", "prompt", "source", "case_id", "seed", "max_questions", "prefix")


def _read_policy_states(path: Path, model: str) -> list[dict[str, Any]]:
    from training.common import load_records  # names file and line for a line that is not JSON

    rows = load_records(path)  # written by policy_states: one state a line, no blank lines
    for n, row in enumerate(rows, 1):
        missing = [k for k in _STATE_FIELDS if k not in row]
        if missing:
            raise ConfigError(f"{path}:{n}: field {missing[0]!r} missing (not a states file of this tool)")
        if row["policy"] != model:
            raise ConfigError(f"{path}:{n}: field 'policy' is {row['policy']!r}, but this run samples from {model!r}; "
                              "use another output_dir")
    return rows


def policy_states(config: RejectionSamplingConfig, replayer: Any, agent: Any = None, batch_size: int = 16) -> list[dict[str, Any]]:
    """The decision states the starting policy reaches on the train-split cases, one row per state (same fields
    as :func:`training.question_grpo.decision_states`).

    Each case is played greedily by the agent as deployed (``llm:hf:<model>``, or ``agent``) for seeds
    ``0..rollout_seeds-1``, in batches of separate environments built like the replayer's, so the stored
    prompt is exactly what the policy saw. A state is kept when the doctor could still ask (not a forced
    answer) after at least ``min_turn`` questions. Written to ``states.jsonl`` only once every episode is
    played (a crash replays them: minutes, not hours); an existing file is reused."""
    from agents.prompts import decision_chat
    from mediq_env.actions import question_text
    from mediq_env.env import MediQEnv

    path = Path(config.output_dir) / "states.jsonl"
    if path.exists():
        return _read_policy_states(path, config.model)
    if agent is None:
        from agents import make_agent

        agent = make_agent(f"llm:hf:{config.model}")
    rows: list[dict[str, Any]] = []
    played = 0
    for source, replay_env in replayer.envs.items():  # the sources that have train cases
        cases = replay_env.unwrapped.cases
        specs = [(case.id, seed) for seed in range(config.rollout_seeds) for case in cases]
        # One set of environments per source, reset for every batch (reset with a seed starts afresh).
        pool = [MediQEnv(cases, patient=replayer.patient, max_questions=config.max_questions,
                         shuffle_options=replayer.shuffle_options) for _ in range(min(batch_size, len(specs)))]
        for start in range(0, len(specs), batch_size):
            batch = specs[start:start + batch_size]
            envs = pool[:len(batch)]
            states = [env.reset(seed=seed, options={"case_id": cid})[1]["state"] for env, (cid, seed) in zip(envs, batch, strict=True)]
            prefixes: list[list[str]] = [[] for _ in batch]
            live = list(range(len(batch)))
            while live:
                steps = agent.act([states[i] for i in live])
                still = []
                for i, step in zip(live, steps, strict=True):
                    cid, seed = batch[i]
                    if states[i].questions_left > 0 and len(prefixes[i]) >= config.min_turn:
                        rows.append({"policy": config.model, "prompt": [dict(m) for m in decision_chat(states[i], "implicit")],
                                     "source": source, "case_id": cid, "seed": seed, "max_questions": config.max_questions,
                                     "prefix": json.dumps(prefixes[i])})
                    _obs, _r, terminated, truncated, info = envs[i].step(step.action)
                    if info["action_type"] != "question":
                        continue  # an answer ends the interview; an invalid action would not replay as a question
                    prefixes[i].append(question_text(step.action))
                    states[i] = info["state"]
                    if not (terminated or truncated):
                        still.append(i)
                live = still
            played += len(batch)
            print(f"[rft] policy rollouts: {source} {min(start + batch_size, len(specs))}/{len(specs)} episodes, {len(rows)} states", flush=True)
    if not rows:
        raise ConfigError(f"no policy states in sources {config.sources!r} (is the data directory present? min_turn {config.min_turn})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    print(f"[rft] {played} policy episodes gave {len(rows)} states -> {path}", flush=True)
    return rows


_DEMO_FIELDS = ("prompt", "source", "case_id", "seed", "max_questions", "prefix")


def demo_states(config: RejectionSamplingConfig, replayer: Any) -> list[dict[str, Any]]:
    """The demonstration states (:func:`training.question_grpo.decision_states`) of ``config``: read from
    ``states_file`` when given, else built and written to ``<output_dir>/demo_states.jsonl`` for later runs'
    ``states_file``. Either way :meth:`DecisionReplayer.check` replays each state before it is sampled."""
    from training.common import load_records
    from training.question_grpo import QuestionGRPOConfig, decision_states

    sources = QuestionGRPOConfig(sources=config.sources).source_list()
    if config.states_file is not None:
        path = Path(config.states_file)
        if not path.is_file():
            raise ConfigError(f"states_file: {path} does not exist")
        rows = load_records(path)
        for n, row in enumerate(rows, 1):
            missing = [k for k in _DEMO_FIELDS if k not in row]
            if missing:
                raise ConfigError(f"{path}:{n}: field {missing[0]!r} missing (not a demo_states.jsonl of this tool)")
            if row["source"] not in sources:
                raise ConfigError(f"{path}:{n}: field 'source' is {row['source']!r}, not one of this run's sources {sorted(sources)}")
            if int(row["max_questions"]) != config.max_questions:
                raise ConfigError(f"{path}:{n}: field 'max_questions' is {row['max_questions']}, but this run has {config.max_questions}")
        return rows
    rows = decision_states(sources, max_questions=config.max_questions, rounds=config.demo_rounds,
                           data_dir=config.data_dir, patient=replayer.patient)
    out = Path(config.output_dir) / "demo_states.jsonl"
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({k: r[k] for k in _DEMO_FIELDS}) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    return rows


def sample_states(config: RejectionSamplingConfig, agent: Any = None) -> dict[str, Any]:
    """Sample and score every state not yet in ``samples.jsonl``; returns progress counts."""
    from training.ppo import load_policy
    from training.question_grpo import DecisionReplayer, QuestionGRPOConfig

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    env_config = QuestionGRPOConfig(sources=config.sources, data_dir=config.data_dir, max_questions=config.max_questions,
                                    demo_rounds=config.demo_rounds)
    replayer = DecisionReplayer(env_config)
    rows = policy_states(config, replayer, agent) if config.states == "policy" else demo_states(config, replayer)
    if config.stage == "states":
        return {"states": len(rows), "sampled_now": 0, "failed_now": 0, "complete": False}
    if config.states == "demos":  # the file keeps every state; min_turn picks from it at sampling time
        rows = [r for r in rows if len(json.loads(r["prefix"])) >= config.min_turn]
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)  # a capped or interrupted run still covers every source
    if config.max_states is not None:
        order = order[: config.max_states]
    path = out / "samples.jsonl"
    done, failed_before = _read_samples(path)
    todo = [i for i in order if _state_key(rows[i]) not in done]
    print(f"[rft] {len(order)} states, {len(order) - len(todo)} already sampled, {len(todo)} to go"
          + (f" ({failed_before} failed lines from earlier runs are retried)" if failed_before else ""), flush=True)
    if not todo:
        return {"states": len(order), "sampled_now": 0, "failed_now": 0, "complete": True}
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and _cuda()) else "cpu"
    model, tokenizer = load_policy(config.model, config.dtype, device)
    model.eval()
    start = time.perf_counter()
    sampled = failed = 0

    def failure(i: int, err: Exception) -> dict[str, Any]:  # a bad rollout is data: recorded, counted, retried on resume
        return {"key": _state_key(rows[i]), "state": i, "error": f"{type(err).__name__}: {err}"}

    with path.open("a", encoding="utf-8") as f:
        for first in range(0, len(todo), config.state_batch):
            if config.max_minutes is not None and time.perf_counter() - start >= config.max_minutes * 60:
                break
            batch = todo[first: first + config.state_batch]
            recs: dict[int, dict[str, Any]] = {}
            ready = []
            for i in batch:
                try:
                    replayer.check(rows[i])
                    ready.append(i)
                except Exception as err:
                    recs[i] = failure(i, err)
            try:
                texts = _sample(model, tokenizer, [rows[i]["prompt"] for i in ready], config, seed=config.seed * 1_000_003 + batch[0]) if ready else []
            except Exception as err:
                if type(err).__name__ == "OutOfMemoryError":  # every later batch would fail alike: stop, say so
                    raise ConfigError(f"out of device memory sampling {len(ready)} states at once; lower state_batch") from err
                recs.update({i: failure(i, err) for i in ready})
                ready, texts = [], []
            for i, replies in zip(ready, texts, strict=True):
                row = rows[i]
                try:
                    outs = [{"text": t, **asdict(replayer.outcome(row, t))} for t in replies]
                    recs[i] = {"key": _state_key(row), "state": i, "source": row["source"], "case_id": row["case_id"],
                               "prompt": row["prompt"], "replies": outs}
                except Exception as err:
                    recs[i] = failure(i, err)
            for i in batch:
                failed += "error" in recs[i]
                sampled += "error" not in recs[i]
                f.write(json.dumps(recs[i]) + "\n")
            f.flush()
            if (first + len(batch)) // 10 > first // 10:
                rate = (first + len(batch)) / (time.perf_counter() - start)
                print(f"[rft] {first + len(batch)}/{len(todo)} states ({rate * 60:.1f}/min), {failed} failed", flush=True)
    done, _ = _read_samples(path)
    complete = all(_state_key(rows[i]) in done for i in order)
    return {"states": len(order), "sampled_now": sampled, "failed_now": failed, "complete": complete}


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def replayer_for(config: Any) -> Any:
    """A :class:`training.question_grpo.DecisionReplayer` over the train cases of ``config``'s sources, with
    today's patient (any config with ``sources``, ``data_dir``, ``max_questions`` and ``demo_rounds``)."""
    from training.question_grpo import DecisionReplayer, QuestionGRPOConfig

    return DecisionReplayer(QuestionGRPOConfig(sources=config.sources, data_dir=config.data_dir,
                                               max_questions=config.max_questions, demo_rounds=config.demo_rounds))


def rescore(records: Sequence[Mapping[str, Any]], replayer: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The records with every reply replayed from its state through ``replayer``'s environment (the patient
    of today, not the one that scored the samples), and how many replies changed their count of new facts."""
    out: list[dict[str, Any]] = []
    changed = replies = 0
    for rec in records:
        source, case_id, seed, max_questions, prefix = json.loads(rec["key"])
        row = {"source": source, "case_id": case_id, "seed": seed, "max_questions": max_questions, "prefix": prefix}
        new = []
        for o in rec["replies"]:
            result = replayer.outcome(row, o["text"])
            changed += result.new_facts != o["new_facts"] or result.asked != o["asked"]
            replies += 1
            new.append({"text": o["text"], **asdict(result)})
        out.append({**rec, "replies": new})
    return out, {"replies": replies, "changed": changed}


def train_policy(config: RejectionSamplingConfig) -> dict[str, Any]:
    """Select the examples from ``samples.jsonl`` (and ``extra_samples``) and fine-tune; writes
    ``selection.json`` and ``policy/``."""
    from training.config import LoraSettings, SFTTrainConfig
    from training.sft import train_sft

    out = Path(config.output_dir)
    done, failed = _read_samples(out / "samples.jsonl")
    records = list(done.values())
    sources = {"samples.jsonl": len(records)}
    for extra in filter(None, (p.strip() for p in config.extra_samples.split(","))):
        if not Path(extra).is_file():
            raise ConfigError(f"extra_samples: {extra} does not exist")
        more, more_failed = _read_samples(Path(extra))
        clash = set(more) & {r["key"] for r in records}
        records += [r for k, r in more.items() if k not in clash]  # a state sampled twice counts once: the newest round's
        sources[extra] = len(more) - len(clash)
        failed += more_failed
    rescored = None
    if config.rescore:
        records, rescored = rescore(records, replayer_for(config))
    examples, summary = select_examples(records, config.min_new_facts)
    summary["failed_lines"] = failed
    summary["states_from"] = sources
    if rescored is not None:
        summary["rescored"] = rescored
    (out / "selection.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"[rft] selection: {json.dumps(summary)}", flush=True)
    if not examples:
        raise ConfigError(f"{out / 'samples.jsonl'}: no sampled reply revealed {config.min_new_facts}+ new facts; nothing to train on")
    sft = SFTTrainConfig(
        model=config.train_from or config.model, output_dir=out / "policy", learning_rate=config.learning_rate, epochs=config.epochs,
        batch_size=config.batch_size, max_length=config.max_length, seed=config.seed, overwrite=True,
        lora=LoraSettings(r=config.lora_r, alpha=config.lora_alpha), device=config.device,  # type: ignore[arg-type]
        lr_scheduler="constant", logging_steps=5, progress=False,
    )
    policy = train_sft(sft, [{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    return {**summary, "policy": str(policy)}


#: What the samples in ``samples.jsonl`` depend on: a resumed run must draw the rest the same way, or question_ppo
#: (which reads these fields from ``config.json``) would take one file for samples of one distribution.
_SAMPLING_FIELDS = ("model", "temperature", "max_new_tokens", "samples_per_state", "dtype", "seed", "states")


def run(config: RejectionSamplingConfig) -> dict[str, Any]:
    """Sample (resuming), then train once every state is sampled."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "config.json"
    if (out / "samples.jsonl").exists() and meta_path.exists() and config.stage != "train":
        before = json.loads(meta_path.read_text(encoding="utf-8"))
        before["dtype"] = sampling_dtype(before)
        for key in _SAMPLING_FIELDS:
            if before.get(key) != getattr(config, key):
                raise ConfigError(f"{meta_path}: field {key!r} was {before.get(key)!r} for the samples already in samples.jsonl, now "
                                  f"{getattr(config, key)!r}; resume with the same settings or use another output_dir")
    meta_path.write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")
    if config.stage == "train":
        return train_policy(config)
    progress = sample_states(config)
    if config.stage in ("states", "sample"):
        return progress
    if not progress["complete"]:
        print("[rft] sampling stopped before every state was sampled (time budget or failures); run the same command again", flush=True)
        return progress
    return {**progress, **train_policy(config)}


def main(argv: Sequence[str] | None = None) -> int:
    from training.cli_rl import one_line_errors

    return one_line_errors(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from training.cli_rl import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser(prog="python -m training.rejection_sampling", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, RejectionSamplingConfig)
    args = parser.parse_args(argv)
    config = config_from_args(RejectionSamplingConfig, args)
    print(json.dumps(run(config), default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
