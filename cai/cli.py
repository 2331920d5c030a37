"""The ``cai`` command line. Each area registers its commands from ``cai/commands/``."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="cai",
    help="Constitutional AI / RLAIF toolkit: critique-revise data, AI judges, TRL training, serving.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# module names under cai.commands; each defines register(app: typer.Typer)
COMMAND_MODULES = ["constitutions", "models", "generate", "judge", "evals", "train", "serve", "report"]

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"cai.commands.{_name}")
    except ModuleNotFoundError as exc:  # an area not built yet
        if exc.name != f"cai.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
