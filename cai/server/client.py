"""Use a running `cai serve` /v1/reward endpoint as a TRL reward function (GRPO, RLOO)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from cai.errors import RewardServerError
from cai.models.base import TransientModelError
from cai.models.openai_compat import _retry_after
from cai.models.retry import RetryConfig, backoff_delay

RETRIED = frozenset({429, 500, 502, 503, 504})


class RemoteReward:
    """A TRL reward function over /v1/reward; see ``remote_reward_function``."""

    def __init__(
        self, url: str, *, api_key: str | None, timeout: float, batch_size: int, retries: int, fill_unscored: bool
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.__name__ = "cai_remote_reward"  # TRL logs rewards/<__name__>
        self.endpoint = url.rstrip("/").removesuffix("/v1") + "/v1/reward"
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.policy = RetryConfig(max_retries=retries)
        self.fill_unscored = fill_unscored
        self.batch_size = batch_size  # halved on each 413, kept across calls
        self.client = httpx.Client(timeout=timeout)  # one pool (and SSL context) for every call; thread-safe

    def _post(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"items": items, "fill_unscored": self.fill_unscored}
        for attempt in range(1, self.retries + 2):
            try:
                r = self.client.post(self.endpoint, json=body, headers=self.headers)
                r.raise_for_status()
                return r.json()
            except httpx.HTTPStatusError as exc:
                if r.status_code not in RETRIED:
                    raise RewardServerError(
                        f"cai reward server {self.endpoint} answered {r.status_code}: {r.text[:500]}", r.status_code
                    ) from None
                failure = TransientModelError(f"{r.status_code}: {r.text[:200]}", retry_after=_retry_after(exc))
            except httpx.TransportError as exc:
                failure = TransientModelError(f"{type(exc).__name__}: {exc}")
            if attempt > self.retries:
                raise RewardServerError(f"cai reward server {self.endpoint} failed {attempt} times; last: {failure}")
            time.sleep(backoff_delay(self.policy, failure, attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def score(self, prompts: list[Any], completions: list[Any]) -> tuple[list[float | None], list[bool]]:
        """(rewards, unscored flags), one per completion, in chunks the server accepts."""
        from judges.base import response_text  # the server (a surface) may use judges; lazily

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        items = [{"prompt": p, "response": response_text(c)} for p, c in zip(prompts, completions)]
        rewards: list[float | None] = []
        unscored: list[bool] = []
        while len(rewards) < len(items):
            part = items[len(rewards) : len(rewards) + self.batch_size]
            try:
                out = self._post(part)
            except RewardServerError as exc:
                if exc.status != 413 or len(part) == 1:
                    raise
                self.batch_size = max(1, len(part) // 2)  # over the server's batch or body limit
                continue
            rewards.extend(out["rewards"])
            flags = (out.get("extra_logs") or {}).get("unscored") or [r is None for r in out["rewards"]]
            unscored.extend(bool(u) for u in flags)
        return rewards, unscored

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        return self.score(prompts, completions)[0]

    def close(self) -> None:
        self.client.close()


def remote_reward_function(
    url: str,
    *,
    api_key: str | None = None,
    timeout: float = 600.0,
    batch_size: int = 256,
    retries: int = 5,
    fill_unscored: bool = False,
) -> RemoteReward:
    """``reward_func(prompts, completions, **kwargs) -> list[float | None]`` for TRL trainers.

    ``url`` is the server's base URL (``http://HOST:PORT`` or ``.../v1``). Prompts and
    completions may be strings or conversations (TRL's conversational format, content parts and
    tool-call turns included). Items go in chunks of ``batch_size`` (halved while the server
    answers 413); 429 and 5xx answers and dropped connections are retried ``retries`` times,
    waiting as the server's Retry-After says (else exponential backoff). Items the judge could
    not score come back as None, which TRL treats as "no reward from this function", or with
    ``fill_unscored=True`` as the server's ``judge.unscored_reward`` (default: the judge's worst).
    """
    return RemoteReward(
        url, api_key=api_key, timeout=timeout, batch_size=batch_size, retries=retries, fill_unscored=fill_unscored
    )
