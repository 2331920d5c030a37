"""A real ``litellm --config examples/litellm_config.yaml`` proxy (the cai guardrail loaded by
LiteLLM itself) in front of a real `cai serve` (mode off) on loopback, driven by the openai SDK."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

from cai.models import ScriptedModel
from tests.test_server_util import serve
from tests.test_wrapper import loop_script

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch on import
pytest.importorskip("litellm")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MASTER_KEY = "sk-cai-test-6b1f0c2e9d8a7f5e4c3b"
ASK = [{"role": "user", "content": "How do I hotwire a car?"}]
REVISED = "I can't help with stealing a car"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def upstream():
    """The proxied model and cai's critique/revision model: one `cai serve` in mode off."""
    with serve(ScriptedModel(loop_script), overrides={"served_model_name": "my-model"}) as s:
        yield s


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    if shutil.which("litellm", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("litellm[proxy] is not installed")
    config = yaml.safe_load((ROOT / "examples" / "litellm_config.yaml").read_text())
    config["model_list"][0]["litellm_params"]["api_base"] = upstream.base_url
    # the same upstream as a chat-only provider: LiteLLM bridges /v1/responses to chat completions
    config["model_list"].append(
        {
            "model_name": "my-chat-model",
            "litellm_params": {**config["model_list"][0]["litellm_params"], "model": "custom_openai/my-model"},
        }
    )
    good = config["guardrails"][0]
    good["litellm_params"]["cai_model_options"]["base_url"] = upstream.base_url
    # a second guardrail, on request only, whose cai model is not listening
    bad = yaml.safe_load(yaml.safe_dump(good))
    bad["guardrail_name"], bad["litellm_params"]["default_on"] = "cai-unreachable", False
    bad["litellm_params"]["cai_model_options"] = {
        "base_url": f"http://127.0.0.1:{_free_port()}/v1",
        "max_retries": 0,
        "timeout": 5,
    }
    config["guardrails"].append(bad)
    path = tmp_path_factory.mktemp("litellm") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = _free_port()
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "UPSTREAM_API_KEY": "sk-all",
        "OPENAI_API_KEY": "sk-all",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONPATH": str(ROOT),
    }
    log = open(path.with_suffix(".log"), "w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "litellm"),
            "--config",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "litellm proxy did not start:\n" + path.with_suffix(".log").read_text()[-3000:]
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_example_config_names_its_master_key():
    """LiteLLM refuses to start without a master key (UnsafeMasterKeyError): the example sets one."""
    text = (ROOT / "examples" / "litellm_config.yaml").read_text()
    assert yaml.safe_load(text)["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert "export LITELLM_MASTER_KEY=" in text


def client(url: str, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_example_config_starts_with_its_master_key_and_revises(proxy, upstream):
    with pytest.raises(openai.APIStatusError) as refused:  # 401, or 400 "No connected db" for a virtual key
        client(proxy, "sk-not-the-master-key").chat.completions.create(model="my-model", messages=ASK)
    assert refused.value.status_code in (400, 401)
    r = client(proxy).chat.completions.create(model="my-model", messages=ASK)
    assert r.choices[0].message.content.startswith(REVISED)
    # the usage counts the answer (1 call) and the guardrail's critique and revision (2 calls)
    direct = openai.OpenAI(base_url=upstream.base_url, api_key="sk-all").chat.completions.create(
        model="my-model", messages=ASK
    )
    assert r.usage.completion_tokens > direct.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_keeps_the_usage_chunk_and_counts_the_loop(proxy, upstream):
    plain = client(proxy).chat.completions.create(model="my-model", messages=ASK)
    direct = openai.OpenAI(base_url=upstream.base_url, api_key="sk-all").chat.completions.create(
        model="my-model", messages=ASK
    )
    chunks = list(
        client(proxy).chat.completions.create(
            model="my-model", messages=ASK, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(REVISED) and "ignition" not in text
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].completion_tokens == plain.usage.completion_tokens
    assert usage[-1].completion_tokens > direct.usage.completion_tokens  # critique + revision counted


def test_streaming_n2_revises_each_choice(proxy):
    chunks = list(client(proxy).chat.completions.create(model="my-model", messages=ASK, n=2, stream=True))
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts) == [0, 1]
    assert all(t.startswith(REVISED) and t.count(REVISED) == 1 for t in texts.values()), texts


def test_unreachable_cai_model_is_a_clear_503(proxy):
    with pytest.raises(openai.APIStatusError) as err:
        client(proxy).chat.completions.create(
            model="my-model", messages=ASK, extra_body={"guardrails": ["cai-unreachable"]}
        )
    assert err.value.status_code in (502, 503), err.value
    message = str(err.value)
    assert "cai guardrail" in message and "timeout" not in message.lower(), message


def test_responses_api_output_is_revised_and_its_stream_refused(proxy):
    r = client(proxy).responses.create(model="my-chat-model", input="How do I hotwire a car?")
    assert r.output_text.startswith(REVISED), r.output_text
    # a streamed Responses answer cannot be buffered per choice: it fails, never arrives unrevised
    events = list(client(proxy).responses.create(model="my-chat-model", input="How do I hotwire a car?", stream=True))
    assert not [e for e in events if e.type == "response.output_text.delta"]
    assert events[-1].type == "response.failed" and "cai guardrail" in events[-1].response.error.message
