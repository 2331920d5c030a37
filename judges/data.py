"""Reading prompts with candidate responses, for labelling runs and judge evaluation.

A record may be:
- a preference pair: ``prompt`` (text or messages) + ``chosen`` / ``rejected`` (text or
  assistant messages), e.g. ``preferences.jsonl`` from ``cai generate``; without ``prompt``,
  ``chosen``/``rejected`` are full conversations (hh-rlhf transcripts or message lists) that
  share every turn but the last answer;
- a prompt with a list of candidates under ``responses`` / ``candidates`` / ``completions``;
- a prompt alone (candidates are then sampled from a policy model: ``cai label --samples N``).

For preference pairs, candidate 0 is ``chosen`` and ``labelled`` is True.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.inputs import InputError, conversation, read_records, record_to_messages, split_pair
from cai.models.base import Message
from judges.base import response_text

CANDIDATE_FIELDS = ("responses", "candidates", "completions")


@dataclass
class CandidateSet:
    id: str
    prompt: list[Message]
    candidates: list[str]
    labelled: bool  # candidates[0] was marked chosen, candidates[1] rejected, by the source
    source: str  # "file:line"

    def input_hash(self) -> str:
        """Content hash of what is judged (resume refuses a changed input under the same id)."""
        payload = json.dumps([self.prompt, self.candidates], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _split_pair(record: dict[str, Any]) -> tuple[list[Message], list[str]]:
    """(prompt, [chosen, rejected]) from full conversations sharing all but the last answer."""
    prompt, chosen, rejected = split_pair(
        conversation(record["chosen"], "chosen"), conversation(record["rejected"], "rejected")
    )
    return prompt, [response_text(chosen), response_text(rejected)]


def record_candidates(record: Any) -> tuple[list[Message], list[str], bool]:
    """One record -> (prompt, candidates, labelled). Raises ValueError naming the field."""
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    if "chosen" in record and "rejected" in record:
        if record.get("prompt") is None and record.get("messages") is None:
            prompt, candidates = _split_pair(record)
            return prompt, candidates, True
        prompt = record_to_messages(record)
        return prompt, [response_text(record["chosen"]), response_text(record["rejected"])], True
    for name in CANDIDATE_FIELDS:
        if name in record:
            values = record[name]
            if not isinstance(values, list):
                raise ValueError(f"{name}: expected a list of responses")
            return record_to_messages(record), [response_text(v) for v in values], False
    return record_to_messages(record), [], False


def read_candidate_sets(
    path: str | Path, *, limit: int | None = None, on_bad_line: str = "abort"
) -> tuple[list[CandidateSet], list[str]]:
    """Every record of a JSONL/JSON/CSV/Parquet file or datasets folder; (sets, skipped lines)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    sets: list[CandidateSet] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for position, (where, raw) in enumerate(read_records(path)):
        if limit is not None and len(sets) >= limit:
            break
        try:
            if isinstance(raw, Exception):
                raise raw
            prompt, candidates, labelled = record_candidates(raw)
            sample_id = str(raw["id"]) if raw.get("id") not in (None, "") else str(position)
            if sample_id in seen:
                raise ValueError(f"id: {sample_id!r} appears twice")
        except ValueError as exc:
            if on_bad_line == "abort":
                raise InputError(f"{where}: {exc}") from None
            skipped.append(f"{where}: {exc}")
            continue
        seen.add(sample_id)
        sets.append(CandidateSet(sample_id, prompt, candidates, labelled, where))
    return sets, skipped
