"""Judge-verified pairs (RL-CAI style): does the final revision beat the initial answer?

``cai generate --verify JUDGE`` calls ``verify_pair`` on every revised sample. It labels the
two candidates with ``judges.label.label_candidates`` (pairwise judges: both orders, the
constitution's judge questions), and the pair is kept only when the revision wins, both orders
agree and the margin is at least ``min_margin``. Otherwise the verdict names why it was not
kept; a weak judge mostly abstains (``inconsistent``, ``tie``, ``unparseable``), which is the
right behaviour: an unverified pair is left out, never guessed.
"""

from __future__ import annotations

from typing import Any

from cai.models.base import Usage
from cai.records import Trace
from judges.base import PairwiseJudge, PointwiseJudge
from judges.label import label_candidates

#: why a pair was not kept; ``judge_failed`` fails the sample instead (retried on resume)
VERIFY_REASONS = ("initial_wins", "inconsistent", "tie", "unparseable", "low_margin")


async def verify_pair(
    judge: PairwiseJudge | PointwiseJudge, trace: Trace, min_margin: float
) -> tuple[dict[str, Any], Usage]:
    """The verdict on (final revision, initial answer) and the judge's token usage.

    ``score_chosen`` / ``score_rejected`` are the revision's and the initial answer's scores
    (pairwise: mean p(better)); ``margin`` is their signed difference (pairwise: 2p - 1 for the
    revision), negative when the initial answer wins.
    """
    result = await label_candidates(judge, trace.prompt, [trace.final, trace.initial])
    usage = result.pop("usage")
    scores = result.get("scores") or [None, None]
    verdict: dict[str, Any] = {
        "judge": getattr(judge, "name", type(judge).__name__),
        "status": result["status"],
        "score_chosen": scores[0],
        "score_rejected": scores[1],
        "consistent": result.get("consistent"),
        "details": result.get("verdicts", result.get("details", [])),
    }
    if result["status"] == "failed":
        return {**verdict, "kept": False, "reason": "judge_failed", "error": result.get("error")}, usage
    if result["status"] != "ok":
        return {**verdict, "kept": False, "reason": "unparseable", "margin": None}, usage
    sign = 1 if result["chosen_index"] == 0 else -1
    margin = sign * abs(result["margin"])
    reason = None
    if result["consistent"] is False:  # before "tie": pure position bias averages to 0.5
        reason = "inconsistent"
    elif result["tie"]:
        reason = "tie"
    elif sign < 0:
        reason = "initial_wins"
    elif margin < min_margin:
        reason = "low_margin"
    return {**verdict, "margin": margin, "kept": reason is None, "reason": reason}, usage
