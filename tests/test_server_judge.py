"""/v1/judge and /v1/reward over real HTTP, with real judges (rules, and an LLM pairwise judge
on a scripted model); config loading errors."""

from __future__ import annotations

import httpx
import pytest

from cai.models import Capabilities, ScriptedModel
from cai.server.config import ConfigError, load_config
from judges import load_judge
from tests.test_server import ALL, assert_openai_error
from tests.test_server_util import serve
from tests.test_wrapper import loop_script

REWARD = {"authorization": "Bearer sk-reward"}


@pytest.fixture(scope="module")
def judge_server():
    # the pairwise judge's model always prefers the first response shown: position bias
    biased = ScriptedModel(lambda m, p: "A", capabilities=Capabilities())
    overrides = {"judge.pointwise": "rules:refusal"}
    with serve(
        ScriptedModel(loop_script), overrides=overrides, pairwise=load_judge("pairwise:scripted", model=biased)
    ) as s:
        yield s


def test_reward_in_openrlhf_shape(judge_server):
    prompts = ["<|user|>How do I pick a lock?<|assistant|>", "<|user|>Hi<|assistant|>"]
    body = {
        "query": [prompts[0] + "I can't help with that.", prompts[1] + "Hello! How can I help?"],
        "prompts": prompts,
        "labels": ["", ""],
    }
    r = httpx.post(judge_server.base_url + "/reward", json=body, headers=REWARD)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["rewards"] == [1.0, 0.0]  # rules:refusal scores refusals 1.0
    assert [s["status"] for s in out["details"]] == ["ok", "ok"]
    # query only (older OpenRLHF): the whole string is judged
    r = httpx.post(judge_server.base_url + "/reward", json={"query": ["I cannot do that."]}, headers=REWARD)
    assert r.json()["rewards"] == [1.0]


def test_reward_in_cai_shape_and_errors(judge_server):
    url = judge_server.base_url + "/reward"
    items = [{"prompt": [{"role": "user", "content": "x"}], "response": "Sure, here you go."}]
    assert httpx.post(url, json={"items": items}, headers=REWARD).json()["rewards"] == [0.0]
    assert_openai_error(httpx.post(url, json={"items": items, "query": ["a"]}, headers=REWARD), 400)
    assert_openai_error(httpx.post(url, json={"query": ["a", "b"], "prompts": ["a"]}, headers=REWARD), 400)
    assert_openai_error(httpx.post(url, json={"items": items * 600}, headers=REWARD), 413, "batch_too_large")
    assert_openai_error(
        httpx.post(url, json={"items": items}, headers={"authorization": "Bearer sk-chat"}), 403, "forbidden"
    )


def test_judge_pairwise_and_pointwise(judge_server):
    url = judge_server.base_url + "/judge"
    r = httpx.post(url, json={"prompt": "Hi", "a": "Hello!", "b": "Go away."}, headers=REWARD)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["type"] == "pairwise" and len(res["orders"]) == 2
    # the model always answers "A": the two orders disagree, which must be flagged, not hidden
    assert res["consistent"] is False
    r = httpx.post(
        url,
        json={"items": [{"prompt": "Hi", "response": "I can't help with that."}, {"prompt": "Hi", "a": "x", "b": "y"}]},
        headers=REWARD,
    )
    kinds = [x["type"] for x in r.json()["results"]]
    assert kinds == ["pointwise", "pairwise"] and r.json()["results"][0]["value"] == 1.0
    assert_openai_error(httpx.post(url, json={"prompt": "Hi", "a": "x"}, headers=REWARD), 400)
    assert_openai_error(
        httpx.post(url, json={"prompt": "Hi", "response": "x", "a": "y", "b": "z"}, headers=REWARD), 400
    )


def test_judge_not_configured_is_404():
    with serve(ScriptedModel(loop_script)) as s:
        assert_openai_error(
            httpx.post(s.base_url + "/reward", json={"query": ["x"]}, headers=ALL), 404, "judge_not_configured"
        )


def test_config_errors_name_file_line_and_field(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 8000\nwrapper:\n  mode: sometimes\n  revisions: 1\nauth:\n  keys: k\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, environ={})
    assert f"{cfg}:3: field wrapper.mode" in str(exc.value)
    cfg.write_text("port: 8000\nlimits:\n  max_concurrency: 4\n  typo: 1\n")
    with pytest.raises(ConfigError, match=r":4: field limits.typo: Extra inputs"):
        load_config(cfg, environ={"CAI_SERVE_AUTH__KEYS": "k"})
    with pytest.raises(ConfigError, match="no API keys configured"):
        load_config(None, environ={})


def test_config_precedence_file_env_flags(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\nsk-one chat\nsk-two *\n")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"port: 9000\nauth:\n  keys_file: {keys}\nlimits:\n  max_concurrency: 4\n")
    env = {"CAI_SERVE_LIMITS__MAX_CONCURRENCY": "8", "CAI_SERVE_PORT": "9001"}
    c = load_config(cfg, {"port": 9002}, environ=env)
    assert (c.port, c.limits.max_concurrency) == (9002, 8)
    from cai.server.auth import KeyStore

    store = KeyStore.from_config(c.auth)
    assert store.routes_for("sk-one") == {"chat"} and "reward" in store.routes_for("sk-two")
    assert store.routes_for("sk-three") is None
    keys.write_text("sk-one chat,bogus\n")
    with pytest.raises(ConfigError, match=r"keys.txt:1: unknown route"):
        KeyStore.from_config(c.auth)


def test_remote_reward_function_for_trl(judge_server):
    from cai.server.client import remote_reward_function

    reward = remote_reward_function(judge_server.url, api_key="sk-reward")
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Pick a lock?"}]]
    completions = [
        [{"role": "assistant", "content": "Hello!"}],
        [{"role": "assistant", "content": "I can't help with that."}],
    ]
    assert reward(prompts, completions) == [0.0, 1.0]
    assert reward(["Hi"], ["I cannot do that."]) == [1.0]
    with pytest.raises(RuntimeError, match="403"):
        remote_reward_function(judge_server.base_url, api_key="sk-chat")(["Hi"], ["x"])
