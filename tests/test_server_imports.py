"""The server's modules form layers: protocol / serving / routers / app, with no import cycle,
and no module but the package's ``__init__`` imports ``cai.server.app`` (routers read the
state through ``cai.server.state``). Function-local imports count: they only hide a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cai.server"


def package_imports(folder: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its file (top level or in
    a function), for every ``.py`` file in ``folder``."""
    modules = {f"{package}.{p.stem}" if p.stem != "__init__" else package: p for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith(package + ".")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == package:  # from cai.server import routes
                    found |= {f"{package}.{a.name}" for a in node.names if f"{package}.{a.name}" in modules}
                elif node.module.startswith(package + "."):
                    found.add(node.module)
        graph[name] = found & set(modules) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), None when acyclic."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt, path + [node]):
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start, []):
            return cycle
    return None


def server_graph() -> dict[str, set[str]]:
    graph = package_imports(ROOT / "cai" / "server", PACKAGE)
    graph.pop(PACKAGE)  # the package re-exports from its modules; nothing in it imports back
    return graph


def test_no_server_module_imports_the_app() -> None:
    importers = sorted(name for name, deps in server_graph().items() if f"{PACKAGE}.app" in deps)
    assert importers == [], f"{importers} import cai.server.app; read the state from cai.server.state instead"


def test_server_modules_have_no_import_cycle() -> None:
    graph = server_graph()
    assert f"{PACKAGE}.routes" in graph and f"{PACKAGE}.protocol" in graph  # the checker sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_routers_depend_on_state_not_app() -> None:
    graph = server_graph()
    for router in ("routes", "judge_routes"):
        deps = graph[f"{PACKAGE}.{router}"]
        assert f"{PACKAGE}.state" in deps and f"{PACKAGE}.serving" in deps, deps


def test_checker_finds_a_hidden_cycle(tmp_path: Path) -> None:
    """The checks above can fail: a function-local import that closes a cycle is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.b\n")
    graph = package_imports(pkg, "pkg")
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_each_server_module_imports_on_its_own() -> None:
    """Imported first, in a fresh set of cai modules, every server module loads (an import
    order that only works because another module was loaded first is a hidden cycle)."""
    names = sorted(server_graph())
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'cai' or m.startswith(('cai.', 'judges'))]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
