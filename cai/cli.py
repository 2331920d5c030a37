"""The ``cai`` command line. Each area registers its commands from ``cai/commands/``.

One error boundary wraps every command (``CaiGroup.invoke``): a ``cai.errors.CaiError`` that
escapes a command is printed as ``error: file:line: field: message`` (one line per problem)
or ``error: message`` on stderr, and the command exits with the error's ``exit_code`` (2 for
bad input or flags, 1 for a runtime failure); Ctrl-C exits 130 with a one-line hint. Other
exceptions are bugs and keep their traceback. A command may still catch an error itself to
add context (``cai generate`` names the run directory to resume).
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from cai.errors import CaiError, InputFileError, ModelError

INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def error_lines(exc: CaiError) -> list[str]:
    """What the boundary prints for ``exc``: one ``error: ...`` line per located problem."""
    if isinstance(exc, InputFileError) and exc.problems:
        return [f"error: {problem}" for problem in exc.problems]
    if isinstance(exc, ModelError):
        return [f"error ({exc.reason}): {exc}"]
    return [f"error: {exc}"]


class CaiGroup(TyperGroup):
    """The root command group; its ``invoke`` is the CLI's one error boundary."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer vendors its own click)
        try:
            return super().invoke(ctx)
        except CaiError as exc:
            for line in error_lines(exc):
                typer.echo(line, err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("\ninterrupted; rerun the same command to resume", err=True)
            raise typer.Exit(INTERRUPTED) from None


app = typer.Typer(
    name="cai",
    cls=CaiGroup,
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
