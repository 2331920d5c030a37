"""Draft tokens from the text a row already holds (prompt lookup): after the row's last few
tokens, propose what followed their latest earlier occurrence. Revisions copy long spans of
the answer they revise, so these drafts are often right; the decoder checks every draft
against the model in one forward pass and keeps only what the model would have picked."""

from __future__ import annotations

NGRAM_SIZES = (3, 2)  # longest first: a longer match is a better guess


class NgramDrafter:
    """The token sequence of one row and, per n-gram size, where each n-gram last ended
    (only occurrences with at least one token after them)."""

    def __init__(self, tokens: list[int], sizes: tuple[int, ...] = NGRAM_SIZES):
        self.tokens: list[int] = []
        self.sizes = sizes
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in sizes}
        self.extend(tokens)

    def append(self, token: int) -> None:
        seq = self.tokens
        end = len(seq)  # the n-grams ending here now have `token` after them
        for n, ends in self._ends.items():
            if end >= n:
                ends[tuple(seq[end - n : end])] = end
        seq.append(token)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.append(token)

    def propose(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the longest
        matching suffix; empty when nothing matches."""
        seq = self.tokens
        if limit <= 0:
            return []
        for n in self.sizes:
            if len(seq) <= n:
                continue
            end = self._ends[n].get(tuple(seq[-n:]))
            if end is not None:
                return seq[end : end + limit]
        return []
