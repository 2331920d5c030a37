"""/v1/reward waits in its own queue instead of the server's 429 in-flight bound, and gathers
concurrent requests into batched judge calls (real uvicorn on loopback, a timed judge)."""

from __future__ import annotations

import asyncio

import httpx

from cai.models import ScriptedModel
from judges.base import PointwiseJudge, Score
from tests.test_server_util import serve
from tests.test_wrapper import loop_script

REWARD = {"authorization": "Bearer sk-reward"}


class TimedJudge(PointwiseJudge):
    scale = (0.0, 1.0)

    def __init__(self):
        self.calls: list[int] = []

    async def score(self, prompt, response):  # pragma: no cover - score_many is overridden
        raise NotImplementedError

    async def score_many(self, items, *, concurrency=16):
        self.calls.append(len(items))
        await asyncio.sleep(0.3)
        return [Score(float(len(r))) for _, r in items]


def test_reward_requests_queue_past_the_in_flight_limit_and_are_batched():
    judge = TimedJudge()
    with serve(ScriptedModel(loop_script), pointwise=judge, overrides={"limits.max_concurrency": 1}) as s:

        async def burst():
            async with httpx.AsyncClient(timeout=30, headers=REWARD) as client:
                return await asyncio.gather(
                    *(client.post(s.base_url + "/reward", json={"query": ["x" * i]}) for i in range(1, 17))
                )

        answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 16, [r.text[:100] for r in answers]
    assert [r.json()["rewards"] for r in answers] == [[float(i)] for i in range(1, 17)]
    assert sum(judge.calls) == 16 and len(judge.calls) < 16, judge.calls
