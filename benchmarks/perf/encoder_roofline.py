"""How fast can the faithful patient answer distinct questions on one core? Its arithmetic against this core's.

Every distinct question goes through the tuned encoder (:mod:`mediq_env.tuned_encoder`): MiniLM's bottom
layers and the tuned top layers, once each, in length-sorted chunks each padded to its longest question
(plain MiniLM's own top layers run only for the option-guess check's few texts). This counts those
floating-point operations on env_speed's distinct questions, times ``encode`` on them, and times this
core's float32 matrix product at the encoder's largest shape. The ratio says how close the encoder already is
to the core's arithmetic; the questions a second at that peak are a ceiling for exact inference, whatever the
software around it.

Run:  ``python -m benchmarks.perf.encoder_roofline`` → ``benchmarks/results/encoder_roofline.{json,md}``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from benchmarks.perf.env_speed import _question


def measure(questions: int = 640, batch: int = 64, repeats: int = 3) -> dict[str, Any]:
    import torch

    from mediq_env.tuned_encoder import BATCH, load_tuned_encoder

    torch.set_num_threads(1)
    encoder = load_tuned_encoder()
    texts = [_question(i, True) for i in range(questions)]
    cfg = encoder.bert.config
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    layer_passes = cfg.num_hidden_layers  # the shared bottom layers, then the tuned top layers
    flops = padded = 0
    width = 0
    lengths = [len(encoder.tokenizer(t)["input_ids"]) for t in texts]
    for i in range(0, questions, batch):
        # The patient encodes the ``batch`` questions that arrive together in length-sorted chunks of BATCH.
        group = sorted(lengths[i:i + batch])
        for j in range(0, len(group), BATCH):
            n, width = len(group[j:j + BATCH]), group[j:j + BATCH][-1]
            # Per token and layer: Q, K, V, output projections and the MLP, plus attention scores and mixing.
            flops += n * width * layer_passes * (2 * (4 * hidden * hidden + 2 * hidden * inter) + 4 * width * hidden)
            padded += n * width
    real = sum(lengths)

    def encode_all() -> None:
        for i in range(0, questions, batch):
            encoder.encode(texts[i:i + batch])

    encoder.encode(texts[:batch])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode_all()
        best = min(best, time.perf_counter() - t0)
    a, w = torch.randn(BATCH * width, hidden), torch.randn(hidden, inter)  # one chunk of the longest length
    for _ in range(3):
        a @ w
    t0 = time.perf_counter()
    for _ in range(20):
        a @ w
    peak = 20 * 2 * a.shape[0] * hidden * inter / (time.perf_counter() - t0)
    per_question = flops / questions
    return {"questions": questions, "batch": batch, "tokens_real": real, "tokens_padded": padded, "layer_passes": layer_passes,
            "gflop_per_question": per_question / 1e9, "encode_seconds": best, "questions_per_second": questions / best,
            "achieved_gflops": flops / best / 1e9, "matmul_peak_gflops": peak / 1e9, "share_of_peak": flops / best / peak,
            "questions_per_second_at_peak": peak / per_question,
            # Padding costs arithmetic too; without any (each question at its own length) the ceiling rises this far.
            "questions_per_second_at_peak_unpadded": peak / per_question * padded / real}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=640)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    r = measure(args.questions, args.batch)
    md = "\n".join([
        "# The faithful patient's encoder against one core's arithmetic", "",
        f"Command: `python -m benchmarks.perf.encoder_roofline --questions {args.questions} --batch {args.batch}` (one thread; "
        "env_speed's distinct questions; float32).", "",
        "| | |", "|---|---|",
        f"| tokens per question (real / padded to the longest of its length-sorted chunk) | {r['tokens_real'] / r['questions']:.1f} / {r['tokens_padded'] / r['questions']:.1f} |",
        f"| MiniLM layer passes per question (bottom, then tuned top) | {r['layer_passes']} |",
        f"| arithmetic per question | {r['gflop_per_question']:.3f} GFLOP |",
        f"| encoding, questions per second | {r['questions_per_second']:.0f} |",
        f"| achieved | {r['achieved_gflops']:.1f} GFLOP/s |",
        f"| this core's float32 matrix product at the MLP's shape | {r['matmul_peak_gflops']:.1f} GFLOP/s |",
        f"| share of that peak | {r['share_of_peak']:.0%} |",
        f"| questions per second at that peak (a ceiling for exact inference) | {r['questions_per_second_at_peak']:.0f} |",
        f"| the same with no padding at all | {r['questions_per_second_at_peak_unpadded']:.0f} |",
        "",
        f"1,000 distinct questions a second would need {1000 / r['questions_per_second_at_peak_unpadded']:.1f}× less arithmetic per "
        "question than the encoder does even with no padding: a smaller or quantised encoder, whose verdicts would have to be "
        "measured again, not faster code around this one.", ""])
    path = write_result("encoder_roofline", r, md, args.out_dir)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
