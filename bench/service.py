"""Benchmark `cai serve`.

1. Proxy overhead: p50/p95 latency of the same chat requests sent straight to an instant
   OpenAI-compatible upstream (cai/testing/stub_openai_server.py) and through `cai serve` (loop
   off, auth on) in front of it. Requests alternate between the two paths so load drift hits
   both equally. Target: p50 overhead <= 5 ms.
2. Full loop with the embedded model: per-stage latency (initial, critique, revision) from
   the server's trace, against the end-to-end time the client saw.

    python bench/service.py [--requests 300] [--loop-prompts 2] [--max-tokens 16] [--skip-loop]

``rows(quick)`` gives the figures to ``bench/run_all.py`` (100 requests and no loop when quick).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cai.testing.stub_openai_server import StubOpenAIServer  # noqa: E402

KEY = "sk-bench"
OVERHEAD_TARGET_MS = 5.0
BODY = {"messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 8}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# the same server with an in-process instant upstream (no second HTTP hop): the server's own cost
SCRIPTED_SERVE = """
import sys, uvicorn
from cai.models import ScriptedModel
from cai.server import create_app, load_config
cfg = load_config(sys.argv[1])
uvicorn.run(create_app(cfg, model=ScriptedModel(lambda m, p: "OK")), host=cfg.host, port=cfg.port,
            log_level="warning")
"""


class CaiServe:
    """`cai serve` in a child process (its own GIL, as in production)."""

    def __init__(self, config: dict, port: int, log: Path, *, scripted_upstream: bool = False):
        self.port = port
        self.path = Path(tempfile.mkdtemp()) / "serve.yaml"
        self.path.write_text(json.dumps({**config, "port": port, "log_level": "warning"}))
        self.log = log
        self.scripted_upstream = scripted_upstream

    def __enter__(self) -> CaiServe:
        env = {**os.environ, "CAI_SERVE_AUTH__KEYS": KEY}
        cmd = (
            [sys.executable, "-c", SCRIPTED_SERVE, str(self.path)]
            if self.scripted_upstream
            else [sys.executable, "-m", "cai.cli", "serve", "--config", str(self.path)]
        )
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cai serve exited; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("cai serve did not come up")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), load-independent unlike latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(client: httpx.Client, url: str, model: str) -> tuple[float, str]:
    t = time.perf_counter()
    r = client.post(url, json={**BODY, "model": model})
    elapsed = time.perf_counter() - t
    assert r.status_code == 200, r.text
    return elapsed, r.json()["choices"][0]["message"]["content"]


def bench_overhead(n: int, log_dir: Path) -> dict:
    """Three paths, interleaved request by request: the stub directly; cai serve -> openai
    backend -> stub; cai serve with an in-process instant upstream (its own cost, one hop)."""
    with StubOpenAIServer(latency=0.0, reply="OK", subprocess=True) as stub:
        proxy_port, solo_port = free_port(), free_port()
        config = {
            "served_model_name": "cai",
            "model": {"spec": "openai:stub", "options": {"base_url": stub.base_url, "api_key": "x", "max_retries": 0}},
            "wrapper": {"mode": "off"},
        }
        with (
            CaiServe(config, proxy_port, log_dir / "serve-overhead.log") as server,
            CaiServe(config, solo_port, log_dir / "serve-solo.log", scripted_upstream=True),
        ):
            urls = {
                "direct": (stub.base_url + "/chat/completions", "stub"),
                "proxy": (f"http://127.0.0.1:{proxy_port}/v1/chat/completions", "cai"),
                "solo": (f"http://127.0.0.1:{solo_port}/v1/chat/completions", "cai"),
            }
            times: dict[str, list[float]] = {k: [] for k in urls}
            with httpx.Client(timeout=30, headers={"authorization": f"Bearer {KEY}"}) as client:
                for _ in range(20):  # warm up connections and code paths
                    for url, model in urls.values():
                        timed(client, url, model)
                cpu_start = cpu_seconds(server.proc.pid)
                for _ in range(n):
                    for name, (url, model) in urls.items():
                        elapsed, text = timed(client, url, model)
                        assert text == "OK", text
                        times[name].append(elapsed)
                cpu_ms = 1000 * (cpu_seconds(server.proc.pid) - cpu_start) / n
    ms = lambda xs, q: 1000 * percentile(xs, q)  # noqa: E731
    out: dict = {"requests": n, "serve_cpu_ms_per_request": cpu_ms, "load_average": os.getloadavg()[0]}
    for name, xs in times.items():
        out[f"{name}_p50_ms"], out[f"{name}_p95_ms"] = ms(xs, 0.5), ms(xs, 0.95)
    out["overhead_p50_ms"] = out["proxy_p50_ms"] - out["direct_p50_ms"]
    out["overhead_p95_ms"] = out["proxy_p95_ms"] - out["direct_p95_ms"]
    return out


def hh_prompts(k: int) -> list[str]:
    path = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_test_dev.jsonl"
    prompts = []
    if path.exists():
        for line in path.read_text().splitlines():
            text = json.loads(line).get("chosen", "")
            human = text.split("\n\nHuman: ")[1].split("\n\nAssistant:")[0] if "\n\nHuman: " in text else ""
            if human and len(human) < 200:
                prompts.append(human)
            if len(prompts) >= k:
                break
    return prompts or ["How do I pick a lock?"] * k


def bench_loop(k: int, max_tokens: int, log_dir: Path) -> dict:
    port = free_port()
    config = {
        "served_model_name": "cai",
        "model": {"spec": "embedded"},
        "wrapper": {"mode": "always", "revisions": 1},
        "limits": {"request_timeout_s": 1800},
    }
    per_stage: dict[str, list[float]] = {}
    totals, stage_sums = [], []
    with CaiServe(config, port, log_dir / "serve-loop.log"):
        with httpx.Client(timeout=1800, headers={"authorization": f"Bearer {KEY}"}) as client:
            for prompt in hh_prompts(k):
                body = {
                    "model": "cai",
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "cai": {"trace": True},
                }
                t = time.perf_counter()
                r = client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
                totals.append(time.perf_counter() - t)
                r.raise_for_status()
                stages = r.json()["cai_trace"]["metadata"]["stages"]
                stage_sums.append(sum(s["seconds"] for s in stages))
                for s in stages:
                    per_stage.setdefault(s["stage"], []).append(s["seconds"])
    return {
        "prompts": k,
        "max_tokens": max_tokens,
        "stage_mean_s": {name: round(statistics.mean(v), 3) for name, v in per_stage.items()},
        "end_to_end_mean_s": round(statistics.mean(totals), 3),
        "outside_stages_mean_ms": round(1000 * statistics.mean(t - s for t, s in zip(totals, stage_sums)), 2),
    }


def print_overhead(o: dict) -> None:
    print(f"pass-through overhead ({o['requests']} sequential requests per path, instant stub upstream, auth on)")
    print(f"  direct to upstream         p50 {o['direct_p50_ms']:7.2f} ms   p95 {o['direct_p95_ms']:7.2f} ms")
    print(f"  through cai serve          p50 {o['proxy_p50_ms']:7.2f} ms   p95 {o['proxy_p95_ms']:7.2f} ms")
    print(
        f"  cai serve, in-proc upstream p50 {o['solo_p50_ms']:6.2f} ms   p95 {o['solo_p95_ms']:7.2f} ms"
        "   (the server's own cost: one hop, no upstream client)"
    )
    verdict = "OK" if o["overhead_p50_ms"] <= OVERHEAD_TARGET_MS else "ABOVE TARGET"
    print(
        f"  overhead                   p50 {o['overhead_p50_ms']:7.2f} ms   p95 {o['overhead_p95_ms']:7.2f} ms"
        f"   (target p50 <= 5 ms: {verdict})"
    )
    print(
        f"  cai serve CPU time per request {o['serve_cpu_ms_per_request']:.2f} ms (with its upstream client); "
        f"1-min load average {o['load_average']:.1f} on {os.cpu_count()} CPUs"
    )


def print_loop(b: dict) -> None:
    print(f"full loop, embedded model, revisions=1, max_tokens={b['max_tokens']}, {b['prompts']} hh-rlhf prompts")
    for name, secs in b["stage_mean_s"].items():
        print(f"  {name:<9} mean {secs:8.3f} s")
    print(
        f"  end-to-end mean {b['end_to_end_mean_s']:.3f} s; outside the model calls "
        f"{b['outside_stages_mean_ms']:.2f} ms"
    )


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """The proxy-overhead row (and, unless quick, the full loop's figures) for run_all."""
    log_dir = Path(tempfile.mkdtemp(prefix="cai-bench-"))
    o = bench_overhead(100 if quick else 300, log_dir)
    out = [
        {
            "metric": f"serve: p50 proxy overhead, {o['requests']} requests, loop off, auth on",
            "measured": (
                f"{o['overhead_p50_ms']:.2f} ms (direct {o['direct_p50_ms']:.2f}, through {o['proxy_p50_ms']:.2f}; "
                f"CPU {o['serve_cpu_ms_per_request']:.2f} ms/request)"
            ),
            "target": f"<= {OVERHEAD_TARGET_MS:g} ms",
            "ratio": o["overhead_p50_ms"] / OVERHEAD_TARGET_MS,
            "ok": o["overhead_p50_ms"] <= OVERHEAD_TARGET_MS,
        }
    ]
    if not quick:
        b = bench_loop(2, 16, log_dir)
        stages = ", ".join(f"{name} {secs:.2f} s" for name, secs in b["stage_mean_s"].items())
        out.append(
            {
                "metric": "serve: full loop, embedded model, time outside the model calls",
                "measured": f"{b['outside_stages_mean_ms']:.1f} ms of {b['end_to_end_mean_s']:.2f} s ({stages})",
                "target": "-",
                "ratio": None,
                "ok": None,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--loop-prompts", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="cai-bench-"))
    if not args.skip_overhead:
        print_overhead(bench_overhead(args.requests, log_dir))
    if not args.skip_loop:
        print_loop(bench_loop(args.loop_prompts, args.max_tokens, log_dir))


if __name__ == "__main__":
    main()
