"""`cai constitutions list | show NAME | validate PATH...`"""

from __future__ import annotations

import json
from typing import Literal

import typer

from cai.constitution import Constitution, ConstitutionError, load_constitution, shipped_constitutions

constitutions_app = typer.Typer(help="List, show and validate constitutions.", no_args_is_help=True)


def _console():
    from rich.console import Console

    return Console(soft_wrap=True)


def _as_yaml(constitution: Constitution) -> str:
    import yaml

    data = constitution.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


@constitutions_app.command("list")
def list_() -> None:
    """List the shipped constitutions."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Shipped constitutions")
    rows = []
    for name in shipped_constitutions():
        c = load_constitution(name)
        rows.append(
            (
                c.name,
                c.version,
                c.language,
                str(len(c.principles)),
                str(len(c.judge_principles)),
                str(len(c.few_shot)),
                c.hash,
                c.description,
            )
        )
    headers = ("name", "ver", "lang", "principles", "judge", "shots", "hash")
    for index, column in enumerate(headers):  # keep short columns whole; only description wraps
        width = max([len(column), *(len(row[index]) for row in rows)])
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("description", overflow="fold", min_width=20)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    _console().print(table)


@constitutions_app.command()
def show(
    name: str = typer.Argument(..., help="Shipped name (e.g. harmless) or path to a YAML file."),
    format: Literal["rich", "yaml", "json"] = typer.Option(
        "rich", "--format", "-f", help="rich: tables; yaml/json: the resolved constitution (extends applied)."
    ),
) -> None:
    """Show one constitution, with `extends` resolved."""
    try:
        c = load_constitution(name)
    except ConstitutionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_code) from None
    if format == "yaml":
        typer.echo(_as_yaml(c), nl=False)
        return
    if format == "json":
        typer.echo(json.dumps(c.model_dump(mode="json"), ensure_ascii=False, indent=2))
        return

    from rich.markup import escape
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{escape(c.name)}[/] v{escape(c.version)} ({escape(c.language)})  id {escape(c.id)}")
    if c.description:
        console.print(escape(c.description))
    d = c.defaults
    console.print(
        f"defaults: revisions={d.revisions} sampling={d.sampling} seed={d.seed} "
        f"stop_phrases={escape(repr(d.stop_phrases))}"
    )
    principles = Table(title=f"principles ({len(c.principles)})", show_lines=True)
    for column in ("name / rule", "critique", "revision", "tags"):
        principles.add_column(column, overflow="fold")
    for p in c.principles:
        name = f"[bold]{escape(p.name)}[/]" + (f"\n[dim]{escape(p.rule)}[/]" if p.rule else "")
        principles.add_row(name, escape(p.critique), escape(p.revision), escape(", ".join(p.tags)))
    console.print(principles)
    if c.judge_principles:
        judges = Table(title=f"judge principles ({len(c.judge_principles)})")
        judges.add_column("name")
        judges.add_column("question", overflow="fold")
        for j in c.judge_principles:
            judges.add_row(escape(j.name), escape(j.question))
        console.print(judges)
    for index, example in enumerate(c.few_shot):
        console.print(f"[bold]few-shot {index}[/]")
        for message in example.to_messages():
            console.print(f"  [cyan]{message['role']}[/]: {escape(message['content'])}")


@constitutions_app.command()
def validate(
    paths: list[str] = typer.Argument(None, help="YAML files or shipped names; none: every shipped one."),
) -> None:
    """Check constitution files; print file:line: field: message for each problem, exit 1 on any."""
    failed = 0
    for reference in paths or shipped_constitutions():
        try:
            c = load_constitution(reference)
        except ConstitutionError as exc:
            failed += 1
            for problem in exc.problems:
                typer.echo(str(problem))
            continue
        typer.echo(
            f"ok {reference}: {c.id} ({len(c.principles)} principles, {len(c.judge_principles)} judge principles)"
        )
    if failed:
        typer.echo(f"{failed} of {len(paths or shipped_constitutions())} invalid", err=True)
        raise typer.Exit(ConstitutionError.exit_code)


def register(app: typer.Typer) -> None:
    app.add_typer(constitutions_app, name="constitutions")
