"""Dataset generation (critique-revise a prompt set), the Python side of ``cai generate``::

    import cai
    traces = cai.generate("prompts.jsonl", model="embedded", constitution="harmless",
                          revisions=2, out="runs/demo")
    # or in async code: traces = await cai.agenerate([...], model=chat_model, ...)

``out`` is a run directory (resumable, with traces/sft/preferences JSONL files); with
``out=None`` the run is kept in memory. The traces come back in input order, including
samples finished by an earlier run in the same directory and failed ones
(``trace.stop_reason == "failed"``, ``trace.error`` = reason). The run is one ``cai.jobs`` job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from cai.aio import run_sync
from cai.constitution import Constitution, Sampling, load_constitution
from cai.inputs import InputError, OnBadLine, PromptRecord, read_prompts
from cai.jobs import Job, JobContext, run_job
from cai.models.base import ChatModel, GenParams, Message
from cai.outputs import generate_writers, pair_kept
from cai.quality import QualityGates
from cai.records import Trace
from cai.revise import normalize_prompt, revise
from cai.revise_config import ReviseConfig
from cai.runner import Outcome, RunSummary, Sample, Work
from cai.store import SampleRow

if TYPE_CHECKING:
    from judges.base import Judge

__all__ = ["GenerateResult", "PromptsLike", "agenerate", "agenerate_run", "generate", "run_config"]

PromptsLike = str | Path | Sequence[str | Sequence[Message] | PromptRecord]
# model options that are part of a run's identity: never api keys, never scale-out settings
# (ray, replicas, base_urls), so a run may resume with another replica count
_RECORDED_OPTIONS = ("base_url",)


@dataclass
class GenerateResult:
    traces: list[Trace]
    summary: RunSummary
    skipped_inputs: list[str]
    run_dir: Path | None


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    return (
        urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
        if parts.hostname
        else url
    )


def run_config(
    model_spec: str,
    constitution: Constitution,
    *,
    revisions: int,
    sampling: str,
    seed: int,
    few_shot: bool,
    params: GenParams,
    model_options: dict[str, Any],
    gates: QualityGates | None = None,
    verify: dict[str, Any] | None = None,
) -> dict[str, Any]:
    recorded = {k: _strip_credentials(str(v)) for k, v in model_options.items() if k in _RECORDED_OPTIONS and v}
    return {
        "task": "generate",
        "model": model_spec,
        "model_options": recorded,
        "constitution": constitution.id,
        "constitution_name": constitution.name,
        "revisions": revisions,
        "sampling": sampling,
        "seed": seed,
        "few_shot": few_shot,
        "params": params.to_dict(),
        "quality": (gates or QualityGates()).to_dict(),
        "verify": verify,
    }


def _to_records(
    prompts: PromptsLike, prompt_field: str, messages_field: str, on_bad_line: OnBadLine, limit: int | None
) -> tuple[list[PromptRecord], list[str]]:
    if isinstance(prompts, (str, Path)) and Path(prompts).exists():
        found = read_prompts(
            prompts, prompt_field=prompt_field, messages_field=messages_field, on_bad_line=on_bad_line, limit=limit
        )
        if not found.prompts:
            skipped = f" ({len(found.skipped)} bad records skipped)" if found.skipped else ""
            raise InputError(f"{prompts}: no prompts{skipped}")
        return found.prompts, found.skipped
    if isinstance(prompts, (str, Path)):
        raise FileNotFoundError(f"{prompts}: no such prompt file (pass a list to give prompts directly)")
    records = []
    for i, p in enumerate(prompts[:limit] if limit is not None else prompts):
        records.append(p if isinstance(p, PromptRecord) else PromptRecord(str(i), normalize_prompt(p), f"item {i}"))
    return records, []


def _work(
    model: ChatModel,
    constitution: Constitution,
    sources: dict[str, str],
    *,
    revisions: int,
    sampling: Sampling,
    seed: int,
    few_shot: bool,
    params: GenParams,
    gates: QualityGates | None,
    judge: Judge | None,
    min_margin: float,
) -> Work:
    """The work of one generate sample: critique-revise, then (with a judge) verify the pair."""

    async def work(sample: Sample) -> Outcome:
        trace = await revise(
            model,  # CachedModel: sampled calls get the sample's seed for each turn
            sample.data,
            constitution,
            revisions=revisions,
            sampling=sampling,
            seed=seed,
            few_shot=few_shot,
            params=params,
            sample_id=sample.id,
            gates=gates,
        )
        trace.metadata["source"] = sources[sample.id]
        usage = trace.usage
        if judge is not None and trace.revised:
            from judges.verify import verify_pair

            verdict, judge_usage = await verify_pair(judge, trace, min_margin)
            usage = usage + judge_usage
            if verdict["reason"] == "judge_failed":  # retried on resume (the calls are cached)
                return Outcome(record=trace.to_dict(), failed="judge_failed", usage=usage)
            trace.metadata["verify"] = verdict
        return Outcome(
            record=trace.to_dict(), failed=trace.error if not trace.ok else None, counters=_counters(trace), usage=usage
        )

    return work


def _counters(trace: Trace) -> dict[str, float]:
    counters = {
        "revised": float(trace.revised),
        "early_stopped": float(trace.stop_reason == "early_stop"),
        "degenerate_revisions": float(sum(s.note.startswith("degenerate") for s in trace.steps)),
        "pairs": float(pair_kept(trace)),
    }
    for step in trace.steps:  # each gate / degenerate reason, counted in the run summary
        if step.note.startswith("degenerate:") or step.note == "truncated":
            name = "truncated_kept" if step.note == "truncated" else f"dropped_{step.note.split(':', 1)[1]}"
            counters[name] = counters.get(name, 0.0) + 1
    if "verify" in trace.metadata and not trace.metadata["verify"]["kept"]:
        counters[f"judge_{trace.metadata['verify']['reason']}"] = 1.0
    return counters


async def agenerate_run(
    prompts: PromptsLike,
    *,
    model: str | ChatModel = "embedded",
    constitution: str | Path | Constitution = "harmless",
    revisions: int | None = None,
    sampling: Sampling | None = None,
    seed: int | None = None,
    few_shot: bool = True,
    params: GenParams | None = None,
    out: str | Path | None = None,
    concurrency: int = 16,
    limit: int | None = None,
    new_run: bool = False,
    progress: bool = False,
    prompt_field: str = "prompt",
    messages_field: str = "messages",
    on_bad_line: OnBadLine = "abort",
    model_options: dict[str, Any] | None = None,
    gates: QualityGates | None = None,
    verify: str | Judge | None = None,
    min_margin: float = 0.1,
) -> GenerateResult:
    """``agenerate`` with the run summary and the list of skipped input records.

    ``gates``: the quality gates of ``cai.quality`` (default ``QualityGates()``). ``verify``: a
    judge spec (e.g. ``pairwise:embedded``) or judge; each revised pair is then kept only when
    the judge prefers the revision in both orders by ``min_margin`` (``judges.verify``). A
    judge spec naming the generating model shares the loaded model; pairwise judges ask the
    constitution's judge questions. The judge's calls are cached in the run store."""
    constitution = load_constitution(constitution)
    resolved = ReviseConfig.from_constitution(
        constitution, revisions=revisions, sampling=sampling, seed=seed, params=params
    )  # the one place constitution defaults are resolved
    revisions, sampling, seed, params = resolved.revisions, resolved.sampling, resolved.seed, resolved.params
    model_options = dict(model_options or {})
    records, skipped = _to_records(prompts, prompt_field, messages_field, on_bad_line, limit)

    spec = model.spec if isinstance(model, ChatModel) else model.strip()
    config = run_config(
        spec,
        constitution,
        revisions=revisions,
        sampling=sampling,
        seed=seed,
        few_shot=few_shot,
        params=params,
        model_options=model_options,
        gates=gates,
        verify={
            "judge": verify if isinstance(verify, str) else getattr(verify, "name", type(verify).__name__),
            "min_margin": min_margin,
        }
        if verify is not None
        else None,
    )
    job = Job(
        "generate",
        config,
        [Sample(r.id, r.messages) for r in records],
        writers=generate_writers(verify=verify is not None),
        show_counters=["revised", "early_stopped", "pairs"],
        print_summary=True,
    )

    async def setup(ctx: JobContext) -> Work:
        options: dict[str, Any] = (
            {"constitution": constitution} if isinstance(verify, str) and _kind(verify) == "pairwise" else {}
        )
        return _work(
            ctx.cached(ctx.models.get(spec)),
            constitution,
            {r.id: r.source for r in records},
            revisions=revisions,
            sampling=sampling,
            seed=seed,
            few_shot=few_shot,
            params=params,
            gates=gates,
            judge=ctx.judge(verify, **options) if verify is not None else None,
            min_margin=min_margin,
        )

    result = await run_job(
        job,
        out,
        setup,
        new_run=new_run,
        concurrency=concurrency,
        progress=progress,
        models={spec: model} if isinstance(model, ChatModel) else None,
        model_options=model_options,
    )
    traces = [_trace(r, row) for r, row in zip(records, result.rows)]
    return GenerateResult(traces, result.summary, skipped, result.run_dir)


def _kind(judge_spec: str) -> str:
    return judge_spec.strip().partition(":")[0]


def _trace(record: PromptRecord, row: SampleRow | None) -> Trace:
    if row is not None and row.record and "prompt" in row.record:
        return Trace.from_dict(row.record)
    # failed before any trace existed (an unexpected error)
    return Trace(id=record.id, prompt=record.messages, stop_reason="failed", error=row.reason if row else "not_run")


async def agenerate(prompts: PromptsLike, **kwargs: Any) -> list[Trace]:
    """Critique-revise every prompt; see ``agenerate_run`` for the options."""
    return (await agenerate_run(prompts, **kwargs)).traces


def generate(prompts: PromptsLike, **kwargs: Any) -> list[Trace]:
    """Blocking ``agenerate`` (``cai.aio.run_sync``: in a helper thread when called inside an
    event loop, e.g. in Jupyter)."""
    return run_sync(agenerate(prompts, **kwargs))
