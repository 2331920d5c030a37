"""`cai label INPUT --out DIR --judge SPEC` and `cai eval judge --data FILE --judge SPEC`."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from cai.aio import run_sync

eval_app = typer.Typer(help="Evaluate judges (judge) and models (safety, winrate).", no_args_is_help=True)

JUDGE_HELP = "Judge spec: pairwise:MODEL, pointwise:MODEL, violation:MODEL, rm:PATH, rules:refusal, ..."


REMOTE = ("openai:", "litellm:")
TIMEOUT = typer.Option(
    None, "--timeout", min=0.1, help="Seconds per model call attempt (openai:/litellm: models; default 120)."
)
MAX_RETRIES = typer.Option(
    None, "--max-retries", min=0, help="Retries of a transient model error (openai:/litellm: models; default 4)."
)
BASE_URLS = typer.Option(
    None,
    "--base-url",
    help="Server URL for openai:/litellm: models; give it once per replica to spread over several servers.",
)
RAY = typer.Option(
    None,
    "--ray",
    metavar="ADDRESS",
    help="Run the model as Ray replicas: 'local' (a cluster in this process), 'auto' (the node's `ray start`), or HOST:PORT.",
)
REPLICAS = typer.Option(
    None,
    "--replicas",
    help="Model replicas on Ray, each its own actor and model (default: one per --base-url, else 1).",
)


def _model_options(
    base_url: str | list[str] | None,
    api_key: str | None,
    timeout: float | None = None,
    max_retries: int | None = None,
    specs: tuple[str | None, ...] = (),
    *,
    ray: str | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """``load_model`` options from the shared flags; ``--ray`` / ``--replicas`` / several
    ``--base-url`` make the model a Ray pool (``cai.models.ray_pool``)."""
    urls = [base_url] if isinstance(base_url, str) else [u for u in base_url or [] if u]
    options: dict[str, Any] = _pool_options(urls, ray, replicas)
    if len(urls) == 1:
        options["base_url"] = urls[0]
    key = api_key or os.environ.get("CAI_API_KEY")
    if key:
        options["api_key"] = key
    for flag, name, value in (("--timeout", "timeout", timeout), ("--max-retries", "max_retries", max_retries)):
        if value is None:
            continue
        if not any(spec and any(r in spec for r in REMOTE) for spec in specs):
            _fail(f"{flag}: applies to openai: and litellm: models only (got {', '.join(s for s in specs if s)})")
        options[name] = value
    return options


def _pool_options(urls: list[str], ray: str | None, replicas: int | None) -> dict[str, Any]:
    if replicas is not None and replicas < 1:
        _fail(f"--replicas: must be >= 1 (got {replicas})")
    if replicas is not None and len(urls) > 1 and replicas != len(urls):
        _fail(f"--replicas: {replicas} given with {len(urls)} --base-url; give one --base-url per replica")
    if ray is None and replicas is None and len(urls) < 2:
        return {}
    if ray is not None and not ray.strip():
        _fail("--ray: expected 'local', 'auto' or HOST:PORT")
    if importlib.util.find_spec("ray") is None:
        _fail("--ray: ray is not installed; pip install 'cai[ray]'")
    options: dict[str, Any] = {"ray": (ray or "local").strip()}
    if len(urls) > 1:
        options["base_urls"] = urls
    else:
        options["replicas"] = replicas or 1
    return options


def print_replica_stats() -> None:
    """The per-replica table of each Ray pool this command closed (after the run summary)."""
    if "cai.models.ray_pool" not in sys.modules:
        return
    from rich.console import Console

    from cai.models.ray_pool import pop_stats, stats_table

    for spec, stats in pop_stats():
        Console(stderr=True).print(stats_table(spec, stats))


def _judge_options(spec: str, constitution: str | None, k: int, cot: bool, seed: int) -> dict[str, Any]:
    if not spec.startswith("pairwise:"):
        return {}
    options: dict[str, Any] = {"k": k, "seed": seed}
    if constitution:
        options["constitution"] = constitution
    if cot:
        options["cot"] = True
    return options


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def label_command(
    input: Path = typer.Argument(
        ..., help="JSONL/JSON/CSV/Parquet: prompt + chosen/rejected, prompt + responses, or prompts alone."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (resumable: rerun the same command)."),
    judge: str = typer.Option(..., "--judge", "-j", help=JUDGE_HELP),
    samples: int = typer.Option(0, "--samples", "-n", min=0, help="Responses to sample per prompt from --policy."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Policy model spec for --samples."),
    temperature: float = typer.Option(1.0, min=0.0, help="Policy sampling temperature."),
    max_tokens: int = typer.Option(256, min=1, help="Policy response length limit."),
    constitution: Optional[str] = typer.Option(None, help="Take comparison principles from this constitution."),
    k: int = typer.Option(1, "--k", min=1, help="Principles sampled per pair (pairwise judges; averaged)."),
    cot: bool = typer.Option(False, "--cot", help="Chain-of-thought judging (probabilities clamped to 0.4-0.6)."),
    seed: int = typer.Option(0, help="Seed for principle sampling."),
    keep_inconsistent: bool = typer.Option(
        False, "--keep-inconsistent", help="Keep pairs whose two orders disagree (low margin) in preferences.jsonl."
    ),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N records."),
    concurrency: int = typer.Option(16, min=1, help="Samples in flight."),
    base_url: Optional[list[str]] = BASE_URLS,
    api_key: Optional[str] = typer.Option(None, help="API key (default: $CAI_API_KEY)."),
    timeout: Optional[float] = TIMEOUT,
    max_retries: Optional[int] = MAX_RETRIES,
    ray: Optional[str] = RAY,
    replicas: Optional[int] = REPLICAS,
    on_bad_line: Literal["abort", "skip"] = typer.Option("abort", help="abort | skip bad input records."),
    new_run: bool = typer.Option(False, "--new-run", help="Move an existing run in --out aside and start over."),
) -> None:
    """Label prompts with candidate responses into a TRL preference dataset (RLAIF)."""
    from cai.inputs import InputError
    from cai.models.base import GenParams
    from cai.store import ConfigMismatchError
    from judges.data import read_candidate_sets
    from judges.label import LabelConfig, label

    options = _model_options(base_url, api_key, timeout, max_retries, (judge, policy), ray=ray, replicas=replicas)
    try:
        sets, skipped = read_candidate_sets(input, limit=limit, on_bad_line=on_bad_line)
        for message in skipped:
            typer.echo(f"skipped {message}", err=True)
        config = LabelConfig(
            judge=judge,
            judge_options=_judge_options(judge, constitution, k, cot, seed),
            policy=policy,
            samples=samples,
            sample_params=GenParams(max_tokens=max_tokens, temperature=temperature),
            keep_inconsistent=keep_inconsistent,
        )
        summary = run_sync(label(sets, out, config, concurrency=concurrency, model_options=options, new_run=new_run))
    except (InputError, ConfigMismatchError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    print_replica_stats()
    typer.echo(f"wrote {out / 'preferences.jsonl'} and {out / 'labels.jsonl'}", err=True)
    if summary.n_failed:
        typer.echo(f"{summary.n_failed} samples failed; rerun the same command to retry them", err=True)
        raise typer.Exit(1)


@eval_app.command("judge")
def eval_judge(
    data: Path = typer.Option(..., "--data", "-d", help="chosen/rejected pairs (e.g. hh-rlhf JSONL)."),
    judge: str = typer.Option(..., "--judge", "-j", help="Pairwise judge spec, e.g. pairwise:embedded."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N pairs."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON here ('-' = stdout)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory for resume and call cache (default: in memory)."
    ),
    constitution: Optional[str] = typer.Option(None, help="Take comparison principles from this constitution."),
    k: int = typer.Option(1, "--k", min=1, help="Principles sampled per pair."),
    cot: bool = typer.Option(False, "--cot", help="Chain-of-thought judging."),
    seed: int = typer.Option(0, help="Seed for principle sampling."),
    concurrency: int = typer.Option(16, min=1, help="Pairs in flight."),
    base_url: Optional[list[str]] = BASE_URLS,
    api_key: Optional[str] = typer.Option(None, help="API key (default: $CAI_API_KEY)."),
    timeout: Optional[float] = TIMEOUT,
    max_retries: Optional[int] = MAX_RETRIES,
    ray: Optional[str] = RAY,
    replicas: Optional[int] = REPLICAS,
) -> None:
    """Agreement of a pairwise judge with human labels, position consistency, ties, calibration."""
    from cai.inputs import InputError
    from cai.store import ConfigMismatchError
    from judges.data import read_candidate_sets
    from judges.evaluate import evaluate_judge

    try:
        pairs, _ = read_candidate_sets(data, limit=limit)
        report = run_sync(
            evaluate_judge(
                pairs,
                judge,
                data=str(data),
                out=out,
                judge_options=_judge_options(judge, constitution, k, cot, seed),
                model_options=_model_options(
                    base_url, api_key, timeout, max_retries, (judge,), ray=ray, replicas=replicas
                ),
                concurrency=concurrency,
            )
        )
    except (InputError, ConfigMismatchError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    print_replica_stats()
    write_report(report, json_out)


def write_report(report: Any, json_out: Optional[Path]) -> None:
    """An eval report's table (stderr when the JSON goes to stdout), and its JSON if asked."""
    from rich.console import Console

    Console(stderr=json_out is not None and str(json_out) == "-").print(report.table())
    if json_out is not None:
        text = json.dumps(report.to_dict(), indent=2)
        if str(json_out) == "-":
            typer.echo(text)
        else:
            json_out.write_text(text + "\n", encoding="utf-8")


def register(app: typer.Typer) -> None:
    app.command("label")(label_command)
    app.add_typer(eval_app, name="eval")
