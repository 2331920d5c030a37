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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from cai import records
from cai.records import Trace
from cai.runner import OutputWriter
from cai.store import RunStore

TRACES, SFT, PREFERENCES = "traces.jsonl", "sft.jsonl", "preferences.jsonl"
REJECTED_PAIRS = "rejected_pairs.jsonl"
ExportFormat = Literal["hf", "parquet"]
# config fields that may appear on a dataset card (never options such as api keys)
CARD_FIELDS = ("model", "constitution", "constitution_name", "revisions", "sampling", "seed", "few_shot", "params")


def pair_kept(trace: Trace) -> bool:
    """The sample makes a preference row: it was revised and, if a judge verified it, kept."""
    return trace.pair_kept


def preference_row(trace: Trace) -> dict[str, Any] | None:
    """The trace's preference row (None when it makes none), with the judge's scores if any."""
    if not trace.pair_kept:
        return None
    return records.preference_row(trace.prompt, trace.final, trace.initial, scores=trace.verdict)


def rejected_pair(trace: Trace) -> dict[str, Any] | None:
    """A revised pair the judge did not keep, with its verdict (None for any other trace)."""
    if not trace.revised or trace.pair_kept or trace.verdict is None:
        return None
    verdict = {k: v for k, v in trace.verdict.items() if k != "details"}
    return records.preference_row(trace.prompt, trace.final, trace.initial, id=trace.id) | {"verdict": verdict}


def trace_rows(trace: Trace) -> dict[str, list[dict[str, Any]]]:
    """The rows one done sample adds to the SFT, preference and rejected-pair files."""
    optional = {PREFERENCES: preference_row(trace), REJECTED_PAIRS: rejected_pair(trace)}
    return {SFT: [trace.sft_record()], **{name: [row] if row else [] for name, row in optional.items()}}


def generate_writers(verify: bool = False) -> list[OutputWriter]:
    """The run files of ``cai generate``. A sample's record becomes a Trace once; every writer
    reads its rows from that one conversion (the runner hands the writers the same record
    object, one after the other)."""
    last: dict[str, Any] = {"record": None}

    def lines(name: str) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
        def rows(record: dict[str, Any]) -> list[dict[str, Any]]:
            if last["record"] is not record:
                last.update(record=record, rows=trace_rows(Trace.from_dict(record)))
            return list(last["rows"][name])

        return rows

    names = [SFT, PREFERENCES, *([REJECTED_PAIRS] if verify else [])]
    return [OutputWriter(TRACES, lambda record: [record]), *(OutputWriter(name, lines(name)) for name in names)]


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
    rows = [trace_rows(t) for t in traces]
    sft = [row for r in rows for row in r[SFT]]
    prefs = [row for r in rows for row in r[PREFERENCES]]
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
