"""The attributes a clinical follow-up question is judged on, and a registry to add more.

ALFA (Li et al., 2025, arXiv 2502.14860) argues that "is this a good question?" is too coarse a target to
learn from, and decomposes it into theory-grounded attributes: three *general* ones that any
information-seeking question needs (clarity, focus, answerability) and three *clinical* ones
(medical accuracy, diagnostic relevance, avoiding diagnostic bias). Each attribute can then be scored,
synthesised and rewarded on its own. We add ``overall``, a single holistic score, as the baseline the
decomposition is compared against.

Every definition and rubric below is written for this project: the attribute list and its grouping come
from the paper, the wording does not. Each rubric has five levels (1 = worst, 5 = best) so that a judge
model, a reward model and a human annotator all work on the same scale.

Users add their own attribute (say, matching the patient's stated interests) without touching this
module::

    from mediq_env.attributes import Attribute, register_attribute
    register_attribute(Attribute(name="interest_personalisation", group="custom", title="Personalisation",
                                 definition="...", rubric={1: "...", 2: "...", 3: "...", 4: "...", 5: "..."}))

after which ``JudgeScorer(backend, attributes=["interest_personalisation"])`` and
``RewardConfig(weights={"interest_personalisation": 0.5})`` accept it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mediq_env.errors import ConfigError

__all__ = [
    "ALFA_ATTRIBUTES",
    "ATTRIBUTES",
    "CLINICAL_ATTRIBUTES",
    "GENERAL_ATTRIBUTES",
    "RUBRIC_LEVELS",
    "Attribute",
    "attribute_names",
    "get_attribute",
    "register_attribute",
    "unregister_attribute",
]

RUBRIC_LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
"""The rubric scale shared by every attribute."""

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


@dataclass(frozen=True)
class Attribute:
    """One quality attribute of a question.

    ``name`` is snake_case and is the key of the attribute's score everywhere (score records, reward
    weights, the ``attr:<name>`` reward component). It must not start with ``proxy_``: that prefix belongs
    to the model-free proxies of :class:`mediq_env.scoring.EnvironmentScorer`, which measure something
    related but different and are never mixed up with rubric scores.
    """

    name: str
    group: str
    title: str
    definition: str
    rubric: Mapping[int, str]
    builtin: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"attribute name must be snake_case (e.g. 'medical_accuracy'), got {self.name!r}")
        if self.name.startswith("proxy_"):
            raise ConfigError(f"attribute names must not start with 'proxy_' (reserved for proxies): {self.name!r}")
        if not self.group.strip() or not self.title.strip() or not self.definition.strip():
            raise ConfigError(f"attribute {self.name!r}: group, title and definition must be non-empty")
        levels = tuple(sorted(self.rubric))
        if levels != RUBRIC_LEVELS:
            raise ConfigError(f"attribute {self.name!r}: the rubric needs exactly the levels 1..5, got {list(levels)}")
        for level, text in self.rubric.items():
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"attribute {self.name!r}: rubric level {level} is empty")
        # Freeze the rubric so a registered attribute cannot change under a running judge.
        object.__setattr__(self, "rubric", MappingProxyType({k: self.rubric[k] for k in RUBRIC_LEVELS}))

    def rubric_text(self) -> str:
        """The rubric as numbered lines, highest level first (the order judges read it in)."""
        return "\n".join(f"{level}: {self.rubric[level]}" for level in reversed(RUBRIC_LEVELS))


_BUILTINS: tuple[Attribute, ...] = (
    Attribute(
        name="clarity",
        group="general",
        title="Clarity",
        definition=(
            "Whether the patient can tell at once what is being asked: plain words or explained terms, "
            "unambiguous references, and no room for two readings."
        ),
        rubric={
            1: "Incomprehensible or self-contradictory; the patient cannot tell what is wanted.",
            2: "Readable only with effort: unexplained jargon, vague references ('that thing') or a garbled sentence.",
            3: "Understandable, but one part is ambiguous or needs a term the patient may not know.",
            4: "Clear to a lay reader, with at most a small wording issue.",
            5: "Immediately clear, specific and phrased in words any patient understands.",
        },
        builtin=True,
    ),
    Attribute(
        name="focus",
        group="general",
        title="Focus",
        definition=(
            "Whether the question targets one piece of information. Bundling several questions, or asking "
            "for a whole history at once, makes the reply harder to give and to interpret."
        ),
        rubric={
            1: "A list of unrelated questions or an open request for everything the patient knows.",
            2: "Several distinct questions in one turn, only loosely connected.",
            3: "Mostly one topic, but with a second question or a broad tail attached.",
            4: "One topic, with at most a closely linked follow-up detail in the same breath.",
            5: "Exactly one well-delimited piece of information is asked for.",
        },
        builtin=True,
    ),
    Attribute(
        name="answerability",
        group="general",
        title="Answerability",
        definition=(
            "Whether this patient, in this conversation, could actually answer: it asks for something a "
            "lay person knows or can observe or find, not for a test result they do not have or a medical "
            "judgement only a clinician can make."
        ),
        rubric={
            1: "The patient could not possibly answer (needs expertise, equipment or information they lack).",
            2: "Answerable only in part or with a guess; mostly outside what the patient knows.",
            3: "Answerable with some effort, e.g. by looking up records or recalling details precisely.",
            4: "Easily answerable from the patient's own experience, with minor uncertainty.",
            5: "The patient can answer directly and confidently from what they know or can observe.",
        },
        builtin=True,
    ),
    Attribute(
        name="medical_accuracy",
        group="clinical",
        title="Medical accuracy",
        definition=(
            "Whether the medical content the question carries or presupposes is correct: no false premise, "
            "no wrong association between a symptom, a test or a drug and a condition."
        ),
        rubric={
            1: "Rests on a clearly false medical premise or would mislead the patient.",
            2: "Contains a notable medical error or an outdated notion.",
            3: "Broadly sound, with an imprecise or debatable medical implication.",
            4: "Medically correct, with at most a minor imprecision.",
            5: "Entirely consistent with current medical knowledge.",
        },
        builtin=True,
    ),
    Attribute(
        name="diagnostic_relevance",
        group="clinical",
        title="Diagnostic relevance",
        definition=(
            "Whether the answer would change what the clinician believes or does next: it should separate "
            "plausible diagnoses or decide management, not collect information that changes nothing."
        ),
        rubric={
            1: "Irrelevant to the presenting problem; no answer would change the assessment.",
            2: "Tangential: touches the case but would barely shift any diagnosis.",
            3: "Relevant background that helps a little in narrowing the diagnosis.",
            4: "Clearly useful: the answer would shift the likelihood of important diagnoses.",
            5: "Decisive: the answer would rule a leading diagnosis in or out or settle the next step.",
        },
        builtin=True,
    ),
    Attribute(
        name="avoiding_diagnostic_bias",
        group="clinical",
        title="Avoiding diagnostic bias",
        definition=(
            "Whether the question keeps alternative diagnoses open instead of anchoring on one early guess: "
            "it explores competing explanations, or tests the leading one in a way that could disconfirm it, "
            "and does not lead the patient towards a preferred answer."
        ),
        rubric={
            1: "Anchored and leading: presumes a diagnosis and steers the patient to confirm it.",
            2: "Seeks only confirmation of one favoured diagnosis, ignoring obvious alternatives.",
            3: "Neutral wording, but explores only one line of diagnosis.",
            4: "Helps weigh the favoured diagnosis against at least one alternative.",
            5: "Deliberately discriminates between competing diagnoses, or could refute the leading one, without leading.",
        },
        builtin=True,
    ),
    Attribute(
        name="overall",
        group="overall",
        title="Overall quality",
        definition=(
            "A single holistic judgement of how good this follow-up question is at this point of the "
            "conversation, taking everything into account. The baseline the decomposed attributes are "
            "compared against."
        ),
        rubric={
            1: "A bad question: confusing, pointless or harmful to ask now.",
            2: "A weak question with a serious flaw.",
            3: "An acceptable question with clear room for improvement.",
            4: "A good question a competent clinician might ask.",
            5: "An excellent question: what an expert clinician would ask next.",
        },
        builtin=True,
    ),
)

_REGISTRY: dict[str, Attribute] = {a.name: a for a in _BUILTINS}

ATTRIBUTES: Mapping[str, Attribute] = MappingProxyType(_REGISTRY)
"""Every registered attribute by name (a live, read-only view: registered attributes appear here)."""

GENERAL_ATTRIBUTES: tuple[str, ...] = ("clarity", "focus", "answerability")
CLINICAL_ATTRIBUTES: tuple[str, ...] = ("medical_accuracy", "diagnostic_relevance", "avoiding_diagnostic_bias")
ALFA_ATTRIBUTES: tuple[str, ...] = GENERAL_ATTRIBUTES + CLINICAL_ATTRIBUTES
"""The six ALFA attributes, general first (``overall`` is not one of them)."""


def register_attribute(attribute: Attribute, *, replace: bool = False) -> Attribute:
    """Add ``attribute`` to the registry (``replace=True`` to redefine a non-built-in one); returns it.

    Built-in attributes cannot be replaced: results that name ``clarity`` must mean the same rubric
    everywhere. Register a new name instead.
    """
    existing = _REGISTRY.get(attribute.name)
    if existing is not None:
        if existing.builtin:
            raise ConfigError(f"{attribute.name!r} is a built-in attribute and cannot be replaced; use a new name")
        if not replace:
            raise ConfigError(f"attribute {attribute.name!r} is already registered (pass replace=True to redefine it)")
    _REGISTRY[attribute.name] = attribute
    return attribute


def unregister_attribute(name: str) -> None:
    """Remove a user-registered attribute (built-ins stay)."""
    attr = get_attribute(name)
    if attr.builtin:
        raise ConfigError(f"{name!r} is a built-in attribute and cannot be removed")
    del _REGISTRY[name]


def get_attribute(name: str) -> Attribute:
    """The attribute called ``name``; a :class:`ConfigError` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown attribute {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def attribute_names(group: str | None = None) -> tuple[str, ...]:
    """Registered attribute names (of one ``group`` if given), in registration order."""
    return tuple(n for n, a in _REGISTRY.items() if group is None or a.group == group)
