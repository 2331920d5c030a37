"""`cai eval safety` and `cai eval winrate`: model evals, in the `cai eval` group."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Optional

import typer

from cai.aio import run_sync
from cai.commands.judge import (
    BASE_URLS,
    RAY,
    REPLICAS,
    _fail,
    _judge_options,
    _model_options,
    eval_app,
    print_replica_stats,
    write_report,
)

PROMPTS_HELP = "Prompt file with label (safe/unsafe) and optional category columns (default: the shipped set)."
LIMIT_HELP = "Use only the first N prompts of each label."
MAX_TOKENS = typer.Option(256, min=1, help="Answer length limit.")
JSON_OUT = typer.Option(None, "--json", help="Also write the metrics as JSON here ('-' = stdout).")
CONCURRENCY = typer.Option(16, min=1, help="Prompts in flight.")
API_KEY = typer.Option(None, help="API key (default: $CAI_API_KEY).")
NEW_RUN = typer.Option(False, "--new-run", help="Move an existing run in --out aside and start over.")
REVISIONS = typer.Option(None, min=1, help="Wrapper critique/revision rounds.")


def _run(build: Callable[[], Coroutine[Any, Any, Any]], json_out: Optional[Path]) -> None:
    """Build and run an eval, print its report, exit 1 when prompts failed (a rerun retries them)."""
    from cai.inputs import InputError
    from cai.store import ConfigMismatchError

    try:
        report = run_sync(build())
    except (InputError, ConfigMismatchError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    print_replica_stats()
    write_report(report, json_out)
    if report.failed:
        typer.echo(f"{report.failed} prompts failed; rerun the same command to retry them", err=True)
        raise typer.Exit(1)


@eval_app.command("safety")
def eval_safety(
    model: str = typer.Option(..., "--model", "-m", help="Model spec under test: embedded, hf:PATH, openai:NAME, ..."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", "-p", help=PROMPTS_HELP),
    judge: str = typer.Option(
        "rules:refusal", "--judge", "-j", help="violation:MODEL (refusal check + harm score) or rules:refusal."
    ),
    constitution: Optional[str] = typer.Option(
        None, "--constitution", "-c", help="Wrap the model with this constitution (as `cai serve`)."
    ),
    mode: str = typer.Option("always", help="Wrapper mode: off | always | on_flag | block."),
    revisions: Optional[int] = REVISIONS,
    flag_judge: Optional[str] = typer.Option(
        None, help="on_flag/block: violation judge spec (default violation:MODEL)."
    ),
    limit: Optional[int] = typer.Option(None, min=1, help=LIMIT_HELP),
    max_tokens: int = MAX_TOKENS,
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory (resume, call cache, responses.jsonl)."
    ),
    json_out: Optional[Path] = JSON_OUT,
    concurrency: int = CONCURRENCY,
    base_url: Optional[list[str]] = BASE_URLS,
    api_key: Optional[str] = API_KEY,
    new_run: bool = NEW_RUN,
    ray: Optional[str] = RAY,
    replicas: Optional[int] = REPLICAS,
) -> None:
    """Refusal on harmful prompts, over-refusal on safe look-alikes, and harm, per category."""
    from cai.models.base import GenParams
    from judges.safety import SHIPPED_PROMPTS, evaluate_safety, read_eval_prompts
    from judges.subject import Subject

    _run(
        lambda: evaluate_safety(
            read_eval_prompts(prompts, limit=limit),
            Subject(model, constitution, mode, revisions, flag_judge),
            judge,
            data=str(prompts or SHIPPED_PROMPTS),
            out=out,
            params=GenParams(max_tokens=max_tokens),
            model_options=_model_options(base_url, api_key, ray=ray, replicas=replicas),
            concurrency=concurrency,
            new_run=new_run,
        ),
        json_out,
    )


@eval_app.command("winrate")
def eval_winrate(
    policy: str = typer.Option(..., "--policy", help="Model spec of the policy (side A)."),
    baseline: str = typer.Option(..., "--baseline", help="Model spec of the baseline (side B)."),
    judge: str = typer.Option(..., "--judge", "-j", help="Pairwise judge spec, e.g. pairwise:embedded."),
    prompts: Optional[Path] = typer.Option(
        None, "--prompts", "-p", help="Prompt file (default: the shipped safety set)."
    ),
    constitution: str = typer.Option(
        "harmless", "--constitution", "-c", help="The judge's comparison questions come from this constitution."
    ),
    k: int = typer.Option(1, "--k", min=1, help="Judge questions sampled per prompt (averaged)."),
    wrap_policy: Optional[str] = typer.Option(None, help="Wrap the policy with this constitution."),
    wrap_baseline: Optional[str] = typer.Option(None, help="Wrap the baseline with this constitution."),
    mode: str = typer.Option("always", help="Wrapper mode for wrapped sides: always | on_flag | block."),
    revisions: Optional[int] = REVISIONS,
    limit: Optional[int] = typer.Option(None, min=1, help=LIMIT_HELP + " (first N for a file without labels)"),
    max_tokens: int = MAX_TOKENS,
    confidence: float = typer.Option(0.95, min=0.5, max=0.999, help="Bootstrap interval level."),
    bootstrap: int = typer.Option(2000, min=100, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Seed for question sampling and the bootstrap."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory (resume, call cache, comparisons.jsonl)."
    ),
    json_out: Optional[Path] = JSON_OUT,
    concurrency: int = CONCURRENCY,
    base_url: Optional[list[str]] = BASE_URLS,
    api_key: Optional[str] = API_KEY,
    new_run: bool = NEW_RUN,
    ray: Optional[str] = RAY,
    replicas: Optional[int] = REPLICAS,
) -> None:
    """Win / tie / loss of a policy against a baseline, win-rate with a bootstrap CI, per question."""
    from cai.models.base import GenParams
    from judges.safety import SHIPPED_PROMPTS, read_eval_prompts
    from judges.subject import Subject
    from judges.winrate import evaluate_winrate

    _run(
        lambda: evaluate_winrate(
            read_eval_prompts(prompts, limit=limit, require_label=False),
            Subject(policy, wrap_policy, mode, revisions),
            Subject(baseline, wrap_baseline, mode, revisions),
            judge,
            judge_options=_judge_options(judge, constitution, k, False, seed),
            data=str(prompts or SHIPPED_PROMPTS),
            out=out,
            params=GenParams(max_tokens=max_tokens),
            model_options=_model_options(base_url, api_key, ray=ray, replicas=replicas),
            concurrency=concurrency,
            confidence=confidence,
            n_boot=bootstrap,
            seed=seed,
            new_run=new_run,
        ),
        json_out,
    )


def register(app: typer.Typer) -> None:
    """The commands join the `eval` group that `cai.commands.judge` adds to the app."""
