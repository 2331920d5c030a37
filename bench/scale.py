"""Ray scale-out against its targets (not a test): prints ratios measured in this run.

Each replica has its own backend: a stub OpenAI server (``cai.testing.stub_openai_server``, its
own process, a fixed latency per call) on its own port, and its own concurrency limit
(``max_concurrency`` C per replica), so the run is backend-bound: one replica serves at most C
calls at a time. A sample is a 3-call conversation (answer, critique, revision: each call
carries the growing conversation), run by the real runner with its store (in memory) and
``CachedModel``, as ``cai generate`` does.

(a) samples/s with 1, 2 and 4 replicas (``openai:`` with one ``base_url`` per replica) and, for
    each, one process (no Ray) at the same total concurrency N x C against one stub server;
(b) the Ray path's overhead per sample: the same conversations one at a time through a pool of
    1 replica and through the model directly (alternating, medians), as a % of a 200 ms call.

Targets: 2 replicas >= 1.8x one replica; overhead <= 5% of a 200 ms call.

    python bench/scale.py            # 6 waves of samples per configuration
    python bench/scale.py --quick    # 3 waves

``rows(quick)`` returns the figures for ``bench/run_all.py``: dicts with ``metric``,
``measured``, ``target``, ``ratio`` and ``ok`` (None for a figure without a target).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cai.models import ChatModel, GenParams, load_model  # noqa: E402
from cai.runner import Outcome, Runner, Sample  # noqa: E402
from cai.store import CachedModel, RunStore, sample_scope  # noqa: E402
from cai.testing.stub_openai_server import StubOpenAIServer  # noqa: E402

LATENCY = 0.2
PER_REPLICA = 8  # each replica's (backend's) concurrency limit
REPLICAS = (1, 2, 4)
TURNS = ("Answer the question.", "Critique your answer.", "Revise your answer.")
PARAMS = GenParams(max_tokens=32)
SPEED_TARGET = 1.8  # 2 replicas / 1 replica
OVERHEAD_TARGET = 0.05  # of one call's latency


async def _conversation(model: ChatModel, sample_id: str) -> None:
    messages: list[dict[str, str]] = []
    with sample_scope(sample_id):
        for turn in TURNS:
            messages.append({"role": "user", "content": f"{sample_id}: {turn}"})
            reply = await model.chat(messages, PARAMS)
            messages.append({"role": "assistant", "content": reply.text})


async def _samples_per_s(model: ChatModel, n_samples: int, concurrency: int, tag: str) -> float:
    store = RunStore(None)
    cached = CachedModel(model, store)

    async def work(sample: Sample) -> Outcome:
        await _conversation(cached, sample.id)
        return Outcome(record={"id": sample.id})

    runner = Runner(store, concurrency=concurrency, progress=False)
    start = time.perf_counter()
    summary = await runner.run([Sample(f"{tag}-{i}", i) for i in range(n_samples)], work)
    wall = time.perf_counter() - start
    store.close()
    if summary.n_failed:
        raise RuntimeError(f"{tag}: {summary.n_failed} samples failed: {summary.failed}")
    return n_samples / wall


async def _one_sample_s(model: ChatModel, sample_id: str) -> float:
    start = time.perf_counter()
    await _conversation(model, sample_id)
    return time.perf_counter() - start


async def _measure(servers: list[StubOpenAIServer], waves: int, overhead_samples: int) -> dict[str, Any]:
    urls = [s.base_url for s in servers]
    rates: dict[str, float] = {}
    for n in REPLICAS:
        n_samples = waves * n * PER_REPLICA
        direct = load_model("openai:stub", base_url=urls[0], api_key="x", max_concurrency=n * PER_REPLICA)
        try:
            rates[f"direct{n}"] = await _samples_per_s(direct, n_samples, n * PER_REPLICA, f"direct{n}")
        finally:
            await direct.aclose()
        pool = load_model("openai:stub", base_urls=urls[:n], api_key="x", max_concurrency=PER_REPLICA)
        try:
            rates[f"pool{n}"] = await _samples_per_s(pool, n_samples, n * PER_REPLICA, f"pool{n}")
            if n == 1:
                direct = load_model("openai:stub", base_url=urls[0], api_key="x", max_concurrency=PER_REPLICA)
                try:
                    await _one_sample_s(pool, "warm-pool")
                    await _one_sample_s(direct, "warm-direct")
                    times: dict[str, list[float]] = {"pool": [], "direct": []}
                    for i in range(overhead_samples):  # alternating, so drift in load hits both
                        times["pool"].append(await _one_sample_s(pool, f"ov-pool-{i}"))
                        times["direct"].append(await _one_sample_s(direct, f"ov-direct-{i}"))
                finally:
                    await direct.aclose()
                rates["overhead_s"] = statistics.median(times["pool"]) - statistics.median(times["direct"])
        finally:
            await pool.aclose()
    return rates


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """The bench's figures (see the module docstring); starts and stops its own Ray cluster."""
    import ray

    ray.init(num_cpus=max(REPLICAS), include_dashboard=False, logging_level=logging.WARNING)
    try:
        with contextlib.ExitStack() as stack:
            servers = [
                stack.enter_context(StubOpenAIServer(latency=LATENCY, subprocess=True)) for _ in range(max(REPLICAS))
            ]
            m = asyncio.run(_measure(servers, waves=3 if quick else 6, overhead_samples=8 if quick else 20))
    finally:
        ray.shutdown()
    out = []
    one = m["pool1"]
    for n in REPLICAS[1:]:
        speedup = m[f"pool{n}"] / one
        target = SPEED_TARGET if n == 2 else None
        out.append(
            {
                "metric": f"scale: {n} replicas / 1 replica, samples/s (backend-bound, C={PER_REPLICA} each)",
                "measured": f"{m[f'pool{n}']:.1f}/s vs {one:.1f}/s = {speedup:.2f}x",
                "target": f">= {target}x" if target else "none (issue sets 2 replicas only)",
                "ratio": round(speedup, 3),
                "ok": speedup >= target if target else None,
            }
        )
    for n in REPLICAS:
        ratio = m[f"pool{n}"] / m[f"direct{n}"]
        out.append(
            {
                "metric": f"scale: {n} replica(s) on Ray / one process at concurrency {n * PER_REPLICA}",
                "measured": f"{m[f'pool{n}']:.1f}/s vs {m[f'direct{n}']:.1f}/s",
                "target": "none (reference)",
                "ratio": round(ratio, 3),
                "ok": None,
            }
        )
    overhead = m["overhead_s"] / LATENCY
    out.append(
        {
            "metric": f"scale: Ray overhead per sample ({len(TURNS)} calls), pool of 1 vs direct",
            "measured": f"{m['overhead_s'] * 1000:.1f} ms = {overhead:.1%} of a {LATENCY * 1000:.0f} ms call",
            "target": f"<= {OVERHEAD_TARGET:.0%}",
            "ratio": round(overhead, 4),
            "ok": overhead <= OVERHEAD_TARGET,
        }
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 waves of samples per configuration, not 6")
    args = parser.parse_args()
    table = rows(args.quick)
    width = max(len(r["metric"]) for r in table)
    for r in table:
        verdict = {True: "ok", False: "MISSED", None: "-"}[r["ok"]]
        print(f"{r['metric']:<{width}}  {r['measured']:<40}  target {r['target']:<36}  {verdict}")
    return 1 if any(r["ok"] is False for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
