"""Provenance beside every trained model: what it was trained from and how."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "cai_provenance.json"
DONE_FILE = ".cai_done"


def write_provenance(
    folder: str | Path,
    *,
    trainer: str,
    base_model: str,
    base_provenance: dict[str, Any] | None = None,
    recipe: dict[str, Any],
    data_hash: str,
    constitution_hash: str | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    import torch
    import transformers
    import trl

    from cai import __version__ as cai_version

    record = {
        "trainer": trainer,
        "base_model": base_model,
        "base_provenance": base_provenance,  # the chain: SFT under DPO under ...
        "data_hash": data_hash,
        "constitution_hash": constitution_hash,
        "recipe": recipe,
        "metrics": metrics or {},
        "versions": {
            "cai": cai_version,
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    path = Path(folder) / PROVENANCE_FILE
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def read_provenance(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / PROVENANCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_done(folder: str | Path) -> bool:
    return (Path(folder) / DONE_FILE).is_file()


def mark_done(folder: str | Path) -> None:
    (Path(folder) / DONE_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")


def constitution_hash_for(data: object, constitution: str | None = None) -> str | None:
    """The constitution hash for provenance: from ``constitution`` (name or path) if given,
    else read from the cai run the data came from (its ``traces.jsonl``)."""
    if constitution:
        from cai.constitution import load_constitution

        return load_constitution(constitution).hash
    if not isinstance(data, (str, Path)):
        return None
    folder = Path(data) if Path(data).is_dir() else Path(data).parent
    traces = folder / "traces.jsonl"
    if not traces.is_file():
        return None
    with traces.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        ident = json.loads(first).get("constitution", "")
    except json.JSONDecodeError:
        return None
    return ident.rpartition("#")[2] or None
