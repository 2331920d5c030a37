"""report.json statistics (cai.stats) on a scripted run and on crafted texts."""

from __future__ import annotations

import json

from cai.stats import near_duplicate_clusters, write_stats
from tests.quality_runs import PROMPTS, scripted_run


async def test_run_stats_count_the_funnel_and_every_drop_reason(tmp_path):
    result = await scripted_run(tmp_path / "run")
    assert result.summary.counters["dropped_repeated_ngrams"] == 2
    assert result.summary.counters["dropped_off_topic"] == 2
    assert result.summary.counters["pairs"] == 2
    stats = json.loads(write_stats(tmp_path / "run").read_text())
    assert stats["funnel"] == {"prompts": 5, "answered": 5, "revised": 2, "pairs": 2}
    assert stats["revisions"]["dropped"] == {"repeated_ngrams": 2, "off_topic": 2}
    assert stats["early_stopped"] == 1
    per_principle = stats["principles"]
    assert sum(p["drawn"] for p in per_principle.values()) == stats["revisions"]["drawn"] == 9
    assert sum(sum(p["degenerate"].values()) for p in per_principle.values()) == 4
    assert stats["length"]["chosen_longer_share"] == 1.0 and stats["length"]["mean_length_ratio"] > 1.5
    assert stats["refusal_share"] == {"chosen": 0.0, "rejected": 0.0}
    assert stats["usage"]["model_calls"] == stats["usage"]["cached_calls"] > 0
    assert sum(stats["throughput"]["samples"]) == 5
    assert stats["duplicates"]["prompts"]["items"] == len(PROMPTS) and stats["duplicates"]["prompts"]["clusters"] == 0
    assert stats["judge"] is None and stats["config"]["quality"]["on_truncated"] == "keep"


def test_near_duplicates_are_clustered():
    base = "How do I pick the lock on my own front door when I have lost the key?"
    texts = [
        base,
        base.replace("front", "back"),
        "What is the capital of France and why?",
        base + " Please help.",
        "Completely different question about cooking pasta at home tonight.",
    ]
    clusters = near_duplicate_clusters(texts, threshold=0.6)
    assert clusters == [[0, 1, 3]]
    assert near_duplicate_clusters(texts, threshold=0.99) == []
