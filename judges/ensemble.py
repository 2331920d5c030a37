"""Ensembles of judges of one kind (all pointwise or all pairwise).

Methods:
  mean      average of the members' values (pairwise: of p(A better))
  weighted  weighted average (``weights``)
  majority  share of members that pass (value >= threshold; pairwise: prefer A), as 1.0/0.0
            for pointwise, as the vote share for pairwise
  all       1.0 only when every member passes (pairwise: unanimous A -> 1, unanimous B -> 0,
            else 0.5); any non-ok member makes the result non-ok

Any failed member fails the result (so a resumed run retries it); otherwise unparseable
members are left out, and with none left the result is unparseable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

from cai.models.base import Usage
from judges.base import PairwiseJudge, PairwiseVerdict, PointwiseJudge, Prompt, Score, Status

Method = Literal["mean", "weighted", "majority", "all"]
METHODS = ("mean", "weighted", "majority", "all")


def combine(
    values: Sequence[float], method: Method, weights: Sequence[float], threshold: float, *, vote_share: bool
) -> float:
    if method == "mean":
        return sum(values) / len(values)
    if method == "weighted":
        return sum(w * v for w, v in zip(weights, values)) / sum(weights)
    # a pairwise member passes when it prefers A (a tie is no vote for A)
    passes = [v > threshold if vote_share else v >= threshold for v in values]
    if method == "majority":
        share = sum(passes) / len(passes)
        return share if vote_share else float(share > 0.5)
    if method == "all":
        if all(passes):
            return 1.0
        if vote_share and not all(v < threshold for v in values):
            return 0.5  # not unanimous either way
        return 0.0
    raise ValueError(f"unknown ensemble method {method!r}; known: {', '.join(METHODS)}")


def _status(statuses: Sequence[Status], method: Method) -> Status | None:
    """The ensemble's non-ok status, or None when it can be computed from the ok members."""
    if "failed" in statuses:
        return "failed"
    if "ok" not in statuses or (method == "all" and "unparseable" in statuses):
        return "unparseable"
    return None


class _Members:
    def __init__(self, judges: Sequence, method: Method, weights: Sequence[float] | None, threshold: float):
        if not judges:
            raise ValueError("an ensemble needs at least one judge")
        if method not in METHODS:
            raise ValueError(f"unknown ensemble method {method!r}; known: {', '.join(METHODS)}")
        if weights is not None and len(weights) != len(judges):
            raise ValueError(f"{len(weights)} weights for {len(judges)} judges")
        if method == "weighted" and weights is None:
            raise ValueError("method 'weighted' needs weights")
        self.judges = list(judges)
        self.method = method
        self.weights = list(weights) if weights is not None else [1.0] * len(judges)
        self.threshold = threshold
        self.name = f"ensemble:{method}(" + ",".join(j.name for j in judges) + ")"

    def ok_values(self, results) -> tuple[list[float], list[float]]:
        pairs = [
            (value, w)
            for r, w in zip(results, self.weights)
            if r.status == "ok" and (value := r.value if isinstance(r, Score) else r.p_a) is not None
        ]
        return [v for v, _ in pairs], [w for _, w in pairs]

    async def aclose(self) -> None:
        for judge in self.judges:
            await judge.aclose()


class PointwiseEnsemble(_Members, PointwiseJudge):
    async def score(self, prompt: Prompt, response: str) -> Score:
        scores = await asyncio.gather(*(j.score(prompt, response) for j in self.judges))
        usage = sum((s.usage for s in scores), Usage())
        details = {"members": [s.to_dict() for s in scores]}
        status = _status([s.status for s in scores], self.method)
        if status is not None:
            error = next((s.error for s in scores if s.status == status), None)
            return Score(None, status, usage=usage, error=error, details=details)
        values, weights = self.ok_values(scores)
        return Score(
            combine(values, self.method, weights, self.threshold, vote_share=False), usage=usage, details=details
        )


class PairwiseEnsemble(_Members, PairwiseJudge):
    async def compare(self, prompt: Prompt, a: str, b: str) -> PairwiseVerdict:
        verdicts = await asyncio.gather(*(j.compare(prompt, a, b) for j in self.judges))
        usage = sum((v.usage for v in verdicts), Usage())
        orders = [o for v in verdicts for o in v.orders]
        status = _status([v.status for v in verdicts], self.method)
        if status is not None:
            error = next((v.error for v in verdicts if v.status == status), None)
            return PairwiseVerdict(None, status, orders=orders, usage=usage, error=error)
        ok = [v for v in verdicts if v.ok]
        values, weights = self.ok_values(verdicts)
        p_a = combine(values, self.method, weights, 0.5, vote_share=True)
        return PairwiseVerdict(p_a, "ok", all(v.consistent for v in ok), orders, usage)


def ensemble(
    judges: Sequence[PointwiseJudge] | Sequence[PairwiseJudge],
    method: Method = "mean",
    *,
    weights: Sequence[float] | None = None,
    threshold: float = 0.5,
) -> PointwiseEnsemble | PairwiseEnsemble:
    """An ensemble of judges that are all pointwise or all pairwise."""
    if all(isinstance(j, PointwiseJudge) for j in judges):
        return PointwiseEnsemble(judges, method, weights, threshold)
    if all(isinstance(j, PairwiseJudge) for j in judges):
        return PairwiseEnsemble(judges, method, weights, threshold)
    raise TypeError("an ensemble's judges must be all pointwise or all pairwise")
