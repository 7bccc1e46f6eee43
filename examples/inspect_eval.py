"""Evaluate a doctor model on MediQ with inspect_ai (needs ``pip install 'mediq-env[inspect]'``).

The same as ``inspect eval mediq_env/integrations/inspect_task.py --model <model> -T max_questions=3``;
here with inspect's scripted ``mockllm/model`` so that it runs offline: it asks one question, then answers.
Swap in any provider (``openai/gpt-4o-mini``, ``hf/<model>``, ``vllm/<model>``) for a real doctor.
"""

from __future__ import annotations

import sys

from inspect_ai import eval as inspect_eval
from inspect_ai.model import ModelOutput, ModelUsage, get_model

from mediq_env.integrations.inspect_task import mediq


def main(limit: int = 2) -> None:
    outputs = []
    for _ in range(limit):
        for text in ("Do you take any regular medicines?", "ANSWER: A"):
            out = ModelOutput.from_content("mockllm/model", text)
            out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)  # no tiktoken download
            outputs.append(out)
    model = get_model("mockllm/model", custom_outputs=outputs)
    [log] = inspect_eval(mediq(max_questions=3, patient="bm25"), model=model, limit=limit, max_samples=1, display="none", log_dir="runs/inspect")
    assert log.results is not None
    for score in log.results.scores:
        print(score.name, {k: round(m.value, 3) for k, m in score.metrics.items()})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
