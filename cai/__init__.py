"""cai: Constitutional AI / RLAIF toolkit.

``cai.generate(prompts, model=..., constitution=..., revisions=2, out=...)`` critique-revises a
dataset (see ``cai.generation``); ``await cai.revise(model, prompt, constitution)`` does one prompt.
Every error cai raises on purpose is a ``cai.CaiError`` (the family: ``cai.errors``).

The public names are ``__all__`` (pinned by tests/test_exported_members.py). They are loaded
on first use, so ``import cai`` stays light (no torch, transformers or pydantic).
"""

import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ loads them
    from cai.constitution import load_constitution as load_constitution
    from cai.errors import CaiError as CaiError
    from cai.generation import agenerate as agenerate
    from cai.generation import generate as generate
    from cai.models import load_model as load_model
    from cai.revise import revise as revise

_LAZY = {
    "CaiError": "cai.errors",
    "agenerate": "cai.generation",
    "generate": "cai.generation",
    "load_constitution": "cai.constitution",
    "load_model": "cai.models",
    "revise": "cai.revise",
}

__all__ = ["CaiError", "__version__", "agenerate", "generate", "load_constitution", "load_model", "revise"]


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    """``cai.revise`` is the function although ``cai/revise.py`` exists: importing a submodule
    binds it on its package (``cai.revise = <module>``), which would hide the lazy name after
    the first ``import cai.revise`` anywhere. Such a binding is dropped; the submodule stays in
    ``sys.modules`` (``from cai.revise import ...`` works as before)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, _types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
