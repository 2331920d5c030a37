"""`cai serve` over real HTTP (uvicorn on loopback, official openai client) in front of a
scripted upstream: protocol, auth, limits and error paths. Real-model tests: test_server_real.py."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from cai.models import ScriptedModel, TransientModelError
from tests.test_server_util import serve
from tests.test_wrapper import loop_script

ALL = {"authorization": "Bearer sk-all"}
CHAT = {"model": "cai", "messages": [{"role": "user", "content": "How do I hotwire a car?"}]}


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    return err


@pytest.fixture(scope="module")
def loop_server():
    with serve(ScriptedModel(loop_script), overrides={"wrapper.mode": "always", "wrapper.revisions": 1}) as s:
        yield s


def test_openai_client_non_streaming_gets_revised_text_usage_and_trace(loop_server):
    client = openai.OpenAI(base_url=loop_server.base_url, api_key="sk-all")
    r = client.chat.completions.create(
        model="cai", messages=CHAT["messages"], max_tokens=32, extra_body={"cai": {"trace": True}}
    )
    assert r.choices[0].message.content.startswith("I can't help with stealing a car")
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion" and r.model == "cai"
    trace = r.model_extra["cai_trace"]
    assert trace["initial"].startswith("Strip the ignition")
    assert [s["stage"] for s in trace["metadata"]["stages"]] == ["initial", "critique", "revision"]
    assert r.usage.completion_tokens == sum(s["completion_tokens"] for s in trace["metadata"]["stages"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # no trace unless asked
    plain = client.chat.completions.create(model="cai", messages=CHAT["messages"])
    assert "cai_trace" not in (plain.model_extra or {})
    assert [m.id for m in client.models.list().data] == ["cai"]


def test_openai_client_streaming_runs_the_loop_first(loop_server):
    client = openai.OpenAI(base_url=loop_server.base_url, api_key="sk-all")
    chunks = list(
        client.chat.completions.create(
            model="cai",
            messages=CHAT["messages"],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"cai": {"trace": True}},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("I can't help with stealing a car")
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any("cai_trace" in (c.model_extra or {}) for c in chunks)
    raw = httpx.post(loop_server.base_url + "/chat/completions", json={**CHAT, "stream": True}, headers=ALL)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert json.loads(e[6:])["object"] == "chat.completion.chunk"


def test_auth_401_403_and_keys_never_echoed(loop_server):
    url = loop_server.base_url + "/chat/completions"
    assert_openai_error(httpx.post(url, json=CHAT), 401, "invalid_api_key")
    err = assert_openai_error(
        httpx.post(url, json=CHAT, headers={"authorization": "Bearer sk-wrong-secret"}), 401, "invalid_api_key"
    )
    assert "sk-wrong-secret" not in json.dumps(err)
    assert_openai_error(httpx.post(url, json=CHAT, headers={"authorization": "Basic sk-all"}), 401)
    assert_openai_error(httpx.post(url, json=CHAT, headers={"authorization": "Bearer sk-reward"}), 403, "forbidden")
    assert httpx.post(url, json=CHAT, headers={"authorization": "Bearer sk-chat"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=loop_server.base_url, api_key="nope", max_retries=0).models.list()
    assert httpx.get(loop_server.url + "/healthz").json()["status"] == "ok"


def test_bad_requests_get_openai_errors(loop_server):
    url = loop_server.base_url + "/chat/completions"
    assert_openai_error(httpx.post(url, json={**CHAT, "model": "gpt-4"}, headers=ALL), 404, "model_not_found")
    assert_openai_error(httpx.post(url, json={"model": "cai", "messages": []}, headers=ALL), 400)
    assert_openai_error(httpx.post(url, content=b"{not json", headers=ALL), 400)
    assert_openai_error(httpx.post(url, json={**CHAT, "n": 99}, headers=ALL), 400)  # n is bounded (1..16)
    assert_openai_error(httpx.get(loop_server.base_url + "/nothing", headers=ALL), 404)
    # body too large: by Content-Length, and chunked without one
    assert_openai_error(httpx.post(url, content=b"x" * 1_100_000, headers=ALL), 413, "body_too_large")

    def chunks():
        for _ in range(40):
            yield b"x" * 50_000

    assert_openai_error(httpx.post(url, content=chunks(), headers=ALL), 413, "body_too_large")


def test_upstream_failure_is_502_with_reason():
    def broken(messages, params):
        raise TransientModelError("connection refused by 10.0.0.9:8000", reason="connection")

    with serve(ScriptedModel(broken)) as s:
        err = assert_openai_error(
            httpx.post(s.base_url + "/chat/completions", json=CHAT, headers=ALL), 502, "upstream_error"
        )
        assert "(connection)" in err["message"] and err["type"] == "upstream_error"
        assert "10.0.0.9" not in err["message"]  # the reason, never the upstream's own text
        assert 'cai_upstream_errors_total{reason="connection"} 1.0' in httpx.get(s.url + "/metrics").text


def test_timeout_is_504():
    with serve(ScriptedModel(loop_script, delay=2.0), overrides={"limits.request_timeout_s": 0.2}) as s:
        start = time.perf_counter()
        assert_openai_error(httpx.post(s.base_url + "/chat/completions", json=CHAT, headers=ALL), 504, "timeout")
        assert time.perf_counter() - start < 1.5


async def test_concurrency_limit_is_429_and_frees_up():
    with serve(ScriptedModel(loop_script, delay=0.5), overrides={"limits.max_concurrency": 2}) as s:
        async with httpx.AsyncClient(headers=ALL, timeout=10) as client:
            replies = await asyncio.gather(
                *(client.post(s.base_url + "/chat/completions", json=CHAT) for _ in range(6))
            )
            codes = sorted(r.status_code for r in replies)
            assert codes.count(200) == 2 and codes.count(429) == 4, codes
            for r in replies:
                if r.status_code == 429:
                    assert_openai_error(r, 429, "overloaded")
                    assert r.headers["retry-after"] == "1"
            assert (await client.post(s.base_url + "/chat/completions", json=CHAT)).status_code == 200


async def test_load_200_concurrent_requests_no_5xx():
    """200 concurrent chat requests through the full loop (scripted upstream, 20 ms a call)."""
    model = ScriptedModel(loop_script, delay=0.02)
    overrides = {"wrapper.mode": "always", "wrapper.revisions": 1, "limits.max_concurrency": 256}
    with serve(model, overrides=overrides) as s:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(headers=ALL, timeout=60, limits=limits) as client:
            start = time.perf_counter()
            replies = await asyncio.gather(
                *(
                    client.post(
                        s.base_url + "/chat/completions",
                        json={**CHAT, "stream": i % 2 == 1, "cai": {"trace": i % 3 == 0}},
                    )
                    for i in range(200)
                )
            )
            elapsed = time.perf_counter() - start
        assert elapsed < 60
        assert [r.status_code for r in replies] == [200] * 200
        for i, r in enumerate(replies):
            if i % 2 == 1:
                events = [e for e in r.text.split("\n\n") if e]
                assert events[-1] == "data: [DONE]"
                text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1])
            else:
                body = r.json()
                text = body["choices"][0]["message"]["content"]
                assert ("cai_trace" in body) == (i % 3 == 0)
            assert text.startswith("I can't help with stealing a car")
        assert len(model.calls) == 200 * 3
        metrics = httpx.get(s.url + "/metrics").text
        assert 'cai_requests_total{route="chat",status="200"} 200.0' in metrics
        assert 'cai_stage_seconds_count{stage="revision"} 200.0' in metrics
        assert "cai_revisions_total 200.0" in metrics


def test_block_mode_with_a_configured_judge_and_metrics():
    # a rules judge from the config: answers mentioning "ignition" count as violations
    overrides = {"wrapper.mode": "block", "wrapper.refusal": "Not with me.", "wrapper.judges": ["rules:regex:ignition"]}
    with serve(ScriptedModel(loop_script), overrides=overrides) as s:
        r = httpx.post(s.base_url + "/chat/completions", json={**CHAT, "cai": {"trace": True}}, headers=ALL).json()
        assert r["choices"][0]["message"]["content"] == "Not with me."
        assert r["cai_trace"]["metadata"]["judge"][0]["p_violation"] == 1.0
        assert r["cai_trace"]["initial"].startswith("Strip the ignition")
        metrics = httpx.get(s.url + "/metrics").text
        assert "cai_blocks_total 1.0" in metrics and 'cai_stage_seconds_count{stage="judge"} 1.0' in metrics


def test_openai_upstream_errors_map_to_502_and_400():
    """A real HTTP upstream (the stub OpenAI server) through the openai: backend."""
    from cai.models import load_model
    from cai.testing.stub_openai_server import StubOpenAIServer

    with StubOpenAIServer(reply="Fine.") as stub:
        upstream = load_model("openai:stub", base_url=stub.base_url, api_key="x", max_retries=0)
        with serve(upstream) as s:
            url = s.base_url + "/chat/completions"
            client = openai.OpenAI(base_url=s.base_url, api_key="sk-all", max_retries=0)
            assert (
                client.chat.completions.create(model="cai", messages=CHAT["messages"]).choices[0].message.content
                == "Fine."
            )
            stub.inject("500", "drop", "context")
            assert_openai_error(httpx.post(url, json=CHAT, headers=ALL), 502, "upstream_error")
            assert_openai_error(httpx.post(url, json=CHAT, headers=ALL), 502, "upstream_error")
            assert_openai_error(httpx.post(url, json=CHAT, headers=ALL), 400, "context_length_exceeded")
            assert httpx.post(url, json=CHAT, headers=ALL).status_code == 200
