"""`cai serve`: the OpenAI-compatible constitutional proxy with judge and reward endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see examples/serve.yaml)."),
        host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
        port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Upstream cai model spec, e.g. openai:NAME."),
        base_url: Optional[str] = typer.Option(None, help="Upstream base_url for openai: specs."),
        served_model_name: Optional[str] = typer.Option(None, help="Model name clients send."),
        constitution: Optional[str] = typer.Option(None, help="Constitution name or YAML path."),
        mode: Optional[str] = typer.Option(None, help="off | always | on_flag | block."),
        revisions: Optional[int] = typer.Option(None, help="Critique/revision rounds."),
        keys_file: Optional[Path] = typer.Option(None, help="API keys file ('KEY route,route' per line)."),
        no_auth: bool = typer.Option(False, "--no-auth", help="Run without API keys (loopback use only)."),
        max_concurrency: Optional[int] = typer.Option(None, help="Requests in flight before 429."),
        timeout: Optional[float] = typer.Option(None, help="Per-request timeout in seconds."),
    ) -> None:
        """Serve a model behind a constitution as an OpenAI-compatible API (plus /v1/judge, /v1/reward)."""
        import uvicorn

        from cai.server.app import create_app
        from cai.server.config import ConfigError, load_config
        from cai.server.transport import install_access_log_filter, uvicorn_options

        overrides = {
            "host": host,
            "port": port,
            "model.spec": model,
            "served_model_name": served_model_name,
            "wrapper.constitution": constitution,
            "wrapper.mode": mode,
            "wrapper.revisions": revisions,
            "auth.keys_file": str(keys_file) if keys_file else None,
            "auth.allow_unauthenticated": True if no_auth else None,
            "limits.max_concurrency": max_concurrency,
            "limits.request_timeout_s": timeout,
            "model.options.base_url": base_url,
        }
        try:
            cfg = load_config(config, overrides)
            application = create_app(cfg)
        except (ConfigError, ValueError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        install_access_log_filter()
        uvicorn.run(
            application,
            host=cfg.host,
            port=cfg.port,
            log_level=cfg.log_level,
            timeout_graceful_shutdown=5,
            **uvicorn_options(cfg.limits),
        )
