"""Win-rate of a policy against a baseline (``cai eval winrate``): both answer each prompt,
the pairwise judge compares them in both orders with the constitution's judge questions.

A verdict is a win or a loss when both orders prefer the same response and |p - 0.5| is at
least ``TIE_EPSILON``; ties and inconsistent verdicts (the orders disagree) count 1/2 in the
win-rate, and the inconsistent share is reported on its own. Unparseable or failed verdicts
are counted and left out. The confidence interval is a percentile bootstrap over prompts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from cai.jobs import Job, JobContext, run_job
from cai.models.base import ChatModel, GenParams, Message, Usage
from cai.runner import Outcome, OutputWriter, Sample, Work
from judges.base import OrderResult, PairwiseJudge, PairwiseVerdict
from judges.pairwise import combine_orders
from judges.rules import RefusalJudge
from judges.subject import Subject

CREDIT = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def outcome(verdict: dict[str, Any] | PairwiseVerdict) -> str | None:
    """ "win" / "tie" / "loss" for response A, or None when the verdict is not ok."""
    if isinstance(verdict, dict):
        verdict = PairwiseVerdict(verdict["p_a"], verdict["status"], verdict.get("consistent"))
    if not verdict.ok:
        return None
    return {"a": "win", "b": "loss", None: "tie"}[verdict.winner]


def bootstrap_ci(
    credits: Sequence[float], *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean of ``credits`` (resampling prompts)."""
    if not credits:
        return None, None
    values = np.asarray(credits, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


@dataclass
class Tally:
    n: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0
    inconsistent: int = 0

    def add(self, result: str | None, consistent: bool | None) -> None:
        if result is None:
            return
        self.n += 1
        name = {"win": "wins", "tie": "ties", "loss": "losses"}[result]
        setattr(self, name, getattr(self, name) + 1)
        self.inconsistent += consistent is False

    @property
    def win_rate(self) -> float | None:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else None


@dataclass
class PrincipleRate:
    principle: str
    tally: Tally
    win_rate: float | None


@dataclass
class WinRateEval:
    policy: str
    baseline: str
    judge: str
    data: str
    n: int  # prompts
    ok: int
    unparseable: int
    failed: int  # prompts whose answers or verdict failed (retried on resume)
    wins: int
    ties: int
    losses: int
    inconsistent: int  # ok verdicts whose two orders disagree (counted as ties)
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    inconsistent_rate: float | None
    refusal_policy: float | None  # rules:refusal on each side's answers
    refusal_baseline: float | None
    principles: list[PrincipleRate] = field(default_factory=list)
    calls_per_prompt: float = 0.0  # answers + judge calls
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> Table:
        table = Table(title=f"win-rate: {self.policy} vs {self.baseline} ({self.n} prompts, judge {self.judge})")
        table.add_column("metric", style="bold")
        table.add_column("value", justify="right")

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"

        ci = "-" if self.ci_low is None else f"[{pct(self.ci_low)}, {pct(self.ci_high)}]"
        table.add_row("win / tie / loss", f"{self.wins} / {self.ties} / {self.losses}")
        table.add_row(f"win-rate ({100 * self.confidence:.0f}% bootstrap CI)", f"{pct(self.win_rate)} {ci}")
        table.add_row("inconsistent verdicts (counted as ties)", pct(self.inconsistent_rate))
        table.add_row("ok / unparseable / failed", f"{self.ok} / {self.unparseable} / {self.failed}")
        table.add_row("refusal: policy / baseline", f"{pct(self.refusal_policy)} / {pct(self.refusal_baseline)}")
        for p in self.principles:
            short = p.principle if len(p.principle) <= 60 else p.principle[:57] + "..."
            t = p.tally
            table.add_row(f"  {short}", f"{pct(p.win_rate)} ({t.wins}/{t.ties}/{t.losses})")
        table.add_row("calls per prompt", f"{self.calls_per_prompt:.2f}")
        table.add_row("wall time", f"{self.wall_s:.1f} s")
        return table


def winrate_metrics(
    records: Sequence[dict[str, Any]],
    *,
    policy: str = "",
    baseline: str = "",
    judge: str = "",
    data: str = "",
    failed: int = 0,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    wall_s: float = 0.0,
) -> WinRateEval:
    """Metrics from records holding ``verdict`` (``PairwiseVerdict.to_dict()`` of policy vs
    baseline) and optionally ``policy_refused`` / ``baseline_refused``."""
    total = Tally()
    by_principle: dict[str, Tally] = {}
    credits = []
    for r in records:
        v = r["verdict"]
        result = outcome(v)
        total.add(result, v.get("consistent"))
        if result is not None:
            credits.append(CREDIT[result])
        groups: dict[str, list[OrderResult]] = {}
        for o in v.get("orders", []):
            groups.setdefault(o["principle"], []).append(OrderResult(**o))
        for principle, orders in groups.items():
            per = combine_orders(orders, Usage())
            by_principle.setdefault(principle, Tally()).add(outcome(per), per.consistent)
    low, high = bootstrap_ci(credits, confidence=confidence, n_boot=n_boot, seed=seed)

    def refusal(key: str) -> float | None:
        values = [float(r[key]) for r in records if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    n = len(records) + failed
    return WinRateEval(
        policy=policy,
        baseline=baseline,
        judge=judge,
        data=data,
        n=n,
        ok=total.n,
        unparseable=sum(r["verdict"]["status"] == "unparseable" for r in records),
        failed=failed,
        wins=total.wins,
        ties=total.ties,
        losses=total.losses,
        inconsistent=total.inconsistent,
        win_rate=total.win_rate,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        inconsistent_rate=total.inconsistent / total.n if total.n else None,
        refusal_policy=refusal("policy_refused"),
        refusal_baseline=refusal("baseline_refused"),
        principles=[PrincipleRate(p, t, t.win_rate) for p, t in sorted(by_principle.items())],
        calls_per_prompt=(sum(r.get("usage", {}).get("calls", 0) for r in records) / len(records)) if records else 0.0,
        wall_s=wall_s,
    )


async def compare_answers(
    judge: PairwiseJudge, prompt: Sequence[Message], policy: str, baseline: str
) -> dict[str, Any]:
    """One prompt's record fields: the verdict of policy (A) vs baseline (B) and each side's
    rules:refusal flag (also used by the training callback)."""
    verdict = await judge.compare(prompt, policy, baseline)
    rules = RefusalJudge()
    return {
        "verdict": verdict.to_dict(),
        "outcome": outcome(verdict),
        "policy_refused": rules.is_refusal(policy),
        "baseline_refused": rules.is_refusal(baseline),
    }


async def evaluate_winrate(
    prompts: Sequence[Any],
    policy: Subject,
    baseline: Subject,
    judge: str,
    *,
    judge_options: dict[str, Any] | None = None,
    data: str = "",
    out: str | Path | None = None,
    params: GenParams | None = None,
    models: dict[str, ChatModel] | None = None,
    model_options: dict[str, Any] | None = None,
    concurrency: int = 16,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    new_run: bool = False,
    progress: bool = True,
) -> WinRateEval:
    """Win-rate of ``policy`` against ``baseline`` on ``prompts`` (records with ``id`` and
    ``messages``: ``cai.inputs.PromptRecord`` or ``judges.safety.EvalPrompt``).

    ``models`` maps a model spec to an already loaded model; specs used by several sides
    (policy, baseline, judge) are loaded once and shared.
    """
    params = params or GenParams(max_tokens=256)
    judge_options = judge_options or {}
    job = Job(
        "eval winrate",
        {
            "task": "eval_winrate",
            "policy": policy.to_dict(),
            "baseline": baseline.to_dict(),
            "judge": judge,
            "judge_options": judge_options,
            "params": params.to_dict(),
        },
        [Sample(p.id, p, input_hash=Sample(p.id, p.messages).input_hash) for p in prompts],
        writers=[OutputWriter("comparisons.jsonl", lambda r: [r])],
        show_counters=["wins"],
    )

    async def setup(ctx: JobContext) -> Work:
        pairwise = ctx.judge(judge, **judge_options)
        if not isinstance(pairwise, PairwiseJudge):
            raise ValueError(f"--judge {judge!r}: the win-rate eval needs a pairwise judge, e.g. pairwise:MODEL")
        sides = [side.build(ctx.store, model=ctx.models.get(side.model)) for side in (policy, baseline)]
        return _work(sides, pairwise, params)

    result = await run_job(
        job,
        out,
        setup,
        new_run=new_run,
        concurrency=concurrency,
        progress=progress,
        models=models,
        model_options=model_options,
    )
    records = [row.record for row in result.rows if row and row.status == "done" and row.record]
    return winrate_metrics(
        records,
        policy=policy.name,
        baseline=baseline.name,
        judge=judge,
        data=data,
        failed=result.summary.n_failed,
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
        wall_s=result.summary.wall_s,
    )


def _work(sides: Sequence[ChatModel], pairwise: PairwiseJudge, params: GenParams) -> Work:
    async def work(sample: Sample) -> Outcome:
        item = sample.data
        answers = await asyncio.gather(*(side.chat(item.messages, params) for side in sides))
        usage = answers[0].usage + answers[1].usage
        record: dict[str, Any] = {
            "id": sample.id,
            "prompt": item.messages,
            "policy": answers[0].text,
            "baseline": answers[1].text,
        }
        record.update(await compare_answers(pairwise, item.messages, answers[0].text, answers[1].text))
        usage = usage + Usage.from_dict(record["verdict"]["usage"])
        record["usage"] = usage.to_dict()
        if record["verdict"]["status"] == "failed":
            return Outcome(record=record, failed="judge_failed", usage=usage)
        return Outcome(record=record, usage=usage, counters={"wins": float(record["outcome"] == "win")})

    return work
