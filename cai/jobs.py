"""One lifecycle for every per-sample job: ``cai generate``, ``cai label``, ``cai judge eval``,
``cai eval safety`` and ``cai eval winrate`` (generate's ``--verify`` runs inside generate's job).

A job is described by a ``Job`` (title, config identity, samples, outputs) and a ``setup``
coroutine that loads what the work needs and returns the work function::

    job = Job("label", config.store_config(), samples, writers=[...], show_counters=["labelled"])

    async def setup(ctx: JobContext) -> Work:
        judge = ctx.judge("pairwise:embedded")      # cached in the run store, closed at the end
        policy = ctx.cached(ctx.models.get("hf:my-policy"))

        async def work(sample: Sample) -> Outcome: ...

        return work

    result = await run_job(job, out, setup, new_run=False, concurrency=16, progress=True)
    result.summary, result.rows        # RunSummary; store rows in sample order (None: never run)

``run_job`` does, in order:

1. opens the run store on ``out`` with ``job.config`` (``None``: in memory). A directory that
   holds another config raises ``ConfigMismatchError`` unless ``new_run`` (see ``cai.store``).
   Checks of the caller's own arguments belong before the call, so bad input touches no file;
2. awaits ``setup`` only when some sample is not done yet: a finished run loads no model;
3. runs the samples through ``cai.runner.Runner`` into ``job.writers``;
4. prints the run summary when ``progress`` and ``job.print_summary``;
5. reads every sample's row back from the store (``JobResult.rows``);
6. closes, also when a step raises: the judges ``ctx.judge`` built, then the models
   ``ctx.models`` loaded (never the ones the caller passed in), then the store.

The exit code is the CLI's business (``cai.commands``): it reads ``JobResult.summary``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai.models.base import ChatModel
from cai.models.registry import load_model
from cai.runner import OutputWriter, Runner, RunSummary, Sample, Work
from cai.store import CachedModel, RunStore, SampleRow

if TYPE_CHECKING:
    from judges.base import Judge


@dataclass
class Job:
    """What a job runs. ``config`` is the run's identity: resuming needs the same one."""

    title: str
    config: dict[str, Any]
    samples: Sequence[Sample]
    writers: Sequence[OutputWriter] = ()
    show_counters: Sequence[str] = ()
    print_summary: bool = False  # the summary table after the progress bar (generate, label)


@dataclass
class JobResult:
    summary: RunSummary
    rows: list[SampleRow | None]  # the store's row of each sample, in ``job.samples`` order
    run_dir: Path | None


class Models:
    """A job's models by spec: each spec is loaded once (with ``options``) and shared by every
    side that names it; ``aclose`` closes the loaded ones, never those given in ``given``."""

    def __init__(self, given: Mapping[str, ChatModel] | None = None, options: Mapping[str, Any] | None = None):
        self.given = dict(given or {})
        self.options = dict(options or {})
        self.loaded: dict[str, ChatModel] = {}

    def get(self, spec: str) -> ChatModel:
        if spec in self.given:
            return self.given[spec]
        if spec not in self.loaded:
            self.loaded[spec] = load_model(spec, **self.options)
        return self.loaded[spec]

    async def aclose(self) -> None:
        loaded, self.loaded = self.loaded, {}
        for model in loaded.values():
            await model.aclose()


@dataclass
class JobContext:
    """What ``setup`` gets: the open store, the job's models, and a stack closed at the end."""

    store: RunStore
    models: Models
    closing: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def cached(self, model: ChatModel) -> ChatModel:
        """``model`` with its calls cached in the run store."""
        return CachedModel(model, self.store)

    def judge(self, spec: str | Judge, *, model: ChatModel | None = None, **options: Any) -> Judge:
        """The judge for ``spec``, its model calls cached in the store. Its model is ``model``
        or the job's model of the spec's model part (shared with the other sides); a judge
        built from a spec is closed with the job, a judge passed in stays open."""
        from judges.registry import judge_model_spec, load_judge  # cai imports judges lazily

        if isinstance(spec, str) and model is None and (model_spec := judge_model_spec(spec)):
            model = self.models.get(model_spec)
        judge = load_judge(spec, model=model, model_options=self.models.options, store=self.store, **options)
        if isinstance(spec, str):
            self.closing.push_async_callback(judge.aclose)
        return judge


Setup = Callable[[JobContext], Awaitable[Work]]


async def _nothing_left(sample: Sample) -> Any:
    raise AssertionError(f"sample {sample.id!r} to do, but the job was set up as finished")


async def run_job(
    job: Job,
    out: str | Path | None,
    setup: Setup,
    *,
    new_run: bool = False,
    concurrency: int = 16,
    progress: bool = True,
    models: Mapping[str, ChatModel] | None = None,
    model_options: Mapping[str, Any] | None = None,
) -> JobResult:
    """Run ``job`` into ``out``; see the module docstring. ``models`` maps specs to models
    the caller already loaded (they stay open); other specs load with ``model_options``."""
    pool = Models(models, model_options)
    async with contextlib.AsyncExitStack() as stack:
        store = stack.enter_context(RunStore(out, config=job.config, new_run=new_run))
        stack.push_async_callback(pool.aclose)
        ctx = JobContext(store, pool)
        await stack.enter_async_context(ctx.closing)  # judges close before their models
        states = store.sample_states()
        todo = any(s.id not in states or states[s.id][1] != "done" for s in job.samples)
        work = await setup(ctx) if todo else _nothing_left
        runner = Runner(
            store,
            job.writers,
            concurrency=concurrency,
            progress=progress,
            title=job.title,
            show_counters=job.show_counters,
        )
        summary = await runner.run(job.samples, work)
        if progress and job.print_summary:
            runner.print_summary(summary)
        by_id = {row.id: row for row in store.samples()}
        rows = [by_id.get(s.id) for s in job.samples]
    return JobResult(summary, rows, Path(out) if out is not None else None)
