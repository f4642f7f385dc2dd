"""Shadow rounds of the n-gram drafter, scored on the text a row committed, whatever chain ran.

Why: the router learns a pair's match rate and precision only from rounds that pair ran, so a
chain the router rarely picks keeps its calibration prior. On Spec-Bench translation and
summarization (stop 20) auto ran ``1.5b@w8a8 > 1.5b`` for 93-100 % of steps while the n-gram
below that twin was worth 15-25 % more: (ngram, 1.5b@w8a8) never left its prior, so the gain of
copy-heavy text was never seen. The n-gram level is the one drafter whose rounds cost nothing to
replay (a lookup in the committed text, microseconds), so the router replays them every step.

A shadow round at position s of the committed text c: the n-gram proposes d = lookup(c[:s], k);
its accepted count is the length of the common prefix of d and c[s:s + len(d)]; the next round
starts at s + accepted + 1 (the verifier's own token). A miss proposes nothing and moves one token.
A round whose proposal runs past the committed text and matches all of it waits for the next step.

Exactness: for the target as verifier this is the round the chain ``ngram > target`` would have
run. Greedy: the committed text is the target's argmax continuation, so the prefix match is what
greedy verification accepts. Sampled: each committed token is drawn from the target's p, so
P(c_s = d_1) = p(d_1), the acceptance probability of a one-hot draft in rejection sampling, and
so on along the prefix. For a lower verifier u (a twin, a smaller model) the committed text is a
proxy for u's own continuation; it is off by u's disagreement with the target (twin: ~5 %).
"""

from __future__ import annotations

import numpy as np

from ..drafters.ngram import ngram_lookup


class NgramShadow:
    def __init__(self, ngram: tuple[int, int], k: int = 4):
        if k < 1:
            raise ValueError(f"shadow draft length must be >= 1, got {k}")
        self.ngram, self.k = tuple(ngram), k
        self.pos: list[int | None] = []  # per row: where the next shadow round starts (None: not yet)

    def add_row(self, slot: int) -> None:
        assert slot == len(self.pos)
        self.pos.append(None)

    def remove_row(self, slot: int, last: int) -> None:
        self.pos[slot] = self.pos[last]
        self.pos.pop()

    def advance(self, slot: int, committed: list[int], start: int) -> list[tuple[int, int]]:
        """Replay the rounds the text committed so far resolves; returns (n_drafted, n_accepted) each.

        start: where the row's first round begins (the committed length before its first step).
        """
        s = self.pos[slot] if self.pos[slot] is not None else start
        out: list[tuple[int, int]] = []
        seq = np.asarray(committed, dtype=np.int64)
        n = len(seq)
        while s < n:
            d = ngram_lookup(seq[:s], self.k, *self.ngram)
            if not d:
                out.append((0, 0))
                s += 1
                continue
            seen = seq[s:s + len(d)]
            a = 0
            while a < len(seen) and seen[a] == d[a]:
                a += 1
            if a == len(seen) < len(d):
                break  # matches as far as the text goes: resolved by a later step
            out.append((len(d), a))
            s += a + 1
        self.pos[slot] = s
        return out
