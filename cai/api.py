"""Python API for dataset runs, mirroring ``cai generate``::

    import cai
    traces = cai.generate("prompts.jsonl", model="embedded", constitution="harmless",
                          revisions=2, out="runs/demo")
    # or in async code: traces = await cai.agenerate([...], model=chat_model, ...)

``out`` is a run directory (resumable, with traces/sft/preferences JSONL files); with
``out=None`` the run is kept in memory. The traces come back in input order, including
samples finished by an earlier run in the same directory and failed ones
(``trace.stop_reason == "failed"``, ``trace.error`` = reason).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cai.constitution import Constitution, Sampling, load_constitution
from cai.inputs import InputError, OnBadLine, PromptRecord, read_prompts
from cai.models.base import ChatModel, Completion, GenParams, Message, ModelWrapper
from cai.models.registry import load_model
from cai.outputs import generate_writers, pair_kept
from cai.quality import QualityGates
from cai.records import Trace
from cai.revise import normalize_prompt, revise
from cai.runner import Outcome, Runner, RunSummary, Sample
from cai.store import CachedModel, RunStore

PromptsLike = str | Path | Sequence[str | Sequence[Message] | PromptRecord]
# options that are safe to record in a run's config (never api keys)
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


class SampleSeeded(ModelWrapper):
    """Sampled calls of one sample get a seed from (run seed, sample id, conversation length):
    a rerun reproduces them (the seed is part of each call's cache key, so they hit the cache),
    while two samples of the same prompt, and the calls of one sample, stay independent. One
    seed for every call of a sample draws the same random numbers each time, and the 135M
    model's revisions then came out as copies of its critiques. An explicit seed is kept."""

    def __init__(self, model: ChatModel, seed: int, sample_id: str):
        super().__init__(model)
        self.key = f"{seed}:{sample_id}"

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = params or GenParams()
        if params.temperature > 0 and params.seed is None:
            params = params.replace(seed=random.Random(f"{self.key}:{len(messages)}").getrandbits(31))
        return await self.model.chat(messages, params)


async def _run(
    store: RunStore,
    records: list[PromptRecord],
    model: ChatModel | None,
    constitution: Constitution,
    *,
    out: str | Path | None,
    revisions: int,
    sampling: Sampling,
    seed: int,
    few_shot: bool,
    params: GenParams,
    concurrency: int,
    progress: bool,
    gates: QualityGates | None = None,
    judge: Any = None,
    min_margin: float = 0.0,
) -> RunSummary:
    cached = CachedModel(model, store) if model is not None else None
    sources = {r.id: r.source for r in records}

    async def work(sample: Sample) -> Outcome:
        assert cached is not None, "a sample to do but no model loaded"
        trace = await revise(
            SampleSeeded(cached, seed, sample.id),
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
        return Outcome(
            record=trace.to_dict(), failed=trace.error if not trace.ok else None, counters=counters, usage=usage
        )

    runner = Runner(
        store,
        generate_writers(verify=judge is not None) if out is not None else (),
        concurrency=concurrency,
        progress=progress,
        title="generate",
        show_counters=["revised", "early_stopped", "pairs"],
    )
    summary = await runner.run([Sample(r.id, r.messages) for r in records], work)
    if progress:
        runner.print_summary(summary)
    return summary


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
    verify: Any = None,
    min_margin: float = 0.1,
) -> GenerateResult:
    """``agenerate`` with the run summary and the list of skipped input records.

    ``gates``: the quality gates of ``cai.quality`` (default ``QualityGates()``). ``verify``: a
    judge spec (e.g. ``pairwise:embedded``) or judge; each revised pair is then kept only when
    the judge prefers the revision in both orders by ``min_margin`` (``judges.verify``)."""
    constitution = load_constitution(constitution)
    defaults = constitution.defaults
    revisions = defaults.revisions if revisions is None else revisions
    sampling = sampling or defaults.sampling
    seed = defaults.seed if seed is None else seed
    params = params or GenParams()
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
    with RunStore(out, config, new_run=new_run) as store:
        # a finished run needs no model: do not pay for loading one
        todo = any((row := store.sample(r.id)) is None or row.status != "done" for r in records)
        owned = not isinstance(model, ChatModel)
        chat_model = model if not owned else load_model(model, **model_options) if todo else None
        judge, own_judge = (
            _load_verifier(verify, store, constitution, chat_model, spec, model_options) if todo else (None, False)
        )
        try:
            summary = await _run(
                store,
                records,
                chat_model,
                constitution,
                out=out,
                revisions=revisions,
                sampling=sampling,
                seed=seed,
                few_shot=few_shot,
                params=params,
                concurrency=concurrency,
                progress=progress,
                gates=gates,
                judge=judge,
                min_margin=min_margin,
            )
        finally:
            if own_judge:
                await judge.aclose()
            if owned and chat_model is not None:
                await chat_model.aclose()
        traces = []
        for r in records:
            row = store.sample(r.id)
            if row is not None and row.record and "prompt" in row.record:
                traces.append(Trace.from_dict(row.record))
            else:  # failed before any trace existed (an unexpected error)
                traces.append(
                    Trace(id=r.id, prompt=r.messages, stop_reason="failed", error=row.reason if row else "not_run")
                )
    return GenerateResult(traces, summary, skipped, Path(out) if out is not None else None)


def _load_verifier(
    verify: Any,
    store: RunStore,
    constitution: Constitution,
    chat_model: ChatModel | None,
    spec: str,
    model_options: dict[str, Any],
) -> tuple[Any, bool]:
    """The judge for ``verify`` and whether this run must close it. A spec naming the
    generating model reuses the loaded model; pairwise judges ask the constitution's judge
    questions. Its calls are cached in the run store."""
    if verify is None or not isinstance(verify, str):
        return verify, False
    from judges.registry import load_judge  # surfaces may import judges lazily

    kind, _, rest = verify.strip().partition(":")
    same = chat_model if rest == spec and chat_model is not None else None
    options = {"constitution": constitution} if kind == "pairwise" else {}
    return load_judge(verify, model=same, model_options=model_options, store=store, **options), same is None


async def agenerate(prompts: PromptsLike, **kwargs: Any) -> list[Trace]:
    """Critique-revise every prompt; see ``agenerate_run`` for the options."""
    return (await agenerate_run(prompts, **kwargs)).traces


def generate(prompts: PromptsLike, **kwargs: Any) -> list[Trace]:
    """Blocking ``agenerate`` (runs in a helper thread when called inside an event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(agenerate(prompts, **kwargs))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # e.g. inside Jupyter
        return pool.submit(asyncio.run, agenerate(prompts, **kwargs)).result()
