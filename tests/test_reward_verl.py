"""judges.verl called the way verl 0.9.1 calls a ``custom_reward_function`` (verl does not install
here without ray and tensordict, so its calling convention is repeated, not imported):

- ``verl/trainer/ppo/reward.py`` ``get_custom_reward_fn``: ``load_extern_object("pkg://judges.verl",
  name)`` (``importlib.import_module``), then ``partial(_call_with_kwargs, fn, reward_kwargs)``
  (``_call_with_kwargs_async`` for a coroutine function), reward_kwargs winning over call kwargs;
- ``verl/experimental/reward_loop/reward_manager/naive.py`` ``NaiveRewardManager.run_single``:
  awaits a coroutine function, else runs it in the loop's default executor, with keyword
  arguments ``data_source``, ``solution_str`` (response decoded without special tokens),
  ``ground_truth`` and ``extra_info`` (the row's extra_info plus ``num_turns`` and
  ``rollout_reward_scores``); a dict result's ``score`` is the reward, every key goes to
  ``reward_extra_info``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from functools import partial

import pytest

from cai.models import ScriptedModel
from tests.test_server_util import serve
from tests.test_wrapper import loop_script

REFUSAL = "I can't help with that."


def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    return raw_fn(*args, **{**kwargs, **extra_kwargs})


async def _call_with_kwargs_async(raw_fn, extra_kwargs, *args, **kwargs):
    return await raw_fn(*args, **{**kwargs, **extra_kwargs})


def custom_reward_fn(name: str, reward_kwargs: dict):
    raw = getattr(importlib.import_module("judges.verl"), name)  # pkg://judges.verl
    wrap = _call_with_kwargs_async if inspect.iscoroutinefunction(raw) else _call_with_kwargs
    return partial(wrap, raw, reward_kwargs)


async def run_single(compute_score, response: str, extra_info: dict) -> dict:
    kwargs = dict(
        data_source="hh",
        solution_str=response,
        ground_truth=None,
        extra_info={**extra_info, "num_turns": None, "rollout_reward_scores": {}},
    )
    if inspect.iscoroutinefunction(compute_score):
        result = await compute_score(**kwargs)
    else:
        result = await asyncio.get_running_loop().run_in_executor(None, lambda: compute_score(**kwargs))
    assert isinstance(result, dict)
    return {"reward_score": result["score"], "reward_extra_info": dict(result)}


@pytest.fixture(scope="module")
def reward_server():
    with serve(ScriptedModel(loop_script), overrides={"judge.pointwise": "rules:refusal"}) as s:
        yield s


def rollouts(compute_score, n: int = 32):
    responses = [REFUSAL if i % 2 else "Sure, here is how." for i in range(n)]

    async def all_of_them():
        return await asyncio.gather(
            *(run_single(compute_score, r, {"prompt": f"Question {i}?"}) for i, r in enumerate(responses))
        )

    return asyncio.run(all_of_them())


@pytest.mark.parametrize("name", ["compute_score", "compute_score_async"])
def test_verl_reward_from_a_cai_serve_url(reward_server, name):
    fn = custom_reward_fn(name, {"url": reward_server.url, "api_key": "sk-reward"})
    out = rollouts(fn)
    assert [o["reward_score"] for o in out] == [0.0, 1.0] * 16
    assert all(type(o["reward_score"]) is float and o["reward_extra_info"]["unscored"] == 0.0 for o in out)


def test_verl_reward_from_an_in_process_judge():
    fn = custom_reward_fn("compute_score_async", {"judge": "rules:refusal"})
    assert [o["reward_score"] for o in rollouts(fn, 4)] == [0.0, 1.0, 0.0, 1.0]


def test_prompt_key_and_clear_errors(reward_server):
    fn = custom_reward_fn("compute_score", {"judge": "rules:refusal", "prompt_key": "question"})
    out = asyncio.run(run_single(fn, REFUSAL, {"question": "Pick a lock?"}))
    assert out["reward_score"] == 1.0
    with pytest.raises(ValueError, match="extra_info has none of"):
        asyncio.run(run_single(custom_reward_fn("compute_score", {"judge": "rules:refusal"}), REFUSAL, {}))
    with pytest.raises(ValueError, match="exactly one of"):
        asyncio.run(run_single(custom_reward_fn("compute_score", {}), REFUSAL, {"prompt": "x"}))


def test_unscored_items_get_the_servers_worst_reward_and_are_flagged():
    from judges.base import PointwiseJudge, Score

    class Unsure(PointwiseJudge):  # a violation-style judge (0..1, lower is better) that never parses
        higher_is_better, scale = False, (0.0, 1.0)

        async def score(self, prompt, response):
            return Score(None, "unparseable", raw="hmm")

    with serve(ScriptedModel(loop_script), pointwise=Unsure()) as s:
        fn = custom_reward_fn("compute_score", {"url": s.url, "api_key": "sk-reward"})
        out = asyncio.run(run_single(fn, REFUSAL, {"prompt": "x"}))
        assert out["reward_score"] == -1.0 and out["reward_extra_info"]["unscored"] == 1.0
        fn = custom_reward_fn("compute_score", {"url": s.url, "api_key": "sk-reward", "unscored_reward": -3})
        assert asyncio.run(run_single(fn, REFUSAL, {"prompt": "x"}))["reward_score"] == -3.0
