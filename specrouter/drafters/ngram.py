"""Model-free drafter: prompt lookup / n-gram matching over the row's own committed text.

Find the most recent earlier occurrence of the last n tokens (n from ``max_ngram`` down to
``min_ngram``) and propose the tokens that followed it. Deterministic, so q is one-hot and
rejection sampling reduces to "accept x with probability p(x)". Costs microseconds, no cache.
"""

from __future__ import annotations

import numpy as np
import torch

from ..sampling import SamplingParams
from .base import Draft


def ngram_lookup(seq: np.ndarray, k: int, max_ngram: int, min_ngram: int) -> list[int]:
    """Continuation (<= k tokens) of the latest earlier match of seq's suffix; [] when none."""
    L = len(seq)
    if k <= 0:
        return []
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        suffix = seq[L - n:]
        # windows starting at 0..L-n-1 (the suffix itself, at L-n, is excluded)
        windows = np.lib.stride_tricks.sliding_window_view(seq[:L - 1], n)
        hits = np.nonzero((windows == suffix).all(axis=1))[0]
        if len(hits):
            start = int(hits[-1]) + n
            return seq[start:start + k].tolist()
    return []


class NgramDrafter:
    name = "ngram"

    def __init__(self, vocab: int, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.vocab, self.max_ngram, self.min_ngram = vocab, max_ngram, min_ngram

    def reserve(self, max_batch: int) -> None:
        pass

    def add_row(self, row: int, prompt: list[int]) -> None:
        pass  # stateless: the committed text is the index

    def propose(self, committed: list[list[int]], k: list[int], params: list[SamplingParams],
                generators: list[torch.Generator]) -> Draft:
        props = [ngram_lookup(np.asarray(c, dtype=np.int64), kb, self.max_ngram, self.min_ngram)
                 for c, kb in zip(committed, k)]
        K = max([len(p) for p in props] + [0])
        tokens = torch.zeros(len(committed), K, dtype=torch.long)
        for b, p in enumerate(props):
            if p:
                tokens[b, :len(p)] = torch.tensor(p)
        return Draft(tokens, None, [len(p) for p in props])

    def observe(self, committed: list[list[int]], n_accepted: list[int]) -> None:
        pass

    def remove_row(self, row: int, last: int) -> None:
        pass
