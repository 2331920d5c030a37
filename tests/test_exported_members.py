"""Each package's public API is its ``__all__``, as httpx's tests/test_exported_members.py pins
httpx's: every name listed imports (and is not a submodule), and every public name the package
exposes is listed. Submodules are not members: ``cai.models`` is reached as a module.

``cai`` and ``training`` load their members on first use; importing them must stay light.
Each check runs in a fresh interpreter, so what other tests imported cannot hide a problem."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PACKAGES = ["cai", "cai.errors", "cai.models", "cai.server", "cai.testing", "judges", "training"]
LAZY = ["cai", "training"]
HEAVY = ["torch", "transformers", "trl", "vllm", "fastapi", "numpy", "pydantic", "yaml"]
PRIVATE_MEMBERS = {"__version__"}

# What a fresh interpreter reports about one package: its __all__, the public names it
# exposes before any member is touched, then every member's kind once each __all__ name is
# resolved (after importing every other package, so that submodule bindings are in place).
PROBE = """
import importlib, json, sys, types
name = sys.argv[1]
module = importlib.import_module(name)
heavy = sorted(m for m in {heavy} if m in sys.modules)
def public(names):
    return sorted(n for n in names if not n.startswith("_") or n in {private})
before = public(dir(module))
for other in {packages}:
    importlib.import_module(other)
members = {{}}
for member in module.__all__:
    try:
        value = getattr(module, member)
    except Exception as exc:
        members[member] = f"raises {{type(exc).__name__}}: {{exc}}"
    else:
        members[member] = "module" if isinstance(value, types.ModuleType) else "ok"
exposed = [n for n in public(dir(module)) if not isinstance(getattr(module, n), types.ModuleType)]
print(json.dumps({{"all": list(module.__all__), "before": before, "heavy": heavy, "members": members,
                  "exposed": exposed}}))
"""


def probe(package: str) -> dict:
    code = PROBE.format(heavy=HEAVY, private=PRIVATE_MEMBERS, packages=PACKAGES)
    done = subprocess.run([sys.executable, "-c", code, package], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lists_exactly_what_the_package_exposes(package: str):
    found = probe(package)
    names = found["all"]
    assert len(names) == len(set(names)), f"{package}.__all__ repeats a name"
    broken = {name: kind for name, kind in found["members"].items() if kind != "ok"}
    assert not broken, f"{package}.__all__ names that do not import as members: {broken}"
    assert set(found["exposed"]) == set(names), (
        f"{package}: public but not in __all__: {sorted(set(found['exposed']) - set(names))}; "
        f"in __all__ but not exposed: {sorted(set(names) - set(found['exposed']))}"
    )


@pytest.mark.parametrize("package", LAZY)
def test_lazy_packages_import_light_and_list_their_members(package: str):
    found = probe(package)
    assert found["heavy"] == [], f"import {package} loaded {found['heavy']}"
    assert set(found["before"]) == set(found["all"]), "dir() lists the lazy members before they load"
