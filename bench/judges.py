"""Pairwise judging cost: both-order one-token log-prob judging vs free-text judging.

Against a real vLLM OpenAI-compatible server serving the embedded model (started here on
loopback unless --base-url is given), on hh-rlhf pairs from ../shared/data:

  logprob    2 calls per pair (both orders), max_tokens=1, soft label from the A/B log-probs
  free-text  2 calls per pair (both orders), the judge writes its reasoning and a verdict
             (up to --verdict-tokens tokens), which is parsed

Each path gets a disjoint, interleaved third of the pairs so that vLLM's prefix cache never
serves one path another's prompts. "logprob" and "free-text" prime the prefix cache (one order
first, then the other); "logprob-unprimed" sends both orders at once. Prints calls and tokens per pair,
pairs/s, and the ratio (target: log-prob >= 5x the pairs/s of free-text).

    python bench/judges.py [--pairs 16] [--base-url http://127.0.0.1:PORT/v1 --model NAME --offset 300]

``rows(quick)`` gives the throughput ratio to ``bench/run_all.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

# run as a script, this file's folder comes first on sys.path and "judges" would be this file;
# the repository root goes there instead
ROOT = Path(__file__).resolve().parents[1]
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from cai.models import ChatModel, load_model  # noqa: E402
from judges.data import read_candidate_sets  # noqa: E402
from judges.pairwise import LLMPairwiseJudge  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "hh_rlhf_harmless_test_dev.jsonl"
TARGET = 5.0  # log-prob pairs/s over free-text pairs/s


async def run_path(judge: LLMPairwiseJudge, pairs, concurrency: int) -> dict[str, float]:
    start = time.monotonic()
    verdicts = await judge.compare_many(
        [(p.prompt, p.candidates[0], p.candidates[1]) for p in pairs], concurrency=concurrency
    )
    wall = time.monotonic() - start
    n = len(verdicts)
    return {
        "pairs": n,
        "wall_s": wall,
        "pairs_per_s": n / wall,
        "calls_per_pair": sum(v.usage.calls for v in verdicts) / n,
        "prompt_tokens_per_pair": sum(v.usage.prompt_tokens for v in verdicts) / n,
        "completion_tokens_per_pair": sum(v.usage.completion_tokens for v in verdicts) / n,
        "ok": sum(v.ok for v in verdicts) / n,
        "consistent": sum(bool(v.consistent) for v in verdicts) / n,
    }


async def bench(args: argparse.Namespace, model: ChatModel) -> dict[str, dict[str, dict[str, float]]]:
    """{"throughput": {path: figures}, "latency": {path: figures}} (see ``run_path``) of judges on
    ``model``, which this closes."""
    sets, _ = read_candidate_sets(args.data, limit=args.offset + 3 * args.pairs + 4 + 2 * args.latency_pairs)
    sets = sets[args.offset :]
    warmup, rest = sets[:4], sets[4 : 4 + 3 * args.pairs]
    latency_sets = sets[4 + 3 * args.pairs :]
    logprob = LLMPairwiseJudge(model)
    unprimed = LLMPairwiseJudge(model, prime_prefix=False)
    free_text = LLMPairwiseJudge(model, logprobs=False, cot=True, clamp_range=False, cot_max_tokens=args.verdict_tokens)
    await logprob.compare_many([(p.prompt, p.candidates[0], p.candidates[1]) for p in warmup])
    results = {
        "logprob": await run_path(logprob, rest[0::3], args.concurrency),
        "free-text": await run_path(free_text, rest[1::3], args.concurrency),
        "logprob-unprimed": await run_path(unprimed, rest[2::3], args.concurrency),
    }
    # one pair at a time: latency per pair, the regime of a judge in a serving loop
    latency = {
        "logprob": await run_path(logprob, latency_sets[0::2], 1),
        "free-text": await run_path(free_text, latency_sets[1::2], 1),
    }
    await model.aclose()
    return {"throughput": results, "latency": latency}


def print_results(args: argparse.Namespace, measured: dict[str, dict[str, dict[str, float]]]) -> None:
    results, latency = measured["throughput"], measured["latency"]
    keys = [
        "pairs",
        "calls_per_pair",
        "prompt_tokens_per_pair",
        "completion_tokens_per_pair",
        "pairs_per_s",
        "wall_s",
        "ok",
        "consistent",
    ]
    print(f"{'':28}" + "".join(f"{name:>18}" for name in results))
    for key in keys:
        print(
            f"{key:28}"
            + "".join(f"{r[key]:18.3f}" if isinstance(r[key], float) else f"{r[key]:18}" for r in results.values())
        )
    lp, ft = results["logprob"], results["free-text"]
    ratio = lp["pairs_per_s"] / ft["pairs_per_s"]
    print(
        f"\nthroughput (concurrency {args.concurrency}): pairs/s ratio logprob / free-text: {ratio:.1f}x (target >= {TARGET:g}x); "
        f"completion tokens per pair: {lp['completion_tokens_per_pair']:.0f} vs {ft['completion_tokens_per_pair']:.0f}"
    )
    if latency["logprob"]["pairs"] and latency["free-text"]["pairs"]:
        lat_lp, lat_ft = (1 / latency[k]["pairs_per_s"] for k in ("logprob", "free-text"))
        print(
            f"latency (one pair at a time, {latency['logprob']['pairs']} pairs each): {lat_lp:.2f} s vs {lat_ft:.2f} s "
            f"per pair -> {lat_ft / lat_lp:.1f}x; free-text ok {latency['free-text']['ok']:.2f}"
        )


def served(args: argparse.Namespace, base_url: str) -> ChatModel:
    return load_model(f"openai:{args.model}", base_url=base_url, api_key="none", max_concurrency=args.concurrency)


def measure(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """``bench`` against ``args.base_url``, or a vLLM server started here for the run."""
    if args.base_url is not None:
        return asyncio.run(bench(args, served(args, args.base_url)))
    from cai.models.embedded import export_embedded
    from cai.testing.vllm_server import VLLMServer

    t0 = time.monotonic()
    server = VLLMServer(
        export_embedded(),
        max_model_len=args.max_model_len,
        kv_cache_gib=2,
        start_timeout=900,
        extra_args=["--dtype", args.dtype],
    ).start()
    print(f"vLLM up at {server.base_url} in {time.monotonic() - t0:.0f} s (log {server.log_path})")
    try:
        return asyncio.run(bench(args, served(args, server.base_url)))
    finally:
        server.stop()


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """The log-prob vs free-text throughput row for ``bench/run_all.py`` (4 pairs a path when
    quick, 16 else), against a vLLM server started here."""
    args = parser().parse_args(["--pairs", "4", "--latency-pairs", "1"] if quick else [])
    results = measure(args)["throughput"]
    lp, ft = results["logprob"], results["free-text"]
    ratio = lp["pairs_per_s"] / ft["pairs_per_s"]
    return [
        {
            "metric": f"judges: log-prob / free-text pairs/s, {lp['pairs']:.0f} pairs, concurrency {args.concurrency}",
            "measured": f"{lp['pairs_per_s']:.2f} vs {ft['pairs_per_s']:.2f} pairs/s",
            "target": f">= {TARGET:g}x",
            "ratio": ratio,
            "ok": ratio >= TARGET,
        }
    ]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16, help="pairs per path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-pairs", type=int, default=4, help="pairs per path judged one at a time")
    parser.add_argument("--verdict-tokens", type=int, default=256, help="free-text verdict budget")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument(
        "--offset",
        type=int,
        default=0,
        help="skip this many pairs: with --base-url, pick pairs the server has not judged yet "
        "(its prefix cache would otherwise serve them)",
    )
    parser.add_argument("--base-url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--model", default="embedded", help="served model name")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--dtype", default="float32", help="of the vLLM server started here")
    return parser


def main() -> None:
    args = parser().parse_args()
    print_results(args, measure(args))


if __name__ == "__main__":
    main()
