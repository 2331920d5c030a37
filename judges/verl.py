"""cai judges as verl reward functions (verl's ``custom_reward_function``).

verl has no setting for a reward URL; an outside reward is a Python function that its reward
manager calls once per response. Point verl at this module::

    reward.custom_reward_function.path=pkg://judges.verl
    reward.custom_reward_function.name=compute_score            # or compute_score_async
    +reward.custom_reward_function.reward_kwargs.url=http://127.0.0.1:8000   # a `cai serve`
    # or, in process: +reward.custom_reward_function.reward_kwargs.judge=violation:openai:NAME

verl calls ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=,
**reward_kwargs)``. The prompt is not an argument: it is read from ``extra_info[prompt_key]``
(default: ``prompt``, else ``question``), so put the prompt there when preparing the dataset.
The result is ``{"score": reward, "unscored": 0.0 or 1.0}``; an item the judge could not score
gets ``unscored_reward`` (default: the judge's worst reward, or the server's
``judge.unscored_reward``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

PROMPT_KEYS = ("prompt", "question")

_cache: dict[tuple, Any] = {}
_lock = threading.Lock()


def _prompt(extra_info: Any, prompt_key: str | None) -> Any:
    info = extra_info if isinstance(extra_info, dict) else {}
    keys = (prompt_key,) if prompt_key else PROMPT_KEYS
    for key in keys:
        if info.get(key) is not None:
            return info[key]
    raise ValueError(
        f"verl passed no prompt: extra_info has none of {list(keys)} (keys: {sorted(info)}); add the "
        "prompt to each dataset row's extra_info, or set reward_kwargs.prompt_key"
    )


def _remote(url: str, api_key: str | None, unscored_reward: float | None) -> Any:
    from cai.server.client import remote_reward_function

    key = ("url", url, api_key, unscored_reward)
    with _lock:
        if key not in _cache:
            # the server fills unscored items with its judge.unscored_reward unless we do
            _cache[key] = remote_reward_function(url, api_key=api_key, fill_unscored=unscored_reward is None)
        return _cache[key]


def _local(judge: str, judge_options: dict[str, Any] | None) -> Any:
    from judges import load_judge
    from judges.trl import reward_function

    key = ("judge", judge, repr(sorted((judge_options or {}).items())))
    with _lock:
        if key not in _cache:
            loaded = load_judge(judge, **(judge_options or {}))
            if not hasattr(loaded, "worst_reward"):
                raise ValueError(f"verl needs a pointwise judge, got {judge!r}")
            _cache[key] = reward_function(loaded)
        return _cache[key]


def _result(reward: float | None, worst: float | None) -> dict[str, float]:
    if reward is not None:
        return {"score": float(reward), "unscored": 0.0}
    if worst is None:
        raise ValueError(
            "the judge could not score this response and has no known worst reward: set reward_kwargs.unscored_reward"
        )
    return {"score": float(worst), "unscored": 1.0}


def compute_score(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Any = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    judge: str | None = None,
    judge_options: dict[str, Any] | None = None,
    prompt_key: str | None = None,
    unscored_reward: float | None = None,
    **_: Any,  # verl adds keys of its own (reward_router_address, ...)
) -> dict[str, float]:
    """verl's ``compute_score``: the judge's reward for ``solution_str`` (give ``url`` or ``judge``)."""
    prompt = _prompt(extra_info, prompt_key)
    if (url is None) == (judge is None):
        raise ValueError("set exactly one of reward_kwargs.url (a cai serve) or reward_kwargs.judge (a judge spec)")
    if url is not None:
        (reward,), (unscored,) = _remote(url, api_key, unscored_reward).score([prompt], [solution_str])
        if reward is not None:  # filled by the server when unscored_reward is None
            return {"score": float(reward), "unscored": float(unscored)}
        return _result(None, unscored_reward)
    scorer = _local(judge, judge_options)  # type: ignore[arg-type]
    (reward,) = scorer([prompt], [solution_str])
    return _result(reward, unscored_reward if unscored_reward is not None else scorer.judge.worst_reward())


async def compute_score_async(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Any = None,
    **kwargs: Any,
) -> dict[str, float]:
    """The same as an ``async`` function: verl's reward loop awaits it instead of using a thread.
    Concurrent calls reach ``cai serve`` together, which batches them into one judge call."""
    return await asyncio.to_thread(compute_score, data_source, solution_str, ground_truth, extra_info, **kwargs)
