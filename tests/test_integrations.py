"""The adapters of mediq_env.integrations, each run against the real package on CPU.

* TRL: ``GRPOTrainer(environment_factory=make_environment_factory(...))`` trains the tiny local Llama for two
  steps. The random tiny model never writes a tool call, so it is first taught the tool-call format with a
  few supervised steps (both option letters equally likely, so GRPO groups have different returns); then
  GRPO must change the parameters, put the patient's replies into the model's context, and use exactly the
  return the env gives when the same actions are replayed on a fresh env.
* inspect_ai: ``inspect_ai.eval`` of the task with the ``mockllm/model`` provider scripted to ask one question
  and answer.
* verifiers: the multi-turn environment evaluated through a fake OpenAI-compatible server (an httpx mock
  transport behind a real ``openai.AsyncOpenAI`` client).

Each part skips when its package is absent; none of them may be imported by ``import mediq_env``. CI installs
inspect_ai in its main environment; verifiers (< 0.4, whose dependency openai-agents ships a top-level ``agents``
package that hides mediq-env's) in an environment of its own, where ``.ci/run`` runs the verifiers tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mediq_env.case import Case
from mediq_env.env import MediQEnv
from mediq_env.errors import EnvStateError
from mediq_env.patient import FactLookupPatient
from mediq_env.rewards import CorrectnessReward

CASES = [
    Case(
        id=f"t{i}",
        initial_info=f"A woman has had a rash for {i + 2} days.",
        facts=("The patient has a fever.", "The patient has an itchy rash.", "The patient has a new cat.", "The patient is 30 years old."),
        question="Most likely cause?",
        options={"A": "eczema", "B": "measles"},
        answer="A",
    )
    for i in range(2)
]
REWARD = CorrectnessReward(correct=1.0, incorrect=-0.5, question_cost=0.1)


def replay(case_id: str, seed: int, actions: list[Any], max_questions: int) -> float:
    """The return a fresh env gives the same actions: what every adapter's reward must equal."""
    env = MediQEnv(CASES, patient=FactLookupPatient(), max_questions=max_questions, reward_fn=REWARD)
    env.reset(seed=seed, options={"case_id": case_id})
    total = 0.0
    for action in actions:
        _, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        if terminated or truncated:
            break
    return total


def replay_replies(case_id: str, seed: int, questions: list[str]) -> list[str]:
    env = MediQEnv(CASES, patient=FactLookupPatient(), max_questions=len(questions), reward_fn=REWARD)
    env.reset(seed=seed, options={"case_id": case_id})
    return [env.step({"question": q})[4]["reply"] for q in questions]


def test_importing_mediq_env_imports_no_integration_package() -> None:
    code = (
        "import sys, mediq_env, mediq_env.integrations, mediq_env.integrations.trl_env; "
        "print([m for m in ('torch', 'trl', 'inspect_ai', 'verifiers', 'datasets', 'openai') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- TRL ----------------------------------------------------------------------------------------------


def test_tool_env_plays_the_env_protocol() -> None:
    from mediq_env.integrations.trl_env import make_environment_factory

    factory = make_environment_factory(CASES, max_questions=1, reward=REWARD, patient="bm25")
    env = factory()
    opening = env.reset(case_id="t1", seed=3)
    assert "ask_patient" in opening and "Options:" in opening and "t1" not in opening
    reply = env.ask_patient("B")  # through the tool a bare letter is a question, not an answer
    assert "give_answer now" in reply
    letter = next(k for k, v in env.episode.state.options.items() if v == "eczema")
    assert env.give_answer(letter) == "Answer recorded. The consultation is over."
    with pytest.raises(EnvStateError):
        env.ask_patient("Anything else?")
    assert env.get_reward() == pytest.approx(replay("t1", 3, [{"question": "B"}, {"answer": letter}], 1)) == pytest.approx(0.9)
    assert env.summary.correct and env.summary.questions_asked == 1 and env.summary.outcome == "forced"
    # An episode the model leaves without answering is closed as the env closes an unanswered forced turn.
    env.reset(case_id="t0", seed=0)
    assert env.get_reward() == pytest.approx(-0.5) and env.summary.outcome == "unfinished"
    # Only the two tools are public methods: TRL turns every public method into a tool.
    import inspect

    public = {n for n, _ in inspect.getmembers(type(env), inspect.isfunction) if not n.startswith("_")}
    assert public == {"reset", "ask_patient", "give_answer", "get_reward"}


def _teach_tool_calls(model: Any, tokenizer: Any, factory: Any, steps: int = 120) -> None:
    """Supervised warm-up: the tiny random model learns to call ask_patient, then give_answer with A or B."""
    import torch

    from mediq_env.integrations.trl_env import MediQToolEnv

    tools = [MediQToolEnv.ask_patient, MediQToolEnv.give_answer]
    examples = []
    for case in CASES:
        for letter in "AB":
            env = factory()
            opening = env.reset(case_id=case.id, seed=0)
            question = "Do you have a fever?"
            reply = env.ask_patient(question)
            messages = [
                {"role": "user", "content": opening},
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "ask_patient", "arguments": {"question": question}}}]},
                {"role": "tool", "name": "ask_patient", "content": reply},
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "give_answer", "arguments": {"letter": letter}}}]},
            ]
            ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False)
            # Train on the assistant turns only: the tokens after each "<|im_start|>assistant\n".
            start = tokenizer.convert_tokens_to_ids("<|im_start|>")
            header = tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
            labels = [-100] * len(ids)
            inside = False
            for i, tok in enumerate(ids):
                if tok == start:
                    inside = ids[i + 1 : i + 1 + len(header)] == header
                    skip = i + 1 + len(header)
                if inside and i >= skip:
                    labels[i] = tok
            examples.append((ids, labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        ids, labels = examples[step % len(examples)]
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_trl_grpo_trains_on_the_env_with_environment_factory(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    from mediq_env.integrations.trl_env import (
        MediQToolEnv,
        component_reward,
        episode_dataset,
        make_environment_factory,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    # TRL parses tool calls only for chat templates it knows; the tiny tokenizer has ChatML's special tokens,
    # so Qwen2.5's (ChatML with tools) renders with it unchanged.
    tokenizer.chat_template = qwen2_5_chat_template
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.config.max_position_embeddings = 2048  # RoPE: the tool schema in the prompt is longer than 512
    factory = make_environment_factory(CASES, max_questions=1, reward=REWARD, patient="bm25")
    _teach_tool_calls(model, tokenizer, factory)

    seen: list[dict[str, Any]] = []

    def record(completions: list[Any], completion_ids: list[list[int]], environments: list[Any], **kwargs: Any) -> list[float]:
        # Weight 0: only looks. Captures what TRL fed the model and what each env recorded.
        for completion, ids, env in zip(completions, completion_ids, environments, strict=True):
            assert isinstance(env, MediQToolEnv)
            episode = env.episode
            actions: list[Any] = [{"question": t.question} for t in episode.state.turns]
            if episode.done and episode.info.get("answer") is not None:
                actions.append({"answer": episode.info["answer"]})
            seen.append(
                {
                    "completion": completion, "text": tokenizer.decode(ids), "summary": env.summary, "case_id": episode.case_id,
                    "seed": episode.seed, "replies": [t.reply for t in episode.state.turns], "actions": actions,
                    "step": kwargs["trainer_state"].global_step,
                }
            )
        return [0.0] * len(completions)

    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        learning_rate=1e-4,
        max_completion_length=200,
        activation_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        temperature=1.0,
        reward_weights=[0.0, 0.0],
        max_tool_calling_iterations=3,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[record, component_reward("question_cost")],
        args=args,
        train_dataset=episode_dataset(CASES, seeds_per_case=2),
        processing_class=tokenizer,
        environment_factory=factory,
    )
    trainer.train()

    changed = sum(not torch.equal(before[k], v.detach()) for k, v in trainer.model.named_parameters())
    assert changed > 0
    assert len(seen) == 8  # 2 steps × 4 rollouts
    calls = [m for s in seen for m in s["completion"] if m["role"] == "tool"]
    assert calls, "the warmed-up model must call the tools"
    # The patient's replies reach the model: every reply of an episode is in the tokens of its completion
    # (the context the next turn was generated from), inside the tool message ask_patient returned.
    asked = [s for s in seen if s["replies"]]
    assert asked
    for s in asked:
        for reply in s["replies"]:
            assert reply in s["text"]
            assert any(reply in m["content"] for m in s["completion"] if m["role"] == "tool")
    # The reward TRL trained on is the env's: the return of the same actions replayed on a fresh env (an
    # episode left unanswered adds the env's score for an unanswered forced turn).
    for s in seen:
        expected = replay(s["case_id"], s["seed"], s["actions"], 1)
        if s["summary"].outcome == "unfinished":
            expected += REWARD.incorrect
        assert s["summary"].reward == pytest.approx(expected)
    logged = [h for h in trainer.state.log_history if "rewards/MediQToolEnv/mean" in h]
    assert len(logged) == 2
    for step, h in enumerate(logged):
        rewards = [s["summary"].reward for s in seen if s["step"] == step]
        assert h["rewards/MediQToolEnv/mean"] == pytest.approx(sum(rewards) / len(rewards))
        assert h["reward"] == pytest.approx(sum(rewards) / len(rewards))
    print(
        f"\nTRL GRPO: {changed} parameter tensors changed; tool calls {len(calls)}; "
        f"rewards by step {[h['rewards/MediQToolEnv/mean'] for h in logged]}; outcomes {[s['summary'].outcome for s in seen]}"
    )



# -- inspect_ai ---------------------------------------------------------------------------------------


def test_inspect_task_plays_episodes_with_a_mock_model(tmp_path: Path) -> None:
    pytest.importorskip("inspect_ai", reason="inspect_ai is not installed (the [inspect] extra, which CI installs)")
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import ModelOutput, ModelUsage, get_model

    from mediq_env.integrations.inspect_task import mediq

    # Sample 1 asks one question and answers A; sample 2 asks twice (the second ask is the forced-answer turn,
    # so the env ends it unanswered).
    script = ["Do you have a fever?", "ANSWER: A", "Do you have a fever?", "Any pets at home?"]
    outputs = [ModelOutput.from_content("mockllm/model", text) for text in script]
    for output in outputs:
        # Without usage mockllm counts tokens with tiktoken, which downloads its tables (no network in tests).
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    model = get_model("mockllm/model", custom_outputs=outputs)
    task = mediq(cases=CASES, max_questions=1, patient="bm25", question_cost=0.1)
    [log] = inspect_eval(task, model=model, max_samples=1, log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    assert log.samples is not None and len(log.samples) == 2
    by_id = {s.id: s for s in log.samples}
    first, second = by_id["t0:0"], by_id["t1:0"]
    episode = first.scores["mediq_scorer"].metadata
    assert episode["questions_asked"] == 1 and episode["facts_found"] == 1 and episode["outcome"] == "forced"
    assert episode["reward"] == pytest.approx(replay("t0", 0, script[:2], 1))
    # The patient's reply reached the model as a user message.
    reply = replay_replies("t0", 0, script[:1])[0]
    assert [m.text for m in first.messages if m.role == "user"][1].startswith(reply)
    assert second.scores["mediq_scorer"].metadata["outcome"] == "truncated"
    assert second.scores["mediq_scorer"].value["correct"] == 0.0
    assert log.results is not None
    metrics = {f"{score.name}/{name}": m.value for score in log.results.scores for name, m in score.metrics.items()}
    print(f"\ninspect_ai: {[(s.id, s.scores['mediq_scorer'].value) for s in log.samples]}; metrics {metrics}")
    assert metrics["correct/accuracy"] == pytest.approx(float(episode["correct"]) / 2)
    assert metrics["questions_asked/mean"] == 1.0 and metrics["facts_found/mean"] == 1.0


def test_inspect_eval_loads_the_task_file_with_task_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``inspect eval mediq_env/integrations/inspect_task.py -T ...`` does: inspect finds the @task in the
    file and passes the -T options. (The CLI itself needs a provider: offline, mockllm's default token counting
    downloads tiktoken tables, so the mock model is given through the API.)"""
    pytest.importorskip("inspect_ai", reason="inspect_ai is not installed (the [inspect] extra, which CI installs)")
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import ModelOutput, ModelUsage, get_model

    from mediq_env.cases import builtin_cases
    from mediq_env.patient import make_patient

    outputs = [ModelOutput.from_content("mockllm/model", text) for text in ("Do you have a fever?", "ANSWER: B")]
    for output in outputs:
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    model = get_model("mockllm/model", custom_outputs=outputs)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the command's path is relative to the checkout
    [log] = inspect_eval(
        "mediq_env/integrations/inspect_task.py", model=model, task_args={"max_questions": 1, "patient": "bm25", "question_cost": 0.25},
        limit=1, log_dir=str(tmp_path), display="none",
    )
    assert log.status == "success", log.error
    assert log.eval.task == "mediq" and log.eval.task_args["question_cost"] == 0.25
    [sample] = log.samples or []
    episode = sample.scores["mediq_scorer"].metadata
    first = builtin_cases()[0]
    assert sample.id == f"{first.id}:0" and episode["questions_asked"] == 1 and episode["outcome"] == "forced"
    # The built-in cases, the bm25 patient and the -T question cost, as a plain env gives them.
    env = MediQEnv(None, patient=make_patient("bm25"), max_questions=1, reward_fn=CorrectnessReward(question_cost=0.25))
    env.reset(seed=0, options={"case_id": first.id})
    expected = sum(float(env.step(a)[1]) for a in ("Do you have a fever?", "ANSWER: B"))
    assert episode["reward"] == pytest.approx(expected)
    assert episode["components"]["question_cost"] == pytest.approx(-0.25)


# -- verifiers ----------------------------------------------------------------------------------------


def _classic_verifiers() -> Any:
    """verifiers with its classic MultiTurnEnv API, or a skip that says where the tests run instead."""
    where = "CI runs these tests in the verifiers environment .ci/run makes (pip install -e '.[verifiers]')"
    vf = pytest.importorskip("verifiers", reason=f"verifiers is not installed here; {where}")
    if getattr(vf, "MultiTurnEnv", None) is None:
        pytest.skip(f"verifiers {vf.__version__} has no MultiTurnEnv (removed in 0.4; the [verifiers] extra pins <0.4); {where}")
    return vf


def test_verifiers_0_4_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """verifiers 0.4 keeps only its v1 stack: importing the adapter says so instead of an AttributeError."""
    import importlib
    import types

    fake = types.ModuleType("verifiers")
    fake.__version__ = "0.4.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "verifiers", fake)
    monkeypatch.delitem(sys.modules, "mediq_env.integrations.verifiers_env", raising=False)
    with pytest.raises(ImportError, match=r"verifiers 0\.4\.0 has no classic MultiTurnEnv.*verifiers<0\.4"):
        importlib.import_module("mediq_env.integrations.verifiers_env")
    monkeypatch.delitem(sys.modules, "mediq_env.integrations.verifiers_env", raising=False)


def test_verifiers_env_scores_with_the_env_reward() -> None:
    _classic_verifiers()
    httpx = pytest.importorskip("httpx")
    openai = pytest.importorskip("openai")
    from verifiers.clients import OpenAIChatCompletionsClient

    from mediq_env.integrations.verifiers_env import load_environment

    requests: list[list[dict[str, Any]]] = []

    def chat(request: Any) -> Any:
        # A fake OpenAI-compatible server: ask once, then answer A.
        body = json.loads(request.content)
        requests.append(body["messages"])
        text = "Do you have a fever?" if sum(m["role"] == "assistant" for m in body["messages"]) == 0 else "ANSWER: A"
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    client = openai.AsyncOpenAI(base_url="http://fake/v1", api_key="x", http_client=httpx.AsyncClient(transport=httpx.MockTransport(chat)))
    env = load_environment(cases=CASES, max_questions=1, patient="bm25", reward=REWARD)
    results = env.evaluate_sync(client=OpenAIChatCompletionsClient(client), model="fake", num_examples=2, rollouts_per_example=1)
    outputs = results["outputs"]
    assert len(outputs) == 2
    for out in outputs:
        info = out["info"]
        expected = replay(info["case_id"], info["seed"], ["Do you have a fever?", "ANSWER: A"], 1)
        assert out["reward"] == pytest.approx(expected), {k: out.get(k) for k in ("error",)}
        assert out["metrics"]["questions_asked"] == 1.0 and out["metrics"]["facts_found"] == 1.0
    # The patient's reply reached the model: the second request carries it as a user message.
    reply = replay_replies(CASES[0].id, 0, ["Do you have a fever?"])[0]
    assert any(m["role"] == "user" and m["content"].startswith(reply) for msgs in requests for m in msgs)
    print(f"\nverifiers: rewards {[o['reward'] for o in outputs]}; metrics {[o['metrics'] for o in outputs]}")


# -- examples -----------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_example(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inspect_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("inspect_ai", reason="inspect_ai is not installed (the [inspect] extra, which CI installs)")
    monkeypatch.chdir(tmp_path)
    _load_example("inspect_eval.py").main(1)
    assert "questions_asked" in capsys.readouterr().out


def test_verifiers_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    _classic_verifiers()
    _load_example("verifiers_env.py").main(2)
    assert "reward" in capsys.readouterr().out


def test_trl_example_builds_the_table_and_imports() -> None:
    # Training needs a tool-calling model from the hub; the end-to-end run is the GRPO test above.
    module = _load_example("trl_environment.py")
    assert "| Patient tokens masked from the loss |" in (module.__doc__ or "")
