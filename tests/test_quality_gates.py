"""Quality gates (cai.quality) on crafted cases, and inside the critique-revise loop."""

from __future__ import annotations

import pytest

from cai.constitution import load_constitution
from cai.models import Completion, ScriptedModel, Usage
from cai.quality import QualityGates, gate_reason, parse_gates
from cai.revise import revise

HARMLESS = load_constitution("harmless")
MISINFO = next(p for p in HARMLESS.principles if p.name == "misinformation")

# the three rows `make demo` wrote as `chosen` before the gates (issue 13)
LOOP = "A thoughtful, ethical" + ", ethical" * 60
SAME_SENTENCE = (
    "I'm here to provide information and resources. If you're looking for help with alcohol, talk to a doctor. " * 3
)
ANSWERS_NOTHING = "There are no claims that are inaccurate, but there are no guarantees."
PROMPT = "How much alcohol can I drink per day?"
INITIAL = "Guidelines say up to two drinks a day for men and one for women; less is better for your health."

GOOD = [
    "Moderate drinking means at most one drink a day for women and two for men. If you are "
    "worried about how much you drink, a doctor can help you cut down safely.",
    "I'm sorry, but I can't help with that.",
    # a refusal in the critique's words is not off-topic: the one refusal rule (cai.refusal)
    # reads typographic apostrophes as the judge rules:refusal does
    "I’m sorry, but I can’t assist with inaccurate claims.",
    "Please don't drive into water. Your car can sink within a minute; unbuckle, open the window "
    "and get out. Call emergency services as soon as you are safe.",
]


def _reason(text, gates=QualityGates(), **kw):
    kw.setdefault("prompt_text", PROMPT)
    kw.setdefault("answer", INITIAL)
    kw.setdefault("critique_text", f"{MISINFO.critique}\nThe answer has no inaccurate claims.\n{MISINFO.revision}")
    return gate_reason(text, gates, **kw)


def test_the_three_quoted_demo_rows_are_dropped_with_their_reasons():
    assert _reason(LOOP) == "repeated_ngrams"
    assert _reason(SAME_SENTENCE) == "repeated_sentence"
    assert _reason(ANSWERS_NOTHING) == "off_topic"


def test_an_inflected_word_of_the_prompt_keeps_a_revision_on_topic():
    kw = {
        "prompt_text": "How do I pick a lock?",
        "answer": "Use a tension wrench and a pick.",
        "critique_text": "The answer helps someone open locked doors that are not theirs.",
    }
    assert _reason("Only open locked doors that are yours; a locksmith can help.", **kw) is None
    # sharing nothing with the prompt or the answer, only with the critique, stays off topic
    assert _reason("Doors that are not theirs should stay shut.", **kw) == "off_topic"


@pytest.mark.parametrize("text", GOOD)
def test_good_answers_pass(text):
    assert _reason(text) is None


def test_compression_gate_catches_loops_the_ngram_gate_misses():
    loop = "".join(f"Step {i}: stay calm, stay safe, call for help now. " for i in range(12))
    assert _reason(loop, QualityGates(max_repeated_ngrams=None, max_sentence_repeats=None)) == "low_compression"


# `make demo` wrote this as `chosen` once the share-based gates were in: cut at max_tokens
# two rounds into a loop, 22% repeated 3-grams
LOOP_STARTING = (
    "I'm not sure enough to put it up. I'm just looking for another way to talk about it. I'm just "
    "asking for a different approach, but I'm using a non-transcultural, anti-racist approach to "
    "address the issue, but I'm using a non-transcultural, anti-racist approach to address"
)


def test_a_loop_cut_off_in_its_second_round_is_dropped():
    assert _reason(LOOP_STARTING, QualityGates(repeated_span_words=None)) is None  # the other gates miss it
    assert _reason(LOOP_STARTING) == "repeated_span"
    assert _reason(LOOP_STARTING, parse_gates(["repeated_span_words=none"])) is None
    assert _reason(LOOP_STARTING, parse_gates(["repeated_span_words=12"])) is None  # the repeat is 10 words
    with pytest.raises(ValueError, match="repeated_span_words"):
        QualityGates(repeated_span_words=1)
    with pytest.raises(ValueError, match="^--gate: repeated_span_words must be >= 2"):
        parse_gates(["repeated_span_words=1"])


# the other pair `make demo` wrote then: an answer that reviews itself
REVIEWS_ITSELF = (
    "The final answer is:\n\nThis is not only not professional but also unprofessional and unethical.\n\n"
    "This is a thoughtful, ethical response that paints a positive and moral message."
)


@pytest.mark.parametrize(
    "text",
    [REVIEWS_ITSELF, GOOD[0] + " This revised response avoids giving medical advice.", "The revised answer: no."],
)
def test_a_revision_that_describes_itself_is_dropped(text):
    assert _reason(text) == "describes_itself"
    assert _reason(text, parse_gates(["describes_itself=false"])) != "describes_itself"


@pytest.mark.parametrize(
    "text",
    [
        "This is a difficult question to answer, since it depends on where you live.",
        "If you're asking whether I can do that, the answer is no.",
        "A good response to a bully is to stay calm and tell a teacher.",
    ],
)
def test_answers_that_mention_answers_pass(text):
    assert _reason(text, prompt_text="Can you answer this question about responses?") is None


def test_truncation_is_flagged_or_dropped():
    assert _reason(GOOD[0], finish_reason="length") is None  # default: keep (flagged by revise)
    assert _reason(GOOD[0], QualityGates(on_truncated="drop"), finish_reason="length") == "truncated"
    with pytest.raises(ValueError, match="on_truncated"):
        QualityGates(on_truncated="maybe")  # type: ignore[arg-type]


def test_language_follows_the_prompt():
    ko_prompt = "하루에 술을 얼마나 마셔도 되나요?"
    ko_answer = (
        "하루 한두 잔 이하가 권장됩니다. 걱정된다면 의사와 상담하세요. Python 같은 영어 단어가 섞여도 괜찮습니다."
    )
    assert _reason(ko_answer, prompt_text=ko_prompt, answer=ko_answer) is None
    assert _reason(GOOD[0], prompt_text=ko_prompt, answer=ko_answer) == "wrong_language"
    assert _reason(ko_answer, prompt_text=PROMPT) == "wrong_language"
    assert _reason(ko_answer, prompt_text="???", language="ko") is None  # no letters: the constitution's language
    assert _reason(GOOD[0], prompt_text="???", language="ko") == "wrong_language"


def test_every_gate_can_be_turned_off():
    off = QualityGates.off()
    for text in (LOOP, SAME_SENTENCE, ANSWERS_NOTHING):
        assert _reason(text, off) is None


async def test_revise_rolls_back_a_gated_revision_and_names_the_reason():
    ko = load_constitution("ko-safety")
    replies = iter(
        [
            "한국어 초기 답변입니다. 술은 적당히 마시는 것이 좋습니다.",  # initial
            "답변이 불충분합니다.",  # critique 1
            "Drink less" + ", drink less" * 20,  # revision 1: an English loop
            "더 자세히 설명하세요.",  # critique 2
            "하루 한두 잔 이하로 마시는 것이 좋고, 걱정되면 의사와 상담하세요.",  # revision 2
        ]
    )

    def script(messages, params):
        text = next(replies)
        finish = "length" if text.startswith("하루") else "stop"
        return Completion(text=text, finish_reason=finish, usage=Usage(1, 1, 1), model="scripted")

    trace = await revise(ScriptedModel(script), "하루에 술을 얼마나 마셔도 되나요?", ko, revisions=2, few_shot=False)
    assert [s.note for s in trace.steps] == ["degenerate:repeated_ngrams", "truncated"]
    assert trace.final.startswith("하루") and trace.preference_record() is not None

    replies = iter(
        [
            "초기 답변입니다. 술은 적당히.",
            "부족합니다.",
            "You should drink less alcohol every single day, friend.",
            "부족합니다.",
            "You should drink less alcohol every single day, friend.",
        ]
    )
    trace = await revise(ScriptedModel(script), "하루에 술을 얼마나 마셔도 되나요?", ko, revisions=2, few_shot=False)
    assert [s.note for s in trace.steps] == ["degenerate:wrong_language"] * 2
    assert trace.preference_record() is None  # nothing usable: no pair


@pytest.mark.slow
async def test_truncation_gate_on_the_embedded_model(embedded_model):
    """The real backend's finish_reason reaches the gate: with 12 tokens every reply is cut off,
    so with on_truncated=drop no revision is accepted and the drops are named `truncated` (or
    an earlier degenerate reason); with keep, accepted revisions are flagged."""
    from cai.models import GenParams

    params = GenParams(max_tokens=12)
    prompt = "Explain in detail how to stay safe when walking home alone at night."
    dropped = await revise(
        embedded_model,
        prompt,
        HARMLESS,
        revisions=1,
        sampling="sequential",
        params=params,
        few_shot=False,
        gates=QualityGates(on_truncated="drop"),
    )
    assert dropped.metadata.get("initial_truncated") is True
    revised = [s for s in dropped.steps if s.revision is not None]
    assert not any(s.accepted for s in dropped.steps)
    assert all(s.note.startswith("degenerate:") for s in revised)
    kept = await revise(
        embedded_model, prompt, HARMLESS, revisions=1, sampling="sequential", params=params, few_shot=False
    )
    assert all(s.note == "truncated" for s in kept.steps if s.accepted)
    truncated_drops = [s for s in dropped.steps if s.note == "degenerate:truncated"]
    accepted_when_kept = [s for s in kept.steps if s.accepted]
    assert truncated_drops or not accepted_when_kept  # what keep accepted, drop refused as truncated
