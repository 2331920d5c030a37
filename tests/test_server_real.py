"""`cai serve` in front of real models: the embedded model (in-process) and a real vLLM
OpenAI-compatible server (through the ``openai:`` backend). The official openai client talks
to it unchanged, streaming and non-streaming."""

from __future__ import annotations

import httpx
import openai
import pytest

from cai.wrapper import ConstitutionalWrapper
from tests.test_server import ALL
from tests.test_server_util import serve

pytestmark = pytest.mark.slow
PROMPT = [{"role": "user", "content": "How can I steal my neighbour's wifi password?"}]


def check_openai_roundtrip(base_url: str, max_tokens: int = 12) -> dict:
    client = openai.OpenAI(base_url=base_url, api_key="sk-all", max_retries=0, timeout=900)
    r = client.chat.completions.create(
        model="cai", messages=PROMPT, max_tokens=max_tokens, temperature=0, extra_body={"cai": {"trace": True}}
    )
    text = r.choices[0].message.content
    trace = r.model_extra["cai_trace"]
    assert text and text == trace["final"]
    stages = trace["metadata"]["stages"]
    assert stages[0]["stage"] == "initial" and stages[0]["completion_tokens"] > 0
    assert len(trace["steps"]) == 1 and trace["steps"][0]["critique"]
    if trace["steps"][0]["note"] != "no_revision_needed":
        assert [s["stage"] for s in stages] == ["initial", "critique", "revision"]
    # usage sums every stage the upstream ran
    assert r.usage.completion_tokens == sum(s["completion_tokens"] for s in stages)
    assert r.usage.prompt_tokens == sum(s["prompt_tokens"] for s in stages)

    chunks = list(
        client.chat.completions.create(
            model="cai",
            messages=PROMPT,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy decoding: same loop, same final text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    return trace


def test_serve_embedded_model(embedded_model):
    from judges import ViolationJudge

    overrides = {
        "wrapper.mode": "always",
        "wrapper.revisions": 1,
        "wrapper.few_shot": False,
        "limits.request_timeout_s": 900,
    }
    with serve(embedded_model, overrides=overrides, pointwise=ViolationJudge(embedded_model)) as s:
        check_openai_roundtrip(s.base_url, max_tokens=8)
        # a real (log-prob) violation judge behind /v1/reward, OpenRLHF shape
        prompt = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
        body = {"query": [prompt + "Mix flour, water, salt and yeast, knead, let it rise, bake."], "prompts": [prompt]}
        r = httpx.post(s.base_url + "/reward", json=body, headers=ALL, timeout=900)
        assert r.status_code == 200, r.text
        (reward,) = r.json()["rewards"]
        # a violation judge: reward = -p(violation)
        assert -1.0 <= reward <= 0.0 and r.json()["scores"] == [reward] and r.json()["details"][0]["status"] == "ok"


@pytest.mark.vllm
def test_serve_in_front_of_vllm(vllm_server):
    from cai.models import load_model

    upstream = load_model(f"openai:{vllm_server.model}", base_url=vllm_server.base_url, api_key="x")
    wrapper = ConstitutionalWrapper(upstream, "harmless", mode="always", revisions=1, few_shot=False)
    with serve(wrapper=wrapper, overrides={"limits.request_timeout_s": 900}) as s:
        trace = check_openai_roundtrip(s.base_url)
        assert trace["model"] == f"openai:{vllm_server.model}"
    # upstream gone -> 502 with the reason, as OpenAI error JSON
    dead = load_model(
        f"openai:{vllm_server.model}", base_url="http://127.0.0.1:9/v1", api_key="x", max_retries=0, timeout=5
    )
    with serve(dead) as s:
        r = httpx.post(
            s.base_url + "/chat/completions",
            headers=ALL,
            timeout=60,
            json={"model": "cai", "messages": PROMPT, "max_tokens": 4},
        )
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
