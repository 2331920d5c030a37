"""SDPA for grouped-query attention without copying the key/value cache.

transformers' ``sdpa`` repeats each key/value head once per query head it serves
(``repeat_kv``) whenever a mask is given and more than one token is fed, which is every decode
step with drafts: on CPU that copies the whole batch cache (x3 for SmolLM2) in every layer.
Here the query heads that share a key/value head are stacked along the token axis instead
(``[batch, kv_heads, groups * tokens, dim]``) and the mask is repeated to match, so attention
reads the cache as it is. Each score and weighted sum is the same dot product either way, so
for several tokens the results are identical to transformers' (bit for bit,
``tests/test_grouped_attention.py``). For one token transformers stacks the heads too but
broadcasts the mask, which sends CPU SDPA to its generic kernel (3x slower at 8 rows); the full
mask here keeps it on the fused one, with the same results up to float rounding.

``use_grouped_attention(model)`` switches a loaded model that uses ``sdpa`` to it.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "cai_grouped_sdpa"


def grouped_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, tokens, dim = query.shape
    # no mask means is_causal (a fresh prompt), which stacking would break; per-head masks,
    # position biases and softcaps are left to transformers
    if (
        groups == 1
        or attention_mask is None
        or attention_mask.shape[1] != 1
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap")
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    mask = attention_mask.expand(batch, 1, tokens, attention_mask.shape[-1]).repeat(1, 1, groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(batch, heads // groups, groups * tokens, dim),
        key,
        value,
        attn_mask=mask,
        dropout_p=dropout,
        scale=scaling,
    )
    return out.reshape(batch, heads, tokens, dim).transpose(1, 2).contiguous(), None


def use_grouped_attention(model: Any) -> bool:
    """Switch ``model`` from ``sdpa`` to :func:`grouped_sdpa` when it has grouped key/value
    heads; returns whether it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if getattr(config, "_attn_implementation", None) != "sdpa" or not heads or kv_heads == heads:
        return False
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if can_set is None or not can_set():  # remote code that reads the config directly
        return False
    AttentionInterface.register(NAME, grouped_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return config._attn_implementation == NAME
