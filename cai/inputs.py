"""Read prompts from JSONL / JSON / CSV / Parquet files or a HF ``datasets`` folder.

Each record gives a prompt as, in order of preference:
- ``messages`` (name configurable): a list of ``{"role", "content"}`` ending with a user turn;
- ``prompt`` (name configurable): a string; an hh-rlhf transcript (``"\\n\\nHuman: ...
  \\n\\nAssistant: ..."``) is parsed into messages, anything else is one user turn;
- ``chosen`` (hh-rlhf preference data): the transcript up to and including the last Human turn.

A record's ``id`` field (if any) is its sample id, else its position in the file. Bad records
are reported as ``file:line: field: problem``; ``on_bad_line="skip"`` skips and lists them,
``"abort"`` raises ``InputError`` at the first one.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cai.errors import InputError
from cai.models.base import Message
from cai.records import check_messages

OnBadLine = Literal["skip", "abort"]
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant|H|A):[ \t]?")
_ROLES = {"Human": "user", "H": "user", "Assistant": "assistant", "A": "assistant"}


@dataclass
class PromptRecord:
    id: str
    messages: list[Message]
    source: str  # "file:line" (or "file:row N")


@dataclass
class PromptSet:
    prompts: list[PromptRecord]
    skipped: list[str] = field(default_factory=list)  # one message per bad record


def is_transcript(text: str) -> bool:
    return bool(re.match(r"\s*(Human|H):", text)) or "\n\nHuman:" in text


def parse_transcript(text: str) -> list[Message]:
    """hh-rlhf ``Human:``/``Assistant:`` transcript -> messages (text before the first turn is dropped)."""
    parts = _TURN.split(text)
    messages: list[Message] = []
    for i in range(1, len(parts) - 1, 2):
        messages.append({"role": _ROLES[parts[i]], "content": parts[i + 1].strip()})
    return messages


def up_to_last_user(messages: list[Message]) -> list[Message]:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return messages[: i + 1]
    return []


def conversation(value: Any, name: str) -> list[Message]:
    """A full conversation given as an hh-rlhf transcript or a list of messages."""
    if isinstance(value, str):
        if not is_transcript(value):
            raise ValueError(f"{name}: expected a Human:/Assistant: transcript when there is no 'prompt' field")
        return parse_transcript(value)
    if isinstance(value, list):
        return check_messages(value, name)
    raise ValueError(f"{name}: expected a transcript string or a list of messages")


def split_pair(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], list[Message], list[Message]]:
    """An hh-rlhf style pair (two conversations that share every turn up to the last user
    turn) -> (prompt, chosen reply turns, rejected reply turns). ValueError naming the field."""
    prompt = up_to_last_user(chosen)
    if not prompt:
        raise ValueError("chosen: no Human/user turn")
    if up_to_last_user(rejected) != prompt:
        raise ValueError("rejected: its conversation differs from chosen before the last answer")
    return prompt, chosen[len(prompt) :], rejected[len(prompt) :]


def record_to_messages(record: Any, prompt_field: str = "prompt", messages_field: str = "messages") -> list[Message]:
    """One input record -> the prompt conversation. Raises ValueError naming the field."""
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    if record.get(messages_field) is not None:
        return check_messages(record[messages_field], messages_field, last_role="user")
    for name, preference in ((prompt_field, False), ("chosen", True)):
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, list):  # a conversational prompt under the prompt field
            if preference:  # a full conversation: the prompt is everything up to the last user turn
                value = up_to_last_user(check_messages(value, name)) or value
            return check_messages(value, name, last_role="user")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}: expected a non-empty string")
        if is_transcript(value):
            messages = up_to_last_user(parse_transcript(value))
            if not messages or not messages[-1]["content"]:
                raise ValueError(f"{name}: transcript has no non-empty Human turn")
            return messages
        return [{"role": "user", "content": value.strip()}]
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise ValueError(f"no '{prompt_field}' or '{messages_field}' field (record has: {keys})")


def read_text(path: Path) -> str:
    """A whole file as UTF-8 (a leading BOM dropped); InputError naming the line if it is not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None


def read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, raw record) pairs; a record that cannot be decoded comes as an exception."""
    suffix = path.suffix.lower()
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(path))
        except Exception as exc:
            raise InputError(f"{path}: not a HF datasets folder saved with save_to_disk ({exc})") from exc
        if isinstance(ds, DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        for i, row in enumerate(ds):
            yield f"{path}:row {i}", row
    elif suffix == ".jsonl":
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    yield (
                        f"{path}:{n}",
                        ValueError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"),
                    )
                    continue
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{path}:{n}", ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})")
                except RecursionError:
                    yield f"{path}:{n}", ValueError("JSON nested too deeply")
    elif suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        except RecursionError:
            raise InputError(f"{path}:1: JSON nested too deeply") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        for i, row in enumerate(data):
            yield f"{path}:item {i}", row
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            for row in reader:
                yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if k is not None}
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num + 1}: invalid CSV: {exc}") from None
    elif suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pyarrow.ArrowException, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
        for i, row in enumerate(rows):
            yield f"{path}:row {i}", row
    else:
        raise InputError(
            f"{path}: unsupported input format {suffix!r}; use .jsonl, .json, .csv, .parquet or a HF datasets folder"
        )


def read_prompts(
    path: str | Path,
    *,
    prompt_field: str = "prompt",
    messages_field: str = "messages",
    on_bad_line: OnBadLine = "abort",
    limit: int | None = None,
) -> PromptSet:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    result = PromptSet(prompts=[])
    seen: dict[str, str] = {}
    for position, (where, raw) in enumerate(read_records(path)):
        if limit is not None and len(result.prompts) >= limit:
            break
        try:
            if isinstance(raw, Exception):
                raise raw
            messages = record_to_messages(raw, prompt_field, messages_field)
            sample_id = str(raw["id"]) if raw.get("id") not in (None, "") else str(position)
            if sample_id in seen:
                raise ValueError(f"id: {sample_id!r} already used at {seen[sample_id]}")
        except ValueError as exc:
            message = f"{where}: {exc}"
            if on_bad_line == "abort":
                raise InputError(message + " (use --on-bad-line skip to skip bad records)") from None
            result.skipped.append(message)
            continue
        seen[sample_id] = where
        result.prompts.append(PromptRecord(sample_id, messages, where))
    return result
