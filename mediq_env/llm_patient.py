"""A patient played by a language model, in two modes, batched across episodes.

* ``mode="select"`` — the model picks the numbers of the facts that answer the question; the reply is those
  facts' own words. What was revealed is exact by construction.
* ``mode="freeform"`` — the model answers in the first person from the facts; the reply is mapped back to
  the facts it discloses by retrieval (BM25 and, when given, embeddings) with the reply as the query, so
  the revealed-fact record stays meaningful.

Decoding is greedy by default so the patient is reproducible; its sampling settings are its own, separate
from the doctor agent's. A reply that cannot be parsed becomes :data:`~mediq_env.patient.CANNOT_ANSWER`
with ``meta["fallback"]`` saying why — never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from mediq_env.backends.base import Backend, SamplingParams
from mediq_env.errors import ConfigError
from mediq_env.patient import CANNOT_ANSWER, FactLookupPatient, PatientQuery, PatientReply
from mediq_env.prompts import patient_freeform_chat, patient_select_chat

__all__ = ["LLMPatient", "parse_fact_numbers"]

_NUMBER = re.compile(r"\b(\d{1,3})\b")
_NONE = re.compile(r"^\W*none\b", re.I)


def parse_fact_numbers(text: str, n_facts: int, k: int) -> tuple[tuple[int, ...], str | None]:
    """0-based fact indices named in ``text`` (1-based numbers), at most ``k``; a reason when unusable."""
    if _NONE.match(text):
        return (), None
    found: list[int] = []
    for m in _NUMBER.finditer(text):
        i = int(m.group(1)) - 1
        if 0 <= i < n_facts and i not in found:
            found.append(i)
    if not found:
        return (), "no fact number or NONE in the model output"
    return tuple(found[:k]), None


class LLMPatient:
    """Patient simulator over any :class:`~mediq_env.backends.base.Backend`."""

    def __init__(
        self,
        backend: Backend,
        *,
        mode: Literal["select", "freeform"] = "select",
        k: int = 2,
        params: SamplingParams | None = None,
        mapper: FactLookupPatient | None = None,
    ) -> None:
        if mode not in ("select", "freeform"):
            raise ConfigError(f"mode must be 'select' or 'freeform', got {mode!r}")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        self.backend = backend
        self.mode = mode
        self.k = k
        self.params = params or SamplingParams(max_new_tokens=24 if mode == "select" else 80, temperature=0.0, seed=0)
        # Maps free-form replies back to facts; a looser floor than for questions since replies echo facts.
        self.mapper = mapper or FactLookupPatient(k=k, min_score=1.0, relative=0.5)

    def reply_batch(self, queries: Sequence[PatientQuery]) -> list[PatientReply]:
        if not queries:
            return []
        if self.mode == "select":
            chats = [patient_select_chat(q.case.facts, q.question, self.k) for q in queries]
        else:
            chats = [
                patient_freeform_chat(q.case.facts, q.question, [(t.question, t.reply) for t in q.history])
                for q in queries
            ]
        generations = self.backend.generate(chats, self.params)
        return [self._reply(q, g.text) for q, g in zip(queries, generations, strict=True)]

    def _reply(self, query: PatientQuery, raw: str) -> PatientReply:
        facts = query.case.facts
        if self.mode == "select":
            revealed, problem = parse_fact_numbers(raw, len(facts), self.k)
            meta = {"raw": raw, "fallback": problem}
            if not revealed:
                return PatientReply(CANNOT_ANSWER, (), meta)
            return PatientReply(" ".join(facts[i] for i in revealed), revealed, meta)
        text = raw.strip()
        if not text:
            return PatientReply(CANNOT_ANSWER, (), {"raw": raw, "fallback": "empty model output"})
        if "can't answer" in text.lower() or "cannot answer" in text.lower():
            return PatientReply(CANNOT_ANSWER, (), {"raw": raw, "fallback": None})
        revealed = self.mapper.reply(query.case, text).revealed
        return PatientReply(text, revealed, {"raw": raw, "fallback": None})
