"""The embedded model on CPU: the demo workload on several configurations of the transformers
backend (not a test).

The workload is ``make demo``'s (``cai generate examples/red_team_prompts.jsonl --limit 8
--revisions 2 --max-tokens 128``), run in this process without a run directory, greedy and
then sampled (temperature 0.7, seed 0), on:

- ``before``: the backend as it was when the performance issue was filed: whole batches that
  finish together (``continuous_batching=False``), no prefix reuse (``prefix_cache=False``),
  no speculation (``draft_tokens=0``), ``torch.nn.Linear`` (``pack_weights=False``);
- ``cache off``: today's backend with the prefix cache off;
- ``no drafts``: today's backend without speculation;
- ``plain linears``: today's backend with ``torch.nn.Linear`` (``pack_weights=False``);
- ``default``: today's backend (continuous batching, the prefix cache, n-gram drafts).

All of them run today's decode loop (its in-place cache appends make ``before`` faster than the
filed backend was, so the ratios are conservative). Reports default vs before (target >= 3x)
and vs the others, whether the greedy outputs are identical (sampled ones are not expected to
be: speculative sampling keeps the distribution, not the random stream), the prompt tokens
sent vs computed per call, the drafts kept, and where the time went (prefill vs decode).

    python bench/embedded.py [--quick] [--limit N] [--max-tokens N] [--threads N]

``rows(quick)`` gives the same results as rows for ``bench/run_all.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tests/conftest.py
ROOT = Path(__file__).resolve().parents[1]
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from cai.generation import agenerate_run  # noqa: E402
from cai.models import GenParams  # noqa: E402

PROMPTS = ROOT / "examples" / "red_team_prompts.jsonl"
TARGET_SPEEDUP = 3.0
QUICK_LIMIT = 3


@dataclass
class Run:
    seconds: float
    outputs: list[str]  # one JSON line per sample: its answers, critiques and revisions
    stats: dict[str, float]


def _sample_text(trace: Any) -> str:
    return json.dumps(
        [trace.initial, [(s.critique, s.revision) for s in trace.steps], trace.final, trace.stop_reason],
        ensure_ascii=False,
    )


CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"prefix_cache": False, "continuous_batching": False, "draft_tokens": 0, "pack_weights": False},
    "cache off": {"prefix_cache": False},
    "no drafts": {"draft_tokens": 0},
    "plain linears": {"pack_weights": False},
    "default": {},
}


async def run_workload(config: dict[str, Any], params: GenParams, limit: int, revisions: int) -> Run:
    from cai.models.embedded import export_embedded
    from cai.models.hf import HFChatModel

    model = HFChatModel(export_embedded(), spec="embedded", **config)
    try:
        start = time.perf_counter()
        result = await agenerate_run(str(PROMPTS), model=model, revisions=revisions, params=params, limit=limit)
        seconds = time.perf_counter() - start
    finally:
        await model.aclose()
    return Run(seconds, [_sample_text(t) for t in result.traces], model.stats())


def _describe(name: str, run: Run) -> str:
    s = run.stats
    calls = max(1, int(s["calls"]))
    steps = max(1, int(s["decode_steps"]))
    return (
        f"  {name:<22} {run.seconds:7.1f} s  calls {int(s['calls'])}  prompt tokens sent {int(s['prompt_tokens'])} "
        f"({s['prompt_tokens'] / calls:.0f}/call), computed {int(s['computed_tokens'])} "
        f"({s['computed_tokens'] / calls:.0f}/call), hits {int(s['hits'])}; "
        f"prefill {s['prefill_s']:.1f} s, decode {s['decode_s']:.1f} s over {int(s['decode_steps'])} steps "
        f"(mean batch {s['decode_rows'] / steps:.1f}); drafts kept {int(s['accepted'])}/{int(s['drafted'])}"
    )


def _speedup(label: str, name: str, base: Run, on: Run, greedy: bool) -> list[dict[str, Any]]:
    ratio = base.seconds / on.seconds
    same = sum(a == b for a, b in zip(base.outputs, on.outputs))
    rows = [
        {
            "metric": f"embedded demo {label}: wall time, {name} / default",
            "measured": f"{base.seconds:.1f} s / {on.seconds:.1f} s",
            "target": f">= {TARGET_SPEEDUP:g}x" if name == "before" else "reported",
            "ratio": round(ratio, 2),
            "ok": ratio >= TARGET_SPEEDUP if name == "before" else True,
        },
    ]
    if greedy:
        rows.append(
            {
                "metric": f"embedded demo {label}: outputs identical, {name} vs default",
                "measured": f"{same}/{len(base.outputs)} samples",
                "target": "all",
                "ratio": round(same / max(1, len(base.outputs)), 2),
                "ok": same == len(base.outputs),
            }
        )
    return rows


def _tokens(label: str, on: Run) -> dict[str, Any]:
    sent, computed = on.stats["prompt_tokens"], on.stats["computed_tokens"]
    calls = max(1, int(on.stats["calls"]))
    return {
        "metric": f"embedded demo {label}: prompt tokens computed / sent per call (default)",
        "measured": f"{computed / calls:.0f} / {sent / calls:.0f}",
        "target": "reported",
        "ratio": round(computed / max(1, sent), 3),
        "ok": True,
    }


def rows(quick: bool = False, *, limit: int | None = None, max_tokens: int = 128, revisions: int = 2) -> list[dict]:
    """Rows (metric, measured, target, ratio, ok) for the greedy and the sampled workload."""
    limit = limit or (QUICK_LIMIT if quick else 8)
    workloads = {
        "greedy": GenParams(max_tokens=max_tokens),
        "T=0.7 seed 0": GenParams(max_tokens=max_tokens, temperature=0.7, seed=0),
    }
    out: list[dict] = []
    for label, params in workloads.items():
        print(f"{label}, {limit} prompts x {revisions} revisions, max {max_tokens} tokens:", flush=True)
        runs = {}
        for name, config in CONFIGS.items():
            runs[name] = asyncio.run(run_workload(config, params, limit, revisions))
            print(_describe(name, runs[name]), flush=True)
        for name in [n for n in CONFIGS if n != "default"]:
            out += _speedup(label, name, runs[name], runs["default"], params.temperature <= 0)
        out.append(_tokens(label, runs["default"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_LIMIT} prompts instead of 8")
    parser.add_argument("--limit", type=int, default=None, help="prompts (default 8, or 3 with --quick)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--revisions", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    results = rows(args.quick, limit=args.limit, max_tokens=args.max_tokens, revisions=args.revisions)
    print(f"\n{'metric':<75} {'measured':>22} {'target':>9} {'ratio':>7}  ok")
    for r in results:
        print(f"{r['metric']:<75} {r['measured']:>22} {r['target']:>9} {r['ratio']:>7}  {'yes' if r['ok'] else 'NO'}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
