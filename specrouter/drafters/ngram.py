"""Model-free drafter: prompt lookup / n-gram matching over the row's own committed text.

Find the most recent earlier occurrence of the last n tokens (n from ``max_ngram`` down to
``min_ngram``) and propose the tokens that followed it. Deterministic, so q is one-hot and
rejection sampling reduces to "accept x with probability p(x)". Costs microseconds, no cache:
the committed text is the index. In a pool it appears as ``"ngram": (max_ngram, min_ngram)``.
"""

from __future__ import annotations

import numpy as np


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
