"""ConstitutionalWrapper logic with scripted models and judges (the wrapper on real models is
tested through the server in test_server_real.py)."""

from __future__ import annotations

import pytest

from cai.constitution import load_constitution
from cai.models import GenParams, ScriptedModel, TransientModelError
from cai.revise_config import ReviseConfig
from cai.wrapper import ConstitutionalWrapper, RevisionFailed, WrappedCompletion
from judges.base import PointwiseJudge, Score

PROMPT = [{"role": "user", "content": "How do I hotwire a car?"}]
HARMLESS = load_constitution("harmless")
CRITIQUES = {p.critique for p in HARMLESS.principles}
REVISIONS = {p.revision for p in HARMLESS.principles}


def loop_script(messages, params):
    last = messages[-1]["content"]
    if last in CRITIQUES:
        return "The answer explains a crime step by step."
    if last in REVISIONS:
        return "I can't help with stealing a car, but a locksmith can help if you are locked out."
    return "Strip the ignition wires and touch them together."


class FixedJudge(PointwiseJudge):
    name = "fixed"

    def __init__(self, value: float | None, status: str = "ok"):
        self.value, self.status, self.seen = value, status, []

    async def score(self, prompt, response):
        self.seen.append(response)
        return Score(self.value, status=self.status)


async def test_off_passes_through_and_times_the_call():
    model = ScriptedModel(loop_script)
    reply = await ConstitutionalWrapper(model, HARMLESS, mode="off").chat(PROMPT, GenParams(max_tokens=8))
    assert isinstance(reply, WrappedCompletion)
    assert reply.text == "Strip the ignition wires and touch them together."
    assert len(model.calls) == 1 and model.calls[0][1].max_tokens == 8
    assert reply.trace.metadata["action"] == "passed"
    assert [s["stage"] for s in reply.trace.metadata["stages"]] == ["initial"]


async def test_always_revises_and_accounts_every_stage():
    model = ScriptedModel(loop_script)
    wrapper = ConstitutionalWrapper(model, HARMLESS, mode="always", revisions=2)
    reply = await wrapper.chat(PROMPT)
    assert reply.text.startswith("I can't help with stealing a car")
    trace = reply.trace
    assert trace.initial == "Strip the ignition wires and touch them together."
    assert trace.metadata["action"] == "revised"
    assert len(trace.steps) == 2 and trace.steps[0].critique.startswith("The answer explains")
    # the initial answer is generated once, not again inside the loop
    assert len(model.calls) == 1 + 2 * 2
    stages = [s["stage"] for s in trace.metadata["stages"]]
    assert stages == ["initial", "critique", "revision", "critique", "revision"]
    # usage sums every stage
    assert reply.usage.calls == 5
    assert reply.usage.completion_tokens == sum(s["completion_tokens"] for s in trace.metadata["stages"])


async def test_on_flag_only_revises_flagged_answers():
    model = ScriptedModel(loop_script)
    low = ConstitutionalWrapper(model, HARMLESS, mode="on_flag", judges=[FixedJudge(0.1)], revisions=1)
    reply = await low.chat(PROMPT)
    assert reply.trace.metadata["action"] == "passed" and len(model.calls) == 1
    assert reply.trace.metadata["judge"] == [{"judge": "fixed", "p_violation": 0.1}]

    model = ScriptedModel(loop_script)
    high = ConstitutionalWrapper(
        model, HARMLESS, mode="on_flag", judges=[FixedJudge(0.1), FixedJudge(0.9)], revisions=1
    )
    reply = await high.chat(PROMPT)
    assert reply.trace.metadata["action"] == "revised" and len(model.calls) == 3
    assert [s["stage"] for s in reply.trace.metadata["stages"]] == ["initial", "judge", "critique", "revision"]


async def test_unparseable_judge_fails_closed():
    wrapper = ConstitutionalWrapper(
        ScriptedModel(loop_script),
        HARMLESS,
        mode="block",
        judges=[FixedJudge(None, status="unparseable")],
        refusal="No.",
    )
    reply = await wrapper.chat(PROMPT)
    assert reply.text == "No." and reply.trace.metadata["action"] == "blocked"
    assert reply.trace.initial.startswith("Strip")


async def test_block_keeps_clean_answers():
    wrapper = ConstitutionalWrapper(ScriptedModel(loop_script), HARMLESS, mode="block", judges=[FixedJudge(0.2)])
    assert (await wrapper.chat(PROMPT)).text.startswith("Strip")


async def test_apply_revises_an_answer_from_elsewhere():
    model = ScriptedModel(loop_script)
    wrapper = ConstitutionalWrapper(model, HARMLESS, revisions=1)
    reply = await wrapper.apply(PROMPT, "Here is how to hotwire it: ...")
    assert reply.trace.initial == "Here is how to hotwire it: ..."
    assert reply.text.startswith("I can't help")
    assert len(model.calls) == 2  # critique + revision only


async def test_upstream_failure_in_loop_raises_instead_of_passing_unrevised_text():
    def script(messages, params):
        if messages[-1]["content"] in CRITIQUES:
            raise TransientModelError("upstream went away")
        return loop_script(messages, params)

    wrapper = ConstitutionalWrapper(ScriptedModel(script), HARMLESS, revisions=1)
    with pytest.raises(RevisionFailed, match="upstream went away"):
        await wrapper.chat(PROMPT)


async def test_upstream_failure_on_first_answer_propagates():
    def script(messages, params):
        raise TransientModelError("connection refused")

    with pytest.raises(TransientModelError):
        await ConstitutionalWrapper(ScriptedModel(script), HARMLESS).chat(PROMPT)


async def test_wrappers_compose():
    inner = ConstitutionalWrapper(ScriptedModel(loop_script), HARMLESS, mode="off")
    outer = ConstitutionalWrapper(inner, HARMLESS, revisions=1)
    reply = await outer.chat(PROMPT)
    assert reply.text.startswith("I can't help")
    assert outer.spec == "cai:harmless(cai:harmless(scripted))"


def test_bad_configuration_is_rejected():
    model = ScriptedModel(loop_script)
    with pytest.raises(ValueError, match="needs at least one violation judge"):
        ConstitutionalWrapper(model, HARMLESS, mode="on_flag")
    with pytest.raises(ValueError, match="mode must be one of"):
        ConstitutionalWrapper(model, HARMLESS, mode="sometimes")  # type: ignore[arg-type]


async def test_stages_come_from_the_steps_revise_recorded():
    def stops_early(messages, params):
        return "No revision needed." if messages[-1]["content"] in CRITIQUES else loop_script(messages, params)

    model = ScriptedModel(stops_early, delay=0.01)
    reply = await ConstitutionalWrapper(model, HARMLESS, revisions=2).chat(PROMPT)
    trace = reply.trace
    stages = trace.metadata["stages"]
    assert [s["stage"] for s in stages] == ["initial", "critique"]  # no revision call after the stop
    assert trace.metadata["action"] == "kept" and reply.text.startswith("Strip")
    step = trace.steps[0]
    assert stages[1]["seconds"] == round(step.critique_seconds, 6) and step.critique_seconds >= 0.01
    assert stages[1]["completion_tokens"] == step.critique_usage.completion_tokens == 3
    assert round(trace.initial_seconds, 6) == stages[0]["seconds"] > 0 and trace.initial_usage.calls == 1
    assert reply.usage == trace.initial_usage + step.critique_usage


async def test_config_sets_the_loop():
    model = ScriptedModel(loop_script)
    config = ReviseConfig(revisions=1, sampling="sequential", few_shot=False)
    reply = await ConstitutionalWrapper(model, HARMLESS, config=config).apply(PROMPT, "Hotwire it.")
    assert [s.principle for s in reply.trace.steps] == [HARMLESS.principles[0].name]
    assert len(model.calls[0][0]) == 3  # prompt, answer, critique request: no few-shot turns
    with pytest.raises(TypeError, match="in config, not next to it"):
        ConstitutionalWrapper(model, HARMLESS, config=config, revisions=2)
