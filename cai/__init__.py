"""cai: Constitutional AI / RLAIF toolkit.

``cai.generate(prompts, model=..., constitution=..., revisions=2, out=...)`` critique-revises a
dataset (see ``cai.api``); ``await cai.revise(model, prompt, constitution)`` does one prompt.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# loaded on first use so that `import cai.models` stays light
_LAZY = {
    "generate": "cai.api",
    "agenerate": "cai.api",
    "revise": "cai.revise",
    "load_constitution": "cai.constitution",
    "load_model": "cai.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cai' has no attribute {name!r}")
