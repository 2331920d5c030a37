"""Grouped-query SDPA without repeating the key/value cache (cai/models/grouped_attention.py):
the same numbers as transformers' ``sdpa``, bit for bit, on random tensors and on a batched
decode step with drafts of the real (2-layer) embedded model; and it is what HFChatModel uses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cai.models.grouped_attention import NAME, grouped_sdpa, use_grouped_attention
from cai.models.hf_decode import batch_cache


@pytest.mark.parametrize("tokens", [5, 1])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_grouped_sdpa_equals_transformers_sdpa(mask_kind: str, tokens: int) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    torch.manual_seed(0)
    query = torch.randn(2, 9, tokens, 64)
    key, value = torch.randn(2, 3, 40, 64), torch.randn(2, 3, 40, 64)
    mask = torch.ones(2, 1, tokens, 40, dtype=torch.bool)
    mask[0, :, :, :7] = False  # left padding of row 0
    mask[:, :, tokens // 2 :, 36] = False  # a rejected draft's column
    if mask_kind == "float":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.125)
    got, _ = grouped_sdpa(module, query, key, value, mask, scaling=0.125)
    assert got.shape == want.shape == (2, tokens, 9, 64)
    if tokens > 1:
        assert torch.equal(got, want)
    else:  # transformers broadcasts the one row of the mask: another kernel, other rounding
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_batched_decode_step_with_drafts_is_identical(tiny_hf_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32).eval()
    grouped = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32).eval()
    assert plain.config._attn_implementation == "sdpa"
    assert use_grouped_attention(grouped) and grouped.config._attn_implementation == NAME
    config = plain.config
    kv_heads = config.num_key_value_heads
    rows, past, fed = 3, 30, 4
    torch.manual_seed(1)
    layers = [
        (torch.randn(rows, kv_heads, past, config.head_dim), torch.randn(rows, kv_heads, past, config.head_dim))
        for _ in range(config.num_hidden_layers)
    ]
    mask = torch.ones(rows, past + fed, dtype=torch.long)
    mask[0, :9] = 0  # a shorter row, left-padded
    mask[1, past + 2 :] = 0  # a row with fewer drafts
    inputs = {
        "input_ids": torch.randint(0, 1000, (rows, fed)),
        "attention_mask": mask,
        "position_ids": mask.cumsum(1)[:, past:] - 1,
        "use_cache": True,
        "logits_to_keep": fed,
    }
    shapes: list[tuple[int, ...]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda q, *a, **k: (shapes.append(q.shape), sdpa(q, *a, **k))[1],
    )
    outs = []
    for model in (plain, grouped):
        cache = batch_cache([(k.clone(), v.clone()) for k, v in layers], config, in_place=True)
        with torch.inference_mode():
            outs.append(model(past_key_values=cache, **inputs).logits)
    groups = config.num_attention_heads // kv_heads
    assert (rows, kv_heads, groups * fed, config.head_dim) in shapes  # the grouped model stacked its heads
    assert torch.equal(outs[0], outs[1])


def test_the_transformers_backend_uses_it(embedded_model) -> None:
    assert embedded_model.model.config._attn_implementation == NAME
