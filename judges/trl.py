"""Judges as TRL reward functions (GRPOTrainer / RLOOTrainer ``reward_funcs``).

    from judges import load_judge
    from judges.trl import reward_function

    reward = reward_function(load_judge("pointwise:openai:my-judge", model_options={...}))
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], ...)

A pointwise judge's reward is its score (negated for judges where lower is better,
such as ``ViolationJudge``); a pairwise judge compares each completion with the
dataset's reference column (``reference_key``) and the reward is p(completion better), or
``2p - 1`` with ``centered=True``. Rewards the judge could not produce are ``None`` (TRL
ignores them for that function). Prompts and completions may be plain text or conversational.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from cai.aio import BackgroundLoop
from judges.base import PairwiseJudge, PointwiseJudge, response_text


class JudgeReward:
    """A TRL reward function over a judge; see ``reward_function``."""

    def __init__(
        self,
        judge: PairwiseJudge | PointwiseJudge,
        *,
        reference_key: str,
        centered: bool,
        concurrency: int,
        name: str | None,
    ):
        self.judge = judge
        self.reference_key = reference_key
        self.centered = centered
        self.concurrency = concurrency
        self.__name__ = name or judge.name.replace(":", "_").replace("/", "_")
        self._loop: BackgroundLoop | None = None
        self._lock = threading.Lock()

    async def rewards(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        texts = [response_text(c) for c in completions]
        if isinstance(self.judge, PointwiseJudge):
            scores = await self.judge.score_many(list(zip(prompts, texts)), concurrency=self.concurrency)
            return [self.judge.reward(s) for s in scores]  # e.g. ViolationJudge: less violation = more reward
        references = kwargs.get(self.reference_key)
        if references is None:
            raise ValueError(
                f"a pairwise judge as reward needs a reference column {self.reference_key!r} in the "
                f"dataset (got columns: {sorted(k for k in kwargs if not k.startswith('trainer'))})"
            )
        items = [(p, t, response_text(r)) for p, t, r in zip(prompts, texts, references)]
        verdicts = await self.judge.compare_many(items, concurrency=self.concurrency)
        out: list[float | None] = []
        for v in verdicts:
            if not v.ok:
                out.append(None)
            else:
                out.append(2 * v.p_a - 1 if self.centered else v.p_a)  # type: ignore[operator]
        return out

    def _background_loop(self) -> BackgroundLoop:
        # one long-lived loop, so the judge's HTTP clients stay bound to a live loop across calls
        with self._lock:
            if self._loop is None:
                self._loop = BackgroundLoop(name=f"{self.__name__}-loop")
            return self._loop

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return self._background_loop().submit(self.rewards(prompts, completions, **kwargs))

    def close(self) -> None:
        if self._loop is not None:
            self._loop.submit(self.judge.aclose())
            self._loop.close()
            self._loop = None


class AsyncJudgeReward(JudgeReward):
    """The same reward as an ``async`` callable; TRL runs it on its own event loop."""

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:  # type: ignore[override]
        return await self.rewards(prompts, completions, **kwargs)


def reward_function(
    judge: PairwiseJudge | PointwiseJudge,
    *,
    reference_key: str = "reference",
    centered: bool = False,
    concurrency: int = 16,
    asynchronous: bool = False,
    name: str | None = None,
) -> JudgeReward:
    """A TRL ``reward_func(prompts, completions, **kwargs) -> list[float | None]`` over ``judge``.

    Returns exactly one value per completion. By default a synchronous callable that runs the
    async judge on a private background event loop (safe inside notebooks and running loops);
    ``asynchronous=True`` gives an async callable instead.
    """
    cls = AsyncJudgeReward if asynchronous else JudgeReward
    return cls(judge, reference_key=reference_key, centered=centered, concurrency=concurrency, name=name)
