"""Model backend throughput (prints ratios measured in this run; not a test).

(a) transformers backend, the embedded model: N concurrent requests (first Human turns of
    hh-rlhf prompts from ../shared/data, greedy, --max-tokens each) with dynamic
    micro-batching vs batching off (one request at a time). Target: >= 4x.
(b) openai backend vs the raw ``openai`` client, both against the stub OpenAI server (its own
    process, instant answers) at the same concurrency. Target: >= 0.9.

    python bench/backends.py [--requests 16] [--max-tokens 32] [--calls 2000] [--concurrency 32] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tests/conftest.py
ROOT = Path(__file__).resolve().parents[1]
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from cai.models import GenParams, load_model  # noqa: E402
from cai.testing.stub_openai_server import StubOpenAIServer  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "hh_rlhf_harmless_test_dev.jsonl"


def first_human_turns(n: int) -> list[str]:
    prompts = []
    with DATA.open() as f:
        for line in f:
            text = json.loads(line)["chosen"].split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0].strip()
            prompts.append(text)
            if len(prompts) == n:
                break
    return prompts


async def timed_gather(model, prompts: list[str], params: GenParams) -> tuple[float, list]:
    start = time.perf_counter()
    outs = await asyncio.gather(*(model.chat([{"role": "user", "content": p}], params) for p in prompts))
    return time.perf_counter() - start, outs


async def bench_microbatching(n: int, max_tokens: int) -> float:
    from cai.models.embedded import export_embedded
    from cai.models.hf import HFChatModel

    folder = export_embedded()
    prompts = first_human_turns(n)
    params = GenParams(max_tokens=max_tokens)
    batched = HFChatModel(folder, spec="embedded", micro_batching=True, max_batch_size=n)
    single = HFChatModel(folder, spec="embedded", micro_batching=False)
    await single.chat([{"role": "user", "content": "hi"}], GenParams(max_tokens=2))  # warm-up
    await batched.chat([{"role": "user", "content": "hi"}], GenParams(max_tokens=2))
    t_single, outs_single = await timed_gather(single, prompts, params)
    t_batched, outs_batched = await timed_gather(batched, prompts, params)
    tokens = sum(o.usage.completion_tokens for o in outs_batched)
    same = sum(a.text == b.text for a, b in zip(outs_single, outs_batched))
    ratio = t_single / t_batched
    import torch

    print(
        f"(a) transformers, {n} concurrent requests x <= {max_tokens} tokens ({tokens} generated), "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"    batching off: {t_single:6.2f} s  {n / t_single:6.2f} req/s")
    print(f"    micro-batched: {t_batched:6.2f} s  {n / t_batched:6.2f} req/s  batches {batched.batch_sizes[1:]}")
    print(f"    identical greedy outputs: {same}/{n}")
    print(f"    ratio micro-batched / off: {ratio:.2f}x  (target >= 4x)")
    await batched.aclose()
    await single.aclose()
    return ratio


async def raw_calls(base_url: str, calls: int, concurrency: int) -> float:
    import httpx
    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="x",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        ),
    )
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await client.chat.completions.create(
                model="stub", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0, top_p=1.0
            )

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    elapsed = time.perf_counter() - start
    await client.close()
    return calls / elapsed


async def cai_calls(base_url: str, calls: int, concurrency: int) -> float:
    model = load_model("openai:stub", base_url=base_url, max_concurrency=concurrency)
    params = GenParams(max_tokens=8)
    start = time.perf_counter()
    await asyncio.gather(*(model.chat([{"role": "user", "content": "hi"}], params) for _ in range(calls)))
    elapsed = time.perf_counter() - start
    await model.aclose()
    return calls / elapsed


async def bench_openai_overhead(calls: int, concurrency: int, rounds: int = 3) -> float:
    with StubOpenAIServer(subprocess=True) as server:
        await raw_calls(server.base_url, 100, concurrency)  # warm-up both paths
        await cai_calls(server.base_url, 100, concurrency)
        raw, ours = [], []
        for _ in range(rounds):  # interleaved; best of each, to damp noise from other load
            raw.append(await raw_calls(server.base_url, calls, concurrency))
            ours.append(await cai_calls(server.base_url, calls, concurrency))
    ratio = max(ours) / max(raw)
    print(f"(b) openai backend vs raw openai client, stub server (instant), {calls} calls, concurrency {concurrency}")
    print(f"    raw client:  best {max(raw):7.1f} calls/s  (rounds {', '.join(f'{r:.0f}' for r in raw)})")
    print(f"    ChatModel:   best {max(ours):7.1f} calls/s  (rounds {', '.join(f'{r:.0f}' for r in ours)})")
    print(f"    ratio ChatModel / raw: {ratio:.2f}  (target >= 0.9)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", choices=["a", "b"], default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for (a); 1 avoids OpenMP spin-waits on an oversubscribed machine",
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.only in (None, "a"):
        asyncio.run(bench_microbatching(args.requests, args.max_tokens))
    if args.only in (None, "b"):
        asyncio.run(bench_openai_overhead(args.calls, args.concurrency))


if __name__ == "__main__":
    main()
