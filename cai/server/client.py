"""Use a running `cai serve` /v1/reward endpoint as a TRL reward function (GRPO, RLOO)."""

from __future__ import annotations

from typing import Any, Callable

import httpx


def remote_reward_function(
    url: str, *, api_key: str | None = None, timeout: float = 600.0
) -> Callable[..., list[float | None]]:
    """``reward_func(prompts, completions, **kwargs) -> list[float | None]`` for TRL trainers.

    ``url`` is the server's base URL (``http://HOST:PORT`` or ``.../v1``). Prompts and
    completions may be strings or conversations (TRL's conversational format). Items the judge
    could not score come back as None, which TRL treats as "no reward from this function".
    """
    endpoint = url.rstrip("/").removesuffix("/v1") + "/v1/reward"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}

    def reward_func(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        items = [
            {"prompt": p, "response": c if isinstance(c, str) else "".join(m["content"] for m in c)}
            for p, c in zip(prompts, completions)
        ]
        r = httpx.post(endpoint, json={"items": items}, headers=headers, timeout=timeout)
        if r.status_code != 200:
            raise RuntimeError(f"cai reward server {endpoint} answered {r.status_code}: {r.text[:500]}")
        return r.json()["rewards"]

    reward_func.__name__ = "cai_remote_reward"
    return reward_func
