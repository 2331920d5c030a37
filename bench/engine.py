"""Engine benchmarks (not tests): prints ratios measured in this run.

1. stub: an OpenAI-compatible stub server adding a fixed latency per call (default 200 ms):
   N prompts x R revisions at concurrency C through the full engine (run store, cache, output
   files). Wall time vs the ideal (calls x latency / concurrency) and vs a sequential loop
   (measured on a subset, extrapolated; marked as such). Targets: <= 1.2x ideal, >= 50x sequential.
2. vllm: a real vLLM server with the embedded model: samples/s of the engine vs a wave-batched
   variant (every sample does step k, wait, then step k+1) on the same prompts; target >= 1.3x.
   Prefix-cache hit rate from vLLM's /metrics during the engine run.
3. resume: rerunning the finished stub run makes zero model calls.

    python bench/engine.py                # all parts
    python bench/engine.py --parts stub,resume --prompts 500
    python bench/engine.py --parts vllm --vllm-prompts 32
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cai.constitution import load_constitution  # noqa: E402
from cai.generation import agenerate_run  # noqa: E402
from cai.inputs import read_prompts  # noqa: E402
from cai.models import ChatModel, GenParams, ScriptedModel, load_model  # noqa: E402
from cai.models.openai_compat import parse_completion, request_kwargs  # noqa: E402
from cai.revise import (  # noqa: E402
    _with_few_shot,
    clean_revision,
    degenerate_reason,
    pick_principles,
    revise,
    says_no_revision_needed,
)
from cai.testing.stub_openai_server import StubOpenAIServer  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_test_dev.jsonl"
EXAMPLES = ROOT / "examples" / "red_team_prompts.jsonl"


PROMPTS_FILE = HH if HH.exists() else EXAMPLES


def prompts(n: int, tag: str = "") -> list[list[dict[str, str]]]:
    """n prompt conversations (hh-rlhf red-team prompts, cycled), optionally made unique by a tag."""
    found = [p.messages for p in read_prompts(PROMPTS_FILE).prompts]
    out = [list(found[i % len(found)]) for i in range(n)]
    if tag:  # a distinct first message per run, so runs share no server prefix cache
        out = [[{"role": "system", "content": f"Session {tag}. You are a helpful assistant."}, *p] for p in out]
    return out


def line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}")


# -- 1. stub server -----------------------------------------------------------------------------


class _AiohttpChat(ChatModel):
    """Bench-only: the same OpenAI wire format (cai.models.openai_compat) sent with a bare aiohttp
    session, to split the client library's per-call cost from the engine's."""

    def __init__(self, base_url: str, model: str, concurrency: int):
        self.base_url, self.model, self.spec = base_url, model, f"openai:{model}"
        self.concurrency = concurrency
        self._session = None

    async def chat(self, messages, params=None):
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency))
        body = {"model": self.model, **request_kwargs(messages, params or GenParams())}
        async with self._session.post(f"{self.base_url}/chat/completions", json=body) as resp:
            return parse_completion(await resp.json(), model=self.model, want_logprobs=False)

    async def aclose(self):
        if self._session is not None:
            await self._session.close()


async def bench_stub(n: int, revisions: int, concurrency: int, latency: float, seq_n: int, out: Path) -> None:
    print(
        f"\n[1] stub server, {latency * 1000:.0f} ms per call: {n} prompts, {revisions} revisions, "
        f"concurrency {concurrency}"
    )
    with StubOpenAIServer(latency=latency, reply="A short reply.", subprocess=True) as server:
        spec, options = "openai:stub", {"base_url": server.base_url, "max_concurrency": concurrency}
        data = prompts(n)
        model = load_model(spec, **options)
        start = time.perf_counter()
        res = await agenerate_run(
            data,
            model=model,
            revisions=revisions,
            sampling="sequential",
            out=out,
            concurrency=concurrency,
            params=GenParams(max_tokens=64),
        )
        wall = time.perf_counter() - start
        calls = server.stats()["requests"]
        ideal = calls * latency / concurrency
        # the critical path: no sample can finish faster than its own chain of calls
        chain = (1 + 2 * revisions) * latency
        line("samples done / failed", f"{res.summary.done} / {res.summary.n_failed}")
        line("model calls", str(calls))
        line("engine wall", f"{wall:.2f} s  ({res.summary.done / wall:.1f} samples/s)")
        line("ideal (calls x latency / concurrency)", f"{ideal:.2f} s")
        line("wall / ideal", f"{wall / ideal:.2f}x  (target <= 1.2x)")
        line("wall / max(ideal, one sample's chain)", f"{wall / max(ideal, chain):.2f}x")

        # the same run over the same server with a bare aiohttp client instead of the openai SDK
        bare = _AiohttpChat(server.base_url, "stub", concurrency)
        before = server.stats()["requests"]
        start = time.perf_counter()
        await agenerate_run(
            data,
            model=bare,
            revisions=revisions,
            sampling="sequential",
            out=out.with_name("aiohttp-run"),
            concurrency=concurrency,
            params=GenParams(max_tokens=64),
        )
        wall_bare = time.perf_counter() - start
        await bare.aclose()
        calls_bare = server.stats()["requests"] - before
        line("engine, bare aiohttp client (bench-only)", f"{wall_bare:.2f} s for {calls_bare} calls")
        line("  wall / ideal", f"{wall_bare / (calls_bare * latency / concurrency):.2f}x")

        # the same run with an in-process transport of the same latency: the engine's own overhead
        # (scheduling, run store, call cache, output files) without the HTTP client's
        scripted = ScriptedModel(lambda m, p: "A short reply.", delay=latency)
        start = time.perf_counter()
        await agenerate_run(
            data,
            model=scripted,
            revisions=revisions,
            sampling="sequential",
            out=out.with_name("scripted-run"),
            concurrency=concurrency,
            params=GenParams(max_tokens=64),
        )
        wall_scripted = time.perf_counter() - start
        ideal_scripted = len(scripted.calls) * latency / concurrency
        line("engine, in-process transport (no HTTP)", f"{wall_scripted:.2f} s for {len(scripted.calls)} calls")
        line("  wall / ideal", f"{wall_scripted / ideal_scripted:.2f}x")

        # the naive way: one prompt at a time, one call at a time
        start = time.perf_counter()
        for p in data[:seq_n]:
            await revise(
                model, p, "harmless", revisions=revisions, sampling="sequential", params=GenParams(max_tokens=64)
            )
        seq = (time.perf_counter() - start) / seq_n * n
        line(f"sequential (measured on {seq_n}, extrapolated)", f"{seq:.1f} s")
        line("speed-up vs sequential (openai backend)", f"{seq / wall:.0f}x  (target >= 50x)")
        line("speed-up vs sequential (bare aiohttp)", f"{seq / wall_bare:.0f}x")
        await model.aclose()

        # 3. resume: the finished run again
        before = server.stats()["requests"]
        model = load_model(spec, **options)
        start = time.perf_counter()
        again = await agenerate_run(
            data,
            model=model,
            revisions=revisions,
            sampling="sequential",
            out=out,
            concurrency=concurrency,
            params=GenParams(max_tokens=64),
        )
        await model.aclose()
        print(f"\n[3] resume: rerun of the finished run ({n} samples)")
        line(
            "model calls (engine count / server count)",
            f"{again.summary.model_calls} / {server.stats()['requests'] - before}  (target 0)",
        )
        line("samples skipped as done", str(again.summary.done_before))
        line("wall", f"{time.perf_counter() - start:.2f} s")


# -- 2. real vLLM: engine vs wave batching -------------------------------------------------------


async def wave_batched(model, data, revisions: int, params: GenParams, concurrency: int) -> None:
    """The naive batched way: chunks of ``concurrency`` samples; in a chunk every sample does
    step k, all wait, then step k+1; the next chunk starts when the whole chunk is done."""
    for start in range(0, len(data), concurrency):
        await _wave(model, data[start : start + concurrency], revisions, params, offset=start)


async def _wave(model, data, revisions: int, params: GenParams, offset: int) -> None:
    constitution = load_constitution("harmless")
    stops = constitution.defaults.stop_phrases

    async def say(messages):
        return (await model.chat(messages, params)).text.strip()

    initials = await asyncio.gather(*(say(p) for p in data))
    convs = [
        [*_with_few_shot(p, constitution, True), {"role": "assistant", "content": a}] for p, a in zip(data, initials)
    ]
    live = list(range(len(data)))
    # the same principles the engine draws for the same sample ids
    plans = [pick_principles(constitution, "random", revisions, seed=0, key=str(offset + i)) for i in range(len(data))]
    for r in range(revisions):
        asks = {i: [*convs[i], {"role": "user", "content": plans[i][r].critique}] for i in live}
        critiques = dict(zip(asks, await asyncio.gather(*(say(m) for m in asks.values()))))
        live = [i for i in live if not says_no_revision_needed(critiques[i], stops)]
        asks = {
            i: [
                *asks[i],
                {"role": "assistant", "content": critiques[i]},
                {"role": "user", "content": plans[i][r].revision},
            ]
            for i in live
        }
        revised = dict(zip(asks, await asyncio.gather(*(say(m) for m in asks.values()))))
        for i in live:  # the same acceptance rule as the engine
            text = clean_revision(revised[i])
            if not degenerate_reason(text, critique=critiques[i], request=plans[i][r].revision, stop_phrases=stops):
                convs[i] = [*asks[i], {"role": "assistant", "content": text}]


def vllm_metrics(base_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(base_url.replace("/v1", "") + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for name in ("prefix_cache_queries", "prefix_cache_hits"):
        for m in re.finditer(rf"^vllm:{name}(?:_total)?(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M):
            out[name] = out.get(name, 0.0) + float(m.group(1))
    return out


async def bench_vllm(
    n: int, revisions: int, max_tokens: int, concurrency: int, repeats: int, base_url: str | None
) -> None:
    from cai.models.embedded import export_embedded
    from cai.testing.vllm_server import VLLMServer

    print(
        f"\n[2] real vLLM server, embedded model: {n} prompts, {revisions} revisions, max_tokens {max_tokens}, "
        f"concurrency {concurrency} (both variants)"
    )
    server = None
    if base_url is None:
        server = VLLMServer(export_embedded()).start()
        base_url = server.base_url
    try:
        params = GenParams(max_tokens=max_tokens)
        options = {"base_url": base_url, "max_concurrency": concurrency}
        model = load_model("openai:embedded", **options)
        await model.chat([{"role": "user", "content": "warm up"}], GenParams(max_tokens=4))

        wave = engine = 0.0
        hits = queries = 0.0
        for rep in range(repeats):  # alternate the order so drifting machine load hits both alike
            for variant in ("wave", "engine") if rep % 2 == 0 else ("engine", "wave"):
                tag = f"{variant}-{rep}"
                before = vllm_metrics(base_url)
                start = time.perf_counter()
                if variant == "wave":
                    await wave_batched(model, prompts(n, tag), revisions, params, concurrency)
                    wave += time.perf_counter() - start
                    continue
                res = await agenerate_run(
                    prompts(n, tag),
                    model=model,
                    revisions=revisions,
                    sampling="random",
                    params=params,
                    concurrency=concurrency,
                )
                engine += time.perf_counter() - start
                after = vllm_metrics(base_url)
                hits += after.get("prefix_cache_hits", 0) - before.get("prefix_cache_hits", 0)
                queries += after.get("prefix_cache_queries", 0) - before.get("prefix_cache_queries", 0)
        await model.aclose()
        n *= repeats

        line("wave-batched", f"{wave:.1f} s  ({n / wave:.3f} samples/s)")
        line("engine (per-sample pipelines)", f"{engine:.1f} s  ({n / engine:.3f} samples/s)")
        line("engine / wave throughput", f"{wave / engine:.2f}x  (target >= 1.3x)")
        line(
            "engine (last run): revised / early-stopped / failed",
            f"{res.summary.counters.get('revised', 0):.0f} / {res.summary.counters.get('early_stopped', 0):.0f}"
            f" / {res.summary.n_failed}",
        )
        if queries:
            line("vLLM prefix-cache hit rate (engine run)", f"{hits / queries:.1%}  ({hits:.0f}/{queries:.0f} tokens)")
        else:
            line("vLLM prefix-cache hit rate", "not reported by this vLLM's /metrics")
    finally:
        if server is not None:
            server.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="stub,resume,vllm")
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--revisions", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--sequential-subset", type=int, default=5)
    ap.add_argument("--vllm-prompts", type=int, default=32)
    ap.add_argument("--vllm-concurrency", type=int, default=8)
    ap.add_argument("--vllm-max-tokens", type=int, default=32)
    ap.add_argument("--vllm-repeats", type=int, default=1, help="wave/engine pairs, order alternating")
    ap.add_argument("--vllm-base-url", default=None, help="reuse a running server serving 'embedded'")
    ap.add_argument("--prompts-file", type=Path, default=PROMPTS_FILE)
    args = ap.parse_args()
    globals()["PROMPTS_FILE"] = args.prompts_file
    print(f"prompts from {args.prompts_file}")
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="cai-bench-") as tmp:
        if parts & {"stub", "resume"}:
            await bench_stub(
                args.prompts,
                args.revisions,
                args.concurrency,
                args.latency,
                args.sequential_subset,
                Path(tmp) / "stub-run",
            )
        if "vllm" in parts:
            await bench_vllm(
                args.vllm_prompts,
                args.revisions,
                args.vllm_max_tokens,
                args.vllm_concurrency,
                args.vllm_repeats,
                args.vllm_base_url,
            )


if __name__ == "__main__":
    asyncio.run(main())
