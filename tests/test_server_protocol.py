"""The wire format (cai.server.protocol): bodies are the openai SDK's own types, checked as
they are built."""

from __future__ import annotations

import json

import pydantic
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cai.server.protocol import ChatRequest, Choice, completion_json, models_body, sse_chunks

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_completion_body_is_the_sdk_type_with_the_trace() -> None:
    raw = completion_json("chatcmpl-1", "cai", [Choice("héllo there", "length")], USAGE, "fp_1", {"steps": []})
    body = json.loads(raw)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "héllo there" and parsed.choices[0].finish_reason == "length"
    assert parsed.usage is not None and parsed.usage.total_tokens == 5
    assert body["cai_trace"] == {"steps": []} and body["system_fingerprint"] == "fp_1"
    assert "cai_trace" not in json.loads(completion_json("c", "cai", [Choice("x", "stop")], USAGE, "fp"))


def test_a_provider_stopped_answer_is_content_filter() -> None:
    """The model layer's "error" finish reason is not one the SDK knows: OpenAI's name is sent."""
    body = json.loads(completion_json("c", "cai", [Choice("", "error")], USAGE, "fp"))
    assert body["choices"][0]["finish_reason"] == "content_filter"


def test_a_body_the_sdk_cannot_parse_fails_at_the_server() -> None:
    bad = Choice("x", "stop", tool_calls=[{"id": "call_1", "type": "function", "function": "not an object"}])
    with pytest.raises(pydantic.ValidationError):
        completion_json("c", "cai", [bad], USAGE, "fp")


def test_stream_chunks_are_sdk_chunks_that_rebuild_the_answers() -> None:
    text = "one two three four five six seven eight nine ten"
    choices = [Choice(text, "stop"), Choice("second answer", "length")]
    events = list(sse_chunks("c", "cai", choices, USAGE, "fp", {"t": 1}, include_usage=True))
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [ChatCompletionChunk.model_validate_json(e[len(b"data: ") :]) for e in events[:-1]]
    rebuilt = ["", ""]
    for chunk in chunks:
        for c in chunk.choices:
            rebuilt[c.index] += c.delta.content or ""
    assert rebuilt == [text, "second answer"]
    finishes = [(c.index, c.finish_reason) for ch in chunks for c in ch.choices if c.finish_reason]
    assert finishes == [(0, "stop"), (1, "length")]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5
    assert [json.loads(e[6:]).get("cai_trace") for e in events[:-1]].count({"t": 1}) == 1


def test_models_body() -> None:
    assert models_body("cai") == {
        "object": "list",
        "data": [{"id": "cai", "object": "model", "created": 0, "owned_by": "cai"}],
    }


def test_content_parts_become_text_and_other_parts_are_refused() -> None:
    parts = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Really."}]
    request = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "developer", "content": parts}, {"role": "user", "content": "hi"}]}
    )
    assert request.chat_messages() == [
        {"role": "system", "content": "Be brief.\nReally."},
        {"role": "user", "content": "hi"},
    ]
    image = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [*parts, {"type": "image_url", "image_url": {}}]}]}
    )
    with pytest.raises(ValueError, match="only text content parts are supported"):
        image.chat_messages()
