"""The files a ``cai generate`` run leaves, and ``cai export``.

In the run directory, appended as samples finish (exactly once each, see ``cai.runner``):
- ``traces.jsonl``: every step of every done sample (``Trace.to_dict()``);
- ``sft.jsonl``: TRL conversational SFT rows ``{"messages": [...]}`` (prompt + final answer);
- ``preferences.jsonl``: TRL conversational preference rows ``{"prompt", "chosen", "rejected"}``
  (chosen = final revision, rejected = initial answer), only for samples that were revised;
  with ``--verify JUDGE`` only the pairs the judge kept, with ``score_chosen``,
  ``score_rejected``, ``margin`` and ``consistent``;
- ``rejected_pairs.jsonl`` (with ``--verify`` only): the revised pairs the judge did not keep,
  with the verdict (``reason``: initial_wins, inconsistent, tie, unparseable, low_margin).

``export_run`` turns a run's stored records into a HF ``datasets`` folder or Parquet files with
a dataset card. The card is built from an allow-list of config fields, so secrets never reach it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from cai.records import Trace
from cai.runner import OutputWriter
from cai.store import RunStore

TRACES, SFT, PREFERENCES = "traces.jsonl", "sft.jsonl", "preferences.jsonl"
REJECTED_PAIRS = "rejected_pairs.jsonl"
ExportFormat = Literal["hf", "parquet"]
# config fields that may appear on a dataset card (never options such as api keys)
CARD_FIELDS = ("model", "constitution", "constitution_name", "revisions", "sampling", "seed", "few_shot", "params")


def _sft(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [Trace.from_dict(record).sft_record()]


def pair_kept(trace: Trace) -> bool:
    """The sample makes a preference row: it was revised and, if a judge verified it, kept."""
    verdict = trace.metadata.get("verify")
    return trace.revised and (verdict is None or bool(verdict.get("kept")))


def preference_row(trace: Trace) -> dict[str, Any] | None:
    """The trace's preference row (None when it makes none), with the judge's scores if any."""
    if not pair_kept(trace):
        return None
    pair = trace.preference_record()
    verdict = trace.metadata.get("verify")
    if pair is not None and verdict is not None:
        pair.update({k: verdict.get(k) for k in ("score_chosen", "score_rejected", "margin", "consistent")})
    return pair


def _preference(record: dict[str, Any]) -> list[dict[str, Any]]:
    pair = preference_row(Trace.from_dict(record))
    return [pair] if pair else []


def _rejected_pair(record: dict[str, Any]) -> list[dict[str, Any]]:
    trace = Trace.from_dict(record)
    if not trace.revised or pair_kept(trace):
        return []
    verdict = {k: v for k, v in trace.metadata["verify"].items() if k != "details"}
    return [{"id": trace.id, **(trace.preference_record() or {}), "verdict": verdict}]


def generate_writers(verify: bool = False) -> list[OutputWriter]:
    writers = [
        OutputWriter(TRACES, lambda record: [record]),
        OutputWriter(SFT, _sft),
        OutputWriter(PREFERENCES, _preference),
    ]
    return writers + [OutputWriter(REJECTED_PAIRS, _rejected_pair)] if verify else writers


def run_counts(store: RunStore) -> dict[str, int]:
    counts = {"samples_done": 0, "samples_failed": 0, "sft_rows": 0, "preference_pairs": 0, "early_stopped": 0}
    for row in store.samples():
        if row.status != "done":
            counts["samples_failed"] += 1
            continue
        counts["samples_done"] += 1
        counts["sft_rows"] += 1
        counts["preference_pairs"] += int(row.counters.get("pairs", row.counters.get("revised", 0)))
        counts["early_stopped"] += int(row.counters.get("early_stopped", 0))
    return counts


# licence texts recognised next to the input prompts (first match wins), as HF licence ids
_LICENCE_TEXTS = (
    ("MIT License", "mit"),
    ("Apache License", "apache-2.0"),
    ("Attribution 4.0 International", "cc-by-4.0"),
    ("Attribution-ShareAlike 4.0", "cc-by-sa-4.0"),
    ("CC0 1.0", "cc0-1.0"),
)
_SIZES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
)


def input_license(sources: list[str]) -> str | None:
    """The HF licence id of the input prompts, from a licence file in their folder
    (``LICENSE``, ``<name>_LICENSE.txt``, ...), when there is one and it is recognised."""
    folders = {Path(src.rsplit(":", 1)[0]).parent for src in sources if ":" in src}
    for folder in sorted(folders):
        for path in sorted(folder.glob("*LICEN[CS]E*")) if folder.is_dir() else []:
            text = path.read_text(encoding="utf-8", errors="replace")[:4000]
            for marker, licence in _LICENCE_TEXTS:
                if marker in text:
                    return licence
    return None


def _language(config: dict[str, Any]) -> str | None:
    """The run's constitution language, when the recorded constitution still loads as the same one."""
    from cai.constitution import load_constitution

    try:
        constitution = load_constitution(config.get("constitution_name", ""))
    except Exception:  # a custom constitution file that is gone: the card just says less
        return None
    return constitution.language if constitution.id == config.get("constitution") else None


def size_category(rows: int) -> str:
    return next((label for limit, label in _SIZES if rows < limit), "n>10M")


def dataset_card(
    config: dict[str, Any],
    counts: dict[str, int],
    fmt: ExportFormat,
    *,
    license: str = "unknown",
    language: str | None = None,
    pretty_name: str | None = None,
) -> str:
    """README.md with HF dataset-card metadata; ``sft`` is the default config, so
    ``datasets.load_dataset(folder)`` loads it without a config name."""
    import yaml

    safe = {k: config[k] for k in CARD_FIELDS if k in config}
    constitution = safe.get("constitution", "?")
    files = {"hf": ("sft/*.arrow", "preferences/*.arrow"), "parquet": ("sft.parquet", "preferences.parquet")}[fmt]
    meta: dict[str, Any] = {
        "pretty_name": pretty_name or f"cai {safe.get('constitution_name', 'constitutional')} SL-CAI data",
        "license": license,
        **({"language": [language]} if language else {}),
        "task_categories": ["text-generation"],
        "size_categories": [size_category(max(counts.get("sft_rows", 0), counts.get("preference_pairs", 0)))],
        "tags": ["constitutional-ai", "sl-cai", "cai", "sft", "dpo", "preference"],
        "configs": [
            {"config_name": "sft", "default": True, "data_files": [{"split": "train", "path": files[0]}]},
            {"config_name": "preferences", "data_files": [{"split": "train", "path": files[1]}]},
        ],
    }
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        "# Critique-revise (SL-CAI) data made with cai",
        "",
        f"- constitution: `{constitution}` (name@version#hash)",
        f"- model: `{safe.get('model', '?')}`",
        f"- revisions: {safe.get('revisions')}, principle sampling: {safe.get('sampling')}, "
        f"seed: {safe.get('seed')}, few-shot: {safe.get('few_shot')}",
        f"- generation params: `{json.dumps(safe.get('params', {}), sort_keys=True)}`",
        f"- licence: `{license}`"
        + (
            ""
            if license != "unknown"
            else " (set it with `cai export --license`; it should follow the prompts' licence)"
        ),
        f"- exported: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        "",
        "| what | count |",
        "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v} |" for k, v in counts.items()],
        "",
        "`sft` (the default config): TRL conversational SFT rows (`messages`: prompt turns + the final",
        "revised answer). `preferences`: TRL conversational preference rows (`prompt`, `chosen` = final",
        "revision, `rejected` = initial answer), only for samples whose answer was revised.",
        "",
    ]
    return "\n".join(lines)


def export_run(
    run_dir: str | Path,
    to: str | Path,
    fmt: ExportFormat = "hf",
    *,
    license: str | None = None,
    language: str | None = None,
    pretty_name: str | None = None,
) -> dict[str, int]:
    """Export a run's done samples (from its store, the source of truth) with a dataset card.
    ``license`` defaults to the input prompts' licence where a licence file next to them
    says it, else ``unknown``; ``language`` to the constitution's."""
    from datasets import Dataset

    run_dir, to = Path(run_dir), Path(to)
    if not (run_dir / "state.sqlite").exists():
        raise FileNotFoundError(f"{run_dir} is not a cai run directory (no state.sqlite)")
    if fmt not in ("hf", "parquet"):
        raise ValueError(f"unknown export format {fmt!r}; use hf or parquet")
    with RunStore(run_dir, read_only=True) as store:
        traces = [Trace.from_dict(r.record or {}) for r in store.samples("done")]
        config, counts = store.config, run_counts(store)
    sft = [t.sft_record() for t in traces]
    prefs = [p for p in (t.preference_record() for t in traces) if p]
    to.mkdir(parents=True, exist_ok=True)
    for name, rows in (("sft", sft), ("preferences", prefs)):
        ds = Dataset.from_list(rows) if rows else Dataset.from_dict({k: [] for k in _empty_columns(name)})
        if fmt == "hf":
            ds.save_to_disk(str(to / name))
        else:
            ds.to_parquet(str(to / f"{name}.parquet"))
    sources = [str(t.metadata.get("source", "")) for t in traces]
    card = dataset_card(
        config,
        counts,
        fmt,
        license=license or input_license(sources) or "unknown",
        language=language or _language(config),
        pretty_name=pretty_name,
    )
    (to / "README.md").write_text(card, encoding="utf-8")
    return {"sft": len(sft), "preferences": len(prefs)}


def _empty_columns(name: str) -> tuple[str, ...]:
    return ("messages",) if name == "sft" else ("prompt", "chosen", "rejected")
