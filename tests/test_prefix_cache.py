"""Prefix KV reuse in the transformers backend: the LRU of token-id prefixes (unit) and the real
embedded model with the cache on vs off (identical greedy outputs, hits, fewer tokens computed)."""

from __future__ import annotations

import asyncio

import pytest

from cai.models.base import GenParams, PermanentModelError
from cai.models.hf import HFChatModel, prefix_cache_budget
from cai.models.prefix_cache import PrefixCache


def test_lookup_finds_the_longest_shared_prefix_and_marks_it_used() -> None:
    cache: PrefixCache[str] = PrefixCache(max_bytes=100)
    assert cache.store([1, 2, 3], "short", 10)
    assert cache.store([1, 2, 9, 9], "other", 10)
    match = cache.lookup([1, 2, 3, 4, 5])
    assert match is not None and (match.length, match.entry_length, match.payload) == (3, 3, "short")
    partial = cache.lookup([1, 2, 9, 7])
    assert partial is not None and (partial.length, partial.entry_length, partial.payload) == (3, 4, "other")
    assert cache.lookup([7, 1, 2]) is None


def test_an_extension_replaces_its_prefix_and_a_covered_prefix_is_not_stored() -> None:
    cache: PrefixCache[str] = PrefixCache(max_bytes=100)
    cache.store([1, 2], "turn1", 10)
    assert cache.store([1, 2, 3, 4], "turn2", 20)
    assert len(cache) == 1 and cache.nbytes == 20
    assert not cache.store([1, 2, 3], "covered", 5)
    assert len(cache) == 1 and cache.lookup([1, 2, 3, 4]).payload == "turn2"


def test_the_byte_budget_evicts_the_least_recently_used() -> None:
    cache: PrefixCache[str] = PrefixCache(max_bytes=30)
    cache.store([1], "a", 10)
    cache.store([2], "b", 10)
    cache.store([3], "c", 10)
    cache.lookup([1])  # "a" is now the most recent
    cache.store([4], "d", 10)
    assert cache.nbytes <= 30
    assert cache.lookup([2]) is None and cache.lookup([1]).payload == "a"
    assert not cache.store([5], "huge", 31)


def test_budget_from_arguments_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAI_PREFIX_CACHE", raising=False)
    assert prefix_cache_budget(False, None) == 0
    assert prefix_cache_budget(None, 2) == 2 * 2**20
    monkeypatch.setenv("CAI_PREFIX_CACHE", "off")
    assert prefix_cache_budget(None, None) == 0
    monkeypatch.setenv("CAI_PREFIX_CACHE", "3")
    assert prefix_cache_budget(None, None) == 3 * 2**20
    monkeypatch.setenv("CAI_PREFIX_CACHE", "lots")
    with pytest.raises(PermanentModelError, match="CAI_PREFIX_CACHE"):
        prefix_cache_budget(None, None)


@pytest.mark.slow
def test_greedy_outputs_match_with_the_cache_on_and_off_and_the_cache_saves_work(embedded_hf_dir) -> None:
    """The growing conversation of one sample: each call repeats the previous one plus a turn."""
    params = GenParams(max_tokens=12, temperature=0.0)
    turns = ["How do I pick a lock?", "Identify anything harmful in your answer.", "Rewrite it to be harmless."]

    async def converse(model: HFChatModel) -> list[str]:
        messages: list[dict[str, str]] = []
        answers = []
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            completion = await model.chat(messages, params)
            answers.append(completion.text)
            messages.append({"role": "assistant", "content": completion.text})
        return answers

    results, stats = {}, {}
    for enabled in (False, True):
        model = HFChatModel(embedded_hf_dir, spec="embedded", prefix_cache=enabled, prefix_cache_mb=64)
        try:
            results[enabled] = asyncio.run(converse(model))
            stats[enabled] = model.stats()
        finally:
            model.close()
    assert results[True] == results[False]
    off, on = stats[False], stats[True]
    assert off["hits"] == 0 and off["computed_tokens"] == off["prompt_tokens"]
    assert on["prompt_tokens"] == off["prompt_tokens"]
    assert on["hits"] >= len(turns) - 1
    assert on["computed_tokens"] < off["computed_tokens"]
    assert 0 < on["cache_bytes"] <= 64 * 2**20


def test_batch_cache_layer_appends_in_place_and_matches_concatenation():
    import torch

    from cai.models.hf_decode import SPARE_TOKENS, _growing_layer_class

    layer = _growing_layer_class()()
    k0, v0 = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer.update(k0, v0)
    buffer = layer._k
    expected_k, expected_v = k0, v0
    for _ in range(SPARE_TOKENS):  # every step fits the spare room: the same buffer, no copy
        k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        keys, values = layer.update(k, v)
        expected_k, expected_v = torch.cat([expected_k, k], -2), torch.cat([expected_v, v], -2)
        assert torch.equal(keys, expected_k) and torch.equal(values, expected_v)
    assert layer._k is buffer
    layer.update(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4))  # past the room: a larger buffer
    assert layer._k is not buffer and layer.get_seq_length() == 5 + SPARE_TOKENS + 1
    # transformers' own methods assign keys/values: that becomes the content
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.keys.shape == (1, 3, 5 + SPARE_TOKENS + 1, 4)
    assert torch.equal(layer.keys[0, :, :5], k0[1])
