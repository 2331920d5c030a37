"""`cai generate INPUT --out DIR ...` (critique-revise a dataset) and `cai export RUN_DIR --to DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from cai.aio import run_sync
from cai.commands.judge import BASE_URLS, MAX_RETRIES, RAY, REPLICAS, TIMEOUT, _model_options, print_replica_stats
from cai.errors import CaiError

Sampling = Literal["random", "all", "sequential"]


def _fail(message: str) -> None:
    """A bad flag or input that is not a CaiError (the CLI boundary reports those): exit 2."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _count_rows(path: Path) -> int:
    return sum(1 for line in path.open(encoding="utf-8") if line.strip()) if path.is_file() else 0


def why_no_pairs(traces: list) -> str:
    """Why a run made no preference pair, counted, and what to try."""
    from collections import Counter

    failed = Counter(t.error or "unknown" for t in traces if not t.ok)
    ok = [t for t in traces if t.ok]
    early = sum(t.stop_reason == "early_stop" for t in ok)
    degenerate = Counter(s.note.split(":", 1)[-1] for t in ok for s in t.steps if s.note.startswith("degenerate"))
    unchanged = sum(t.stop_reason != "early_stop" and not t.revised for t in ok)
    parts = [f"{early} stopped early (the critique found nothing to fix)"]
    if degenerate:
        parts.append(
            f"{sum(degenerate.values())} revisions rejected as degenerate "
            f"({', '.join(f'{k} {v}' for k, v in degenerate.most_common())})"
        )
    parts.append(f"{unchanged} ended with the initial answer unchanged")
    if failed:
        parts.append(f"{sum(failed.values())} failed ({', '.join(f'{k} {v}' for k, v in failed.most_common())})")
    return (
        f"no preference pairs: of {len(traces)} samples, " + "; ".join(parts) + ".\n"
        "try: a stronger model (--model openai:NAME --base-url URL, or vllm:/hf: PATH), sampling "
        "(--temperature 0.7), more --revisions, or more prompts; a pair needs a revision that "
        "differs from the initial answer."
    )


def generate(
    input: Path = typer.Argument(..., help="Prompts: .jsonl/.json/.csv/.parquet file or a HF datasets folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<input name>)."),
    model: str = typer.Option(
        "embedded", "--model", "-m", help="Model spec: embedded, hf:PATH, vllm:PATH, openai:NAME, litellm:P/M."
    ),
    constitution: str = typer.Option(
        "harmless", "--constitution", "-c", help="Shipped constitution name or YAML path."
    ),
    revisions: Optional[int] = typer.Option(
        None, min=0, help="Critique/revision rounds (default: the constitution's)."
    ),
    sampling: Optional[Sampling] = typer.Option(
        None, help="Principle per round: random, all, sequential (default: the constitution's)."
    ),
    seed: Optional[int] = typer.Option(None, help="Seed for principle sampling (default: the constitution's)."),
    few_shot: bool = typer.Option(
        True, "--few-shot/--no-few-shot", help="Prepend the constitution's few-shot examples."
    ),
    concurrency: int = typer.Option(16, min=1, help="Samples in flight at once."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N prompts."),
    max_tokens: int = typer.Option(256, min=1, help="Max new tokens per call."),
    temperature: float = typer.Option(0.0, min=0.0, help="Sampling temperature of every call."),
    base_url: Optional[list[str]] = BASE_URLS,
    api_key: Optional[str] = typer.Option(
        None, envvar="CAI_API_KEY", show_envvar=True, help="API key (never written to the run)."
    ),
    timeout: Optional[float] = TIMEOUT,
    max_retries: Optional[int] = MAX_RETRIES,
    ray: Optional[str] = RAY,
    replicas: Optional[int] = REPLICAS,
    prompt_field: str = typer.Option("prompt", help="Input field holding the prompt text."),
    messages_field: str = typer.Option("messages", help="Input field holding a conversation."),
    on_bad_line: Literal["skip", "abort"] = typer.Option(
        "abort", help="Bad input record: skip it (and list it) or abort."
    ),
    new_run: bool = typer.Option(False, "--new-run", help="Move an existing run in --out aside and start over."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verify: Optional[str] = typer.Option(
        None,
        "--verify",
        metavar="JUDGE",
        help="Keep a pair only when this judge prefers the revision in both orders, e.g. pairwise:embedded.",
    ),
    min_margin: float = typer.Option(
        0.1,
        "--min-margin",
        min=0.0,
        max=1.0,
        help="With --verify: the revision's least margin (2p-1 for pairwise judges).",
    ),
    on_truncated: Literal["drop", "keep"] = typer.Option(
        "keep", "--on-truncated", help="A revision cut off at --max-tokens: drop it, or keep it flagged."
    ),
    gate: list[str] = typer.Option(
        [],
        "--gate",
        metavar="NAME=VALUE",
        help="Set a quality gate, e.g. max_repeated_ngrams=0.5, off_topic=false (repeatable; see README).",
    ),
    no_gates: bool = typer.Option(False, "--no-gates", help="Turn every quality gate off."),
    report: bool = typer.Option(
        True, "--report/--no-report", help="Write report.json and report.html in the run directory at the end."
    ),
) -> None:
    """Critique and revise every prompt with a constitution; writes traces.jsonl, sft.jsonl and
    preferences.jsonl in the run directory as samples finish. Rerun the same command to resume."""
    from cai.generation import agenerate_run
    from cai.models import GenParams
    from cai.quality import parse_gates
    from judges.registry import available_judges

    out = out or Path("runs") / input.stem
    try:
        gates = parse_gates(gate, on_truncated=on_truncated, off=no_gates)
    except ValueError as exc:
        _fail(str(exc))
        return
    if verify is not None and verify.partition(":")[0].strip() not in available_judges():
        _fail(
            f"--verify {verify!r}: unknown judge kind {verify.partition(':')[0].strip()!r}; "
            f"known: {', '.join(available_judges())}"
        )
    options = _model_options(base_url, api_key, timeout, max_retries, (model, verify), ray=ray, replicas=replicas)
    if model.startswith("openai:"):
        options["max_concurrency"] = concurrency
    try:
        result = run_sync(
            agenerate_run(
                input,
                model=model,
                constitution=constitution,
                revisions=revisions,
                sampling=sampling,
                seed=seed,
                few_shot=few_shot,
                params=GenParams(max_tokens=max_tokens, temperature=temperature),
                out=out,
                concurrency=concurrency,
                limit=limit,
                new_run=new_run,
                progress=not quiet,
                prompt_field=prompt_field,
                messages_field=messages_field,
                on_bad_line=on_bad_line,
                model_options=options,
                gates=gates,
                verify=verify,
                min_margin=min_margin,
            )
        )
    except FileNotFoundError as exc:  # cai's own errors reach the CLI boundary (exit 2 or 1)
        if isinstance(exc, CaiError):
            raise
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        typer.secho(f"\ninterrupted; run the same command again to resume {out}", fg="yellow", err=True)
        raise typer.Exit(130) from None
    print_replica_stats()
    for message in result.skipped_inputs:
        typer.secho(f"skipped {message}", fg="yellow", err=True)
    s = result.summary
    if report:
        from cai.report import write_report

        typer.echo(f"report: {write_report([out])}", err=True)
    rows, pairs = _count_rows(out / "sft.jsonl"), _count_rows(out / "preferences.jsonl")
    typer.echo(
        f"{out}: {s.done_before + s.done} done, {s.n_failed} failed; "
        f"{rows} SFT rows -> {out / 'sft.jsonl'}, {pairs} preference pairs -> {out / 'preferences.jsonl'}",
        err=True,
    )
    revised = sum(t.revised for t in result.traces)
    if not pairs and revised:
        typer.secho(
            f"no preference pairs: all {revised} revised samples were dropped by --verify "
            "(see the run's report for the verdicts); try --min-margin lower or a stronger judge",
            fg="yellow",
            err=True,
        )
    elif not pairs and result.traces:
        typer.secho(why_no_pairs(result.traces), fg="yellow", err=True)
    if s.n_failed:
        typer.secho("rerun the same command to retry the failed samples", fg="yellow", err=True)
        raise typer.Exit(1)


def export(
    run_dir: Path = typer.Argument(..., help="A `cai generate` run directory."),
    to: Path = typer.Option(..., "--to", help="Output folder."),
    format: Literal["hf", "parquet"] = typer.Option(
        "hf", "--format", help="hf: datasets folders (load_from_disk); parquet: files."
    ),
    license: Optional[str] = typer.Option(
        None,
        "--license",
        help="HF licence id for the card (e.g. mit, cc-by-4.0); default: the prompts' licence file, else unknown.",
    ),
    language: Optional[str] = typer.Option(
        None, "--language", help="Language code for the card; default: the constitution's."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="The card's pretty_name."),
) -> None:
    """Export a run's SFT rows and preference pairs, with a HF dataset card (README.md)."""
    from cai.outputs import export_run

    try:
        counts = export_run(run_dir, to, format, license=license, language=language, pretty_name=name)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    typer.echo(f"exported {counts['sft']} SFT rows and {counts['preferences']} preference pairs to {to}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("export")(export)
