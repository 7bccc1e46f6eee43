"""An episode whose reward is made of question-quality scores, with the breakdown of every step.

Each question is scored on rubric attributes by a judge (``attr:*``) and by model-free environment proxies
(``proxy:*``), minus a per-question cost and a repeat penalty; the final answer adds correctness. The
reward of a step is exactly the sum of the printed components.

    python examples/attribute_reward.py                   # offline, instant: a rule-of-thumb judge
    python examples/attribute_reward.py --judge smollm2   # the offline SmolLM2-135M judge
    python examples/attribute_reward.py --judge hf:<id>   # any backend spec of mediq_env.backends.factory

The default "judge" is NOT a model: a few lines of rules standing in for one so that the example runs
anywhere in a second. Its scores mean nothing clinically; they show the plumbing.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from mediq_env import MediQEnv, builtin_cases
from mediq_env.backends.base import Backend, Chat
from mediq_env.scoring import CompositeScorer, EnvironmentScorer, JudgeScorer, focus_features
from mediq_env.wrappers import AttributeReward, RewardConfig

QUESTIONS = [
    "Does taking ibuprofen or aspirin bring on your wheezing?",
    "Have you noticed any change in your sense of smell?",
    "Do you have any rash, and do you have numbness in your hands or feet?",
    "Does ibuprofen bring on your wheezing?",
    "What do you do for fun?",
]


def rule_of_thumb_judge(chat: Chat) -> str:
    """Stand-in judge: short single questions score high on every attribute, compound ones low."""
    text = chat[-1]["content"]
    m = re.search(r"^Doctor's next question: (.*)$", text, re.M)
    feats = focus_features(m.group(1) if m else "")
    return "2" if feats["compound"] else ("5" if feats["score"] == 1.0 else "3")


def make_judge(spec: str) -> Backend:
    if spec == "rules":
        from mediq_env.backends.scripted import ScriptedBackend

        return ScriptedBackend(rule_of_thumb_judge, model_id="rule-of-thumb")
    from mediq_env.backends.factory import make_backend

    return make_backend(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default="rules", help="'rules' (default, no model), 'smollm2', 'hf:<id>', 'openai:<model>'")
    parser.add_argument("--case-id", default="bi-001")
    parser.add_argument("--embeddings", action="store_true", help="compute proxy_relevance with MiniLM")
    args = parser.parse_args(argv)

    attributes = ["clarity", "focus", "diagnostic_relevance"]
    judge = JudgeScorer(make_judge(args.judge), attributes)
    proxies = ["proxy_info_gain", "proxy_key_fact"] + (["proxy_relevance"] if args.embeddings else [])
    scorer = CompositeScorer(judge, EnvironmentScorer(proxies, embedder="auto" if args.embeddings else None))
    weights = {"clarity": 0.05, "focus": 0.05, "diagnostic_relevance": 0.1, "proxy_info_gain": 0.05, "proxy_key_fact": 0.1}
    if args.embeddings:
        weights["proxy_relevance"] = 0.1
    config = RewardConfig(weights=weights, correct=1.0, incorrect=0.0, question_cost=0.02, repeat_penalty=0.1)
    env = AttributeReward(MediQEnv(builtin_cases(), max_questions=len(QUESTIONS)), scorer, config)

    _, info = env.reset(options={"case_id": args.case_id})
    case = env.unwrapped.case  # type: ignore[attr-defined]
    print(f"Case {case.id}: {case.initial_info}\nJudge: {judge.name}\n")
    total = 0.0
    for action in [*QUESTIONS, f"ANSWER: {case.answer}"]:
        _, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        print(f"> {action}")
        if "reply" in info:
            print(f"  patient: {info['reply']}")
        for name, value in info["reward_components"].items():
            raw = info["scores"].get(name.replace("attr:", "").replace("proxy:", "proxy_"))
            shown = "" if raw is None else f"   (score {raw:g})" if not math.isnan(raw) else "   (UNSCORED)"
            print(f"  {name:<28}{value:+.3f}{shown}")
        print(f"  {'reward (sum of components)':<28}{float(reward):+.3f}")
        if info.get("unscored"):
            print(f"  unscored this step: {', '.join(info['unscored'])} (counted as 0, not hidden)")
        print()
        if terminated or truncated:
            break
    print(f"Episode return: {total:+.3f}   unscored so far: {dict(env.unscored_counts) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
