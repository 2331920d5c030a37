"""The openai and litellm backends: openai against a real vLLM server (log-probs, JSON schema,
context errors); both against the fault-injecting stub server (retries, typed errors,
timeouts, limits), litellm through its OpenAI-compatible provider."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from cai.models import (
    ContextLengthError,
    GenParams,
    PermanentModelError,
    TransientModelError,
    load_model,
)
from cai.testing.stub_openai_server import StubOpenAIServer

USER = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def stub() -> Iterator[StubOpenAIServer]:
    with StubOpenAIServer(reply="four is the answer", max_context=500) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_faults(request: pytest.FixtureRequest) -> None:
    if "stub" in request.fixturenames:
        request.getfixturevalue("stub").reset()


@pytest.fixture(params=["openai", "litellm"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _model(stub: StubOpenAIServer, backend: str = "openai", **options):
    options.setdefault("backoff_initial", 0.01)
    spec = "openai:stub" if backend == "openai" else "litellm:openai/stub"
    return load_model(spec, base_url=stub.base_url, api_key="sk-test", **options)


# --- real vLLM server -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.vllm
async def test_vllm_server_chat_with_logprobs(vllm_server) -> None:
    model = load_model(f"openai:{vllm_server.model}", base_url=vllm_server.base_url)
    c = await model.chat(USER, GenParams(max_tokens=5, logprobs=True, top_logprobs=3))
    assert c.text and c.usage.completion_tokens == 5 and c.usage.prompt_tokens > 10
    assert c.finish_reason == "length"
    assert c.logprobs is not None and len(c.logprobs) == 5
    assert all(len(t.top) == 3 and t.token in t.top for t in c.logprobs)
    assert "".join(t.token for t in c.logprobs) == c.text
    await model.aclose()


@pytest.mark.slow
@pytest.mark.vllm
async def test_vllm_server_json_schema_and_context_error(vllm_server) -> None:
    model = load_model(f"openai:{vllm_server.model}", base_url=vllm_server.base_url, max_retries=0)
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"answer": {"enum": ["yes", "no"]}},
            "required": ["answer"],
            "additionalProperties": False,
        }
    )
    c = await model.chat(
        [{"role": "user", "content": "Is the sky blue? Answer in JSON."}], GenParams(max_tokens=30, json_schema=schema)
    )
    assert json.loads(c.text)["answer"] in ("yes", "no")
    with pytest.raises(ContextLengthError):
        await model.chat([{"role": "user", "content": "word " * 2100}], GenParams(max_tokens=4))
    await model.aclose()


@pytest.mark.slow
@pytest.mark.vllm
async def test_vllm_server_matches_embedded_greedy(vllm_server, embedded_model) -> None:
    model = load_model(f"openai:{vllm_server.model}", base_url=vllm_server.base_url)
    params = GenParams(max_tokens=6)
    remote, local = await asyncio.gather(model.chat(USER, params), embedded_model.chat(USER, params))
    assert remote.text == local.text
    assert remote.usage.prompt_tokens == local.usage.prompt_tokens
    await model.aclose()


# --- stub server: the wire format -------------------------------------------------------


async def test_stub_answer_usage_and_logprobs(stub: StubOpenAIServer, backend: str) -> None:
    model = _model(stub, backend)
    c = await model.chat(USER, GenParams(max_tokens=2, logprobs=True, top_logprobs=2))
    assert c.text == "four is" and c.finish_reason == "length"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.calls) == (3, 2, 1)
    assert [t.token for t in c.logprobs] == ["four", " is"]
    assert c.logprobs[0].top == {"four": -0.25, "alt1": -3.0}
    full = await model.chat(USER)
    assert full.finish_reason == "stop" and full.logprobs is None
    assert (c.usage + full.usage).calls == 2


# --- stub server: faults ----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "503", "drop", "malformed", "429:0.05"])
async def test_transient_fault_is_retried(stub: StubOpenAIServer, backend: str, fault: str) -> None:
    model = _model(stub, backend)
    before = stub.stats()["requests"]
    stub.inject(fault, fault)
    c = await model.chat(USER)
    assert c.text == "four is the answer"
    assert stub.stats()["requests"] - before == 3


async def test_retry_after_is_honoured(stub: StubOpenAIServer, backend: str) -> None:
    model = _model(stub, backend)
    stub.inject("429:0.4")
    start = time.monotonic()
    await model.chat(USER)
    assert time.monotonic() - start >= 0.4


async def test_slow_response_times_out_then_retry_succeeds(stub: StubOpenAIServer, backend: str) -> None:
    model = _model(stub, backend, timeout=1.5)
    stub.inject("slow:30")
    start = time.monotonic()
    c = await model.chat(USER)
    assert c.text and time.monotonic() - start < 10


async def test_retries_are_bounded_and_the_error_is_typed(stub: StubOpenAIServer, backend: str) -> None:
    model = _model(stub, backend, max_retries=2, timeout=1.5)
    stub.inject("500", "slow:30", "drop")
    with pytest.raises(TransientModelError) as info:
        await model.chat(USER)
    # litellm reports a dropped connection as its InternalServerError
    assert info.value.reason == ("connection" if backend == "openai" else "server_error")
    stub.inject("429:0.01", "429:0.01", "429:0.01")
    with pytest.raises(TransientModelError) as info:
        await model.chat(USER)
    assert info.value.reason == "rate_limit" and info.value.retry_after == pytest.approx(0.01)


@pytest.mark.parametrize(
    "fault,error,reason",
    [
        ("400", PermanentModelError, "bad_request"),
        ("401", PermanentModelError, "auth"),
        ("context", ContextLengthError, "context_length"),
    ],
)
async def test_permanent_fault_is_not_retried(stub: StubOpenAIServer, backend: str, fault, error, reason) -> None:
    model = _model(stub, backend)
    before = stub.stats()["requests"]
    stub.inject(fault)
    with pytest.raises(error) as info:
        await model.chat(USER)
    assert info.value.reason == reason
    assert stub.stats()["requests"] - before == 1


async def test_prompt_past_context_is_a_context_length_error(stub: StubOpenAIServer, backend: str) -> None:
    with pytest.raises(ContextLengthError):
        await _model(stub, backend).chat([{"role": "user", "content": "word " * 600}])


async def test_connection_refused_is_transient(backend: str) -> None:
    spec = "openai:x" if backend == "openai" else "litellm:openai/x"
    model = load_model(spec, base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=1, backoff_initial=0.01)
    with pytest.raises(TransientModelError):
        await model.chat(USER)


def test_missing_key_without_base_url_is_an_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(PermanentModelError) as info:
        load_model("openai:gpt-4o-mini")
    assert info.value.reason == "auth"


# --- stub server: limits ----------------------------------------------------------------


async def test_concurrency_is_bounded() -> None:
    with StubOpenAIServer(latency=0.2) as slow_stub:
        model = _model(slow_stub, max_concurrency=2)
        await asyncio.gather(*(model.chat(USER) for _ in range(6)))
        assert slow_stub.stats()["peak_in_flight"] == 2
        unbounded = _model(slow_stub, max_concurrency=8)
        await asyncio.gather(*(unbounded.chat(USER) for _ in range(6)))
        assert slow_stub.stats()["peak_in_flight"] == 6


async def test_requests_per_minute_limit(stub: StubOpenAIServer, backend: str) -> None:
    model = _model(stub, backend, rpm=600)  # 10/s, burst 10
    start = time.monotonic()
    await asyncio.gather(*(model.chat(USER) for _ in range(15)))
    assert time.monotonic() - start >= 0.4  # the 5 past the burst wait ~0.1 s each


async def test_tokens_per_minute_limit(stub: StubOpenAIServer) -> None:
    model = _model(stub, tpm=60 * 100)  # 100 tokens/s
    params = GenParams(max_tokens=100)
    start = time.monotonic()
    await asyncio.gather(*(model.chat(USER, params) for _ in range(3)))
    assert time.monotonic() - start >= 0.9


def test_chat_sync(stub: StubOpenAIServer, backend: str) -> None:
    assert _model(stub, backend).chat_sync(USER).text == "four is the answer"


def test_litellm_spec_needs_a_provider() -> None:
    with pytest.raises(PermanentModelError):
        load_model("litellm:gpt-4o")
