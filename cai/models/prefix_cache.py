"""An LRU of computed prefixes, keyed by the token ids they were computed from.

The transformers backend stores each call's key/value states here (prompt + answer), so the
next call that starts with the same tokens (the constitution's few-shot turns, or the same
sample's conversation one turn later) computes only the tokens after the longest stored
prefix. Entries are opaque payloads with a size in bytes; the total stays within
``max_bytes``, least recently used entries going first.

Two rules keep one growing conversation from filling the cache with its own past: storing
ids that extend an entry replaces that entry, and storing ids that an entry already extends
only marks that entry as used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

Payload = TypeVar("Payload")


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading positions where the two 1-d arrays agree."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass
class _Entry(Generic[Payload]):
    ids: np.ndarray
    payload: Payload
    nbytes: int


@dataclass(frozen=True)
class Match(Generic[Payload]):
    """``length`` leading tokens of the looked-up ids are covered by ``payload``, which holds
    states for ``entry_length`` tokens (``entry_length >= length``; crop it to ``length``)."""

    length: int
    entry_length: int
    payload: Payload


class PrefixCache(Generic[Payload]):
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, _Entry[Payload]] = OrderedDict()  # oldest first
        self._next_key = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _array(ids: Sequence[int]) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64)

    def _longest(self, ids: np.ndarray) -> tuple[int, int]:
        """(key, shared length) of the entry sharing the longest prefix with ``ids``; (-1, 0) if none."""
        best_key, best = -1, 0
        for key, entry in self._entries.items():
            if len(entry.ids) and len(ids) and entry.ids[0] == ids[0]:
                n = common_prefix_length(entry.ids, ids)
                if n > best:
                    best_key, best = key, n
        return best_key, best

    def lookup(self, ids: Sequence[int]) -> Match[Payload] | None:
        """The entry sharing the longest prefix with ``ids`` (marked as used), or None."""
        key, n = self._longest(self._array(ids))
        if n == 0:
            return None
        self._entries.move_to_end(key)
        entry = self._entries[key]
        return Match(n, len(entry.ids), entry.payload)

    def store(self, ids: Sequence[int], payload: Payload, nbytes: int) -> bool:
        """Keep ``payload`` (states for exactly ``ids``). False when it was not kept: larger
        than the whole budget, or already covered by an entry extending it."""
        if not len(ids) or nbytes > self.max_bytes:
            return False
        array = self._array(ids)
        for key, entry in list(self._entries.items()):
            n = common_prefix_length(entry.ids, array)
            if n == len(array):  # an entry already holds these ids and more
                self._entries.move_to_end(key)
                return False
            if n == len(entry.ids):  # the new ids extend this entry: it is no longer needed
                self._drop(key)
        self._entries[self._next_key] = _Entry(array, payload, nbytes)
        self._next_key += 1
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
