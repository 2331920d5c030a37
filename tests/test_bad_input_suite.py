"""Table-driven bad input across constitutions, prompt files (.jsonl/.csv/.parquet), recipes,
pipeline configs, serve configs and CLI flags, each through the real CLI command. A case fails
on a traceback or on a message that does not name the file and a line or field (or the flag).
Also the CLI's error boundary itself (``cai.cli.CaiGroup``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from cai.cli import app

GOOD_CONSTITUTION = """name: tiny
principles:
  - name: harm
    critique: Point out anything harmful.
    revision: Rewrite it without the harm.
"""


def billion_laughs(top: str) -> str:
    levels = ['l0: &l0 ["ha","ha","ha","ha","ha","ha","ha","ha","ha"]']
    levels += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return top + "\n".join(levels) + "\n"


def mapping_bomb(top: str) -> str:
    levels = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}"]
    levels += [f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(8)) + "}" for i in range(1, 9)]
    return top + "\n".join(levels) + "\n"


def deep(top: str, key: str) -> str:
    return top + f"{key}: " + "[" * 5000 + "]" * 5000 + "\n"


def deep_block(top: str, key: str) -> str:
    return top + f"{key}:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(300)) + "  " * 301 + "v: 1\n"


YAML_FAULTS: dict[str, Callable[[str, str], bytes]] = {
    "alias_bomb": lambda top, key: billion_laughs(top).encode(),
    "mapping_bomb": lambda top, key: mapping_bomb(top).encode(),
    "nested_5000_flow": lambda top, key: deep(top, key).encode(),
    "nested_300_block": lambda top, key: deep_block(top, key).encode(),
    "latin1_byte": lambda top, key: (top + "description: caf\xe9\n").encode("latin-1"),
    "random_bytes": lambda top, key: bytes(range(256)) * 4,
    "syntax_error": lambda top, key: (top + f"{key}: [unclosed\n").encode(),
    "duplicate_key": lambda top, key: (top + top).encode(),
    "tab_indent": lambda top, key: (top + f"{key}:\n\t- x\n").encode(),
    "top_level_list": lambda top, key: b"- a\n- b\n",
    "recursive_alias": lambda top, key: (top + f"{key}: &r [*r]\n").encode(),
    "control_char": lambda top, key: (top + "description: a\x07b\n").encode(),
}


@dataclass
class Case:
    name: str
    args: list[str]
    must_name: str  # the file, or the flag
    env: dict[str, str] | None = None


def _yaml_cases(tmp: Path, kind: str, top: str, key: str, command: Callable[[Path], list[str]]) -> list[Case]:
    cases = []
    for fault, make in YAML_FAULTS.items():
        path = tmp / f"{kind}-{fault}.yaml"
        path.write_bytes(make(top, key))
        cases.append(Case(f"{kind}/{fault}", command(path), str(path)))
    return cases


PROMPT_FAULTS: dict[str, tuple[str, bytes]] = {
    "jsonl_random_bytes": (".jsonl", bytes(range(256)) * 8),
    "jsonl_invalid_utf8": (".jsonl", b'{"prompt": "caf\xe9"}\n'),
    "jsonl_invalid_json": (".jsonl", b'{"prompt": "a"\n'),
    "jsonl_not_object": (".jsonl", b"[1, 2]\n"),
    "jsonl_no_prompt": (".jsonl", b'{"text": "a"}\n'),
    "jsonl_empty_prompt": (".jsonl", b'{"prompt": "  "}\n'),
    "jsonl_bad_messages": (".jsonl", b'{"messages": [{"role": "bot", "content": "x"}]}\n'),
    "jsonl_ends_with_assistant": (".jsonl", b'{"messages": [{"role": "assistant", "content": "x"}]}\n'),
    "jsonl_duplicate_id": (".jsonl", b'{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n'),
    "jsonl_nested_deep": (".jsonl", b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"),
    "json_not_list": (".json", b'{"a": 1}'),
    "json_invalid": (".json", b"[{"),
    "json_invalid_utf8": (".json", b'[{"prompt": "\xff"}]'),
    "csv_invalid_utf8": (".csv", b"prompt\ncaf\xe9\n"),
    "csv_no_prompt_column": (".csv", b"text\nhello\n"),
    "parquet_corrupt": (".parquet", b"PAR1" + bytes(range(200)) + b"PAR1"),
    "parquet_random": (".parquet", bytes(range(256))),
    "unknown_suffix": (".txt", b"hello\n"),
}


def build_cases(tmp: Path) -> list[Case]:
    cases: list[Case] = []
    # constitutions
    cases += _yaml_cases(
        tmp,
        "constitution",
        GOOD_CONSTITUTION.replace("name: tiny\n", "name: tiny\n"),
        "tags",
        lambda p: ["constitutions", "validate", str(p)],
    )
    # recipes
    cases += _yaml_cases(
        tmp, "recipe", "trainer: sft\n", "args", lambda p: ["train", "sft", str(sft_data), "--recipe", str(p)]
    )
    for name, text in {
        "args_list": "trainer: sft\nargs: [1, 2]\n",
        "args_unknown": "trainer: sft\nargs: {lr: 1}\n",
        "args_type": "trainer: dpo\nargs: {beta: high}\n",
        "trainer_unknown": "trainer: ppo\n",
        "peft_bad": "trainer: sft\npeft: {r: -1}\n",
    }.items():
        path = tmp / f"recipe-{name}.yaml"
        path.write_text(text)
        cases.append(Case(f"recipe/{name}", ["train", "sft", str(sft_data), "--recipe", str(path)], str(path)))
    # pipeline configs (`cai pipeline CONFIG`): each fault fails before any stage runs
    cases += _yaml_cases(
        tmp, "pipeline", "prompts: p.jsonl\n", "judge", lambda p: ["pipeline", str(p), "--out", str(tmp / "pipe")]
    )
    # serve configs
    cases += _yaml_cases(
        tmp, "serve", "auth: {allow_unauthenticated: true}\n", "model", lambda p: ["serve", "--config", str(p)]
    )
    for name, text in {
        "unknown_field": "auth: {allow_unauthenticated: true}\nlimits: {typo: 1}\n",
        "bad_type": "auth: {allow_unauthenticated: true}\nport: high\n",
        "no_keys": "port: 8000\n",
        "duplicate_nested": "auth: {allow_unauthenticated: true}\nlimits: {max_concurrency: 1, max_concurrency: 2}\n",
    }.items():
        path = tmp / f"serve-{name}.yaml"
        path.write_text(text)
        cases.append(
            Case(f"serve/{name}", ["serve", "--config", str(path)], str(path) if name != "no_keys" else "auth")
        )
    # prompt files, through generate and label
    for name, (suffix, data) in PROMPT_FAULTS.items():
        path = tmp / f"prompts-{name}{suffix}"
        path.write_bytes(data)
        cases.append(Case(f"generate/{name}", ["generate", str(path), "--out", str(tmp / "run"), "--quiet"], str(path)))
        cases.append(
            Case(
                f"label/{name}",
                ["label", str(path), "--out", str(tmp / "lab"), "--judge", "pairwise:embedded"],
                str(path),
            )
        )
    # flags
    good = tmp / "good.jsonl"
    good.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n')
    label = ["label", str(good), "--out", str(tmp / "lab"), "--judge", "pairwise:embedded"]
    for flag, value in (
        ("--k", "0"),
        ("--concurrency", "0"),
        ("--limit", "0"),
        ("--samples", "-1"),
        ("--max-tokens", "0"),
        ("--temperature", "-1"),
        ("--on-bad-line", "maybe"),
        ("--timeout", "5"),
        ("--max-retries", "-1"),
    ):
        cases.append(Case(f"flag/label{flag}={value}", [*label, flag, value], flag))
    generate = ["generate", str(good), "--out", str(tmp / "run"), "--quiet"]
    for flag, value in (
        ("--concurrency", "0"),
        ("--limit", "0"),
        ("--max-tokens", "0"),
        ("--temperature", "-0.5"),
        ("--sampling", "shuffle"),
        ("--on-bad-line", "maybe"),
    ):
        cases.append(Case(f"flag/generate{flag}={value}", [*generate, flag, value], flag))
    for flag, value in (("--port", "70000"), ("--max-concurrency", "0"), ("--timeout", "0"), ("--mode", "sometimes")):
        cases.append(
            Case(
                f"flag/serve{flag}={value}",
                ["serve", "--no-auth", flag, value],
                flag.lstrip("-").replace("-", "_") if flag in ("--max-concurrency", "--timeout") else flag.lstrip("-"),
            )
        )
    cases.append(Case("flag/train--set", ["train", "sft", str(sft_data), "--set", "learning_rate=fast"], "--set"))
    cases.append(Case("flag/train--set-syntax", ["train", "sft", str(sft_data), "--set", "x=["], "--set x"))
    bomb = "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "1"] * 9) + "]" for i in range(9)) + "]"
    cases.append(Case("flag/train--set-bomb", ["train", "sft", str(sft_data), "--set", f"x={bomb}"], "--set x"))
    cases.append(Case("env/CAI_SERVE_PORT", ["serve", "--no-auth"], "CAI_SERVE_PORT", {"CAI_SERVE_PORT": "["}))
    return cases


sft_data: Path


def _write_sft_data(tmp_path: Path) -> None:
    global sft_data
    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n"
    )


def _failures(cases: list[Case]) -> tuple[list[str], list[str]]:
    """(tracebacks, unlocated messages) of running each case through the real CLI."""
    tracebacks, unlocated = [], []
    runner = CliRunner()
    for case in cases:
        start = time.monotonic()
        result = runner.invoke(app, case.args, env=case.env)
        if time.monotonic() - start > 30:  # an alias bomb used to take minutes (importing TRL takes ~10 s)
            unlocated.append(f"{case.name}: took {time.monotonic() - start:.0f} s")
        text = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit) or "Traceback" in text:
            tracebacks.append(f"{case.name}: {type(result.exception).__name__}: {result.exception}")
            continue
        located = case.must_name in text
        if located and case.must_name.startswith("/"):  # a file: also a line or a field after it
            located = bool(re.search(re.escape(case.must_name) + r"(:\d+|:row \d+)?: \S", text))
        if result.exit_code == 0 or not located:
            unlocated.append(f"{case.name} (exit {result.exit_code}): {text.strip()[-300:]!r}")
    return tracebacks, unlocated


def test_bad_inputs_get_located_messages_never_tracebacks(tmp_path, capsys):
    _write_sft_data(tmp_path)
    cases = build_cases(tmp_path)
    tracebacks, unlocated = _failures(cases)
    with capsys.disabled():
        print(
            f"\nbad-input suite: {len(cases)} inputs, {len(tracebacks)} tracebacks, "
            f"{len(unlocated)} messages without file/line/field or flag"
        )
    assert not tracebacks and not unlocated, "\n".join(tracebacks + unlocated)


def test_cli_boundary_turns_cai_errors_into_messages_and_exit_codes():
    """The root group's boundary, on a real click app with commands that raise."""
    import typer

    from cai.cli import CaiGroup
    from cai.errors import InputFileError, Problem, RunLockedError, TransientModelError

    raised: dict[str, BaseException] = {
        "located": InputFileError([Problem("c.yaml", 3, "principles[0].name", "required field is missing")]),
        "message": InputFileError("--k: must be >= 1"),
        "runtime": RunLockedError("runs/x is in use by pid 7"),
        "model": TransientModelError("upstream 503", reason="server_error"),
        "interrupt": KeyboardInterrupt(),
        "bug": ZeroDivisionError("a bug keeps its traceback"),
    }
    demo = typer.Typer(cls=CaiGroup)
    for name, exc in raised.items():

        def command(exc: BaseException = exc) -> None:
            raise exc

        demo.command(name)(command)
    runner = CliRunner()

    def run(name: str) -> tuple[int, str]:
        result = runner.invoke(demo, [name])
        return result.exit_code, result.stderr

    assert run("located") == (2, "error: c.yaml:3: principles[0].name: required field is missing\n")
    assert run("message") == (2, "error: --k: must be >= 1\n")
    assert run("runtime") == (1, "error: runs/x is in use by pid 7\n")
    assert run("model") == (1, "error (server_error): upstream 503\n")
    assert run("interrupt") == (130, "\ninterrupted; rerun the same command to resume\n")
    bug = runner.invoke(demo, ["bug"])
    assert isinstance(bug.exception, ZeroDivisionError) and bug.exit_code == 1


def test_the_cai_app_has_the_boundary():
    import typer.main

    from cai.cli import CaiGroup

    assert isinstance(typer.main.get_command(app), CaiGroup)
