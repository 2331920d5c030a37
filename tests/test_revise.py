"""Critique-revise loop logic with scripted models."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from cai.constitution import Constitution
from cai.models import Capabilities, ContextLengthError, GenParams, PermanentModelError, ScriptedModel
from cai.models.base import Completion, Usage
from cai.records import Trace
from cai.revise import (
    clean_revision,
    degenerate_reason,
    pick_principles,
    revise,
    says_no_revision_needed,
)
from cai.revise_config import ReviseConfig

CONST = Constitution.model_validate(
    {
        "name": "t",
        "principles": [
            {
                "name": f"p{i}",
                "critique": f"CRITIQUE-{i}: find harm.",
                "revision": f"REVISE-{i}: rewrite it safely please.",
            }
            for i in range(4)
        ],
        "few_shot": [
            {
                "prompt": "shot prompt",
                "response": "shot response",
                "critique_request": "shot critique request",
                "critique": "shot critique",
                "revision_request": "shot revision request",
                "revision": "shot revision",
            }
        ],
        "defaults": {"revisions": 2, "sampling": "random", "seed": 0, "stop_phrases": ["All good here"]},
    }
)


def scripted(initial="bad answer", critiques=None, revisions=None, **kw) -> ScriptedModel:
    """Replies by the kind of the last request; critiques/revisions are consumed in order."""
    critiques = list(critiques or ["It is harmful."] * 10)
    revisions = list(revisions or [f"safe answer {i}" for i in range(10)])

    def script(messages, params):
        last = messages[-1]["content"]
        if last.startswith("CRITIQUE-"):
            return critiques.pop(0)
        if last.startswith("REVISE-"):
            return revisions.pop(0)
        return initial

    return ScriptedModel(script, **kw)


async def test_conversation_grows_one_prefix():
    model = scripted()
    trace = await revise(model, "how do I pick a lock?", CONST, sample_id="a")
    assert trace.stop_reason == "completed" and trace.final == "safe answer 1"
    assert [s.accepted for s in trace.steps] == [True, True]
    calls = [m for m, _ in model.calls]
    assert calls[0] == [{"role": "user", "content": "how do I pick a lock?"}]  # unsteered initial answer
    assert [m["content"] for m in calls[1][:6]] == [
        "shot prompt",
        "shot response",
        "shot critique request",
        "shot critique",
        "shot revision request",
        "shot revision",
    ]
    for before, after in zip(calls[1:], calls[2:]):  # each call extends the previous one
        assert after[: len(before)] == before
    assert calls[3][len(calls[2])]["content"] == "safe answer 0"  # round 2 critiques the revision
    assert trace.usage.calls == 5
    pair = trace.preference_record()
    assert pair["chosen"][0]["content"] == "safe answer 1" and pair["rejected"][0]["content"] == "bad answer"


async def test_few_shot_off_and_system_prompt_first():
    model = scripted()
    prompt = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    await revise(model, prompt, CONST, few_shot=False, revisions=1)
    assert [m["content"] for m in model.calls[1][0][:3]] == ["be nice", "hi", "bad answer"]
    model = scripted()
    await revise(model, prompt, CONST, revisions=1)
    assert [m["content"] for m in model.calls[1][0][:2]] == ["be nice", "shot prompt"]


def test_principle_sampling():
    names = lambda ps: [p.name for p in ps]  # noqa: E731
    a = names(pick_principles(CONST, "random", 3, seed=1, key="x"))
    assert a == names(pick_principles(CONST, "random", 3, seed=1, key="x"))  # reproducible
    assert len(set(a)) == 3  # without replacement while principles last
    draws = {tuple(names(pick_principles(CONST, "random", 3, seed=1, key=str(k)))) for k in range(20)}
    assert len(draws) > 5  # each sample gets its own draw
    assert len(pick_principles(CONST, "random", 9, seed=2, key="x")) == 9
    assert names(pick_principles(CONST, "sequential", 6, seed=0, key="x")) == ["p0", "p1", "p2", "p3", "p0", "p1"]
    assert names(pick_principles(CONST, "all", 1, seed=0, key="x")) == ["p0", "p1", "p2", "p3"]


async def test_sampling_all_runs_every_principle():
    model = scripted()
    trace = await revise(model, "q", CONST, sampling="all")
    assert [s.principle for s in trace.steps] == ["p0", "p1", "p2", "p3"]


@pytest.mark.parametrize(
    "critique",
    ["No revision needed.", "**No revisions are needed.**", "all good here!", "The answer doesn't need any changes."],
)
async def test_early_stop_keeps_previous_answer(critique):
    model = scripted(critiques=["It is harmful.", critique])
    trace = await revise(model, "q", CONST, revisions=3)
    assert trace.stop_reason == "early_stop"
    assert trace.final == "safe answer 0"
    assert trace.steps[-1].note == "no_revision_needed" and trace.steps[-1].revision is None
    assert len(model.calls) == 4  # no revision request after the stop


async def test_early_stop_first_round_is_not_a_preference_pair():
    trace = await revise(scripted(critiques=["No revision needed."]), "q", CONST)
    assert trace.final == "bad answer" and not trace.revised and trace.preference_record() is None
    assert trace.sft_record()["messages"][-1]["content"] == "bad answer"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("   ", "empty"),
        ("No revision needed.", "stop_phrase"),
        ("It is harmful.", "copy_of_critique"),
        ("REVISE-0: rewrite it safely please.", "request_echoed"),
        ("Shot revision.", "copy_of_example"),
    ],
)
async def test_degenerate_revision_never_replaces_answer(bad, reason):
    model = scripted(critiques=["It is harmful."] * 2, revisions=[bad, bad])
    trace = await revise(model, "q", CONST, sampling="sequential")
    assert trace.final == "bad answer" and not trace.revised
    assert [s.note for s in trace.steps] == [f"degenerate:{reason}"] * 2
    # the bad round is rolled back: round 2 critiques the original answer, not the junk
    second_critique = model.calls[3][0]
    assert second_critique[-2]["content"] == "bad answer"
    assert all(m["content"] != bad for m in second_critique)


async def test_critique_parroting_its_request_is_no_early_stop():
    # real critique requests quote the stop phrase; a small model that repeats the request
    # must not thereby declare the answer fine
    echo = "CRITIQUE-0: find harm. If nothing is wrong, say: All good here."
    const = CONST.model_copy(update={"principles": [CONST.principles[0].model_copy(update={"critique": echo})]})

    def script(messages, params):
        last = messages[-1]["content"]
        if last == echo:
            return model_critiques.pop(0)
        if last.startswith("REVISE-"):
            return "a kind answer"
        return "bad answer"

    model_critiques = [echo, "It is harmful."]
    trace = await revise(ScriptedModel(script), "q", const, revisions=2)
    assert trace.stop_reason == "completed"
    assert [s.note for s in trace.steps] == ["degenerate_critique:request_echoed", ""]
    assert trace.final == "a kind answer" and trace.revised


async def test_answer_mentioning_a_stop_pattern_is_not_a_verdict():
    long = "There is nothing to fix in your bike's brakes; the squeak comes from dust on the pads."
    trace = await revise(scripted(initial=long, critiques=["No revision needed."]), "q", CONST)
    assert trace.stop_reason == "early_stop" and trace.final == long
    trace = await revise(scripted(initial="No revision needed.", critiques=["No revision needed."]), "q", CONST)
    assert trace.stop_reason == "failed" and trace.error == "stop_phrase_answer"


async def test_good_revision_after_degenerate_one():
    model = scripted(revisions=["", "Revision: a kind answer"])
    trace = await revise(model, "q", CONST)
    assert trace.final == "a kind answer" and trace.revised
    assert [s.accepted for s in trace.steps] == [False, True]


def test_pure_helpers():
    assert clean_revision('Revised response: "Be safe."') == "Be safe."
    assert clean_revision("**Revision:** Be safe.") == "Be safe."
    assert clean_revision("Response time matters.") == "Response time matters."
    assert says_no_revision_needed("There are no issues with the response.")
    assert not says_no_revision_needed("The response needs revision: it insults the user.")
    assert degenerate_reason("A fine answer.", critique="It is rude.", request="Rewrite it.") is None


async def test_model_errors_fail_the_sample_with_a_reason():
    def boom(messages, params):
        raise PermanentModelError("bad request", reason="bad_request")

    trace = await revise(ScriptedModel(boom), "q", CONST)
    assert trace.stop_reason == "failed" and trace.error == "bad_request" and trace.final == ""

    def late_boom(messages, params):
        if messages[-1]["content"].startswith("REVISE-"):
            raise PermanentModelError("nope")
        return "text"

    trace = await revise(ScriptedModel(late_boom), "q", CONST)
    assert trace.stop_reason == "failed" and trace.error == "permanent"


class _CountingModel(ScriptedModel):
    def count_tokens(self, messages: Sequence[dict]) -> int:
        return sum(len(m["content"].split()) for m in messages)


async def test_prompt_longer_than_context_fails_before_any_call():
    model = _CountingModel(lambda m, p: "x", capabilities=Capabilities(max_context=50))
    trace = await revise(model, "word " * 60, CONST)
    assert trace.stop_reason == "failed" and trace.error == "context_length" and model.calls == []


async def test_context_filling_up_stops_with_current_answer():
    model = _CountingModel(scripted()._script, capabilities=Capabilities(max_context=60))
    trace = await revise(model, "q", CONST, revisions=5, params=GenParams(max_tokens=30))
    assert trace.stop_reason == "context_full" and trace.final.startswith("safe answer")
    assert all(p.max_tokens <= 30 for _, p in model.calls)  # max_tokens clamped to what fits

    def raising(messages, params):
        if len(messages) > 3:
            raise ContextLengthError("too long")
        return "fine"

    trace = await revise(ScriptedModel(raising), "q", CONST, few_shot=False)
    assert trace.stop_reason == "context_full" and trace.final == "fine"


async def test_initial_answer_given_is_revised_without_asking_for_one():
    model = scripted()
    given = Completion("given answer", "length", Usage(7, 3, 1))
    trace = await revise(model, "q", CONST, initial=given, revisions=1)
    assert trace.initial == "given answer" and trace.final == "safe answer 0"
    assert len(model.calls) == 2  # critique + revision only
    assert model.calls[0][0][-2]["content"] == "given answer"  # the loop critiques the given answer
    assert trace.initial_usage == Usage(7, 3, 1) and trace.initial_seconds == 0.0
    assert trace.metadata["initial_truncated"] is True
    assert trace.usage.calls == 3 and trace.usage.prompt_tokens == 7 + sum(
        s.critique_usage.prompt_tokens + s.revision_usage.prompt_tokens for s in trace.steps
    )
    text = await revise(scripted(), "q", CONST, initial="  plain text  ", revisions=1)
    assert text.initial == "plain text" and text.initial_usage == Usage() and "initial_truncated" not in text.metadata


async def test_each_step_records_its_calls_usage_and_seconds():
    model = scripted(critiques=["It is harmful.", "No revision needed."], delay=0.02)
    trace = await revise(model, "how do I pick a lock?", CONST, revisions=3)
    first, second = trace.steps
    assert trace.initial_usage == Usage(6, 2, 1) and trace.initial_seconds >= 0.02
    assert first.critique_usage.calls == 1 and first.critique_usage.completion_tokens == 3
    assert first.revision_usage == Usage(first.revision_usage.prompt_tokens, 3, 1)  # "safe answer 0"
    assert first.critique_seconds >= 0.02 and first.revision_seconds >= 0.02
    # the early stop made no revision call: nothing recorded for it
    assert second.critique_usage.calls == 1 and second.revision_usage == Usage() and second.revision_seconds == 0.0
    assert trace.usage == trace.initial_usage + first.critique_usage + first.revision_usage + second.critique_usage
    again = Trace.from_dict(json.loads(json.dumps(trace.to_dict())))
    assert again == trace


def test_trace_stored_before_usage_per_call_still_loads():
    old = {
        "id": "7",
        "prompt": [{"role": "user", "content": "q"}],
        "initial": "bad",
        "steps": [
            {"principle": "p0", "critique_request": "C", "critique": "harmful", "revision": "good", "accepted": True}
        ],
        "final": "good",
        "stop_reason": "completed",
        "error": None,
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13, "calls": 3},
        "model": "scripted",
        "constitution": "t@1#abc",
        "metadata": {"seed": 0},
    }
    trace = Trace.from_dict(old)
    assert trace.revised and trace.usage == Usage(9, 4, 3)
    assert trace.initial_usage == Usage() and trace.initial_seconds == 0.0
    assert trace.steps[0].critique_usage == Usage() and trace.steps[0].revision_seconds == 0.0
    assert trace.preference_record()["chosen"] == [{"role": "assistant", "content": "good"}]


def test_revise_config_takes_the_constitution_defaults_and_checks_fields():
    config = ReviseConfig.from_constitution(CONST, seed=5, sampling=None)
    assert (config.revisions, config.sampling, config.seed) == (2, "random", 5)
    assert config.stop_phrases == ("All good here",) and config.few_shot is True
    for bad, field in [
        ({"revisions": -1}, "revisions"),
        ({"revisions": True}, "revisions"),
        ({"sampling": "shuffle"}, "sampling"),
        ({"seed": "1"}, "seed"),
        ({"few_shot": "yes"}, "few_shot"),
        ({"params": {"max_tokens": 5}}, "params"),
        ({"gates": None, "params": 3}, "params"),
        ({"stop_phrases": "done"}, "stop_phrases"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}: expected"):
            ReviseConfig(**bad)
    with pytest.raises(TypeError, match="no option rounds"):
        ReviseConfig.from_constitution(CONST, rounds=2)


async def test_revise_takes_a_config_or_the_keyword_options_not_both():
    config = ReviseConfig(revisions=1, sampling="sequential", few_shot=False)
    trace = await revise(scripted(), "q", CONST, config)
    assert [s.principle for s in trace.steps] == ["p0"]
    assert trace.metadata == {"sampling": "sequential", "seed": 0, "few_shot": False, "revisions": 1}
    with pytest.raises(TypeError, match="pass revisions in config"):
        await revise(scripted(), "q", CONST, config, revisions=2)
