"""Speculation in the transformers backend: n-gram drafts (unit), speculative sampling keeps
the row's distribution (statistics on a small vocabulary), and the real embedded model gives
the same greedy outputs with drafts on and off while keeping some drafts."""

from __future__ import annotations

import asyncio

import pytest
import torch

from cai.models import hf_decode
from cai.models.base import GenParams
from cai.models.hf import HFChatModel
from cai.models.ngram_draft import NgramDrafter


def test_drafts_follow_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    drafter = NgramDrafter([5, 1, 2, 3, 4, 9, 1, 2, 3, 7, 8, 6, 1, 2])
    assert drafter.propose(3) == [3, 7, 8]  # "1 2" last ended before the 3 of "1 2 3 7 8"
    drafter.append(3)  # suffix "1 2 3": latest earlier occurrence is followed by 7 8 6
    assert drafter.propose(2) == [7, 8]
    assert drafter.propose(0) == []
    assert NgramDrafter([1, 2, 3, 4]).propose(4) == []  # nothing repeats


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_checking_a_draft_samples_the_rows_distribution(top_p: float) -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    params = GenParams(temperature=0.7, top_p=top_p)
    want = hf_decode._probs(logits, params)
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.zeros(5)
    for _ in range(draws):
        counts[hf_decode._check_draft(logits, params, generator, draft=1)] += 1
    got = counts / draws
    assert torch.allclose(got, want, atol=0.015), (got, want)
    if top_p < 1.0:
        assert counts[want == 0].sum() == 0  # outside the nucleus: never, drafted or not


@pytest.mark.slow
def test_greedy_outputs_match_with_drafts_on_and_off(embedded_hf_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts the model copies from (drafts get kept) and one it does not (drafts rejected:
    holes in the batch cache, compacted often with a small limit), decoded together, then a
    follow-up turn that starts from the prefix cache the first calls filled."""
    monkeypatch.setattr(hf_decode, "MAX_HOLES", 4)
    compactions = []
    original = hf_decode._Batch._compact
    monkeypatch.setattr(hf_decode._Batch, "_compact", lambda self: (compactions.append(1), original(self)))
    params = GenParams(max_tokens=48, temperature=0.0)
    prompts = [
        "Repeat this text exactly: the quick brown fox jumps over the lazy dog near the river bank.",
        "Rewrite this to be polite: give me the money now or else you will regret it.",
        "How do I pick a lock?",
    ]

    async def run(model: HFChatModel) -> list[str]:
        first = await asyncio.gather(*[model.chat([{"role": "user", "content": p}], params) for p in prompts])
        follow = [
            {"role": "user", "content": prompts[0]},
            {"role": "assistant", "content": first[0].text},
            {"role": "user", "content": "Now repeat your answer once more."},
        ]
        return [c.text for c in first] + [(await model.chat(follow, params)).text]

    results, stats = {}, {}
    for drafts in (0, 4):
        model = HFChatModel(embedded_hf_dir, spec="embedded", draft_tokens=drafts, prefix_cache_mb=64)
        try:
            results[drafts] = asyncio.run(run(model))
        finally:
            model.close()
        stats[drafts] = model.stats()
    assert results[4] == results[0]
    assert stats[0]["drafted"] == 0
    assert stats[4]["accepted"] > 0 and stats[4]["drafted"] > stats[4]["accepted"]
    assert stats[4]["decode_steps"] < stats[0]["decode_steps"]
    assert compactions
