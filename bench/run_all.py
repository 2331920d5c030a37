"""Every benchmark, one table: ``python bench/run_all.py [--quick] [--only NAME,...] [--peers]``.

Each bench module runs in its own subprocess under a timeout, so one that crashes or hangs
costs its own rows only. A module takes part by exposing ``rows(quick: bool) -> list[dict]``,
one dict per target with ``metric`` (name), ``measured`` (text with units), ``target`` (text),
``ratio`` (float, or None) and ``ok`` (bool, or None for a figure without a target). A module
without ``rows()`` shows "no rows() yet"; a missing file shows "absent".

``--peers`` adds rows for distilabel and LangChain's ConstitutionalChain on the same stub
server and workload as ``bench/http_floor.py`` (N prompts x 2 revisions = 5 calls a sample,
concurrency 128, 200 ms a call), run by ``bench/peers/*_run.py`` with another Python that
has them installed (``--peers-python``, default ``$CAI_PEERS_PYTHON``); their ratio is
wall time / the latency bound, as http_floor's bound row.

The table carries the date, the machine's CPU count and its load average before and after.
``--json OUT`` writes it as JSON, ``--markdown`` prints it as a markdown table. Exit status 1
when a row failed its target or a bench crashed or timed out, else 0.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ("http_floor", "embedded", "scale", "engine", "service", "judges", "training", "backends", "eval_safety")
# seconds per bench: (quick, full)
TIMEOUTS = {"embedded": (1800, 5400), "training": (1800, 5400), "eval_safety": (1800, 5400)}
DEFAULT_TIMEOUT = (900, 3600)
PEERS = ("langchain", "distilabel")
PEER_LATENCY = 0.2
PEER_CONCURRENCY = 128
MARK = "@@run_all rows@@ "
CHILD = f"""
import json, sys
import bench.{{name}} as m
rows = m.rows(quick=sys.argv[1] == "1")
print({MARK!r} + json.dumps(rows, default=str), flush=True)
"""
KEYS = ("metric", "measured", "target", "ratio", "ok")


def has_rows(path: Path) -> bool:
    """Whether the module defines a top-level ``rows`` function (read, not imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "rows" for n in tree.body)


def status_row(bench: str, result: str, measured: str = "") -> dict[str, Any]:
    return {
        "bench": bench,
        "metric": "-",
        "measured": measured,
        "target": "-",
        "ratio": None,
        "ok": None,
        "result": result,
    }


def result_of(ok: Any) -> str:
    return "info" if ok is None else "pass" if ok else "FAIL"


def checked(bench: str, rows: Any) -> list[dict[str, Any]]:
    """The rows a bench printed, each with the protocol's keys (a bad row is reported as such)."""
    if not isinstance(rows, list) or not rows:
        return [status_row(bench, "bad rows()", f"rows() returned {type(rows).__name__} {str(rows)[:80]}")]
    out = []
    for row in rows:
        missing = [k for k in KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            out.append(status_row(bench, "bad rows()", f"row lacks {', '.join(missing)}: {str(row)[:80]}"))
        else:
            out.append({"bench": bench, **{k: row[k] for k in KEYS}, "result": result_of(row["ok"])})
    return out


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[:200]


def run_bench(bench: str, quick: bool, log_dir: Path) -> list[dict[str, Any]]:
    path = ROOT / "bench" / f"{bench}.py"
    if not path.exists():
        return [status_row(bench, "absent")]
    if not has_rows(path):
        return [status_row(bench, "no rows() yet")]
    timeout = TIMEOUTS.get(bench, DEFAULT_TIMEOUT)[0 if quick else 1]
    log = log_dir / f"{bench}.log"
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD.format(name=bench), "1" if quick else "0"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"{exc.stdout or ''}\n{exc.stderr or ''}")
        return [status_row(bench, "timeout", f"killed after {timeout} s; log {log}")]
    log.write_text(f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    printed = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not printed:
        return [status_row(bench, f"crashed (rc {proc.returncode})", f"{tail(proc.stderr or proc.stdout)}; log {log}")]
    rows = checked(bench, json.loads(printed[-1][len(MARK) :]))
    for row in rows:
        row["seconds"] = round(time.monotonic() - start, 1)
    return rows


def peer_workload(n: int, path: Path) -> int:
    """Write http_floor's workload for the peer scripts: n prompts (distinct conversations), the
    first 2 principles' critique and revision requests. Returns the calls it takes."""
    sys.path.insert(0, str(ROOT))
    from bench.http_floor import CALLS_PER_SAMPLE, MAX_TOKENS, REVISIONS, prompts
    from cai.constitution import load_constitution

    principles = load_constitution("harmless").principles[:REVISIONS]
    workload = {
        "prompts": prompts(n),
        "principles": [{"critique": p.critique, "revision": p.revision} for p in principles],
        "max_tokens": MAX_TOKENS,
        "concurrency": PEER_CONCURRENCY,
    }
    path.write_text(json.dumps(workload))
    return n * CALLS_PER_SAMPLE


def peer_rows(python: str | None, quick: bool, log_dir: Path) -> list[dict[str, Any]]:
    if not python:
        return [status_row(f"peers/{p}", "not installed", "no --peers-python / $CAI_PEERS_PYTHON") for p in PEERS]
    from cai.testing.stub_openai_server import StubOpenAIServer

    n = 100 if quick else 500
    workload = log_dir / "peer-workload.json"
    calls = peer_workload(n, workload)
    bound = 5 * PEER_LATENCY * math.ceil(n / PEER_CONCURRENCY)
    rows = []
    for peer in PEERS:
        bench = f"peers/{peer}"
        with StubOpenAIServer(latency=PEER_LATENCY, reply="A short reply.", subprocess=True) as stub:
            script = ROOT / "bench" / "peers" / f"{peer}_run.py"
            cmd = [python, str(script), "--base-url", stub.base_url, "--workload", str(workload)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
            except subprocess.TimeoutExpired:
                rows.append(status_row(bench, "timeout", "killed after 1800 s"))
                continue
            served = stub.stats()["requests"]
        (log_dir / f"peer-{peer}.log").write_text(f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            why = "not installed" if "ModuleNotFoundError" in proc.stderr else f"crashed (rc {proc.returncode})"
            rows.append(status_row(bench, why, tail(proc.stderr)))
            continue
        out = json.loads(lines[-1])
        rows.append(
            {
                "bench": bench,
                "metric": f"peer: {out['system']} / latency bound, {n} prompts, {PEER_LATENCY * 1000:.0f} ms",
                "measured": f"{out['wall_s']:.2f} s vs {bound:.2f} s (CPU {out['cpu_s']:.1f} s, {served}/{calls} calls)",
                "target": "- (cai: <= 1.25x)",
                "ratio": out["wall_s"] / bound,
                "ok": None,
                "result": "info",
            }
        )
    return rows


def fmt_ratio(ratio: Any) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x" if isinstance(ratio, int | float) else str(ratio)


COLUMNS = ("bench", "metric", "measured", "target", "ratio", "result")


def cells(row: dict[str, Any]) -> list[str]:
    return [fmt_ratio(row["ratio"]) if c == "ratio" else str(row[c]) for c in COLUMNS]


def header(table: dict[str, Any]) -> str:
    before, after = (" ".join(f"{x:.2f}" for x in table[k]) for k in ("load_before", "load_after"))
    mode = "quick" if table["quick"] else "full"
    return f"{table['date']} ({mode}), {table['cpus']} CPUs, load average before {before}, after {after}"


def as_text(table: dict[str, Any]) -> str:
    grid = [list(COLUMNS)] + [cells(r) for r in table["rows"]]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    lines = [header(table)] + ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in grid]
    return "\n".join(lines)


def as_markdown(table: dict[str, Any]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    body = [line(list(COLUMNS)), line(["---"] * len(COLUMNS))] + [line(cells(r)) for r in table["rows"]]
    return "\n".join([header(table), "", *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="each bench's quick size")
    ap.add_argument("--only", default=None, help=f"comma-separated benches of {', '.join(BENCHES)}")
    ap.add_argument("--peers", action="store_true", help="add the distilabel and LangChain rows")
    ap.add_argument("--peers-python", default=os.environ.get("CAI_PEERS_PYTHON"), help="a Python with the peers")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the table as JSON")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args(argv)
    names = BENCHES
    if args.only is not None:
        names = tuple(n.strip() for n in args.only.split(",") if n.strip())
        unknown = sorted(set(names) - set(BENCHES))
        if unknown:
            ap.error(f"--only: unknown bench(es) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    log_dir = Path(tempfile.mkdtemp(prefix="cai-run-all-"))
    table: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "load_before": os.getloadavg(),
        "logs": str(log_dir),
    }
    rows: list[dict[str, Any]] = []
    for name in names:
        print(f"run_all: {name} ...", file=sys.stderr, flush=True)
        rows += run_bench(name, args.quick, log_dir)
    if args.peers:
        rows += peer_rows(args.peers_python, args.quick, log_dir)
    table["rows"] = rows
    table["load_after"] = os.getloadavg()
    print(as_markdown(table) if args.markdown else as_text(table))
    print(f"logs: {log_dir}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(table, indent=2, default=str) + "\n")
    failed = [r for r in rows if r["result"] == "FAIL" or r["result"].startswith(("crashed", "timeout", "bad"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
