"""Locator for the constitutions shipped with cai (YAML files beside this module)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def path_of(name: str) -> Path:
    path = HERE / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no constitution named {name!r} (shipped: {', '.join(names()) or 'none'}) and no file at that path"
        )
    return path
