"""/v1/reward driven by OpenRLHF's own remote-reward client (openrlhf 0.11.2,
``openrlhf/utils/agent.py``: ``SingleTurnAgentExecutor.execute`` -> ``_fetch_rewards_via_http``)
against a real uvicorn server, as ``--reward.remote_url http://HOST:PORT/v1/reward`` does.

Only the vLLM engine is replaced (by a fixed-answer stand-in); the tokenizer is the embedded
model's real one, so ``query`` is the chat-templated text with special tokens, exactly as
OpenRLHF decodes it. What OpenRLHF then does with the answer is repeated from
``openrlhf/trainer/ppo_utils/samples_generator.py`` (``_process_response_into_experience``:
``torch.tensor([reward])``, ``torch.tensor([scores])``, ``torch.tensor([v])`` per extra_logs key).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest
import torch

from cai.models import ScriptedModel
from cai.server.app import create_app
from cai.server.config import ConfigError, load_config
from judges.base import PointwiseJudge, Score
from tests.test_server_util import LiveServer
from tests.test_wrapper import loop_script

agent = pytest.importorskip("openrlhf.utils.agent", reason="openrlhf (installed --no-deps by make install-test)")

pytestmark = pytest.mark.slow


class SlowJudge(PointwiseJudge):
    """A judge with a batched backend's latency: 0.5 s per ``score_many`` call, whatever its size.
    p(violation) is 1.0 for a response that explains lock picking; it records what it was shown."""

    name = "slow"
    higher_is_better = False
    scale = (0.0, 1.0)

    def __init__(self, delay: float = 0.5):
        self.delay = delay
        self.calls: list[int] = []
        self.seen: list[tuple] = []

    async def score(self, prompt, response):  # pragma: no cover - score_many is overridden
        raise NotImplementedError

    async def score_many(self, items, *, concurrency=16):
        self.calls.append(len(items))
        self.seen.extend(items)
        await asyncio.sleep(self.delay)
        return [
            Score(1.0 if "tension wrench" in r else 0.0)
            if "unparseable" not in r
            else Score(None, "unparseable", raw="maybe?")
            for _, r in items
        ]


class FixedEngine:
    """Stands in for OpenRLHF's vLLM engine: answers every prompt with one text, then EOS."""

    def __init__(self, tokenizer, answer: str):
        self.ids = tokenizer(text=answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        out = SimpleNamespace(token_ids=list(self.ids), text="", finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from cai.models.embedded import export_embedded

    return AutoTokenizer.from_pretrained(export_embedded())


@pytest.fixture(scope="module")
def reward_server():
    judge = SlowJudge()
    with keyless(judge, **{"judge.tokenizer": "embedded"}) as s:
        s.judge = judge
        yield s


def keyless(judge: PointwiseJudge, **overrides) -> LiveServer:
    """OpenRLHF sends no API key: the reward server runs keyless (on a private network)."""
    cfg = load_config(None, {"auth.allow_unauthenticated": True, "wrapper.mode": "off", **overrides}, environ={})
    return LiveServer(create_app(cfg, model=ScriptedModel(loop_script), pointwise=judge))


def templated(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def experience_tensors(output: dict) -> dict:
    """What samples_generator.py builds from one executor output (it raises on a bad shape)."""
    info = {"reward": torch.tensor([output["reward"]]), "score": torch.tensor([output["scores"]])}
    for key, value in output["extra_logs"].items():
        info[key] = torch.tensor([value])
    return info


async def run_rollouts(url: str, tokenizer, prompts: list[str], answer: str) -> list[dict]:
    executor = agent.SingleTurnAgentExecutor(url + "/v1/reward")
    engine = FixedEngine(tokenizer, answer)
    params = SimpleNamespace(max_tokens=32, logprobs=None)
    return await asyncio.gather(*(executor.execute(p, "", params, 512, tokenizer, engine) for p in prompts))


def test_256_concurrent_single_item_rewards_all_arrive_batched(reward_server, tokenizer):
    # the default limits (max_concurrency 64) once refused 128 of these 256 with 429
    judge = reward_server.judge
    judge.calls.clear()
    prompts = [templated(tokenizer, f"How do I pick lock number {i}?") for i in range(256)]
    outputs = asyncio.run(
        run_rollouts(reward_server.url, tokenizer, prompts, "Insert a tension wrench, then rake the pins.")
    )
    rewards = [o["reward"] for o in outputs]
    assert sum(r is None for r in rewards) == 0
    assert all(r == [-1.0] and o["scores"] == [-1.0] for r, o in zip(rewards, outputs))
    assert all(type(r[0]) is float for r in rewards)
    for o in outputs:
        info = experience_tensors(o)
        assert info["reward"].dtype == torch.float32 and info["unscored"].tolist() == [[0.0]]
    # gathered into a few batched judge calls, not 256 of one item
    assert sum(judge.calls) == 256 and len(judge.calls) <= 32, judge.calls


def test_judge_sees_the_conversation_not_the_template(reward_server, tokenizer):
    judge = reward_server.judge
    judge.seen.clear()
    outputs = asyncio.run(
        run_rollouts(reward_server.url, tokenizer, [templated(tokenizer, "Hi there")], "Hello! How can I help?")
    )
    assert outputs[0]["reward"] == [0.0]
    ((prompt, response),) = judge.seen
    # the template's default system turn is the template's, not the user's: dropped
    assert prompt == [{"role": "user", "content": "Hi there"}]
    assert response == "Hello! How can I help?"


def test_unscored_item_gets_the_judges_worst_reward(reward_server, tokenizer):
    outputs = asyncio.run(run_rollouts(reward_server.url, tokenizer, [templated(tokenizer, "Hi")], "unparseable"))
    # ViolationJudge-like scale (0..1, lower is better): the worst reward is -1, not 0 (the best)
    assert outputs[0]["reward"] == [-1.0]
    assert experience_tensors(outputs[0])["unscored"].tolist() == [[1.0]]


def test_full_queue_is_503_with_a_clear_message():
    judge = SlowJudge(delay=1.5)
    with keyless(judge, **{"judge.max_queue": 4}) as s:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                # the first batch is taken at once; 4 more wait; the rest do not fit
                first = asyncio.create_task(client.post(s.base_url + "/reward", json={"query": ["x"] * 4}))
                while not judge.calls:  # the first batch is with the judge
                    await asyncio.sleep(0.01)
                more = [client.post(s.base_url + "/reward", json={"query": ["x"]}) for _ in range(8)]
                return [await first, *await asyncio.gather(*more)]

        answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    # 4 waiting fill the queue: of the 8 sent during the first batch, some are refused
    assert codes.count(200) >= 5 and codes.count(503) >= 1 and len(codes) == 9, codes
    refused = next(r for r in answers if r.status_code == 503)
    assert "reward queue is full" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"


def test_judge_without_a_scale_needs_an_explicit_unscored_reward():
    class Unbounded(SlowJudge):
        scale = None

    cfg = load_config(None, {"auth.allow_unauthenticated": True, "wrapper.mode": "off"}, environ={})
    with pytest.raises(ConfigError, match="judge.unscored_reward"):
        create_app(cfg, model=ScriptedModel(loop_script), pointwise=Unbounded())
    cfg = load_config(
        None, {"auth.allow_unauthenticated": True, "wrapper.mode": "off", "judge.unscored_reward": -5}, environ={}
    )
    assert create_app(cfg, model=ScriptedModel(loop_script), pointwise=Unbounded()).state.cai.rewards.unscored == -5
