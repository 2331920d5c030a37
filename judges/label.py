"""Labelling runs (RLAIF): prompts with candidate responses in, a TRL preference dataset out.

Runs as a ``cai.jobs`` job with the run store's call cache, so a killed run resumes with the same
command, repeats no finished judge or policy call, and writes each sample exactly once.

Outputs in the run directory:
- ``preferences.jsonl``: TRL conversational preference rows (prompt / chosen / rejected) plus
  ``score_chosen``, ``score_rejected``, ``margin``, ``consistent``; ties, unparseable verdicts
  and (unless ``keep_inconsistent``) pairs whose two orders disagree are left out;
- ``labels.jsonl``: every sample's full record, flagged ones included, for inspection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from cai import records
from cai.jobs import Job, JobContext, run_job
from cai.models.base import ChatModel, GenParams, Message, Usage
from cai.runner import Outcome, OutputWriter, RunSummary, Sample, Work
from judges.base import Judge, PairwiseJudge, PointwiseJudge
from judges.data import CandidateSet


@dataclass
class LabelConfig:
    judge: str
    judge_options: dict[str, Any] = field(default_factory=dict)
    policy: str | None = None
    samples: int = 0  # responses to sample per prompt from the policy
    sample_params: GenParams = field(default_factory=lambda: GenParams(max_tokens=256, temperature=1.0))
    keep_inconsistent: bool = False

    def store_config(self) -> dict[str, Any]:
        return {
            "task": "label",
            "judge": self.judge,
            "judge_options": self.judge_options,
            "policy": self.policy,
            "samples": self.samples,
            "sample_params": self.sample_params.to_dict(),
            "keep_inconsistent": self.keep_inconsistent,
        }


async def _pairwise(judge: PairwiseJudge, prompt: list[Message], candidates: list[str]) -> dict[str, Any]:
    pairs = list(combinations(range(len(candidates)), 2))
    verdicts = await judge.compare_many([(prompt, candidates[i], candidates[j]) for i, j in pairs])
    usage = sum((v.usage for v in verdicts), Usage())
    details = [{"a": i, "b": j, **v.to_dict()} for (i, j), v in zip(pairs, verdicts)]
    failed = next((v for v in verdicts if v.status == "failed"), None)
    if failed is not None:
        return {"status": "failed", "error": failed.error, "verdicts": details, "usage": usage}
    wins: dict[int, list[float]] = {}
    for (i, j), v in zip(pairs, verdicts):
        if v.ok and v.p_a is not None:
            wins.setdefault(i, []).append(v.p_a)
            wins.setdefault(j, []).append(1 - v.p_a)
    rate = {i: sum(ps) / len(ps) for i, ps in wins.items()}
    result: dict[str, Any] = {
        "verdicts": details,
        "usage": usage,
        "scores": [rate.get(i) for i in range(len(candidates))],
    }
    if len(rate) < 2:
        return {**result, "status": "unparseable", "error": "no readable verdict"}
    best = max(rate, key=rate.get)  # type: ignore[arg-type]
    worst = min((i for i in rate if i != best), key=rate.get)  # type: ignore[arg-type]
    direct = verdicts[pairs.index((min(best, worst), max(best, worst)))]
    if not direct.ok or direct.p_a is None:
        return {**result, "status": "unparseable", "error": "chosen/rejected pair has no readable verdict"}
    p_best = direct.p_a if best < worst else 1 - direct.p_a
    return {
        **result,
        "status": "ok",
        "chosen_index": best,
        "rejected_index": worst,
        "score_chosen": rate[best],
        "score_rejected": rate[worst],
        "margin": 2 * p_best - 1,
        "consistent": direct.consistent,
        "tie": direct.tie or rate[best] == rate[worst],
    }


async def _pointwise(judge: PointwiseJudge, prompt: list[Message], candidates: list[str]) -> dict[str, Any]:
    scores = await judge.score_many([(prompt, c) for c in candidates])
    usage = sum((s.usage for s in scores), Usage())
    result: dict[str, Any] = {
        "usage": usage,
        "scores": [s.value for s in scores],
        "details": [s.to_dict() for s in scores],
    }
    failed = next((s for s in scores if s.status == "failed"), None)
    if failed is not None:
        return {**result, "status": "failed", "error": failed.error}
    ok = {i: reward for i, s in enumerate(scores) if (reward := judge.reward(s)) is not None}  # higher is better
    if len(ok) < 2:
        return {**result, "status": "unparseable", "error": "fewer than two readable scores"}
    best = max(ok, key=ok.get)  # type: ignore[arg-type]
    worst = min((i for i in ok if i != best), key=ok.get)  # type: ignore[arg-type]
    return {
        **result,
        "status": "ok",
        "chosen_index": best,
        "rejected_index": worst,
        "score_chosen": scores[best].value,
        "score_rejected": scores[worst].value,
        "margin": ok[best] - ok[worst],
        "consistent": None,
        "tie": ok[best] == ok[worst],
    }


async def label_candidates(
    judge: PairwiseJudge | PointwiseJudge, prompt: list[Message], candidates: Sequence[str]
) -> dict[str, Any]:
    """Judge candidates for one prompt: the best is chosen, the worst rejected.

    Pairwise judges compare every pair (both orders each); a candidate's score is its mean
    p(better) over its comparisons, and margin / consistency come from the direct comparison
    of the chosen and the rejected. Pointwise judges score each candidate.
    """
    if len(candidates) < 2:
        raise ValueError(f"need at least two candidate responses, got {len(candidates)}")
    if isinstance(judge, PairwiseJudge):
        return await _pairwise(judge, prompt, list(candidates))
    return await _pointwise(judge, prompt, list(candidates))


def preference_row(record: dict[str, Any], keep_inconsistent: bool) -> dict[str, Any] | None:
    """The TRL preference row for a labelled record, or None when it must not train a model."""
    if record.get("status") != "ok" or record.get("tie"):
        return None
    if record.get("consistent") is False and not keep_inconsistent:
        return None
    candidates = record["candidates"]
    chosen, rejected = candidates[record["chosen_index"]], candidates[record["rejected_index"]]
    return records.preference_row(record["prompt"], chosen, rejected, scores=record, id=record["id"])


def _counters(record: dict[str, Any], keep_inconsistent: bool) -> dict[str, float]:
    return {
        "labelled": float(preference_row(record, keep_inconsistent) is not None),
        "inconsistent": float(record.get("consistent") is False),
        "ties": float(bool(record.get("tie"))),
        "unparseable": float(record.get("status") == "unparseable"),
    }


async def label(
    inputs: Sequence[CandidateSet],
    out: str | Path | None,
    config: LabelConfig,
    *,
    concurrency: int = 16,
    model_options: dict[str, Any] | None = None,
    judge_model: ChatModel | None = None,
    policy_model: ChatModel | None = None,
    new_run: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Label ``inputs`` into ``out`` (a run directory; None = in memory, no resume).

    ``judge_model`` / ``policy_model`` replace the models named in the config's specs (e.g. an
    already loaded model); their calls are cached in the run store all the same. A judge and
    a policy naming the same spec share one loaded model.
    """
    if config.samples < 1 and config.policy is not None:
        raise ValueError("a policy model needs samples >= 1")
    if config.samples >= 1 and config.policy is None:
        raise ValueError("sampling responses (samples >= 1) needs a policy model spec")
    job = Job(
        "label",
        config.store_config(),
        [Sample(item.id, item, input_hash=item.input_hash()) for item in inputs],
        writers=[
            OutputWriter(
                "preferences.jsonl", lambda r: [row] if (row := preference_row(r, config.keep_inconsistent)) else []
            ),
            OutputWriter("labels.jsonl", lambda r: [r]),
        ],
        show_counters=["labelled", "inconsistent"],
        print_summary=True,
    )

    async def setup(ctx: JobContext) -> Work:
        judge = ctx.judge(config.judge, model=judge_model, **config.judge_options)
        policy = None
        if config.policy:
            policy = ctx.cached(policy_model or ctx.models.get(config.policy))
        return _work(judge, policy, config)

    result = await run_job(
        job,
        out,
        setup,
        new_run=new_run,
        concurrency=concurrency,
        progress=progress,
        model_options=model_options,
    )
    return result.summary


def _work(judge: Judge, policy: ChatModel | None, config: LabelConfig) -> Work:
    async def work(sample: Sample) -> Outcome:
        item: CandidateSet = sample.data
        candidates = list(item.candidates)
        usage = Usage()
        if policy is not None:
            for seed in range(config.samples):
                completion = await policy.chat(item.prompt, config.sample_params.replace(seed=seed))
                candidates.append(completion.text)
                usage = usage + completion.usage
        if len(candidates) < 2:
            return Outcome(
                record={
                    "id": sample.id,
                    "error": f"{item.source}: fewer than two candidates (use --samples N --policy SPEC)",
                },
                failed="too_few_candidates",
            )
        result = await label_candidates(judge, item.prompt, candidates)
        usage = usage + result.pop("usage")
        record = {
            "id": sample.id,
            "source": item.source,
            "prompt": item.prompt,
            "candidates": candidates,
            "judge": config.judge,
            **result,
        }
        if record["status"] == "failed":
            return Outcome(record=record, failed="judge_failed", usage=usage)
        return Outcome(record=record, counters=_counters(record, config.keep_inconsistent), usage=usage)

    return work
