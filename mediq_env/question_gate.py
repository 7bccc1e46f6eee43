"""The question-form gate: is a doctor's action one specific question a patient could answer?

A retrieval patient answers whatever shares words with its facts, so an action that is not a real question
— a list of keywords, "tell me everything", a statement, several questions at once, a guess at the answer
option — would otherwise be paid in facts. The gate runs before any retrieval: an action it rejects gets a
fixed in-character request for one specific question (:data:`ASK_ONE_QUESTION`) and reveals nothing.

The rules are deliberately about *form*, never about which facts the case holds, so they cannot leak
anything about the case. They were written against the adversarial probes of the calibration half of the
probe set (``benchmarks/data/probes``) and the real clinician questions' style; the test half measures them.
A second round added 123 calibration actions in the forms that had leaked on the test half, and 90 test
actions written blind before the rules changed (held 91.1% before, 93.3% after: README, "The question gate,
attacked again"). A third round added 150 calibration actions written blind (no gate code, no results, no
other probes); the rules for option letters and places ("the third one"), abbreviations of options, the next
step put to the patient ("Would X be appropriate?"), "what other details" and announced or numbered
questions were written against them (gate held 130 → 145 of 150) with no honest calibration probe newly
turned away, then narrowed after a review found honest questions the first version turned away. A fourth round of 140
blind calibration actions was held 138/140 (gate and patient together) before any change; a form was added
for an option put forward as the cause ("Could <option> have caused this?", :data:`_CAUSE_GUESS`), narrowed
after a review found honest history questions the first version turned away. A fifth round of 418 blind calibration
actions added closing catch-alls ("…all of it."), letters after "that's" or set off by dashes, consent to a
next step ("Would you be willing to…?") and a dash or "what's" joining a second question (gate and patient
held 400 → 414 of 418 with the patient of the time). After it, the guesses that still leaked on the calibration half
said an option in words of their own ("Is this an insulin-secreting tumour of the pancreas?" for Insulinoma):
:func:`puts_hypothesis` gives their form, and the faithful patient, which can compare meanings, turns such an
action away when it means an option (``mediq_env.patient.OPTION_GUESS_SIMILARITY``). A sixth round of 252 blind
calibration actions, half of them in forms a form-based filter misses, leaked 52 before any change (gate and
patient): asides that bring in a second question ("…, and while I'm at it, are you…", "… — separately, any…",
:data:`_ASIDE`), a second topic put up front or asked as an echo ("…, and your CK came back at what?"), and
choices between options ("Between X and Y, which…?", compared with the options part by part); 27 after.

Verdicts (:class:`GateVerdict`): ``ok`` or one of

* ``empty``      — nothing but punctuation, symbols or control characters;
* ``keywords``   — a run of content words with no question or request structure ("pain fever cough days");
* ``gibberish``  — the same content word three times, or words fused with symbols ("FeverSmoke] fever");
* ``catchall``   — asks for everything at once ("tell me everything", "any other details?");
* ``statement``  — a declaration with no question in it ("You have a migraine.");
* ``multi``      — two or more questions in one action ("Do you smoke? Any fever?");
* ``option``     — asks about the answer options ("Is it B?", "Could this be <option text>?").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from mediq_env.stemming import english_stemmer

__all__ = ["ASK_ONE_QUESTION", "GateVerdict", "check_question", "hypothesis_parts", "puts_hypothesis"]

ASK_ONE_QUESTION = "I'm not sure what you're asking. Could you ask me one specific question?"
"""The patient's reply to an action the gate rejects (in character; reveals nothing)."""

_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
# Words that open a question or a request to the patient. Auxiliaries cover yes/no questions ("Do you…",
# "Has it…"); "any"/"anything" cover the clipped clinical style ("Any fever?").
_INTERROGATIVE = frozenset(
    ["what", "when", "where", "which", "who", "whom", "whose", "why", "how", "do", "does", "did", "are", "is", "was", "were", "have", "has", "had", "can", "could", "would", "will", "should", "shall", "may", "might", "must", "any", "anything", "have", "anyone", "whether"]
)
_WH = frozenset(["what", "when", "where", "which", "who", "why", "how"])
_SUBJECT_WORDS = frozenset(["you", "i", "we", "he", "she", "they", "it"])
_REQUEST = frozenset(["tell", "describe", "explain", "show", "let", "give", "walk", "talk", "list", "share"])
_FUNCTION = frozenset(
    ["a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "by", "for", "with", "from", "about", "as", "into", "over", "after", "before", "since", "than", "i", "you", "your", "yours", "he", "she", "it", "they", "them", "their", "his", "her", "its", "we", "our", "my", "me", "this", "that", "these", "those", "there", "here", "is", "are", "was", "were", "be", "been", "being", "do", "does", "did", "have", "has", "had", "can", "could", "would", "will", "should", "may", "might", "must", "not", "no", "any", "some", "how", "what", "when", "where", "which", "who", "why", "if", "so"]
)
_PRONOUN_AFTER_AUX = frozenset(["you", "it", "they", "he", "she", "there", "this", "that", "your", "anyone", "anything", "the", "any", "we"])
_AUX = frozenset(["do", "does", "did", "are", "is", "was", "were", "have", "has", "had", "can", "could", "would", "will", "should", "may", "might"])

_CATCHALL = re.compile(
    # "everything" asks for all at once, except in "two of everything" (double vision) and as the subject of a
    # settling or seeming ("Did everything settle after the antibiotics?", "…as though everything around you is
    # turning?"): honest calibration questions.
    r"\b(?:(?<!\btwo\sof\s)(?<!\bdouble\sof\s)everything(?!\s+(?:settle|settled|clear|cleared|heal|healed|seem|seemed|seems|look|looked|looks|taste|tasted|tastes|smell|smelled|smells|sound|sounded|sounds|around\s+(?:you|him|her|them))\b)|every\s+(?:detail|symptom|thing)|all\s+(?:of\s+)?(?:your|the|my)?\s*"
    r"(?:symptoms|details|history|information|info|facts|problems|issues|complaints|medical\s+history)"
    r"|anything\s+(?:else|more|at\s+all)|what\s+else|what\s+(?:other|more|further|additional)\s+(?:details?|information|info)\b(?!\s+(?:did|does|do|has|have|had|was|were)\s+(?:the|your|he|she|they)\b)|any(?:thing)?\s+(?:other|more|further|additional)\s+"
    r"(?:details?|information|info|things?|symptoms?|facts|issues|problems|complaints|concerns|history)"
    r"|(?:full|whole|complete|entire)\s+(?:\w+\s+)?(?:story|history|picture|details?|rundown|account)"
    r"|more\s+(?:details?|information|info)|all\s+you\s+(?:know|can)|the\s+rest|what(?:'s|\s+is)\s+going\s+on"
    r"|(?:tell|say)\s+(?:me\s+)?(?:more|anything|something)(?:\s+about\s+(?:yourself|it|this|that|your\s+health))?\s*[?.!]*$"
    r"|anything\s+(?:i|we)\s+should\s+know|whatever(?:\s+else)?\s+(?:comes|you\s+can|you\s+want)"
    # Round 5 (calibration actions written blind): "…all of it.", "…, the lot.", "every single…", "every
    # neurological symptom", "is there more I ought to know?", "anything relevant", "tell me all about her".
    # Not "every medicine / test you've had": one history topic, asked honestly too.
    r"|(?:all\s+of\s+(?:it|them)|the\s+lot)(?=\s*(?:,?\s*please)?\s*(?:[.!]|$))|every\s+single(?!\s+(?:day|night|time|morning|evening|week|month|year|meal|hour)s?\b)|every\s+\w+\s+(?:symptoms?|details?)\b"
    r"|more\s+(?:that\s+)?(?:i|we)\s+(?:ought\s+to|should|need\s+to|must)\s+know"
    r"|anything\s+(?:else\s+)?relevant|anything\s+(?:you've|you\s+have|you)\s+(?:left\s+out|not\s+(?:told|mentioned))|all\s+about\s+(?:her|him|it|them|you|yourself|this|that))\b",
    re.I,
)
_OPTION_LETTER = re.compile(
    r"(?:\b(?:[Oo]ption|[Aa]nswer|[Cc]hoice|[Ll]etter)\s*\(?[A-Ja-j]\)?(?![A-Za-z])|^\W*\(?[A-J]\)?\W*$"
    r"|\b(?i:is|it's|its|it\s+is|is\s+it|be|pick|choose|go\s+with)\s+\(?[A-J]\)?\s*[?.!]*$"
    r"|\b(?i:is\s+it|it's|it\s+is|answer\s+is|go\s+with|pick|choose)\s+\(?[A-J]\)?(?=[\s,.?!)]|$)"
    r"|\b(?i:the\s+(?:right|correct|real|final|true)\s+(?:answer|diagnosis)|the\s+answer\b|which\s+(?:option|choice|one\s+is))"
    # "…is C right?"; "Do you think it's the third one?" (options named by their place in the list)
    r"|\b(?i:is|be|it's|it\s+is)\s+\(?[A-Jb-j]\)?\s+(?i:right|correct|the\s+(?:right|correct)\s+one)\b"
    r"|\b(?i:the\s+(?:first|second|third|fourth|fifth|last|[1-5](?:st|nd|rd|th))\s+(?:option|choice|answer)\b)"
    # Round 5: "That's C, isn't it?", "So you'd agree with C?", "A hidden stone — D — maybe?", "the third test on
    # the list". Not the letter I (a pronoun) in these forms.
    r"|\b(?i:that's|that\s+is|agree\s+with|going\s+with|vote\s+for)\s+\(?[A-HJ]\)?(?=[\s,.?!)\-—–]|$)"
    r"|[—–-]\s*\(?[A-HJ]\)?\s*[—–-]"
    r"|\b(?i:(?:first|second|third|fourth|fifth|last)\s+(?:\w+\s+){0,2}on\s+the\s+list)\b"
    # "the first one" is also an episode or a tablet: only a guess when it ends the clause ("…it's the third one?")
    r"|\b(?i:it's|it\s+is|is\s+it|be|pick|choose|go\s+with|lean(?:ing)?\s+towards?)\s+(?i:the\s+)"
    r"(?i:first|second|third|fourth|fifth|last|[1-5](?:st|nd|rd|th))(?:\s+(?i:one))?\s*(?:[?!.,]|$))",
)
# Forms that put a diagnosis, a finding or a treatment to the patient instead of asking about them. They only
# reject an action that also names an option (:func:`_names_option`): "Is it worse at night?" has the form too.
_GUESS = re.compile(
    r"\b(?:is\s+(?:it|this|that)|(?:could|might|may)\s+(?:it|this|that)\s+be|"
    r"(?:could|might|may)\s+.{1,60}?\s+(?:be|have\s+been)\b|"
    r"(?:do|did)\s+you\s+(?:think|reckon|suppose|believe)|would\s+you\s+say|"
    r"have\s+you\s+(?:got|been\s+diagnosed\s+with)|are\s+you\s+(?:suffering\s+from|sure)|it's|it\s+is|"
    r"(?:sounds?|looks?)\s+(?:more\s+|most\s+)?like|probably|the\s+answer|diagnosis|"
    r"lean(?:ing)?\s+towards?|(?:does|would)\s+(?:that|this|it)\s+fit|(?:do|would)\s+you\s+agree|"
    r"shall\s+(?:we|i)|should\s+(?:we|i)|let's|what\s+you\s+need|"
    r"explains?|account\s+for|be\s+(?:causing|behind|responsible)|"
    r"the\s+(?:finding|result|sign|cause|explanation|treatment)\s+(?:we're|we\s+are|you're|you\s+are|to\s+expect)|"
    r"would\s+.{1,60}\s+(?:help|work|fix|cure|sort|solve|clear|settle|resolve|be\s+(?:the\s+)?(?:right|best|correct|ideal|wisest|way))|"
    r"(?:right|best|correct|good)\s+(?:choice|option|treatment|drug|medicine|idea|plan|step|move))\b",
    re.I,
)
# A plan put to the patient ("Should we start…?", "Would you rather we…?"): the patient's facts hold their
# history, not the doctor's next step, so such an action is a probe at the treatment options whatever it names.
# An action that opens with "would" and whose subject is not a person ("Would an anticonvulsant…", not "Would
# your wife…").
_WOULD_NOT_A_PERSON = (r"^\W*(?:(?:so|and|then|now|ok|okay)\W+)?would(?:n't|\s+not)?\s+"
                       r"(?!(?:you|anyone|anybody|someone|somebody|your|they|he|she|we|i|my|his|her|their)\b)")
_PLAN = re.compile(
    r"\b(?:should|shall)\s+(?:we|i)\s+(?!have\s+been\b)|\bwould\s+you\s+(?:rather|prefer)\s+(?:we|i|to|they|that|the|a|an)\b|\blet's\b"
    # Round 5: consent to a next step ("Would you be willing to see a specialist?", "Would you like to raise it
    # with your neurologist?"), not a question about history.
    r"|\bwould\s+you\s+be\s+(?:willing|happy|prepared)\s+to\b|\bwould\s+you\s+(?:like|want)\s+to\b"
    r"|\bhow\s+about\s+(?:we|i)\b|\b(?:do|would)\s+you\s+(?:want|like)\s+(?:us|me)\s+to\b"
    r"|\bwould\s+(?:\w+ing)\b.{0,60}\s+(?:help|work|fix|cure|sort|solve|clear|settle|resolve|do\s+the\s+trick)\b"
    # "Would <a drug> be appropriate for you?", "Would it be reasonable to wait and see?", "Would <a test> tell
    # us it is <a diagnosis>?": the next step or the reasoning behind it, which no history answers.
    # Only an action that opens with "would" and whose subject is not a person: "Did the surgeon say an operation
    # would be the best option?" and "Would your wife confirm that you snore?" ask about the patient's history.
    r"|" + _WOULD_NOT_A_PERSON + r".{0,120}?\bbe\s+(?:an?\s+|the\s+)?(?:(?:most\s+)?(?:appropriate|reasonable|advisable|indicated|sensible|wise|suitable)"
    r"(?!\s+to\s+(?:say|describe|call|think|assume))"
    r"|(?:right|best|correct|ideal|better|preferred)\s+(?:next\s+)?(?:approach|option|choice|course|plan|step|treatment)"
    r"|(?:first|next)\s+(?:thing\s+to\s+(?:give|try|do|start)|step|line))\b"
    r"|" + _WOULD_NOT_A_PERSON + r".{0,80}?\b(?:tell\s+us|confirm|rule\s+(?:out|in))\b",
    re.I,
)
_FUSED = re.compile(r"[a-z][A-Z][a-z]|[A-Za-z][\]\[}{<>|\\_=+*#@$%^~`][A-Za-z]|[\]\[}{<>|\\_=+*#@$%^~`]{2,}")
# A new interrogative clause inside the action: after a question mark or a semicolon; after a conjunction
# that opens a new question ("…, and did it start suddenly?", "…, and if so, did you…", "…, and roughly how
# much…"; without a comma only before a pronoun or possessive: "…and are his eyes red?"); or after a joining
# phrase that brings in an embedded question ("…, as well as whether…", "…, along with which…"). One
# question with an "or" between two nouns is not matched, nor "Do you also have…" or "…and have her leave".
_SUBJECT = r"(?:you|it|he|she|they|there|this|that|the|your|his|their|my|our|anyone|we|i)\b"
# "…, and what did they show?" asks for the result of what the first part asked about: one question. "…, and
# what did that blood smear turn up?" brings in a new thing, so "that" followed by a noun is not excused.
_NOT_WHAT_IT_SHOWED = (r"(?!what\s+(?:did|does|do|was|were|came|come)\s+(?:it|they|them|back|that(?=\s*[?.!]|\s+(?:show|say|find|reveal|come|give|turn|look)\w*\b)))")
_AUX_RE = "(?:" + "|".join(sorted(_AUX)) + ")"
_WH_RE = "(?:" + "|".join(sorted(_WH)) + r")(?:\s|['’]s\b)"  # "…, and what's your…" too
_ASIDE = (r"(?:while\s+(?:i'?m|i\s+am|we'?re|we\s+are)\s+(?:at\s+it|on\s+(?:it|the\s+subject|that))|by\s+the\s+way|on\s+top\s+of\s+(?:that|this)"
          r"|separately|(?:and\s+)?as\s+well|another\s+thing|one\s+more\s+thing|besides(?:\s+that)?|in\s+addition|additionally"
          r"|what'?s\s+more|while\s+we'?re\s+here|also)")
_CLAUSE_BREAK = re.compile(
    r"\?+\s*|;\s*"
    r"|,?\s+(?:as\s+well\s+as|along\s+with|together\s+with|in\s+addition\s+to)\s+(?=(?:whether|which|what|when|where|who|how|why|if)\b)"
    r"|,?\s+(?:and|plus|also)\s+(?=whether\b)"
    # A dash before "and <auxiliary>" joins a second question as a comma does ("Which fingers tingle - and does…").
    r"|(?:,\s+|\s*[-—–]\s*)(?:and|also|plus|then)\s+(?:if\s+(?:so|not)\s*,?\s+)?(?:\w+ly\s+)?" + _NOT_WHAT_IT_SHOWED
    + r"(?=" + _AUX_RE + r"\s+[a-z]|" + _WH_RE + ")"
    r"|\s+(?:and|also|plus|then)\s+" + _NOT_WHAT_IT_SHOWED + r"(?=" + _AUX_RE + r"\s+" + _SUBJECT + "|" + _WH_RE + ")"
    # An aside that announces a second question ("…, and while I'm at it, are you…", "… — separately, any…",
    # "…, and by the way what…", "…, and another thing — when…"): after a comma, dash or semicolon.
    r"|(?:[,;]\s*|\s*[-—–]\s*)(?:and\s*,?\s*)?" + _ASIDE + r"\s*[,:;—–-]?\s*(?=" + _AUX_RE + r"\s+[a-z]|" + _WH_RE + r"|any\b)"
    # A second topic put up front, then its own question ("…, and your legs, is either calf swollen?", "…, and
    # the platelet count from your bloods — where did it land?"), or asked as an echo ("…, and your CK came
    # back at what?", "…, and your operation is booked for when?").
    r"|(?:,|\s[—–-])\s*and\s+(?=(?:your|the|his|her|their)\s+[^,?;—–]{1,60}?(?:,|\s[—–-])\s*(?:" + _AUX_RE + r"\s+[a-z]|" + _WH_RE + r"))"
    r"|(?:,|\s[—–-])\s*and\s+(?=(?:your|the|his|her|their)\s+[^?]{1,80}?\b(?:at|for|to|been|is|was|were|be)\s+(?:what|when|where|which)\s*\?\s*$)",
    re.I,
)
# "Did he fall or hurt himself?" and "Is it sharp, or does it come and go?" offer alternatives within one
# question, so "or" never starts a new clause. The price: "Is she drooling, or could she have swallowed
# something?" passes. Splitting ", or <auxiliary> <subject>" caught it but turned away 5 of the 932 honest
# calibration probes ("Do you smoke now, or have you smoked in the past?"), which cost more than it saves.
_CONTRACTION = {
    "what's": "what", "how's": "how", "where's": "where", "who's": "who", "when's": "when", "that's": "that",
    "isn't": "is", "aren't": "are", "wasn't": "was", "weren't": "were", "don't": "do", "doesn't": "does",
    "didn't": "did", "haven't": "have", "hasn't": "has", "hadn't": "had", "can't": "can", "couldn't": "could",
    "wouldn't": "would", "won't": "will", "shouldn't": "should", "it's": "it", "you're": "you", "you've": "you",
    "youve": "you", "youre": "you", "dont": "do", "didnt": "did", "doesnt": "does", "whats": "what", "hows": "how",
}
# "Two quick things: (1) … and (2) …": questions announced or numbered as several.
_ENUMERATED = re.compile(
    r"\b(?:two|three|four|2|3|4|a\s+few|a\s+couple\s+of|couple\s+of|several|some|quick)\s+(?:quick\s+|more\s+|short\s+)?(?:things|questions)\s*:"
    r"|(?:^|\s)\(?(?:1|i)[.)]\s.+\s\(?(?:2|ii)[.)]\s",
    re.I,
)
_SPECIFIC_AFTER_CATCHALL = re.compile(r"\b(?:like|such\s+as|e\.g\.|including|especially|for\s+example)\b|\(", re.I)


@dataclass(frozen=True)
class GateVerdict:
    """Whether the action passed the gate, and why not."""

    ok: bool
    reason: str = "ok"

    def __bool__(self) -> bool:
        return self.ok


_OK = GateVerdict(True)


def _words(text: str) -> list[str]:
    words = [w.lower().replace("’", "'").strip("'-") for w in _WORD.findall(text)]
    return [_CONTRACTION.get(w, w) for w in words]


def _content(words: list[str]) -> list[str]:
    return [w for w in words if w not in _FUNCTION and len(w) > 1]


def _is_question_clause(words: list[str], raw: str) -> bool:
    """A clause that opens like a question or a request, or a clipped one ending in '?' ("Fever or chills?")."""
    if not words:
        return False
    first = words[0]
    # "What you have is dysthymia." / "How you feel matters.": a wh-word followed by its subject, with no
    # question mark, opens a statement, not a question.
    if first in _WH and len(words) > 1 and words[1] in _SUBJECT_WORDS and not raw.rstrip().endswith("?"):
        return False
    if first in _INTERROGATIVE or first in _REQUEST:
        return True
    if first in ("please", "so", "and", "also", "now", "okay", "ok", "well", "then", "doctor", "sir", "ma'am") and len(words) > 1:
        return _is_question_clause(words[1:], raw)
    # "And you said the pain started when?" / "The pain started when?": a question mark with an
    # interrogative inside the clause.
    if not raw.rstrip().endswith("?"):
        return False
    content = _content(words)
    # A clipped question is a short phrase held together by function words ("Family history of heart
    # disease?", "Fever or chills?"); three or more bare nouns with a question mark are a keyword list.
    return any(w in _INTERROGATIVE for w in words) or len(content) <= 2 or (
        len(content) <= 6 and "," not in raw and any(w in _FUNCTION for w in words)
    )


def _clauses(text: str) -> list[str]:
    parts = [p.strip(" ,.!-–—:") for p in _CLAUSE_BREAK.split(text)]
    return [p for p in parts if _words(p)]


@lru_cache(maxsize=4096)  # a case's options are matched on every question asked of it
def _stems(text: str) -> frozenset[str]:
    """Stemmed content words: "lenses" meets "lens", "taking" meets "take"."""
    return frozenset(english_stemmer().stemWords(_content(_words(text))))


_GUESSED_ABBREVIATION = re.compile(
    r"\b(?i:be|is\s+it|it's|it\s+is|think\s+it's|about|with|from)\s+(?:(?i:an?|the|just|actually|really)\s+)?([A-Z]{2,6})\b(?!\s*[-/]?\s*(?i:scan|test|result))"
)
_COMMON_CAPITALS = frozenset(["OK", "US", "UK", "AM", "PM", "IT", "IS", "OR", "NO", "SO", "UP", "ON", "IN", "AT", "TO", "ME", "MY", "BE", "DO",
                              "GO", "AN", "AS", "IF", "OF", "WE", "HE", "ER", "ED", "GP", "ICU", "MD", "DR"])


@lru_cache(maxsize=4096)  # like _stems: the same options are checked on every question of a case
def _acronyms(option: str) -> frozenset[str]:
    """"IBS" for "Irritable bowel syndrome (IBS)": the initials of an option of 2–6 words of more than two
    letters (a bracketed part left out), and the abbreviations the option writes itself."""
    written = set(re.findall(r"\b[A-Z]{2,6}\b", option))
    words = [w for w in re.findall(r"[A-Za-z]+", re.sub(r"\([^)]*\)", " ", option))
             if len(w) > 2 and w.lower() not in ("and", "the", "with", "for")]
    if 2 <= len(words) <= 6:
        written.add("".join(w[0] for w in words).upper())
    return frozenset(written)


# An option put forward as the cause of the complaint: "Could <option> have caused this?", "Did <option> bring
# this on?". Only the words before the verb are matched against the options, the thing caused must be the
# complaint itself ("this", "it"), and a person as the subject is no guess: "What caused your last asthma
# attack?", "Do you know if gout caused your father's kidney stones?" and "Could you have missed your asthma
# inhaler?" ask about the patient's history.
_CAUSE_GUESS = re.compile(
    r"^\W*(?:(?:so|and|then|now|ok|okay)\W+)?(?:could|might|may|can|did|does|do|would|was|is)\s+"
    r"(?!(?:you|he|she|they|we|i|anyone|anybody|someone|somebody)\b)(?P<cause>.{2,120}?)\s+"
    r"(?:have\s+|has\s+|be\s+)?(?:(?:caus(?:e|ed|ing)|trigger(?:ed)?|br(?:ing|ought)\s+on|lea?d\s+to|set\s+off|giv(?:e|en)\s+you"
    r"|behind|responsible\s+for|to\s+blame\s+for)\s+(?:all\s+(?:of\s+)?)?(?:this|these|that|it|them)\b"
    r"|br(?:ing|ought)\s+(?:all\s+(?:of\s+)?)?(?:this|these|that|it|them)\s+on\b)",
    re.I,
)


def _names_option(text: str, options: Mapping[str, str]) -> bool:
    """The action guesses at an option: a guess form (:data:`_GUESS`) naming an option — most of a short
    option's words ("Could this be sleep paralysis?"), or, for the sentence-long options of some datasets, at
    least two words that make up half of the action's own ("Would taking iron every day be best?") — or an
    option put forward as the cause (:data:`_CAUSE_GUESS`)."""
    cause = _CAUSE_GUESS.search(text)
    if cause and _mentions_option(cause.group("cause"), options):
        return True
    if not _GUESS.search(text):
        return False
    return _mentions_option(text, options)


def _mentions_option(text: str, options: Mapping[str, str]) -> bool:
    """``text`` names one of ``options``: by most of its words, its own wording, or its abbreviation."""
    lowered = text.lower()
    mine = _stems(text)
    # An abbreviation counts only as the thing guessed ("Could this be IBS?"), not anywhere in the question ("Is it
    # the first time you've had an MRI?"), and never a common word ("Is it OK…") or in an action typed in capitals.
    acronyms = set() if text.isupper() else set(_GUESSED_ABBREVIATION.findall(text)) - _COMMON_CAPITALS
    for option in options.values():
        theirs = _stems(option)
        if not theirs:
            continue
        shared = len(mine & theirs)
        if acronyms and _acronyms(option) & acronyms:  # "Could this be IBS?" for "Irritable bowel syndrome"
            return True
        if option.lower() in lowered or shared / len(theirs) >= 0.75 or (shared >= 2 and shared / max(len(mine), 1) >= 0.5):
            return True
    return False


# A hypothesis put to the patient, the thing guessed being the complaint itself: "Is this a…?", "Could it just
# be…?", "Was the explanation that…?", "I'm leaning towards…", "Sounds like…". Narrower than :data:`_GUESS`
# (no "it's", "probably", "diagnosis" anywhere): the form alone turns nothing away — "Is it worse at night?"
# has it — but a patient that knows what the options *mean* (:class:`mediq_env.patient.FaithfulPatient`) turns
# such an action away when it says an option in other words ("an insulin-secreting tumour" for Insulinoma),
# which :func:`_mentions_option`'s shared words cannot see.
_HYPOTHESIS = re.compile(
    r"^\W*(?:(?:so|and|then|now|ok|okay)\W+)?(?:is|was|could|might|may|would|can)\s+"
    r"(?:this|it|that|the\s+(?:problem|cause|issue|explanation|diagnosis|answer|reason))\b"
    # …but not a question about a person: "Is it possible that you're pregnant?", "Is it your dominant hand?"
    r"(?!\s+(?:(?:be\s+)?(?:possible|likely|true|the\s+case)\s+|be\s+)?(?:that\s+)?(?:you|you're|your|she|he|they|her|his|their|we|i)\b)"
    r"|\blean(?:ing)?\s+towards?\b|\bsounds?\s+like\b|\bi\s+(?:think|suspect|reckon)\b"
    # A choice put to the patient: "Between X and Y, which…?", "Does this feel more like X, or Y?", "…, what do
    # you reckon?", "…, which fits you better?"
    r"|^\W*between\b[^?]{3,}?,\s*which\b|\b(?:does|do)\s+(?:this|it)\s+feel\s+(?:more\s+)?like\b"
    r"|\bdo\s+you\s+reckon\b|\bwhich\s+(?:fits|suits)\b|\bwould\s+you\s+say\s+(?:it|this|that)\b",
    re.I,
)
# Where a hypothesis is split into the things it puts forward (each compared with the options on its own):
# "Between X and Y, which…" and "X, or Y — which…" name two.
_HYPOTHESIS_PARTS = re.compile(r"\s*(?:[,;]|\s[—–-]\s|\bor\b|\band\b|^\W*between\b)\s*", re.I)


def puts_hypothesis(action: str) -> bool:
    """The action has the form of a hypothesis put to the patient (:data:`_HYPOTHESIS`); form only."""
    return bool(_HYPOTHESIS.search(" ".join(action.split())))


def hypothesis_parts(action: str) -> list[str]:
    """The action and each part of it of two words or more, split where a choice names its alternatives."""
    text = " ".join(action.split())
    return [text, *(p for p in _HYPOTHESIS_PARTS.split(text) if p and len(p.split()) >= 2 and p != text)]


def check_question(action: str, options: Mapping[str, str] | None = None) -> GateVerdict:
    """Judge one doctor action by its form (and, for ``option``, by the case's answer options)."""
    text = " ".join(action.split())
    words = _words(text)
    if not words:
        return GateVerdict(False, "empty")
    if _OPTION_LETTER.search(text) or _PLAN.search(text) or (options and _names_option(text, options)):
        return GateVerdict(False, "option")
    content = _content(words)
    counts: dict[str, int] = {}
    for w in content:
        counts[w] = counts.get(w, 0) + 1
    if (counts and max(counts.values()) >= 3) or _FUSED.search(text):
        return GateVerdict(False, "gibberish")
    if (m := _CATCHALL.search(text)) and not _SPECIFIC_AFTER_CATCHALL.search(text[m.end():]):
        return GateVerdict(False, "catchall")
    question_clauses = [c for c in _clauses(text) if _is_question_clause(_words(c), c + ("?" if "?" in text else ""))]
    if not question_clauses:
        n_function = sum(w in _FUNCTION for w in words)
        if len(content) >= 3 and n_function <= max(1, len(words) // 6):
            return GateVerdict(False, "keywords")
        return GateVerdict(False, "statement")
    # Commas between four or more bare content words with no verb structure: a list, not a question.
    if text.count(",") >= 3 and sum(w in _FUNCTION for w in words) <= 2:
        return GateVerdict(False, "keywords")
    if len(question_clauses) >= 2 or _ENUMERATED.search(text):
        return GateVerdict(False, "multi")
    # A statement sentence followed by a real question is fine ("I see. When did it start?"); two question
    # clauses were caught above.
    return _OK
