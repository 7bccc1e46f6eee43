"""Fine-tune MiniLM's top layers so that a doctor question lands next to the facts that answer it.

Called by :mod:`benchmarks.fit_relevance` (once per cross-validation fold, then on the whole calibration
half); the result is a :class:`mediq_env.tuned_encoder.TunedEncoder`.

Objective, per probe: a softmax over the case's facts plus one learned "no fact" slot. For an answerable
probe, *each* answering fact is scored against the non-answering facts and the slot (one term per answering
fact), so a broad question ("what medicines do you take?") pulls every medicine above "no fact", not just
the easiest one; an unanswerable probe maximises the "no fact" slot. Negatives are the other facts of the
*same case* — exactly the choice the patient faces — so the encoder learns what answers, not what is on
topic. A batch is a few whole cases with all their probes, so each fact is embedded once per step. The
bottom layers are frozen, so their outputs are computed once per text and only the top layers run in the
training loop (minutes on one CPU core).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.probes import Probe, load_probe_cases
from mediq_env.relevance import strip_frame
from mediq_env.tuned_encoder import TunedEncoder

__all__ = ["case_loss", "fine_tune", "probe_loss"]

SCALE = 20.0  # cosine → logit temperature (the usual contrastive scale for unit vectors)


def _bottom_cache(encoder: TunedEncoder, texts: Sequence[str]) -> dict[str, Any]:
    cache: dict[str, Any] = {}
    unique = list(dict.fromkeys(texts))
    for i in range(0, len(unique), 64):
        chunk = unique[i:i + 64]
        mid, mask = encoder.bottom(chunk)
        for j, t in enumerate(chunk):
            cache[t] = mid[j, : int(mask[j].sum())].clone()
    return cache


def _embed(encoder: TunedEncoder, cache: dict[str, Any], texts: Sequence[str]) -> Any:
    import torch

    items = [cache[t] for t in texts]
    length = max(x.shape[0] for x in items)
    hidden = items[0].new_zeros(len(items), length, items[0].shape[1])
    mask = torch.zeros(len(items), length, dtype=torch.long, device=items[0].device)
    for i, x in enumerate(items):
        hidden[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = 1
    return encoder.top_forward(hidden, mask)


def probe_loss(q: Any, facts: Any, answers: Sequence[int], null: Any) -> Any:
    """Mean over answering facts of −log P(that fact | it, the non-answering facts, "no fact"); for an
    unanswerable probe −log P(no fact | all facts, "no fact") (see the module docstring)."""
    import torch

    logits = torch.cat([SCALE * (facts @ q), (SCALE * null).view(1)])
    if not answers:
        return -torch.log_softmax(logits, 0)[-1]
    positive = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    positive[list(answers)] = True
    rest = logits[~positive]
    terms = [-torch.log_softmax(torch.cat([logits[i].view(1), rest]), 0)[0] for i in answers]
    return torch.stack(terms).mean()


def case_loss(q: Any, facts: Any, answers: Sequence[Sequence[int]], null: Any) -> Any:
    """The sum of :func:`probe_loss` over one case's probes (rows of ``q``), in a few tensor operations.

    The same arithmetic, rearranged so a case costs O(1) kernel launches instead of several per probe and
    per answering fact (per-probe calls leave a GPU waiting on Python and kernel launches, not arithmetic).
    For answering fact i, −log softmax([ℓ_i, rest])₀ = softplus(LSE(rest) − ℓ_i), where rest is the
    non-answering facts and the "no fact" slot; for an unanswerable probe it is LSE(all) − ℓ_null.
    """
    import torch

    logits = torch.cat([SCALE * (q @ facts.T), (SCALE * null).expand(q.shape[0], 1)], dim=1)  # probes × (facts + 1)
    positive = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    for row, ans in enumerate(answers):
        positive[row, list(ans)] = True
    n_pos = positive.sum(1)
    rest = torch.logsumexp(logits.masked_fill(positive, float("-inf")), dim=1, keepdim=True)
    per_answer = torch.nn.functional.softplus(rest - logits).masked_fill(~positive, 0.0).sum(1) / n_pos.clamp(min=1)
    unanswerable = torch.logsumexp(logits, dim=1) - logits[:, -1]
    return torch.where(n_pos > 0, per_answer, unanswerable).sum()


def fine_tune(
    probes: Sequence[Probe],
    base: Any,
    *,
    top_layers: int = 2,
    epochs: int = 4,
    lr: float = 5e-5,
    cases_per_batch: int = 2,
    seed: int = 0,
    log: Any = print,
) -> TunedEncoder:
    """A :class:`TunedEncoder` over ``base`` (plain MiniLM) trained on ``probes`` (adversarial ones skipped)."""
    import torch

    torch.manual_seed(seed)
    encoder = TunedEncoder(base, n_top=top_layers)
    data = [(p, load_probe_cases(p.source)[p.case_id]) for p in probes if p.kind != "adversarial"]
    cache = _bottom_cache(encoder, [p.question for p, _ in data] + [strip_frame(f) for _, c in data for f in c.facts])
    null = torch.nn.Parameter(torch.tensor(0.5, device=encoder.bert.device))
    optimiser = torch.optim.AdamW([*encoder.top.parameters(), null], lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    encoder.top.train()
    losses: list[float] = []
    by_case: dict[tuple[str, str], list[Probe]] = {}
    for p, _ in data:
        by_case.setdefault((p.source, p.case_id), []).append(p)
    groups = [(load_probe_cases(src)[cid], ps) for (src, cid), ps in by_case.items()]
    for epoch in range(epochs):
        total = 0.0
        order = rng.permutation(len(groups))
        for start in range(0, len(order), cases_per_batch):
            batch = [groups[i] for i in order[start:start + cases_per_batch]]
            questions = [p.question for _, ps in batch for p in ps]
            facts = [strip_frame(f) for c, _ in batch for f in c.facts]
            emb = _embed(encoder, cache, questions + facts)
            q_emb, f_emb = emb[: len(questions)], emb[len(questions):]
            loss = q_emb.new_zeros(())
            qi = offset = 0
            for case, ps in batch:
                n = len(case.facts)
                loss = loss + case_loss(q_emb[qi:qi + len(ps)], f_emb[offset:offset + n], [p.answers for p in ps], null)
                qi += len(ps)
                offset += n
            optimiser.zero_grad()
            (loss / len(questions)).backward()
            optimiser.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(data)))
        log(f"  encoder epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f}")
    encoder.top.eval()
    encoder.meta = {"top_layers": top_layers, "epochs": epochs, "lr": lr, "cases_per_batch": cases_per_batch, "seed": seed,
                    "probes": len(data), "loss_per_epoch": [round(x, 4) for x in losses]}
    return encoder
