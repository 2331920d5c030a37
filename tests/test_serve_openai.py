"""`cai serve` as an OpenAI-compatible server, field by field against vLLM's (finish_reason,
n, tools / response_format / logprobs, system_fingerprint, tool-result turns, keep-alive),
driven by the official openai SDK against real uvicorn servers on loopback."""

from __future__ import annotations

import json

import openai
import pytest

from cai.models import Completion, ScriptedModel, Usage, load_model
from cai.testing.stub_openai_server import StubOpenAIServer
from tests.test_server_util import serve
from tests.test_wrapper import CRITIQUES, REVISIONS, loop_script

ASK = [{"role": "user", "content": "How do I hotwire a car?"}]
TOOL_TURNS = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def script(messages, params):
    last = messages[-1]["content"]
    if last == "crash":
        raise RuntimeError("a bug, not an upstream failure")
    if last in REVISIONS and any(m["content"] == "cut" for m in messages):
        return Completion("I won't help with that, but a locksmith", "length", Usage(3, 7, 1))
    if last in CRITIQUES or last in REVISIONS:
        return loop_script(messages, params)
    return loop_script(messages, params) + f" (seed {params.seed})"


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-all", max_retries=0)


@pytest.fixture(scope="module")
def revising():
    with serve(ScriptedModel(script), overrides={"wrapper.mode": "always", "wrapper.revisions": 1}) as s:
        yield s


@pytest.fixture(scope="module")
def stub():
    with StubOpenAIServer(reply="The weather is fine today") as s:
        yield s


@pytest.fixture(scope="module")
def passthrough(stub):
    with serve(load_model("openai:stub", base_url=stub.base_url), overrides={"wrapper.mode": "off"}) as s:
        yield s


def test_tool_result_turn_is_answered_and_the_connection_survives_errors(revising):
    c = client(revising)
    r = c.chat.completions.create(model="cai", messages=TOOL_TURNS, extra_body={"cai": {"trace": True}})
    assert r.choices[0].message.content.startswith("I can't help with stealing a car")
    prompt = r.model_extra["cai_trace"]["prompt"]
    assert prompt[1]["content"].startswith("[tool call] get_weather") and "18 C" in prompt[2]["content"]
    # an unexpected error is a clean 500 and the pooled keep-alive connection stays usable
    with pytest.raises(openai.InternalServerError) as err:
        c.chat.completions.create(model="cai", messages=[{"role": "user", "content": "crash"}])
    assert err.value.body["code"] == "internal_error"
    assert c.chat.completions.create(model="cai", messages=ASK).choices[0].message.content
    assert [m.id for m in c.models.list().data] == ["cai"]


def test_finish_reason_length_when_the_answer_is_cut_off(revising, passthrough):
    r = client(revising).chat.completions.create(model="cai", messages=[{"role": "user", "content": "cut"}])
    assert r.choices[0].finish_reason == "length"
    r = client(passthrough).chat.completions.create(model="cai", messages=ASK, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == "The weather"
    r = client(passthrough).chat.completions.create(model="cai", messages=ASK)
    assert r.choices[0].finish_reason == "stop"


def test_n_independent_answers_in_revising_and_off_modes(revising, passthrough):
    r = client(revising).chat.completions.create(
        model="cai", messages=ASK, n=2, seed=7, extra_body={"cai": {"trace": True}}
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content.startswith("I can't help") for c in r.choices)
    traces = r.model_extra["cai_trace"]
    assert [t["initial"][-8:] for t in traces] == ["(seed 7)", "(seed 8)"]  # two loops, own seeds
    single = client(revising).chat.completions.create(model="cai", messages=ASK)
    assert r.usage.completion_tokens == 2 * single.usage.completion_tokens
    chunks = list(
        client(revising).chat.completions.create(
            model="cai", messages=ASK, n=2, stream=True, stream_options={"include_usage": True}
        )
    )
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(t.startswith("I can't help") for t in texts.values())
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    r = client(passthrough).chat.completions.create(model="cai", messages=ASK, n=3)
    assert len(r.choices) == 3 and r.usage.completion_tokens == 3 * 5


def test_tools_response_format_logprobs_reach_the_upstream_in_mode_off(passthrough):
    c = client(passthrough)
    r = c.chat.completions.create(model="cai", messages=ASK, tools=TOOLS, tool_choice="auto")
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and r.choices[0].finish_reason == "tool_calls"
    stream = list(c.chat.completions.create(model="cai", messages=ASK, tools=TOOLS, stream=True))
    deltas = [tc for ch in stream for choice in ch.choices for tc in (choice.delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather" and deltas[0].id == "call_stub"
    assert [ch.choices[0].finish_reason for ch in stream if ch.choices][-1] == "tool_calls"
    # the conversation after the tool ran goes to the upstream with its tool fields
    assert c.chat.completions.create(model="cai", messages=TOOL_TURNS).choices[0].message.content
    r = c.chat.completions.create(model="cai", messages=ASK, response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content) == {"reply": "The weather is fine today"}
    r = c.chat.completions.create(model="cai", messages=ASK, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert [t.token for t in content][:2] == ["The", " weather"] and len(content[0].top_logprobs) == 2


@pytest.mark.parametrize(
    "field,value", [("tools", TOOLS), ("response_format", {"type": "json_object"}), ("logprobs", True)]
)
def test_revising_modes_refuse_what_they_cannot_honour_naming_the_parameter(revising, field, value):
    with pytest.raises(openai.BadRequestError) as err:
        client(revising).chat.completions.create(model="cai", messages=ASK, **{field: value})
    assert err.value.body["param"] == field and err.value.body["code"] == "unsupported_parameter"


def test_tools_need_an_openai_compatible_upstream():
    with serve(ScriptedModel(loop_script)) as s, pytest.raises(openai.BadRequestError) as err:
        client(s).chat.completions.create(model="cai", messages=ASK, tools=TOOLS)
    assert err.value.body["param"] == "tools" and "scripted" in err.value.body["message"]


def test_system_fingerprint_and_vllm_fields(revising, passthrough):
    r = client(revising).chat.completions.create(model="cai", messages=ASK)
    assert r.system_fingerprint.startswith("fp_") and r.choices[0].message.refusal is None
    chunks = list(client(revising).chat.completions.create(model="cai", messages=ASK, stream=True))
    assert {c.system_fingerprint for c in chunks} == {r.system_fingerprint}
    # a different mode/upstream is a different fingerprint
    assert (
        client(passthrough).chat.completions.create(model="cai", messages=ASK).system_fingerprint
        != r.system_fingerprint
    )


@pytest.mark.slow
def test_tool_result_turn_on_the_embedded_model(embedded_model):
    """The real chat template sees the tool-call turn and the tool result (both modes)."""
    for mode in ("off", "always"):
        overrides = {
            "wrapper.mode": mode,
            "wrapper.revisions": 1,
            "wrapper.few_shot": False,
            "limits.request_timeout_s": 600,
        }
        with serve(embedded_model, overrides=overrides) as s:
            c = openai.OpenAI(base_url=s.base_url, api_key="sk-all", max_retries=0, timeout=600)
            r = c.chat.completions.create(model="cai", messages=TOOL_TURNS, max_tokens=8)
            assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
            assert c.models.list().data[0].id == "cai"  # same client, connection still fine
