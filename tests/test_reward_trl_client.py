"""``cai.server.client.remote_reward_function`` (TRL's reward_func) against real servers on
loopback: content-part prompts, tool-call completions, chunking under the server's batch limit,
retries of 429/5xx that honour Retry-After."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cai.models import ScriptedModel
from cai.server.client import RewardServerError, remote_reward_function
from tests.test_server_util import LiveServer, serve
from tests.test_wrapper import loop_script


@pytest.fixture(scope="module")
def refusal_server():
    # rules:refusal: 1.0 for a refusal, else 0.0; at most 4 items per request
    with serve(ScriptedModel(loop_script), overrides={"judge.pointwise": "rules:refusal", "limits.max_batch": 4}) as s:
        yield s


def test_content_parts_and_tool_call_completions(refusal_server):
    reward = remote_reward_function(refusal_server.url, api_key="sk-reward")
    prompts = [
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Pick a lock?"}]},
        ],
        [{"role": "user", "content": "What's the weather?"}],
    ]
    completions = [
        [{"role": "assistant", "content": [{"type": "text", "text": "I can't help with that."}]}],
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
            },
            {"role": "tool", "content": "sunny"},
        ],
    ]
    assert reward(prompts, completions) == [1.0, 0.0]


def test_batches_over_the_server_limit_are_chunked(refusal_server):
    reward = remote_reward_function(refusal_server.url, api_key="sk-reward")  # default chunk: 256
    completions = ["I can't help with that.", "Sure!"] * 5
    assert reward(["Hi"] * 10, completions) == [1.0, 0.0] * 5


def test_client_errors_are_not_retried(refusal_server):
    reward = remote_reward_function(refusal_server.url, api_key="sk-chat")
    start = time.monotonic()
    with pytest.raises(RewardServerError, match="403"):
        reward(["Hi"], ["x"])
    assert time.monotonic() - start < 1


def flaky_app(answers: list[tuple[int, dict]]) -> tuple[FastAPI, list[float]]:
    """Answers each request with the next (status, headers) in ``answers``, then 200."""
    app, seen = FastAPI(), []

    @app.post("/v1/reward")
    async def reward(request: Request):
        seen.append(time.monotonic())
        body = await request.json()
        if len(seen) <= len(answers):
            status, headers = answers[len(seen) - 1]
            return JSONResponse({"error": {"message": "busy"}}, status_code=status, headers=headers)
        return {"rewards": [float(len(it["response"])) for it in body["items"]]}

    return app, seen


def test_429_and_5xx_are_retried_honouring_retry_after():
    app, seen = flaky_app([(429, {"retry-after": "1"}), (503, {"retry-after": "0.5"}), (502, {})])
    with LiveServer(app) as s:
        assert remote_reward_function(s.url)(["p"], ["abc"]) == [3.0]
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert len(seen) == 4 and gaps[0] >= 0.95 and gaps[1] >= 0.45, gaps


def test_retries_give_up_with_the_last_error():
    app, seen = flaky_app([(500, {"retry-after": "0"})] * 10)
    with LiveServer(app) as s, pytest.raises(RewardServerError, match="failed 3 times; last: 500"):
        remote_reward_function(s.url, retries=2)(["p"], ["abc"])
    assert len(seen) == 3


@pytest.mark.slow
def test_one_grpo_step_with_the_remote_reward(refusal_server, tiny_hf_dir, tmp_path):
    """TRL's GRPOTrainer itself calls the reward function (conversational prompts)."""
    from tests.test_training import SFT
    from training import train_rl
    from training.recipes import load_recipe

    calls = []
    remote = remote_reward_function(refusal_server.url, api_key="sk-reward")

    def reward(prompts, completions, **kwargs):
        calls.append(len(completions))
        return remote(prompts, completions, **kwargs)

    reward.__name__ = remote.__name__
    rl = load_recipe("grpo-embedded-cpu", model=str(tiny_hf_dir))
    result = train_rl(
        SFT, tmp_path / "grpo", reward_funcs=[reward], recipe=rl.with_args(max_steps=1, max_completion_length=8)
    )
    logged = [e[k] for e in result.log_history for k in e if k.startswith("rewards/cai_remote_reward")]
    assert calls and logged and all(0.0 <= r <= 1.0 for r in logged), result.log_history
