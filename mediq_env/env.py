"""``MediQEnv``: the interactive clinical QA task as a Gymnasium environment.

Episode protocol
----------------
* ``reset(seed, options={"case_id": ...})`` opens a case (drawn with ``self.np_random`` unless named, or
  ``{"case_index": i}``); its options are re-lettered with ``self.np_random`` (``shuffle_options=True``,
  the default). Options are validated before anything changes, so a refused reset leaves the env as it was.
* Facts the initial information already states (``Case.known_facts``) are known from the start: they are
  never reported as ``new_facts`` nor counted in ``n_facts_revealed``.
* Each ``step(action)`` is one turn (grammar in :mod:`mediq_env.actions`): a question is answered by the
  patient; a final answer ends the episode (``terminated=True``); an invalid action gets a message
  explaining why and uses up a turn.
* Questions and invalid actions share the budget of ``max_questions`` turns. When it is used up, the
  observation demands an answer: that one extra *forced-answer turn* ends the episode either way — with an
  answer (``terminated=True``, ``info["forced"] = True``) or, failing one, with no answer
  (``truncated=True``, scored as incorrect).
* The reward is the sum of the reward function's named components, each reported in
  ``info["reward_components"]``.

What the doctor may see
-----------------------
The observation and ``info`` carry only what a doctor may see: the shown case (initial information,
question, options in the shown lettering), the dialogue, the budget, and per question the reply and the
indices of the facts it newly revealed (``new_facts``, ``n_facts_revealed``). The grading data — the
answer, the original lettering (``option_order``), how many facts the case hides (``n_facts``,
``n_facts_known``), the revealed fact texts (``facts_revealed``) — is added to ``info`` only on the step
that ends the episode. Graders, benchmarks and trainers read the rest through :attr:`MediQEnv.grader`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mediq_env.actions import ParsedAction, parse_action
from mediq_env.case import LETTERS, Case, load_cases
from mediq_env.cases import builtin_cases
from mediq_env.dialogue import DialogueState, render_observation
from mediq_env.errors import ConfigError, EnvStateError
from mediq_env.patient import Patient, PatientQuery, PatientReply, Turn, default_patient
from mediq_env.rewards import CorrectnessReward, RewardFunction, StepEvent

__all__ = ["GraderView", "MediQEnv", "text_charset"]

MAX_OBSERVATION_CHARS = 200_000


@lru_cache(maxsize=1)
def text_charset() -> str:
    """Every printable Unicode character plus newline and tab: real clinical text fits (’ ° µ é ≥ …)."""
    return "\n\t" + "".join(ch for cp in range(0x20, 0x30000) if (ch := chr(cp)).isprintable())


@lru_cache(maxsize=8)
def _text_space_template(max_length: int) -> spaces.Text:
    return spaces.Text(max_length=max_length, min_length=1, charset=text_charset())


def _text_space(max_length: int) -> spaces.Text:
    # Building a Text space over ~140k characters takes ~0.1 s; a shallow copy shares the character tables
    # (read-only) but gets its own RNG, so each env still owns its spaces.
    return copy.copy(_text_space_template(max_length))


def _sanitise(text: str) -> str:
    # Control characters (other than newline and tab) and odd separators would fall outside the Text space.
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in text)


@dataclass(frozen=True)
class GraderView:
    """Everything about the current episode that only a grader may know.

    **Agents must not read this**: it holds the answer and every hidden fact. It exists for benchmarks,
    reward functions, trainers and the terminal game, which score an episode. Reach it as
    ``env.grader`` (``env.unwrapped.grader`` through Gymnasium wrappers).

    Attributes:
        case: the case as shown — options in the shown lettering, ``answer`` the shown letter.
        original_case: the case as loaded from the file.
        option_order: ``option_order[i]`` is the file's letter of the option shown as letter i.
        n_facts: how many facts the case has.
        known_facts: indices of the facts the initial information states (known from the start).
        revealed: indices of the facts revealed by questions so far, in order (known facts excluded).
    """

    case: Case
    original_case: Case
    option_order: tuple[str, ...]
    n_facts: int
    known_facts: tuple[int, ...]
    revealed: tuple[int, ...]


@dataclass
class _Pending:
    """A step split in two so that batched envs can answer every pending question in one patient call."""

    parsed: ParsedAction
    forced_turn: bool
    query: PatientQuery | None = None


class MediQEnv(gym.Env[str, Any]):
    """Interactive clinical question answering: ask the patient, then answer the multiple-choice question.

    Args:
        cases: cases to draw from — a list of :class:`Case`, a path to a cases file in any MediQ variant,
            or None for the built-in cases.
        patient: the patient simulator (default: :func:`~mediq_env.patient.default_patient`, the faithful patient).
        max_questions: turns (questions or invalid actions) before the forced-answer turn.
        reward_fn: returns named reward components per step (default :class:`CorrectnessReward`).
        shuffle_options: re-letter each case's options at reset, using the env's RNG (default True, so a
            policy cannot learn the file's answer letters; pass False to keep the file's lettering).
        max_action_chars: longer actions are invalid.
    """

    metadata = {"render_modes": ["ansi", "human"]}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self,
        cases: Sequence[Case] | str | Path | None = None,
        *,
        patient: Patient | None = None,
        max_questions: int = 10,
        reward_fn: RewardFunction | None = None,
        shuffle_options: bool = True,
        max_action_chars: int = 2000,
        render_mode: str | None = None,
    ) -> None:
        if max_questions < 0:
            raise ConfigError(f"max_questions must be >= 0, got {max_questions}")
        if max_action_chars < 1:
            raise ConfigError(f"max_action_chars must be >= 1, got {max_action_chars}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        if cases is None:
            self.cases: list[Case] = builtin_cases()
        elif isinstance(cases, (str, Path)):
            self.cases = load_cases(cases)
        else:
            self.cases = list(cases)
        if not self.cases:
            raise ConfigError("the environment needs at least one case")
        self._by_id = {c.id: i for i, c in enumerate(self.cases)}
        if len(self._by_id) != len(self.cases):
            raise ConfigError("case ids must be unique")
        self.patient: Patient = patient if patient is not None else default_patient()
        self.max_questions = max_questions
        self.reward_fn: RewardFunction = reward_fn if reward_fn is not None else CorrectnessReward()
        self.shuffle_options = shuffle_options
        self.max_action_chars = max_action_chars
        self.render_mode = render_mode
        self.observation_space = _text_space(MAX_OBSERVATION_CHARS)
        self.action_space = _text_space(max_action_chars)
        self._case: Case | None = None
        self._original_case: Case | None = None
        self._option_order: list[str] = []
        self._turns: list[Turn] = []
        self._revealed: list[int] = []
        self._revealed_set: set[int] = set()
        self._known: frozenset[int] = frozenset()
        self._turn = 0
        self._used = 0
        self._questions = 0
        self._done = True
        self._last_obs = ""

    # -- public API -------------------------------------------------------------------------------------

    @property
    def grader(self) -> GraderView:
        """The grader's view of the current episode (answer, hidden facts). Agents must not read it."""
        if self._case is None or self._original_case is None:
            raise EnvStateError("no episode yet: call reset() first")
        return GraderView(
            case=self._case,
            original_case=self._original_case,
            option_order=tuple(self._option_order),
            n_facts=len(self._case.facts),
            known_facts=tuple(sorted(self._known)),
            revealed=tuple(self._revealed),
        )

    @property
    def case(self) -> Case:
        """Deprecated: the shown case holds the answer and every fact; use ``env.grader.case``."""
        warnings.warn(
            "MediQEnv.case is deprecated: it holds the answer and every hidden fact. "
            "Graders use env.grader.case; agents use the observation or info['state'].",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.grader.case

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        # Options are checked before the RNG is reseeded, so that a refused reset changes nothing.
        index = self._case_index(options)
        super().reset(seed=seed)
        if index is None:
            index = int(self.np_random.integers(len(self.cases)))
        case = self.cases[index]
        self._original_case = case
        self._option_order = list(case.options)
        if self.shuffle_options:
            self._option_order = [self._option_order[i] for i in self.np_random.permutation(len(self._option_order))]
            case = case.with_options_permuted(self._option_order)
        self._case = case
        self._known = frozenset(case.known_facts)
        self._turns = []
        self._revealed = []
        self._revealed_set = set(self._known)
        self._turn = 0
        self._used = 0
        self._questions = 0
        self._done = False
        obs = self._observation()
        info = self._info(reward_components={})
        return obs, info

    def _case_index(self, options: Any) -> int | None:
        """The case index that reset ``options`` name (None: draw one), or ConfigError; changes nothing."""
        if options is None:
            return None
        if not isinstance(options, Mapping):
            raise ConfigError(f"reset options must be a dict such as {{'case_id': ...}}, got {type(options).__name__}")
        unknown = set(options) - {"case_id", "case_index"}
        if unknown:
            raise ConfigError(f"unknown reset options {sorted(map(str, unknown))}; use 'case_id' or 'case_index'")
        if "case_id" in options and "case_index" in options:
            raise ConfigError("give either 'case_id' or 'case_index' in reset options, not both")
        if "case_id" in options:
            key = options["case_id"]
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise ConfigError(f"reset option case_id must be a string, got {type(key).__name__}")
            if str(key) not in self._by_id:
                raise ConfigError(f"no case with id {str(key)[:100]!r} ({len(self.cases)} cases loaded)")
            return self._by_id[str(key)]
        if "case_index" in options:
            index = options["case_index"]
            # bool is an int and 1.9 would truncate to 1: both would silently select the wrong case.
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                raise ConfigError(f"reset option case_index must be an integer, got {type(index).__name__} {index!r:.50}")
            if not 0 <= index < len(self.cases):
                raise ConfigError(f"case_index {index} is out of range (0..{len(self.cases) - 1})")
            return int(index)
        return None

    def step(self, action: Any) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        pending = self._begin(action)
        reply = self.patient.reply_batch([pending.query])[0] if pending.query is not None else None
        return self._finish(pending, reply)

    def state(self) -> DialogueState:
        """The doctor's view of the current episode."""
        case = self._shown()
        return DialogueState(
            case_id=case.id,
            initial_info=case.initial_info,
            question=case.question,
            options=dict(case.options),
            turns=tuple(self._turns),
            questions_left=max(self.max_questions - self._used, 0),
            must_answer=self._used >= self.max_questions,
        )

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_obs
        if self.render_mode == "human":
            print(self._last_obs)
        return None

    # -- the two halves of a step (used by BatchedEnv to batch the patient) -----------------------------

    def _begin(self, action: Any) -> _Pending:
        if self._done or self._case is None:
            raise EnvStateError(
                "step() called on a finished episode: call reset() to start a new one"
                if self._case is not None
                else "step() called before reset()"
            )
        forced_turn = self._used >= self.max_questions
        parsed = parse_action(action, self._case.options, self.max_action_chars)
        query = None
        if parsed.kind == "question" and not forced_turn:
            query = PatientQuery(self._case, parsed.text, tuple(self._turns))
        return _Pending(parsed, forced_turn, query)

    def _finish(self, pending: _Pending, reply: PatientReply | None) -> tuple[str, float, bool, bool, dict[str, Any]]:
        case = self._shown()
        parsed = pending.parsed
        self._turn += 1
        terminated = truncated = False
        extra: dict[str, Any] = {"action_type": parsed.kind, "invalid_action": parsed.error, "forced": pending.forced_turn}
        new_facts: tuple[int, ...] = ()
        if parsed.kind == "answer":
            assert parsed.letter is not None
            correct = parsed.letter == case.answer
            event = StepEvent("answer", case, self._turn, parsed.text, letter=parsed.letter, correct=correct, forced=pending.forced_turn)
            terminated = True
            extra.update(self._outcome(parsed.letter, correct, parsed.confidence))
        elif pending.forced_turn:
            # The forced-answer turn passed without an answer: the episode ends unanswered.
            reason = parsed.error or "a question was asked on the forced-answer turn"
            extra["invalid_action"] = reason
            event = StepEvent("timeout", case, self._turn, parsed.text, correct=False, forced=True)
            truncated = True
            extra.update(self._outcome(None, False, None))
        elif parsed.kind == "question":
            assert reply is not None
            new_facts = tuple(i for i in reply.revealed if i not in self._revealed_set)
            self._revealed.extend(new_facts)
            self._revealed_set.update(new_facts)
            self._turns.append(Turn(parsed.text, reply.text, reply.revealed))
            self._used += 1
            self._questions += 1
            event = StepEvent("question", case, self._turn, parsed.text, reply=reply, new_facts=new_facts)
        else:
            message = f"[Invalid action: {parsed.error}. {self._grammar_hint()}]"
            self._turns.append(Turn(parsed.text or "(invalid action)", message, ()))
            self._used += 1
            event = StepEvent("invalid", case, self._turn, parsed.text)
        components = self.reward_fn(event)
        reward = float(sum(components.values()))
        self._done = terminated or truncated
        obs = self._observation()
        info = self._info(reward_components=components, new_facts=new_facts, **extra)
        if reply is not None:
            info["reply"] = reply.text
        return obs, reward, terminated, truncated, info

    # -- helpers ----------------------------------------------------------------------------------------

    def _shown(self) -> Case:
        if self._case is None:
            raise EnvStateError("no episode yet: call reset() first")
        return self._case

    def _grammar_hint(self) -> str:
        return f"Ask a question, or answer with 'ANSWER: <letter>' where the letter is one of {', '.join(self._shown().options)}"

    def _outcome(self, letter: str | None, correct: bool, confidence: float | None) -> dict[str, Any]:
        case = self._shown()
        original = None if letter is None else self._option_order[LETTERS.index(letter)]
        return {
            "answer": letter,
            "answer_original": original,
            "correct": correct,
            "correct_answer": case.answer,
            "confidence": confidence,
            # Grading fields, given only now that the episode is over.
            "option_order": list(self._option_order),
            "n_facts": len(case.facts),
            "n_facts_known": len(self._known),
            "facts_revealed": [case.facts[i] for i in self._revealed],
        }

    def _observation(self) -> str:
        obs = _sanitise(render_observation(self.state()))
        if len(obs) > MAX_OBSERVATION_CHARS:
            # Keep the head (case and question) and the most recent dialogue.
            head = MAX_OBSERVATION_CHARS // 4
            obs = obs[:head] + "\n[...]\n" + obs[-(MAX_OBSERVATION_CHARS - head - 7) :]
        self._last_obs = obs
        return obs

    def _info(self, *, reward_components: dict[str, float], new_facts: tuple[int, ...] = (), **extra: Any) -> dict[str, Any]:
        # Only what the doctor may see; the grading fields come with the final step (see _outcome).
        case = self._shown()
        info: dict[str, Any] = {
            "case_id": case.id,
            "turn": self._turn,
            "questions_asked": self._questions,
            "questions_left": max(self.max_questions - self._used, 0),
            "must_answer": self._used >= self.max_questions and not self._done,
            "options": dict(case.options),
            "new_facts": list(new_facts),
            "n_facts_revealed": len(self._revealed),
            "reward_components": dict(reward_components),
            "state": self.state(),
        }
        info.update(extra)
        return info

    @property
    def revealed_facts(self) -> list[int]:
        """Indices of the case facts revealed so far by questions, in order (facts known at reset excluded)."""
        return list(self._revealed)
