"""Judge protocols and the verdict types they return.

A judge never invents a winner: output it cannot read is ``status="unparseable"``, a backend
error is ``status="failed"``; only ``status="ok"`` results carry a probability or score.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Union

from cai.models.base import Message, Usage
from cai.records import check_messages, content_text, message

Status = Literal["ok", "unparseable", "failed"]
Prompt = Union[str, Sequence[Message]]

#: |p - 0.5| below this counts as a tie
TIE_EPSILON = 0.02


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt given as text or as a conversation, as a list of plain messages; ValueError
    naming the field for a malformed one (``prompt[1].content: expected a string``)."""
    if isinstance(prompt, str):
        return [message("user", prompt)]
    return check_messages(list(prompt), "prompt", roles=None)


def response_text(response: str | Sequence[Message] | Message) -> str:
    """A response given as text, one assistant message, or a list of (assistant) messages.
    Content parts are joined; tool calls (a turn whose content is None) are written out."""
    if isinstance(response, str):
        return response
    if isinstance(response, dict):
        return _message_text(response)
    return "".join(_message_text(m) for m in response)


def _message_text(message: dict[str, Any]) -> str:
    content = content_text(message.get("content"))
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        args = fn.get("arguments", "")
        calls.append(f"[tool call] {fn.get('name', '?')}({args if isinstance(args, str) else json.dumps(args)})")
    return "\n".join(([content] if content else []) + calls)


@dataclass
class OrderResult:
    """One presentation order of a pairwise comparison.

    ``p_a`` is already mapped back to the caller's A: for the swapped order it is
    ``1 - p(first shown better)``.
    """

    swapped: bool
    p_a: float | None
    status: Status = "ok"
    raw: str = ""
    principle: str = ""
    error: str | None = None


@dataclass
class PairwiseVerdict:
    """Outcome of comparing response A with response B for one prompt."""

    p_a: float | None  # p(A better), averaged over orders and principles; None unless ok
    status: Status = "ok"
    consistent: bool | None = None  # both orders prefer the same response; None unless ok
    orders: list[OrderResult] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def tie(self) -> bool:
        return self.ok and abs(self.p_a - 0.5) < TIE_EPSILON  # type: ignore[operator]

    @property
    def winner(self) -> Literal["a", "b"] | None:
        """The preferred response, or None for ties, inconsistent or non-ok verdicts."""
        if not self.ok or self.tie or not self.consistent:
            return None
        return "a" if self.p_a > 0.5 else "b"  # type: ignore[operator]

    @property
    def margin(self) -> float | None:
        """|p(A) - p(B)| in [0, 1]."""
        return None if self.p_a is None else abs(2 * self.p_a - 1)

    @property
    def raw(self) -> list[str]:
        return [o.raw for o in self.orders]

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_a": self.p_a,
            "status": self.status,
            "consistent": self.consistent,
            "margin": self.margin,
            "orders": [asdict(o) for o in self.orders],
            "usage": self.usage.to_dict(),
            "error": self.error,
        }


@dataclass
class Score:
    """A pointwise judgement: a number on the judge's scale (or a probability)."""

    value: float | None
    status: Status = "ok"
    raw: str = ""
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usage"] = self.usage.to_dict()
        return data


async def _gather_bounded(coros: list, concurrency: int) -> list:
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(coro):
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


class PairwiseJudge(ABC):
    """Compares two responses to the same prompt."""

    name: str = "pairwise"

    @abstractmethod
    async def compare(self, prompt: Prompt, a: str, b: str) -> PairwiseVerdict: ...

    async def compare_many(
        self,
        items: Sequence[tuple[Prompt, str, str]],
        *,
        concurrency: int = 16,
    ) -> list[PairwiseVerdict]:
        """Concurrent ``compare`` over (prompt, a, b) triples, results in input order."""
        return await _gather_bounded([self.compare(p, a, b) for p, a, b in items], concurrency)

    async def aclose(self) -> None:
        """Release the judge's model(s)."""


class PointwiseJudge(ABC):
    """Scores one response to a prompt. Higher is better unless the judge says otherwise
    (``ViolationJudge`` scores p(violation))."""

    name: str = "pointwise"
    higher_is_better: bool = True
    scale: tuple[float, float] | None = None  # (lowest, highest) score; None: unbounded or unknown

    @abstractmethod
    async def score(self, prompt: Prompt, response: str) -> Score: ...

    def reward(self, score: Score) -> float | None:
        """The score as an RL reward: negated where lower is better; None when unscored."""
        if not score.ok or score.value is None:
            return None
        return self._signed(score.value)

    def worst_reward(self) -> float | None:
        """The lowest reward this judge gives (from ``scale``); None when it is unknown."""
        if self.scale is None:
            return None
        return min(self._signed(v) for v in self.scale)

    def _signed(self, value: float) -> float:
        # the one place of the sign rule (higher_is_better); + 0.0: no -0.0
        return (value if self.higher_is_better else -value) + 0.0

    async def score_many(
        self,
        items: Sequence[tuple[Prompt, str]],
        *,
        concurrency: int = 16,
    ) -> list[Score]:
        """Concurrent ``score`` over (prompt, response) pairs, results in input order."""
        return await _gather_bounded([self.score(p, r) for p, r in items], concurrency)

    async def aclose(self) -> None:
        """Release the judge's model(s)."""


Judge = Union[PairwiseJudge, PointwiseJudge]
