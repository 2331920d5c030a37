"""Judge evaluation against human preference labels (e.g. hh-rlhf chosen/rejected).

Every pair is judged as compare(prompt, chosen, rejected); the pairwise judge runs both
orders itself, so position bias shows up as inconsistency, not as accuracy.

Metrics (over pairs with an ok verdict unless noted):
  agreement             share where p(chosen) > 0.5; ties count 1/2
  agreement_consistent  the same over consistent, non-tie pairs only
  consistency           share whose two orders prefer the same response
  tie_rate / flag_rate  ties (|p - 0.5| < 0.02) / inconsistent (flagged) pairs
  first_position        mean p(the response shown first is better) over readable orders;
                        0.5 for a judge without position bias
  unparseable / failed  counts over all pairs
  calibration           accuracy by confidence max(p, 1 - p) bucket; ece = expected calibration error
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from cai.jobs import Job, JobContext, run_job
from cai.models.base import ChatModel
from cai.runner import Outcome, Sample, Work
from judges.base import TIE_EPSILON, PairwiseJudge
from judges.data import CandidateSet

BUCKET_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class Bucket:
    low: float
    high: float
    n: int
    confidence: float | None  # mean confidence in the bucket
    accuracy: float | None


@dataclass
class JudgeEval:
    judge: str
    data: str
    n: int
    ok: int
    unparseable: int
    failed: int
    agreement: float | None
    agreement_consistent: float | None
    consistency: float | None
    tie_rate: float | None
    flag_rate: float | None
    first_position: float | None
    ece: float | None
    calibration: list[Bucket] = field(default_factory=list)
    calls_per_pair: float = 0.0
    tokens_per_pair: float = 0.0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> Table:
        table = Table(title=f"judge eval: {self.judge} on {Path(self.data).name} ({self.n} pairs)")
        table.add_column("metric", style="bold")
        table.add_column("value", justify="right")

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"

        table.add_row("agreement with human label", pct(self.agreement))
        table.add_row("agreement (consistent, non-tie pairs)", pct(self.agreement_consistent))
        table.add_row("position consistency", pct(self.consistency))
        table.add_row("tie rate", pct(self.tie_rate))
        table.add_row("flag rate (inconsistent)", pct(self.flag_rate))
        table.add_row(
            "p(first shown wins) (0.5 = no position bias)",
            "-" if self.first_position is None else f"{self.first_position:.3f}",
        )
        table.add_row("ok / unparseable / failed", f"{self.ok} / {self.unparseable} / {self.failed}")
        table.add_row("ECE", "-" if self.ece is None else f"{self.ece:.3f}")
        for b in self.calibration:
            table.add_row(f"  confidence {b.low:.1f}-{b.high:.1f}", f"n={b.n}  acc {pct(b.accuracy)}")
        table.add_row("calls / tokens per pair", f"{self.calls_per_pair:.2f} / {self.tokens_per_pair:.0f}")
        table.add_row("wall time", f"{self.wall_s:.1f} s")
        return table


def _credit(p: float) -> float:
    if abs(p - 0.5) < TIE_EPSILON:
        return 0.5
    return 1.0 if p > 0.5 else 0.0


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def metrics(verdicts: Sequence[dict[str, Any]], *, judge: str = "", data: str = "", wall_s: float = 0.0) -> JudgeEval:
    """Metrics from verdict dicts (``PairwiseVerdict.to_dict()``) of compare(prompt, chosen, rejected)."""
    ok = [v for v in verdicts if v["status"] == "ok"]
    ps = [v["p_a"] for v in ok]
    decided = [v["p_a"] for v in ok if v["consistent"] and abs(v["p_a"] - 0.5) >= TIE_EPSILON]
    buckets = []
    for low, high in zip(BUCKET_EDGES, BUCKET_EDGES[1:]):
        inside = [p for p in ps if low <= max(p, 1 - p) < high or (high == 1.0 and max(p, 1 - p) == 1.0)]
        buckets.append(
            Bucket(low, high, len(inside), _mean([max(p, 1 - p) for p in inside]), _mean([_credit(p) for p in inside]))
        )
    ece = None
    if ps:
        ece = sum(b.n / len(ps) * abs(b.accuracy - b.confidence) for b in buckets if b.n)  # type: ignore[operator]
    n = len(verdicts)
    return JudgeEval(
        judge=judge,
        data=data,
        n=n,
        ok=len(ok),
        unparseable=sum(v["status"] == "unparseable" for v in verdicts),
        failed=sum(v["status"] == "failed" for v in verdicts),
        agreement=_mean([_credit(p) for p in ps]),
        agreement_consistent=_mean([float(p > 0.5) for p in decided]),
        consistency=_mean([float(bool(v["consistent"])) for v in ok]),
        tie_rate=_mean([float(abs(p - 0.5) < TIE_EPSILON) for p in ps]),
        flag_rate=_mean([float(v["consistent"] is False) for v in ok]),
        first_position=_mean(
            [
                1 - o["p_a"] if o["swapped"] else o["p_a"]
                for v in verdicts
                for o in v.get("orders", [])
                if o["status"] == "ok"
            ]
        ),
        ece=ece,
        calibration=buckets,
        calls_per_pair=(_mean([v["usage"]["calls"] for v in verdicts]) or 0.0),
        tokens_per_pair=(_mean([v["usage"]["total_tokens"] for v in verdicts]) or 0.0),
        wall_s=wall_s,
    )


async def evaluate_judge(
    pairs: Sequence[CandidateSet],
    judge_spec: str,
    *,
    data: str = "",
    out: str | Path | None = None,
    judge_options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    judge_model: ChatModel | None = None,
    concurrency: int = 16,
    progress: bool = True,
) -> JudgeEval:
    """Judge human-labelled pairs (candidates[0] = chosen) and compute agreement metrics.

    With ``out`` the run is stored there (resume, call cache); else it runs in memory.
    ``judge_model`` replaces the model named in ``judge_spec``.
    """
    unlabelled = [p.source for p in pairs if not p.labelled or len(p.candidates) != 2]
    if unlabelled:
        raise ValueError(f"{unlabelled[0]}: judge evaluation needs chosen/rejected pairs")
    judge_options = judge_options or {}
    job = Job(
        "eval judge",
        {"task": "eval_judge", "judge": judge_spec, "judge_options": judge_options},
        [Sample(p.id, p, input_hash=p.input_hash()) for p in pairs],
        show_counters=["consistent"],
    )

    async def setup(ctx: JobContext) -> Work:
        judge = ctx.judge(judge_spec, model=judge_model, **judge_options)
        if not isinstance(judge, PairwiseJudge):
            raise ValueError(f"judge evaluation needs a pairwise judge, got {judge_spec!r}")

        async def work(sample: Sample) -> Outcome:
            item: CandidateSet = sample.data
            verdict = await judge.compare(item.prompt, item.candidates[0], item.candidates[1])
            return Outcome(
                record={"id": sample.id, **verdict.to_dict()},
                failed="judge_failed" if verdict.status == "failed" else None,
                counters={"consistent": float(bool(verdict.consistent))},
                usage=verdict.usage,
            )

        return work

    result = await run_job(job, out, setup, concurrency=concurrency, progress=progress, model_options=model_options)
    records = [
        row.record
        if row and row.record and "status" in row.record
        else {"status": "failed", "p_a": None, "consistent": None, "usage": {"calls": 0, "total_tokens": 0}}
        for row in result.rows
    ]
    return metrics(records, judge=judge_spec, data=data, wall_s=result.summary.wall_s)
