"""Speculation-length policies: how many tokens each row drafts next (propose / observe shape).

* ``fixed:K``   — always K.
* ``heuristic`` — transformers' rule: +2 after a step where every draft was accepted, -1 otherwise,
                  kept within [min_len, max_len].

Per-row state lives in lists indexed by batch slot; ``add_row`` / ``remove_row`` mirror the
engine's admission and compaction of rows.
"""

from __future__ import annotations

from .speculate import PairFeedback


class FixedLength:
    def __init__(self, k: int):
        if k < 0:
            raise ValueError(f"fixed speculation length must be >= 0, got {k}")
        self.k = k
        self.name = f"fixed:{k}"

    def add_row(self, row: int) -> None:
        pass

    def propose(self, row: int) -> int:
        return self.k

    def observe(self, row: int, fb: PairFeedback) -> None:
        pass

    def remove_row(self, row: int, last: int) -> None:
        pass


class HeuristicLength:
    name = "heuristic"

    def __init__(self, initial: int = 4, min_len: int = 1, max_len: int = 10):
        if not 0 <= min_len <= initial <= max_len:
            raise ValueError(f"need 0 <= min_len <= initial <= max_len, got {min_len}, {initial}, {max_len}")
        self.initial, self.min_len, self.max_len = initial, min_len, max_len
        self.k: list[int] = []

    def add_row(self, row: int) -> None:
        assert row == len(self.k), "rows are added at the end"
        self.k.append(self.initial)

    def propose(self, row: int) -> int:
        return self.k[row]

    def observe(self, row: int, fb: PairFeedback) -> None:
        if fb.n_drafted == 0:
            return
        if fb.n_accepted == fb.n_drafted:
            self.k[row] = min(self.max_len, self.k[row] + 2)
        else:
            self.k[row] = max(self.min_len, self.k[row] - 1)

    def remove_row(self, row: int, last: int) -> None:
        self.k[row] = self.k[last]
        self.k.pop()


def parse_length_policy(spec: str):
    """'fixed:K' | 'heuristic' | 'heuristic:INITIAL:MIN:MAX'."""
    kind, _, rest = spec.partition(":")
    if kind == "fixed":
        if not rest.isdigit():
            raise ValueError(f"--spec-len fixed needs an integer, e.g. fixed:4 (got {spec!r})")
        return FixedLength(int(rest))
    if kind == "heuristic":
        nums = [int(x) for x in rest.split(":")] if rest else []
        return HeuristicLength(*nums)
    raise ValueError(f"unknown speculation-length policy {spec!r}; use fixed:K or heuristic")
