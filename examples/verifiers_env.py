"""Evaluate a doctor model on MediQ with verifiers (needs ``pip install 'mediq-env[verifiers]'``).

``load_environment`` gives a multi-turn environment whose rubric is the env's reward. Point the OpenAI
client at any OpenAI-compatible server (vLLM, an API); this script answers from a stand-in server (an
httpx mock transport) so that it runs offline: it asks one question, then answers A.
"""

from __future__ import annotations

import json

import httpx
import openai
from verifiers.clients import OpenAIChatCompletionsClient

from mediq_env.integrations.verifiers_env import load_environment


def stand_in_server(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    asked = any(m["role"] == "assistant" for m in body["messages"])
    text = "ANSWER: A" if asked else "Do you take any regular medicines?"
    return httpx.Response(200, json={
        "id": "stand-in", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })


def main(num_examples: int = 3) -> None:
    client = openai.AsyncOpenAI(base_url="http://stand-in/v1", api_key="none", http_client=httpx.AsyncClient(transport=httpx.MockTransport(stand_in_server)))
    env = load_environment(max_questions=3, patient="bm25")
    results = env.evaluate_sync(client=OpenAIChatCompletionsClient(client), model="stand-in", num_examples=num_examples, rollouts_per_example=1)
    for out in results["outputs"]:
        print(out["info"]["case_id"], "reward", out["reward"], out["metrics"])


if __name__ == "__main__":
    main()
