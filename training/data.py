"""Data adapters: cai outputs and HF datasets -> TRL-ready ``datasets.Dataset`` objects.

Sources: a ``.jsonl``/``.json`` file (``sft.jsonl``, ``preferences.jsonl`` from ``cai generate``),
a ``cai export`` folder or run folder (holding those files), or a folder saved with
``datasets.Dataset.save_to_disk``. Records follow TRL's standard or conversational formats.
Every record is checked; errors name the file, line and field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import DataError as DataError  # its home was here; importers may keep using it
from cai.models.base import Message
from cai.records import check_messages

SFT = "sft"
PREFERENCES = "preferences"


@dataclass
class Row:
    data: dict[str, Any]
    where: str  # "file:line" or "folder[row]"


@dataclass
class Splits:
    train: Any  # datasets.Dataset
    eval: Any | None
    data_hash: str


def read_rows(source: str | Path, stem: str | None = None, *, what: str = "records") -> list[Row]:
    """Read records with their locations. A folder (a cai run or ``cai export`` folder) is
    searched for ``{stem}.jsonl``, a saved dataset ``{stem}/`` or ``{stem}.parquet``.
    No records at all is an error (``path: no {what}``): TRL would fail later with a bare
    ``StopIteration``."""
    path, rows = _read_rows(Path(source), stem)
    if not rows:
        raise DataError(f"{path}: no {what}")
    return rows


def _read_rows(path: Path, stem: str | None) -> tuple[Path, list[Row]]:
    if path.is_dir() and stem:
        for candidate in (path / f"{stem}.jsonl", path / stem, path / f"{stem}.parquet"):
            if candidate.exists():
                path = candidate
                break
    if path.is_dir():
        if not ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
            raise DataError(f"{path}: no {stem or 'data'} file or dataset in this folder")
        from datasets import load_from_disk

        return path, [Row(dict(r), f"{path}[{i}]") for i, r in enumerate(load_from_disk(str(path)))]
    if path.suffix == ".parquet" and path.is_file():
        from datasets import Dataset

        return path, [Row(dict(r), f"{path}[{i}]") for i, r in enumerate(Dataset.from_parquet(str(path)))]
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = _json(text, path, 0)
        if not isinstance(data, list):
            raise DataError(f"{path}:1: expected a JSON list of records")
        return path, [Row(r, f"{path}[{i}]") for i, r in enumerate(data)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = _json(line, path, lineno - 1)
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        rows.append(Row(record, f"{path}:{lineno}"))
    return path, rows


def _json(text: str, path: Path, line_offset: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{line_offset + exc.lineno}: invalid JSON: {exc.msg}") from None


def _messages(value: Any, where: str, field: str, *, last_role: str | None = None) -> list[Message]:
    messages = check_messages(
        value, field, roles=None, error=lambda name, problem: DataError(f"{where}: field '{name}': {problem}")
    )
    if last_role and messages[-1]["role"] != last_role:
        raise DataError(f"{where}: field '{field}': last message must be from the {last_role}")
    return messages


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return value[-1]["content"] if value else ""


def _require(row: Row, *fields: str) -> None:
    missing = [f for f in fields if f not in row.data]
    if missing:
        have = ", ".join(sorted(row.data)) or "none"
        raise DataError(f"{row.where}: missing field(s) {', '.join(repr(m) for m in missing)} (has: {have})")


def check_sft(row: Row, *, split_completion: bool = True) -> dict[str, Any]:
    """One SFT record. ``messages`` is split into prompt/completion (loss on the last
    assistant turn only) unless ``split_completion`` is off."""
    d = row.data
    if "messages" in d:
        messages = _messages(d["messages"], row.where, "messages", last_role="assistant")
        if not messages[-1]["content"].strip():
            raise DataError(f"{row.where}: field 'messages': the final assistant message is empty")
        if split_completion and len(messages) > 1:
            return {"prompt": messages[:-1], "completion": messages[-1:]}
        return {"messages": messages}
    if "prompt" in d and "completion" in d:
        conversational = isinstance(d["prompt"], list)
        if conversational:
            return {
                "prompt": _messages(d["prompt"], row.where, "prompt"),
                "completion": _messages(d["completion"], row.where, "completion", last_role="assistant"),
            }
        if not isinstance(d["completion"], str) or not d["completion"].strip():
            raise DataError(f"{row.where}: field 'completion': expected non-empty text")
        return {"prompt": str(d["prompt"]), "completion": d["completion"]}
    if isinstance(d.get("text"), str):
        return {"text": d["text"]}
    raise DataError(f"{row.where}: expected 'messages', 'prompt'+'completion' or 'text' (has: {', '.join(sorted(d))})")


def check_preference(row: Row) -> dict[str, Any]:
    """One preference pair: explicit prompt (standard or conversational) or implicit prompt."""
    _require(row, "chosen", "rejected")
    d = row.data
    if "prompt" not in d and isinstance(d["chosen"], str) and isinstance(d["rejected"], str):
        d = _from_transcripts(d, row.where)
    out: dict[str, Any] = {}
    conversational = isinstance(d["chosen"], list)
    if conversational:
        out["chosen"] = _messages(d["chosen"], row.where, "chosen", last_role="assistant")
        out["rejected"] = _messages(d["rejected"], row.where, "rejected", last_role="assistant")
        if "prompt" in d:
            out["prompt"] = _messages(d["prompt"], row.where, "prompt")
    else:
        for field in ("chosen", "rejected"):
            if not isinstance(d[field], str):
                raise DataError(f"{row.where}: field '{field}': expected text or a list of messages")
            out[field] = d[field]
        if "prompt" in d:
            out["prompt"] = str(d["prompt"])
    if not _text(out["chosen"]).strip():
        raise DataError(f"{row.where}: field 'chosen': empty response")
    if not _text(out["rejected"]).strip():
        raise DataError(f"{row.where}: field 'rejected': empty response")
    if out["chosen"] == out["rejected"]:
        raise DataError(f"{row.where}: fields 'chosen' and 'rejected' are identical")
    if "margin" in d:  # RewardTrainer's optional margin column
        out["margin"] = float(d["margin"])
    return out


def _from_transcripts(d: dict[str, Any], where: str) -> dict[str, Any]:
    """hh-rlhf style pair (two ``Human:/Assistant:`` transcripts sharing everything but the
    last reply) -> conversational prompt / chosen / rejected."""
    from cai.inputs import is_transcript, parse_transcript

    if not is_transcript(d["chosen"]):
        return d
    chosen, rejected = parse_transcript(d["chosen"]), parse_transcript(d["rejected"])
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field '{name}': transcript must end with an Assistant reply")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}: fields 'chosen' and 'rejected': transcripts differ before the last reply")
    return {**d, "prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def check_prompt(row: Row) -> dict[str, Any]:
    """A prompt for online RL / SPIN: ``prompt``, or ``messages`` minus a final assistant turn.
    A reference response (final assistant turn, ``chosen`` or ``completion``) is kept as
    ``reference`` (pairwise-judge rewards and SPIN compare against it), else None."""
    d = row.data
    reference: Any = None
    if "prompt" in d:
        if isinstance(d["prompt"], str):
            if not d["prompt"].strip():
                raise DataError(f"{row.where}: field 'prompt': empty")
            prompt = [{"role": "user", "content": d["prompt"]}]
        else:
            prompt = _messages(d["prompt"], row.where, "prompt", last_role="user")
        if d.get("chosen") or d.get("completion"):
            reference = _text(d.get("chosen") or d.get("completion"))
    elif "messages" in d:
        prompt = _messages(d["messages"], row.where, "messages")
        if prompt[-1]["role"] == "assistant":
            reference = prompt[-1]["content"]
            prompt = prompt[:-1]
        if not prompt or prompt[-1]["role"] != "user":
            raise DataError(f"{row.where}: field 'messages': no user turn to use as the prompt")
    else:
        raise DataError(f"{row.where}: missing field 'prompt' (has: {', '.join(sorted(d))})")
    return {"prompt": prompt, "reference": reference}


def data_hash(records: Iterable[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _to_splits(records: list[dict[str, Any]], eval_fraction: float, seed: int) -> Splits:
    from datasets import Dataset

    dataset = Dataset.from_list(records)
    digest = data_hash(records)
    if eval_fraction <= 0 or len(records) < 2:
        return Splits(dataset, None, digest)
    split = dataset.train_test_split(test_size=eval_fraction, seed=seed)
    return Splits(split["train"], split["test"], digest)


def _as_rows(source: Any, stem: str, what: str) -> list[Row]:
    """A path, or records already in memory (a list of dicts or a ``datasets.Dataset``)."""
    if isinstance(source, (str, Path)):
        return read_rows(source, stem, what=what)
    rows = [Row(dict(r), f"<records>[{i}]") for i, r in enumerate(source)]
    if not rows:
        raise DataError(f"<records>: no {what}")
    return rows


def sft_dataset(source: Any, *, eval_fraction: float = 0.0, seed: int = 0, split_completion: bool = True) -> Splits:
    rows = _as_rows(source, SFT, "SFT rows")
    return _to_splits([check_sft(r, split_completion=split_completion) for r in rows], eval_fraction, seed)


def preference_dataset(source: Any, *, eval_fraction: float = 0.0, seed: int = 0) -> Splits:
    rows = _as_rows(source, PREFERENCES, "preference pairs")
    return _to_splits([check_preference(r) for r in rows], eval_fraction, seed)


def prompt_dataset(source: Any, *, eval_fraction: float = 0.0, seed: int = 0) -> Splits:
    rows = _as_rows(source, SFT, "prompts")
    return _to_splits([check_prompt(r) for r in rows], eval_fraction, seed)


def unpaired_dataset(pairs: Splits) -> Splits:
    """KTO data from preference pairs: each chosen becomes desirable, each rejected undesirable."""
    from trl import unpair_preference_dataset

    def unpair(dataset: Any) -> Any:
        if dataset is None:
            return None
        columns = [c for c in dataset.column_names if c not in ("prompt", "chosen", "rejected")]
        return unpair_preference_dataset(dataset.remove_columns(columns))

    return Splits(unpair(pairs.train), unpair(pairs.eval), pairs.data_hash)
