"""`cai constitutions list|show|validate`, and the YAML files in a regular wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cai.commands.constitutions import register
from cai.constitution import load_constitution
from constitutions import names
from tests.test_constitution import TYPO as BROKEN

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def invoke():
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["constitutions", *args], env={"COLUMNS": "200"})


def test_list_shows_every_shipped_constitution(invoke):
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in names():
        assert name in result.output
        assert load_constitution(name).hash in result.output


def test_show_rich(invoke):
    result = invoke("show", "privacy")
    assert result.exit_code == 0, result.output
    assert load_constitution("privacy").id in result.output
    for text in ("personal-data", "harmful", "judge principles", "few-shot 0"):
        assert text in result.output
    assert "self-harm" not in result.output  # dropped from its parent


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_show_dumps_the_resolved_constitution_losslessly(invoke, tmp_path, fmt):
    result = invoke("show", "privacy", "--format", fmt)
    assert result.exit_code == 0, result.output
    path = tmp_path / f"privacy.{fmt}.yaml"  # JSON is YAML too
    path.write_text(result.output, encoding="utf-8")
    assert load_constitution(path).hash == load_constitution("privacy").hash
    if fmt == "json":
        assert "extends" not in json.loads(result.output)


def test_validate_ok_and_broken(invoke, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN, encoding="utf-8")
    good = tmp_path / "good.yaml"
    good.write_text("name: good\nextends: harmless\ndrop: [evasive]\n", encoding="utf-8")

    result = invoke("validate", str(good), "harmless")
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == 2

    result = invoke("validate", str(good), str(broken))
    assert result.exit_code == 2
    assert (
        f"{broken.resolve()}:7: principles[1].critque: unknown field 'critque' "
        f"(did you mean 'critique'?)" in result.output
    )
    assert f"ok {good}" in result.output


def test_validate_without_arguments_checks_all_shipped(invoke):
    result = invoke("validate")
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == len(names())


def test_show_unknown_name_fails_cleanly(invoke):
    result = invoke("show", "harmles")
    assert result.exit_code == 2
    assert "did you mean 'harmless'" in result.output
    assert "Traceback" not in result.output


def test_console_script_validate_exit_code(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN, encoding="utf-8")
    cai = Path(sys.executable).with_name("cai")
    result = subprocess.run(
        [str(cai), "constitutions", "validate", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{broken.resolve()}:7: principles[1].critque:" in result.stdout


def _setuptools_version() -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0,)


def test_regular_wheel_ships_the_yaml_files(tmp_path):
    """A non-editable wheel holds every constitution, and loading from it works."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("cai", "judges", "training", "constitutions"):
        if (REPO / package).is_dir():
            shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # reuse the installed setuptools when it can read pyproject's PEP 639 license string (fast,
    # offline); an older one (a fresh Python 3.11 venv has 65.x) needs an isolated build
    no_isolation = ["--no-build-isolation"] if _setuptools_version() >= (77,) else []
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            *no_isolation,
            "--disable-pip-version-check",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("cai-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("constitutions/")}
        assert {f"constitutions/{name}.yaml" for name in names()} | {"constitutions/__init__.py"} <= shipped
        archive.extractall(tmp_path / "installed")

    # -S: no site hooks, so the editable install of this checkout cannot shadow the wheel
    code = (
        "import constitutions, cai.constitution as c;"
        "print(constitutions.__file__);"
        "print(' '.join(c.load_constitution(n).hash for n in constitutions.names()))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(tmp_path / "installed"), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        ),
    }
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "installed"))
    assert out[1].split() == [load_constitution(n).hash for n in names()]
