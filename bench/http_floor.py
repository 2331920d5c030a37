"""The HTTP path against its floor (not a test): prints ratios measured in this run.

On the stub OpenAI server (``cai.testing.stub_openai_server``, its own process, a fixed latency
per call), N prompts x 2 revisions (5 calls a sample: answer, then critique + revision twice;
no few-shot turns) at concurrency 128, at 200 ms and at 20 ms per call:

(a) the floor: bare asyncio + aiohttp posting the same chat-completions bodies, one growing
    conversation per prompt, 128 prompts at a time;
(b) ``cai generate`` through the Python API (``agenerate_run`` with a run directory and the
    progress display, as the CLI runs it), ``openai:`` backend;
(c) the latency bound: 5 calls x latency x ceil(N / 128).

Then the finished run (b) again: it must make 0 calls and take < 1 s. Both (a) and (b) run on
the same event loop kind (``cai.aio.new_loop``: uvloop where installed). CPU seconds are this
process's (the stub server's are not counted).

    python bench/http_floor.py            # 500 prompts (2,500 calls per system and latency)
    python bench/http_floor.py --quick    # 100 prompts
    python bench/http_floor.py --repeats 3  # medians of 3, order alternating

``rows(quick)`` returns the same figures for ``bench/run_all.py``: one dict per target with
``metric`` (name), ``measured`` (text with units), ``target`` (text), ``ratio`` (float: the
measured ratio, or seconds / calls for the resume rows) and ``ok`` (bool).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cai.aio import new_loop  # noqa: E402
from cai.constitution import load_constitution  # noqa: E402
from cai.generation import agenerate_run  # noqa: E402
from cai.inputs import read_prompts  # noqa: E402
from cai.models import GenParams  # noqa: E402
from cai.testing.stub_openai_server import StubOpenAIServer  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_test_dev.jsonl"
PROMPTS_FILE = HH if HH.exists() else ROOT / "examples" / "red_team_prompts.jsonl"
CONCURRENCY = 128
REVISIONS = 2
CALLS_PER_SAMPLE = 1 + 2 * REVISIONS
MAX_TOKENS = 64
REPLY = "A short reply."
TARGETS = {0.2: 1.15, 0.02: 1.5}  # cai / floor, per latency
BOUND_TARGET = 1.25  # cai / latency bound at 200 ms
RESUME_TARGET_S = 1.0


def prompts(n: int) -> list[list[dict[str, str]]]:
    """n distinct prompt conversations (cycled from the file, numbered past its end so that no
    two samples share a call)."""
    found = [p.messages for p in read_prompts(PROMPTS_FILE).prompts]
    out = []
    for i in range(n):
        conv = [dict(m) for m in found[i % len(found)]]
        if i >= len(found):
            conv[-1]["content"] += f" ({i})"
        out.append(conv)
    return out


async def floor(base_url: str, data: list[list[dict[str, str]]]) -> int:
    """The bare client: each prompt's 5 calls in sequence, CONCURRENCY prompts at a time."""
    import aiohttp

    principles = load_constitution("harmless").principles[:REVISIONS]
    url = f"{base_url}/chat/completions"
    calls = 0
    queue = iter(data)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def say(messages: list[dict[str, str]]) -> str:
            nonlocal calls
            body = {"model": "stub", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0, "top_p": 1.0}
            async with session.post(url, json=body) as resp:
                reply = await resp.json()
            calls += 1
            return str(reply["choices"][0]["message"]["content"])

        async def sample(prompt: list[dict[str, str]]) -> None:
            history = [*prompt, {"role": "assistant", "content": await say(prompt)}]
            for principle in principles:
                for request in (principle.critique, principle.revision):
                    history.append({"role": "user", "content": request})
                    history.append({"role": "assistant", "content": await say(history)})

        async def worker() -> None:
            for prompt in queue:
                await sample(prompt)

        await asyncio.gather(*(worker() for _ in range(min(CONCURRENCY, len(data)))))
    return calls


async def cai_generate(base_url: str, data: list[list[dict[str, str]]], out: Path) -> int:
    """``cai generate --no-few-shot`` through the Python API; returns the real model calls."""
    with contextlib.redirect_stderr(io.StringIO()):  # the progress display and summary table
        result = await agenerate_run(
            data,
            model="openai:stub",
            model_options={"base_url": base_url, "max_concurrency": CONCURRENCY},
            revisions=REVISIONS,
            sampling="sequential",
            few_shot=False,
            params=GenParams(max_tokens=MAX_TOKENS),
            out=out,
            concurrency=CONCURRENCY,
            progress=True,
        )
    if result.summary.n_failed:
        raise RuntimeError(f"cai generate: {result.summary.n_failed} samples failed: {result.summary.failed}")
    return result.summary.model_calls


def timed(fn: Callable[[], Awaitable[int]]) -> dict[str, float]:
    """Wall and CPU seconds of one system on a fresh loop, and the calls it made."""
    loop = new_loop()
    try:
        cpu, start = time.process_time(), time.perf_counter()
        calls = loop.run_until_complete(fn())
        return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "calls": float(calls)}
    finally:
        loop.close()


def measure(latency: float, n: int, repeats: int, tmp: Path) -> dict[str, Any]:
    data = prompts(n)
    runs: dict[str, list[dict[str, float]]] = {"floor": [], "cai": []}
    with StubOpenAIServer(latency=latency, reply=REPLY, subprocess=True) as server:
        out = tmp / f"run-{latency}"
        # warm-up (imports, first connections), not timed
        timed(lambda: floor(server.base_url, data[:2]))
        timed(lambda: cai_generate(server.base_url, data[:2], tmp / f"warm-{latency}"))
        for rep in range(repeats):  # alternate the order so drifting machine load hits both alike
            for system in ("floor", "cai") if rep % 2 == 0 else ("cai", "floor"):
                if system == "floor":
                    runs["floor"].append(timed(lambda: floor(server.base_url, data)))
                else:
                    run_dir = out.with_name(f"{out.name}-{rep}")
                    runs["cai"].append(timed(lambda d=run_dir: cai_generate(server.base_url, data, d)))
        before = server.stats()["requests"]
        resume = timed(lambda: cai_generate(server.base_url, data, out.with_name(f"{out.name}-0")))
        resume["server_calls"] = float(server.stats()["requests"] - before)
    for system, rs in runs.items():
        if any(r["calls"] != n * CALLS_PER_SAMPLE for r in rs):
            raise RuntimeError(f"{system}: expected {n * CALLS_PER_SAMPLE} calls, made {[r['calls'] for r in rs]}")
    result: dict[str, Any] = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("wall", "cpu", "calls")}
        for name, rs in runs.items()
    }
    result["bound"] = CALLS_PER_SAMPLE * latency * math.ceil(n / CONCURRENCY)
    result["resume"] = resume
    return result


def table_rows(results: dict[float, dict[str, Any]], n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for latency, r in results.items():
        ms = f"{latency * 1000:.0f} ms"
        floor_s, cai_s = r["floor"]["wall"], r["cai"]["wall"]
        ratio = cai_s / floor_s
        rows.append(
            {
                "metric": f"http: cai generate / aiohttp floor, {n} prompts, {ms}",
                "measured": f"{cai_s:.2f} s vs {floor_s:.2f} s (CPU {r['cai']['cpu']:.1f} s vs {r['floor']['cpu']:.1f} s)",
                "target": f"<= {TARGETS[latency]}x",
                "ratio": ratio,
                "ok": ratio <= TARGETS[latency],
            }
        )
        if latency == 0.2:
            bound = cai_s / r["bound"]
            rows.append(
                {
                    "metric": f"http: cai generate / latency bound, {ms}",
                    "measured": f"{cai_s:.2f} s vs {r['bound']:.2f} s (floor {floor_s / r['bound']:.2f}x)",
                    "target": f"<= {BOUND_TARGET}x",
                    "ratio": bound,
                    "ok": bound <= BOUND_TARGET,
                }
            )
        resume = r["resume"]
        rows.append(
            {
                "metric": f"http: resume of the finished run, {ms}",
                "measured": f"{resume['wall']:.2f} s, {resume['calls']:.0f} calls ({resume['server_calls']:.0f} at the server)",
                "target": f"0 calls, < {RESUME_TARGET_S:g} s",
                "ratio": resume["wall"] / RESUME_TARGET_S,
                "ok": resume["calls"] == 0 and resume["server_calls"] == 0 and resume["wall"] < RESUME_TARGET_S,
            }
        )
    return rows


def run(n: int, repeats: int, latencies: tuple[float, ...] = (0.2, 0.02)) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cai-http-floor-") as tmp:
        results = {latency: measure(latency, n, repeats, Path(tmp)) for latency in latencies}
    return table_rows(results, n)


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """The benchmark's rows for ``bench/run_all.py`` (see the module doc)."""
    return run(100 if quick else 500, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 prompts instead of 500")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--latencies", default="0.2,0.02", help="seconds per call, comma separated")
    args = ap.parse_args()
    n = args.prompts or (100 if args.quick else 500)
    latencies = tuple(float(x) for x in args.latencies.split(","))
    print(f"{n} prompts x {REVISIONS} revisions, concurrency {CONCURRENCY}; load average {os.getloadavg()}")
    for row in run(n, args.repeats, latencies):
        mark = "ok" if row["ok"] else "FAIL"
        print(f"  {row['metric']:<58} {row['measured']:<52} {row['target']:<16} {row['ratio']:.2f}  {mark}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
