"""The embedded model and the transformers backend, for real (short generations)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cai.models import ContextLengthError, GenParams, load_model
from cai.models.embedded import export_embedded

pytestmark = pytest.mark.slow

PROMPTS = ["What is 2+2?", "Name a color.", "Write a haiku about the sea.", "How do I bake bread?"]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_export_is_a_plain_hf_folder(embedded_hf_dir: Path) -> None:
    config = json.loads((embedded_hf_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (embedded_hf_dir / "model.safetensors").stat().st_size > 100_000_000
    assert "<|im_start|>" in (embedded_hf_dir / "chat_template.jinja").read_text()
    # exporting again is a cache hit returning the same folder
    assert export_embedded() == embedded_hf_dir


def test_export_to_dir_copies_the_cache(embedded_hf_dir: Path, tmp_path: Path) -> None:
    out = export_embedded(tmp_path / "smol")
    assert out == (tmp_path / "smol").resolve()
    assert (out / "model.safetensors").stat().st_size == (embedded_hf_dir / "model.safetensors").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".smol.tmp")]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_embedded(tmp_path / "other")


async def test_short_generation_with_usage_and_logprobs(embedded_model) -> None:
    c = await embedded_model.chat(_user(PROMPTS[0]), GenParams(max_tokens=4, logprobs=True, top_logprobs=3))
    assert c.text.strip()
    assert c.finish_reason == "length"
    assert c.usage.completion_tokens == 4 and c.usage.calls == 1
    assert c.usage.prompt_tokens == embedded_model.count_tokens(_user(PROMPTS[0]))
    assert c.logprobs is not None and len(c.logprobs) == 4
    for tok in c.logprobs:
        assert tok.logprob <= 0
        assert len(tok.top) == 3
        assert tok.token in tok.top  # greedy: the chosen token is the top alternative
        assert max(tok.top.values()) == pytest.approx(tok.logprob)
    assert "".join(t.token for t in c.logprobs) == c.text


async def test_micro_batched_greedy_equals_unbatched(embedded_model) -> None:
    params = GenParams(max_tokens=12)
    alone = [await embedded_model.chat(_user(p), params) for p in PROMPTS]
    before = len(embedded_model.batch_sizes)
    together = await asyncio.gather(*(embedded_model.chat(_user(p), params) for p in PROMPTS))
    assert max(embedded_model.batch_sizes[before:]) > 1, "concurrent calls were not batched"
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.usage for c in together] == [c.usage for c in alone]


async def test_per_request_max_tokens_and_stop_in_one_batch(embedded_model) -> None:
    short, stopped, longer = await asyncio.gather(
        embedded_model.chat(_user(PROMPTS[2]), GenParams(max_tokens=2)),
        embedded_model.chat(_user(PROMPTS[2]), GenParams(max_tokens=40, stop=("\n",))),
        embedded_model.chat(_user(PROMPTS[2]), GenParams(max_tokens=10)),
    )
    assert short.usage.completion_tokens == 2 and short.finish_reason == "length"
    assert longer.usage.completion_tokens == 10
    assert longer.text.startswith(short.text)
    assert "\n" not in stopped.text and stopped.finish_reason == "stop"
    assert stopped.text and longer.text.startswith(stopped.text[:10])


async def test_a_stop_string_of_several_tokens_cuts_the_answer_where_it_starts(embedded_model) -> None:
    params = GenParams(max_tokens=40)
    full = await embedded_model.chat(_user(PROMPTS[1]), params)
    words = full.text.split()
    assert len(words) > 8, full.text
    stop = " ".join(words[4:7])  # several tokens, ending well after the first of them
    cut = await embedded_model.chat(_user(PROMPTS[1]), GenParams(max_tokens=40, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]


async def test_seeded_sampling_is_reproducible(embedded_model) -> None:
    params = GenParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    a, b = await asyncio.gather(*(embedded_model.chat(_user(PROMPTS[1]), params) for _ in range(2)))
    assert a.text == b.text


async def test_over_long_prompt_is_a_context_length_error(embedded_model) -> None:
    assert embedded_model.capabilities.max_context == 8192
    with pytest.raises(ContextLengthError):
        await embedded_model.chat(_user("word " * 9000), GenParams(max_tokens=2))


def test_chat_sync_and_spec_errors() -> None:
    from cai.models import ModelSpecError, PermanentModelError

    with pytest.raises(ModelSpecError):
        load_model("nosuchbackend:x")
    with pytest.raises(PermanentModelError):
        load_model("embedded:other")
    with pytest.raises(PermanentModelError):
        load_model("hf:/nonexistent/model/dir")


def test_chat_sync_on_embedded(embedded_model) -> None:
    c = embedded_model.chat_sync(_user(PROMPTS[0]), GenParams(max_tokens=3))
    assert c.usage.completion_tokens == 3
