"""Dataset statistics of a ``cai generate`` run (``report.json``), from its store and files.

Everything here is read from what the run recorded: the samples (traces) in ``state.sqlite``,
the call cache's timestamps and token counts, and the rows in ``preferences.jsonl``. Nothing
calls a model. The figures follow the seed chapter's criteria for preference data: a clear
margin, judge consistency, diverse prompts (near-duplicates), no length bias, no creeping
over-refusal; plus the revision funnel and why samples or revisions were dropped.
"""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cai.errors import NotARunError
from cai.outputs import PREFERENCES
from cai.quality import prompt_text, words
from cai.records import Trace
from cai.refusal import RefusalRule
from cai.store import DB_NAME, RunStore

REPORT_JSON = "report.json"


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


# -- near-duplicates (MinHash over word 3-gram shingles, banded LSH, union-find;
# crc32 shingle hashes, so the result does not depend on PYTHONHASHSEED) ----------

_PRIME = (1 << 61) - 1


def _shingles(text: str, n: int = 3) -> set[int]:
    tokens = words(text)
    if len(tokens) < n:
        return {zlib.crc32(" ".join(tokens).encode())} if tokens else set()
    return {zlib.crc32(" ".join(tokens[i : i + n]).encode()) for i in range(len(tokens) - n + 1)}


def near_duplicate_clusters(
    texts: Sequence[str], threshold: float = 0.7, num_perm: int = 64, bands: int = 16
) -> list[list[int]]:
    """Groups (of >= 2 indices) of texts whose shingle Jaccard similarity is >= ``threshold``.
    MinHash + LSH proposes candidates; each candidate pair is checked exactly."""
    rng = np.random.default_rng(0)
    a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)
    b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)
    shingles = [_shingles(t) for t in texts]
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    rows = num_perm // bands
    for i, sh in enumerate(shingles):
        if not sh:
            continue
        x = np.array(sorted(sh), dtype=np.uint64)
        sig = ((x[:, None] * a[None, :] + b[None, :]) % np.uint64(_PRIME)).min(axis=0)
        for band in range(bands):
            buckets[(band, sig[band * rows : (band + 1) * rows].tobytes())].append(i)
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    checked: set[tuple[int, int]] = set()
    for members in buckets.values():
        for j in members[1:]:
            i = members[0]
            if (i, j) in checked or find(i) == find(j):
                continue
            checked.add((i, j))
            inter = len(shingles[i] & shingles[j])
            if inter / len(shingles[i] | shingles[j]) >= threshold:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)


def _duplicates(texts: Sequence[str]) -> dict[str, Any]:
    clusters = near_duplicate_clusters(texts)
    return {
        "items": len(texts),
        "clusters": len(clusters),
        "in_clusters": sum(len(c) for c in clusters),
        "largest": len(clusters[0]) if clusters else 0,
        "examples": [texts[c[0]][:160] for c in clusters[:3]],
    }


# -- the pieces --------------------------------------------------------------------------


def _principles(traces: Sequence[Trace]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"drawn": 0, "revised": 0, "early_stopped": 0, "unchanged": 0, "truncated": 0, "degenerate": Counter()}
    )
    for t in traces:
        for s in t.steps:
            row = table[s.principle]
            row["drawn"] += 1
            if s.accepted:
                row["revised"] += 1
            if s.note == "no_revision_needed":
                row["early_stopped"] += 1
            elif s.note == "unchanged":
                row["unchanged"] += 1
            elif s.note == "truncated":
                row["truncated"] += 1
            elif s.note.startswith("degenerate"):
                row["degenerate"][s.note.split(":", 1)[1]] += 1
    return {name: {**row, "degenerate": dict(row["degenerate"])} for name, row in sorted(table.items())}


def _lengths(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    chosen = [len(words(p["chosen"][-1]["content"])) for p in pairs]
    rejected = [len(words(p["rejected"][-1]["content"])) for p in pairs]
    ratios = [c / r for c, r in zip(chosen, rejected) if r]
    return {
        "chosen_words": chosen,
        "rejected_words": rejected,
        "chosen_longer_share": _share(sum(c > r for c, r in zip(chosen, rejected)), len(pairs)),
        "mean_length_ratio": _mean(ratios),
        "mean_chosen_words": _mean(chosen),
        "mean_rejected_words": _mean(rejected),
    }


def _judge(traces: Sequence[Trace]) -> dict[str, Any] | None:
    verdicts = [t.metadata["verify"] for t in traces if "verify" in t.metadata]
    if not verdicts:
        return None
    first_wins, orders = 0, 0
    for v in verdicts:
        for d in v.get("details", []):
            for o in d.get("orders", []):
                if o.get("status") == "ok" and o.get("p_a") is not None:
                    p_first = 1 - o["p_a"] if o["swapped"] else o["p_a"]
                    orders += 1
                    first_wins += p_first > 0.5
    readable = [v for v in verdicts if v.get("consistent") is not None]
    return {
        "judge": verdicts[0].get("judge"),
        "verified": len(verdicts),
        "kept": sum(bool(v.get("kept")) for v in verdicts),
        "not_kept": dict(Counter(v["reason"] for v in verdicts if not v.get("kept"))),
        "margins": [v["margin"] for v in verdicts if v.get("margin") is not None],
        "consistency": _share(sum(bool(v["consistent"]) for v in readable), len(readable)),
        # share of single-order answers that preferred the response shown first (0.5 = no bias)
        "first_position_share": _share(first_wins, orders),
        "orders_read": orders,
    }


def _timeline(run_dir: Path) -> dict[str, Any]:
    """Samples finished and completion tokens per time bin, from the store's timestamps."""
    db = sqlite3.connect(f"file:{run_dir / DB_NAME}?mode=ro", uri=True)
    try:
        done = [r[0] for r in db.execute("SELECT updated FROM samples WHERE status='done'")]
        calls = [
            (created, json.loads(c).get("usage", {}).get("completion_tokens", 0))
            for created, c in db.execute("SELECT created, completion FROM calls")
        ]
    finally:
        db.close()
    stamps = done + [c for c, _ in calls]
    if not stamps:
        return {"bin_s": 0, "t": [], "samples": [], "completion_tokens": []}
    start, end = min(stamps), max(stamps)
    bin_s = max(1.0, (end - start) / 30)
    n = int((end - start) // bin_s) + 1
    samples, tokens = [0] * n, [0] * n
    for t in done:
        samples[int((t - start) // bin_s)] += 1
    for t, k in calls:
        tokens[int((t - start) // bin_s)] += int(k or 0)
    return {
        "bin_s": bin_s,
        "t": [round(i * bin_s, 3) for i in range(n)],
        "samples": samples,
        "completion_tokens": tokens,
        "started": start,
        "wall_s": end - start,
    }


def read_preferences(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / PREFERENCES
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_stats(run_dir: str | Path) -> dict[str, Any]:
    """The statistics of one run directory (see the module docstring)."""
    run_dir = Path(run_dir)
    if not (run_dir / DB_NAME).exists():
        raise NotARunError(f"{run_dir} is not a cai run directory (no {DB_NAME})")
    with RunStore(run_dir, read_only=True) as store:
        rows = list(store.samples())
        config, model_calls, cached_calls = store.config, store.model_calls, store.cached_calls
    traces = [Trace.from_dict(r.record) for r in rows if r.status == "done" and r.record and "prompt" in r.record]
    failed = Counter(r.reason or "unknown" for r in rows if r.status != "done")
    pairs = read_preferences(run_dir)
    counters: Counter[str] = Counter()
    for r in rows:
        if r.status == "done":
            counters.update(r.counters)
    steps = [s for t in traces for s in t.steps]
    degenerate = Counter(s.note.split(":", 1)[1] for s in steps if s.note.startswith("degenerate"))
    verify = _judge(traces)
    revised = [t for t in traces if t.revised]
    refusal = RefusalRule(window=200)
    chosen = [p["chosen"][-1]["content"] for p in pairs]

    def refusal_share(texts: Iterable[str]) -> float | None:
        texts = list(texts)
        return _share(sum(refusal.is_refusal(t) for t in texts), len(texts))

    return {
        "run": str(run_dir),
        "made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "config": {
            k: config.get(k)
            for k in ("model", "constitution", "revisions", "sampling", "seed", "params", "quality", "verify")
        },
        "funnel": {
            "prompts": len(rows),
            "answered": len(traces),
            "revised": len(revised),
            "pairs": len(pairs),
        },
        "failed": dict(failed),
        "early_stopped": sum(t.stop_reason == "early_stop" for t in traces),
        "revisions": {
            "drawn": len(steps),
            "accepted": sum(s.accepted for s in steps),
            "unchanged": sum(s.note == "unchanged" for s in steps),
            "truncated_kept": sum(s.note == "truncated" for s in steps),
            "dropped": dict(degenerate.most_common()),
        },
        "pairs_not_kept": dict(verify["not_kept"]) if verify else {},
        "principles": _principles(traces),
        "length": _lengths(pairs),
        "judge": verify,
        "duplicates": {
            "prompts": _duplicates([prompt_text(t.prompt) for t in traces]),
            "chosen": _duplicates(chosen),
        },
        "refusal_share": {
            "chosen": refusal_share(chosen),
            "rejected": refusal_share(p["rejected"][-1]["content"] for p in pairs),
        },
        "usage": {
            "prompt_tokens": int(counters.get("prompt_tokens", 0)),
            "completion_tokens": int(counters.get("completion_tokens", 0)),
            "model_calls": model_calls,
            "cached_calls": cached_calls,
        },
        "throughput": _timeline(run_dir),
    }


def write_stats(run_dir: str | Path) -> Path:
    """Compute the run's statistics and write them to ``RUN/report.json``."""
    stats = run_stats(run_dir)
    path = Path(run_dir) / REPORT_JSON
    path.write_text(json.dumps(stats, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
