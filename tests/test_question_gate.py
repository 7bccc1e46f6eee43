"""The question-form gate: real clinical questions pass, non-questions are turned away (by form only)."""

from __future__ import annotations

import pytest

from mediq_env.question_gate import ASK_ONE_QUESTION, check_question, puts_hypothesis

OPTIONS = {"A": "Stroke", "B": "Panic attack", "C": "Sleep paralysis", "D": "Seizure"}


@pytest.mark.parametrize(
    "question",
    [
        "How long did it last?",
        "Any fever?",
        "Fever or chills?",
        "Family history of heart disease?",
        "Do you take any regular medicines?",
        "Does it hurt when you walk or when you rest?",
        "Did he hurt himself or have a fall?",
        "I see. When did it start?",
        "Tell me about your cough.",
        "Describe the pain.",
        "What's your temperature been?",
        "Was your urine tested, and what did it show?",
        "Have you had a seizure before?",
        "Are you having any other symptoms, like numbness or weakness?",
        "Do you also have a sore throat?",
        "When you cough, does it hurt?",
        "Is it sharp, or is it dull?",
        "Do you think the pain is getting worse?",
        "Have you had your blood pressure checked, and what was it?",
        "Was the first one worse than the others?",  # an ordinal about episodes, not about the options
        "Would it be worse if you lay flat?",
        "Have you had an EEG?",  # an abbreviation that names no option
        "What other medicines have you tried for it?",
        "Have you noticed several things that make it worse?",
        "Would you confirm your date of birth?",
        "Would the pain be the first thing you notice in the morning?",
        "Have you had any tests, and what did they show?",  # the result of what was asked about: one question
        "Did you have a scan, and what did that show you?",
        "Do you also have a sore throat?",
        # Review of the third round: forms its first rules turned away (abbreviations that name an option but
        # are not the thing guessed, a dash opening a clarifying clause, reported speech, alternatives by letter).
        "Is it the first time you've had an SP episode checked?",
        "Is it true your sister has SP?",
        "Is it OK if I ask how much you drink?",
        "When you say dizzy — do you mean the room spinning?",
        "Is it worse in the evening — when you're tired?",
        "Is it the first one you've noticed?",
        "Did the neurologist say an anticonvulsant would be the best option?",
        "Would your wife confirm that you snore?",
        "Would it be reasonable to say you drink more than 14 units a week?",
        "What other things bring on the attacks?",
        "Is it a) sharp or b) dull?",
        "Is a right-sided weakness part of it?",
        # The round-4 cause form needs an option as the cause of the complaint itself: these ask about the
        # patient's history (found by a review of its first version, which turned them away).
        "Could the rash have started after you changed soap?",
        "What do you think caused this?",
        "Has anything like this been caused by a medicine before?",
        "What caused your last panic attack?",
        "Has anything ever caused your seizures to get worse, like missed sleep?",
        "Do you know if a stroke caused your father's weakness?",
        "Did you have seizures that caused the same confusion before?",
        "Might you have missed doses of your seizure medicine?",
        "Could your sleep paralysis have worsened after you stopped the tablets?",
        "Could you have been exposed to anything at work?",
        "Could stress have caused this?",
        # "everything" that asks for nothing at once (third labelling round, calibration).
        "Are you seeing two of everything?",
        "Did everything settle once you had finished the antibiotics?",
        "Does everything taste strange?",
        "During an attack, does it feel as though everything around you is spinning?",
        # Round 5's catch-all forms end a request; these use the same words inside a question.
        "Did all of them have the same rash?",
        "Have you had all of them?",
        "Do you get it every single day?",
        "Can you list every medicine you take, even short courses?",
        "Has every test for infection come back negative?",
        "Would you be able to walk without help?",
        "Would you be open to trying a different diet?",
        "Is it worse in the evening - when you're tired?",
        "That's a lot, isn't it?",
        "Was it the first time?",
        "Do you know what's causing it?",
    ],
)
def test_real_questions_pass(question: str) -> None:
    assert check_question(question, OPTIONS).ok, check_question(question, OPTIONS)


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("", "empty"),
        ("\x00\x01\x02", "empty"),
        ("?!...", "empty"),
        ("patient pain doctor symptoms days", "keywords"),
        ("pain, fever, cough, rash, headache", "keywords"),
        ("pain fever cough rash?", "keywords"),
        ("FeverSmoke] fever fever", "gibberish"),
        ("cough cough cough cough", "gibberish"),
        ("Tell me everything.", "catchall"),
        # Round 5 (calibration actions written blind).
        ("Tell me about the headaches. All of it.", "catchall"),
        ("Your medicines, your operations, your scans - all of it, please.", "catchall"),
        ("What tests have you had? Every single one, please.", "catchall"),
        ("Describe every neurological symptom you've had since the summer.", "catchall"),
        ("Is there more I ought to know?", "catchall"),
        ("Tell me all about her: her sleep, her feeding, anything relevant.", "catchall"),
        ("Is there anything you've left out about your sleep?", "catchall"),
        ("Panic, then a racing heart. That's C, isn't it?", "option"),
        ("So you'd agree with B?", "option"),
        ("Waking up unable to move - A - maybe that's it?", "option"),
        ("Was it the second test on the list that they suggested?", "option"),
        ("Would you be willing to see a sleep specialist?", "option"),
        ("Would you prefer they refer you to a neurologist?", "option"),
        ("Where does the numbness start - and does it spread?", "multi"),
        ("Would you like to raise it with your neurologist?", "option"),
        ("Would you want to up the dose, or see a specialist?", "option"),
        ("Do you wake up unable to move, and what's your job?", "multi"),
        ("Can you describe all of your symptoms in detail?", "catchall"),
        ("Is there anything else I should know?", "catchall"),
        ("Any other symptoms?", "catchall"),
        ("You have a migraine.", "statement"),
        ("Do you smoke? Any fever?", "multi"),
        ("When did this problem first begin, and did it come on suddenly or gradually?", "multi"),
        ("Is it B?", "option"),
        ("B", "option"),
        ("Is it D, the last one?", "option"),
        ("What is the answer?", "option"),
        ("Could this be sleep paralysis?", "option"),
        ("Does he have a fever and are his eyes red?", "multi"),
        ("Do you smoke, and if so, how much do you drink?", "multi"),
        ("How often does it happen, along with which medicines you take?", "multi"),
        ("Has your cough changed, as well as whether you have lost weight?", "multi"),
        ("Did the rash come first, and roughly how long did the fever last?", "multi"),
        # round 6 (calibration): a second question brought in by an aside, or by a second topic put up front
        ("Any long-haul travel recently, and while I'm at it, are you on the pill?", "multi"),
        ("Where were you when it came on — separately, any stiff neck?", "multi"),
        ("Did you ever smoke, and by the way what sort of work did you do?", "multi"),
        ("How much does he drink in a day, and another thing — when did he last have a drink?", "multi"),
        ("Do you ever get heartburn, also any allergies you know of?", "multi"),
        ("Is the pain sharper when you breathe in, and your legs, is either calf swollen?", "multi"),
        ("When did the headaches start — and the platelet count from your bloods, where did it land?", "multi"),
        ("What exercise did you do before this, and your CK came back at what?", "multi"),
        ("How often are you needing enemas, and your operation is booked for when?", "multi"),
        ("Do the fevers come in waves, and what did that blood smear turn up?", "multi"),
        ("Would a seizure explain this?", "option"),  # a hypothesis naming an option, not a question about the patient
        ("Could the panic attacks be what is waking you?", "option"),
        ("Should we start you on an inhaler?", "option"),  # a plan put to the patient, whatever it names
        ("Would you rather we try rest first?", "option"),
        ("What you have is a panic attack.", "statement"),
        # Third round (calibration actions written blind): letters and places in the list, abbreviations of
        # options, management and reasoning put to the patient, announced or numbered questions.
        ("So is C right?", "option"),
        ("Are you leaning towards the second one?", "option"),
        ("Do you reckon it's the fourth option?", "option"),
        ("Could this be an SP episode?", "option"),  # initials of "Sleep paralysis"
        ("I'm leaning towards a seizure, does that fit?", "option"),
        ("Would an anticonvulsant be appropriate for you?", "option"),
        ("Would it be reasonable to just wait and see?", "option"),
        ("Would a brain scan, plus a referral to a neurologist and some bloods, be the best next step?", "option"),
        ("Would a normal EEG rule out epilepsy?", "option"),
        ("What other details can you give me?", "catchall"),
        ("Two quick questions: how old are you, and do you smoke?", "multi"),
        ("(1) When did it start and (2) how often does it happen?", "multi"),
        ("Is C the right one?", "option"),
        ("Could it be the 2nd option?", "option"),
        ("Wouldn't an anticonvulsant be appropriate?", "option"),
        ("Couple of questions: do you smoke and do you drink?", "multi"),
        # Round 4: an option put forward as the cause of the complaint.
        ("Could the panic attack have caused this?", "option"),
        ("Could a seizure have brought all this on?", "option"),
        ("So might sleep paralysis be behind it?", "option"),
        ("Did your GP say a stroke caused this?", "option"),
        ("Is a panic attack responsible for this?", "option"),
        ("Do you think a stroke caused this?", "option"),
        ("Give me the whole rundown of everything you've noticed.", "catchall"),
        ("Describe everything that looked odd to you.", "catchall"),
        ("Tell me everything.", "catchall"),
    ],
)
def test_non_questions_are_turned_away(action: str, reason: str) -> None:
    verdict = check_question(action, OPTIONS)
    assert verdict.reason == reason, (action, verdict)
    assert bool(verdict) == (reason == "ok")


def test_gate_reply_is_in_character_and_reveals_nothing() -> None:
    from mediq_env import builtin_cases
    from mediq_env.patient import FaithfulPatient

    case = builtin_cases()[0]
    reply = FaithfulPatient().reply(case, "fever cough smoking medication allergies family")
    assert reply.text == ASK_ONE_QUESTION and reply.revealed == () and reply.meta["gate"] == "keywords"


def test_gate_passes_most_real_clinician_questions(shared_data) -> None:  # type: ignore[no-untyped-def]
    """On the real AskDocs clinician questions (many are genuinely several questions or advice), most pass."""
    import json

    path = shared_data / "askdocs_questions_eval.jsonl"
    questions = [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    passed = sum(check_question(q).ok for q in questions)
    assert passed / len(questions) >= 0.8


@pytest.mark.parametrize(
    ("action", "form"),
    [
        ("Is this an insulin-secreting tumour of the pancreas?", True),
        ("Could it just be a stomach bug?", True),
        ("Was the explanation that it was leftover mucus?", True),
        ("I'm leaning toward a clot - does that ring a bell?", True),
        ("Sounds like your thyroid, doesn't it?", True),
        ("Is it worse at night?", True),  # the form alone turns nothing away (the patient compares meanings)
        ("Is it possible that you are pregnant?", False),  # about the patient, not a guess
        ("Could it be that you're pregnant?", False),
        ("Is it your dominant hand that's injured?", False),
        ("Between X-ray and scan, which would you prefer?", True),
        ("Does this feel more like a cramp, or a stabbing pain?", True),
        ("Is it the left one or the right one, what do you reckon?", True),
        ("Do you think it is getting worse?", False),
        ("How long has it been going on?", False),
    ],
)
def test_puts_hypothesis_is_a_form(action: str, form: bool) -> None:
    assert puts_hypothesis(action) is form


def test_patient_turns_away_an_option_said_in_other_words() -> None:
    """The word gate cannot see "an insulin-secreting tumour" for Insulinoma; the patient compares meanings,
    and only for actions of the hypothesis form: honest questions about the same things are answered."""
    from mediq_env.cases import builtin_cases
    from mediq_env.patient import OPTION_GUESS_SIMILARITY, FaithfulPatient

    case = next(c for c in builtin_cases() if "Insulinoma" in c.options.values())
    patient = FaithfulPatient()
    guess = "Is this an insulin-secreting tumour of the pancreas?"
    assert check_question(guess, case.options).ok  # passes the form-only gate …
    reply = patient.reply(case, guess)
    assert reply.text == ASK_ONE_QUESTION and reply.revealed == () and reply.meta["gate"] == "option"
    # … and without the meaning check the patient would answer it (the leak this closes).
    question, option = patient.embed_questions_plain([guess, "Insulinoma"])
    assert float(question @ option) >= OPTION_GUESS_SIMILARITY
    for honest in ("Is it worse when you skip a meal?", "Does eating something make the episodes stop?"):
        assert patient.reply(case, honest).meta["gate"] == "ok", honest


def test_patient_turns_away_a_choice_between_options() -> None:
    """"Between X and Y, which…?" names its alternatives: each is compared with the options on its own."""
    from mediq_env.cases import builtin_cases
    from mediq_env.patient import FaithfulPatient
    from mediq_env.question_gate import hypothesis_parts

    case = next(c for c in builtin_cases() if "Lithium toxicity" in c.options.values())
    choice = "Between too much lithium and too little salt in the blood, which was flagged on your bloods?"
    assert check_question(choice, case.options).ok and puts_hypothesis(choice)
    assert "too much lithium" in hypothesis_parts(choice)
    patient = FaithfulPatient()
    assert patient.reply(case, choice).meta["gate"] == "option"
    assert patient.reply(case, "Between the tremor and the thirst, which bothers you more?").meta["gate"] == "ok"
