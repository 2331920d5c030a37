"""A generic, resumable runner: samples in, one async work function per sample, outputs out.

Used by ``cai generate`` (critique-revise) and reusable for any per-sample LLM job
(e.g. ``cai label``). How to reuse it::

    from cai.runner import Outcome, OutputWriter, Runner, Sample
    from cai.store import CachedModel, RunStore

    store = RunStore(run_dir, config={"model": spec, "judge": ..., "params": ...}, new_run=False)
    model = CachedModel(load_model(spec), store)   # finished calls are never repeated

    async def work(sample: Sample) -> Outcome:
        verdict = await judge_with(model, sample.data)          # your logic
        return Outcome(record=verdict_dict, counters={"consistent": 1.0})
        # or Outcome(record=partial_or_None, failed="parse_error") -> retried on resume

    writers = [OutputWriter("labels.jsonl", lambda record: [record])]
    summary = await Runner(store, writers, concurrency=32, title="label").run(samples, work)
    store.close()

Guarantees:
- Each sample is its own task; at most ``concurrency`` run at once (no waves: a fast sample
  never waits for a slow one).
- A sample's outcome is committed to the store, then its output lines are appended to each
  writer's file (flushed), then the new file sizes are committed. On the next run, files are
  truncated to the committed sizes and finished-but-unwritten samples are written, so every
  done sample appears in every output exactly once, whenever the process was killed. The
  worker does not wait for the commit: lines are written in batches as commits land, and
  all of them before ``run`` returns or raises (``cai.output_files``).
- Samples already ``done`` are skipped; ``failed`` ones are retried. A sample id whose input
  changed since the earlier run is refused (``ConfigMismatchError``).
- ``work`` raising ``ModelError`` marks the sample failed with ``exc.reason``; any other
  exception marks it failed with the exception's type name (the first is printed with its
  traceback). The run itself never crashes on a sample.
- ``Outcome.usage`` tokens are added to the counters as ``prompt_tokens`` / ``completion_tokens``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from cai.models.base import ModelError, Usage
from cai.output_files import OutputFiles, OutputWriter
from cai.store import ConfigMismatchError, RunStore, sample_scope


@dataclass
class Sample:
    """One unit of work. ``id`` must be stable across runs (resume matches on it)."""

    id: str
    data: Any
    input_hash: str = ""

    def __post_init__(self) -> None:
        if not self.input_hash:
            payload = json.dumps(self.data, sort_keys=True, ensure_ascii=False, default=str)
            self.input_hash = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass
class Outcome:
    """What a work function returns. ``record`` must be JSON-serialisable."""

    record: dict[str, Any] | None
    failed: str | None = None  # failure reason; the sample is retried on the next run
    counters: dict[str, float] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


Work = Callable[[Sample], Awaitable[Outcome]]


@dataclass
class RunSummary:
    title: str
    total: int  # samples given to this run
    done_before: int  # already done when the run started (skipped)
    done: int  # finished in this run
    failed: dict[str, int]  # reason -> count, samples still failed at the end of this run
    counters: dict[str, float]  # summed over every done sample of the given set
    wall_s: float
    model_calls: int  # real calls made by this process
    cache_hits: int  # calls served from the store
    usage: Usage  # tokens of this process's real calls

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    def table(self) -> Table:
        table = Table(title=f"{self.title}: summary", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value", justify="right")
        rate = self.done / self.wall_s if self.wall_s > 0 else 0.0
        table.add_row("samples", str(self.total))
        table.add_row("done in this run", f"{self.done}  ({rate:.2f}/s)")
        table.add_row("done earlier (skipped)", str(self.done_before))
        for name, value in sorted(self.counters.items()):
            if name not in ("prompt_tokens", "completion_tokens"):
                table.add_row(name.replace("_", " "), _fmt(value))
        table.add_row("failed", str(self.n_failed), style="red" if self.failed else None)
        for reason, count in sorted(self.failed.items()):
            table.add_row(f"  {reason}", str(count), style="red")
        table.add_row("model calls (new / cached)", f"{self.model_calls} / {self.cache_hits}")
        table.add_row(
            "tokens (prompt / completion)",
            f"{_fmt(self.counters.get('prompt_tokens', 0))} / {_fmt(self.counters.get('completion_tokens', 0))}",
        )
        table.add_row("wall time", f"{self.wall_s:.1f} s")
        return table


PROGRESS_INTERVAL_S = 0.1  # the progress bar redraws at most this often


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.fields.get("rate")
        return Text(f"{speed:.2f}/s" if speed else "-/s", style="progress.data.speed")


class _Progress:
    """The progress bar, redrawn at most every ``interval`` seconds (and once at the end)."""

    def __init__(self, console: Console, title: str, total: int, tally: _Tally, show: Sequence[str], enabled: bool):
        self.tally = tally
        self.show = list(show)
        self.interval = PROGRESS_INTERVAL_S
        self.start = time.monotonic()
        self._last = 0.0
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not enabled,
            transient=False,
            refresh_per_second=4,  # each redraw takes the GIL from the event loop
        )
        self.task = self.bar.add_task(title, total=total, completed=tally.done_before, stats="", rate=0.0)

    def _stats(self) -> str:
        t = self.tally
        n_done = max(t.done + t.done_before, 1)
        parts = [
            f"{name.replace('_', ' ')} {_fmt(t.counters.get(name, 0))} ({t.counters.get(name, 0) / n_done:.0%})"
            for name in self.show
        ]
        parts.append(f"failed {sum(t.failed.values())}")
        return " · ".join(parts)

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        t = self.tally
        finished = t.done + sum(t.failed.values())
        self.bar.update(
            self.task,
            completed=t.done_before + finished,
            stats=self._stats(),
            rate=finished / max(now - self.start, 1e-9),
        )

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        self.update(force=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.update(force=True)
        self.bar.__exit__(*exc)


@dataclass
class _Tally:
    """Counts of one run: counters summed over done samples, failure reasons."""

    done_before: int = 0
    done: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)


class Runner:
    def __init__(
        self,
        store: RunStore,
        writers: Sequence[OutputWriter] = (),
        *,
        concurrency: int = 16,
        progress: bool = True,
        title: str = "run",
        show_counters: Sequence[str] = (),
        console: Console | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.store = store
        self.writers = writers
        self.concurrency = concurrency
        self.progress = progress
        self.title = title
        self.show_counters = list(show_counters)
        self.console = console or Console(stderr=True)

    async def run(self, samples: Iterable[Sample], work: Work) -> RunSummary:
        samples = list(samples)
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise ValueError(f"sample ids must be unique; {dup!r} appears more than once")
        outputs = OutputFiles(self.store, self.writers)
        outputs.open()
        try:
            with _collector_skips_older_objects():
                return await self._run(samples, work, outputs)
        finally:
            outputs.close()
            self.store.flush()

    async def _run(self, samples: list[Sample], work: Work, outputs: OutputFiles) -> RunSummary:
        tally = _Tally()
        pending = self._schedule(samples, tally)
        hits0, misses0, usage0 = self.store.hits, self.store.misses, self.store.usage
        start = time.monotonic()
        progress = _Progress(self.console, self.title, len(samples), tally, self.show_counters, self.progress)
        printed_trace = False

        async def run_one(sample: Sample) -> None:
            nonlocal printed_trace
            outcome, trace = await _attempt(sample, work)
            if trace is not None and not printed_trace:
                printed_trace = True
                self.console.print(f"[red]sample {sample.id} raised:[/red]\n{trace}")
            self._finish(sample, outcome, outputs, tally)
            progress.update()

        with progress:
            await _drive(pending, run_one, self.concurrency)

        return RunSummary(
            title=self.title,
            total=len(samples),
            done_before=tally.done_before,
            done=tally.done,
            failed=dict(tally.failed),
            counters=dict(tally.counters),
            wall_s=time.monotonic() - start,
            model_calls=self.store.misses - misses0,
            cache_hits=self.store.hits - hits0,
            usage=Usage(
                self.store.usage.prompt_tokens - usage0.prompt_tokens,
                self.store.usage.completion_tokens - usage0.completion_tokens,
                self.store.usage.calls - usage0.calls,
            ),
        )

    def _schedule(self, samples: list[Sample], tally: _Tally) -> list[Sample]:
        """The samples still to do, in order; done ones are counted into ``tally``. A sample whose
        input changed since the earlier run is refused."""
        pending: list[Sample] = []
        states = self.store.sample_states()
        for sample in samples:
            state = states.get(sample.id)
            if state is not None and state[0] != sample.input_hash:
                raise ConfigMismatchError(
                    f"sample {sample.id!r} differs from the one this run directory processed "
                    "earlier (the input changed); use --new-run or another output directory"
                )
            if state is not None and state[1] == "done":
                tally.done_before += 1
                tally.counters.update(state[2])
            else:
                pending.append(sample)
        return pending

    def _finish(self, sample: Sample, outcome: Outcome, outputs: OutputFiles, tally: _Tally) -> None:
        """The outcome into the store; its output lines once that is committed; the tally now."""
        sample_counters = dict(outcome.counters)
        if outcome.usage.calls or outcome.usage.total_tokens:
            sample_counters["prompt_tokens"] = outcome.usage.prompt_tokens
            sample_counters["completion_tokens"] = outcome.usage.completion_tokens
        committed = self.store.finish_sample(
            sample.id,
            sample.input_hash,
            record=outcome.record,
            failed=outcome.failed,
            counters=sample_counters,
            wait=False,
        )
        if outcome.failed:
            tally.failed[outcome.failed] += 1
        else:
            outputs.write_after(committed, sample.id, outcome.record or {})
            tally.counters.update(sample_counters)
            tally.done += 1

    def print_summary(self, summary: RunSummary) -> None:
        self.console.print(summary.table())


@contextlib.contextmanager
def _collector_skips_older_objects() -> Iterator[None]:
    """While it runs, the cyclic collector skips the objects that existed before the run (the
    imports, the caller's data): a full collection over them was ~7% of a short HTTP run. They
    return to the oldest generation after it, so none stays exempt. A process that froze
    objects itself (``gc.freeze`` before forking workers) is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _attempt(sample: Sample, work: Work) -> tuple[Outcome, str | None]:
    """Run ``work`` on one sample inside its ``sample_scope``. A ``ModelError`` becomes a failed
    outcome with its reason; any other exception one with its type name, plus its traceback."""
    try:
        with sample_scope(sample.id):
            return await work(sample), None
    except ModelError as exc:
        return Outcome(record={"id": sample.id, "error": str(exc)}, failed=exc.reason), None
    except Exception as exc:  # a bug or bad data must not kill the whole run
        trace = traceback.format_exc()
        return Outcome(record={"id": sample.id, "error": str(exc)}, failed=type(exc).__name__), trace


async def _drive(pending: list[Sample], run_one: Callable[[Sample], Awaitable[None]], concurrency: int) -> None:
    """``run_one`` over ``pending`` with at most ``concurrency`` at once: each worker pulls the
    next sample when it is free (no waves). An error outside a sample (e.g. disk full) stops
    the other workers too."""
    queue = iter(pending)

    async def worker() -> None:
        for sample in queue:  # shared iterator
            await run_one(sample)

    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(pending)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
