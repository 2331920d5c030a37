"""Use a running `cai serve` /v1/reward endpoint as a TRL reward function (GRPO, RLOO)."""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx

from cai.models.base import TransientModelError
from cai.models.openai_compat import _retry_after
from cai.models.policy import RetryConfig, backoff_delay

RETRIED = frozenset({429, 500, 502, 503, 504})


class RewardServerError(RuntimeError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def remote_reward_function(
    url: str,
    *,
    api_key: str | None = None,
    timeout: float = 600.0,
    batch_size: int = 256,
    retries: int = 5,
    fill_unscored: bool = False,
) -> Callable[..., list[float | None]]:
    """``reward_func(prompts, completions, **kwargs) -> list[float | None]`` for TRL trainers.

    ``url`` is the server's base URL (``http://HOST:PORT`` or ``.../v1``). Prompts and
    completions may be strings or conversations (TRL's conversational format, content parts and
    tool-call turns included). Items go in chunks of ``batch_size`` (halved while the server
    answers 413); 429 and 5xx answers and dropped connections are retried ``retries`` times,
    waiting as the server's Retry-After says (else exponential backoff). Items the judge could
    not score come back as None, which TRL treats as "no reward from this function", or with
    ``fill_unscored=True`` as the server's ``judge.unscored_reward`` (default: the judge's worst).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    endpoint = url.rstrip("/").removesuffix("/v1") + "/v1/reward"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    policy = RetryConfig(max_retries=retries)
    chunk = [batch_size]  # learnt from 413s, kept across calls
    client = httpx.Client(timeout=timeout)  # one pool (and SSL context) for every call; thread-safe

    def post(items: list[dict[str, Any]]) -> list[float | None]:
        for attempt in range(1, retries + 2):
            try:
                r = client.post(endpoint, json={"items": items, "fill_unscored": fill_unscored}, headers=headers)
                r.raise_for_status()
                return r.json()["rewards"]
            except httpx.HTTPStatusError as exc:
                if r.status_code not in RETRIED:
                    raise RewardServerError(f"cai reward server {endpoint} answered {r.status_code}: "
                                            f"{r.text[:500]}", r.status_code) from None
                failure = TransientModelError(f"{r.status_code}: {r.text[:200]}", retry_after=_retry_after(exc))
            except httpx.TransportError as exc:
                failure = TransientModelError(f"{type(exc).__name__}: {exc}")
            if attempt > retries:
                raise RewardServerError(f"cai reward server {endpoint} failed {attempt} times; last: {failure}")
            time.sleep(backoff_delay(policy, failure, attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def reward_func(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        from judges.base import response_text  # the server (a surface) may use judges; lazily

        items = [{"prompt": p, "response": response_text(c)} for p, c in zip(prompts, completions)]
        rewards: list[float | None] = []
        while len(rewards) < len(items):
            part = items[len(rewards): len(rewards) + chunk[0]]
            try:
                rewards.extend(post(part))
            except RewardServerError as exc:
                if exc.status != 413 or len(part) == 1:
                    raise
                chunk[0] = max(1, len(part) // 2)  # over the server's batch or body limit
        return rewards

    reward_func.__name__ = "cai_remote_reward"
    return reward_func
