"""DSDE: dynamic speculation length from the stability of the draft/target KL divergence.

Signal (per sequence, no extra forward pass): at every verification the verifier's p and the
drafter's q are both at hand, so each compared position i yields KL_i = KL(p_i || q_i). A row keeps
the last ``history`` values. With weights w_j = rho^j on the ``window`` most recent values
(j = 0 newest):

    mu_w     = sum_j w_j KL_j / sum_j w_j                          (recent, weighted mean)
    var_w    = sum_j w_j (KL_j - mu_w)^2 / sum_j w_j               (recent, weighted variance)
    var_long = variance of the whole history
    WVIR     = (var_w + eps) / (var_long + eps)                    (weighted variance intensity ratio)
    s        = exp(-mu_w / kappa) * min(1, 1 / WVIR)               (stability, in (0, 1])

WVIR ~ 1 in a stationary region (recent spread like the request's own history) and > 1 when the
divergence has started to jump; eps (a noise floor of 0.1 nats std) keeps tiny absolute wiggles
from counting as instability. A low, steady divergence gives s -> 1; a large one, or a recent jump,
gives s -> 0. The next length is

    k = k_lo + round((k_hi - k_lo) * s)

Warm-up: the first ``warmup`` verifications of a request draft k_0 tokens and record how many were
accepted; then the request's bounds are k_lo = min_len and
k_hi = clip(max accepted during warm-up + 2, min_len, max_len). k_0 is ``initial`` for the first
request a policy sees, afterwards the running mean (weight 0.3 on the newest) of the k_hi that
finished requests ended with: a server learns what its drafts sustain, and a request does not spend
its warm-up at k = 4 when the pair sustains 10 (measured on AVX2 with a w8a8 copy of the target,
~0.96 per-token acceptance, fixed:8 beat a warm-up from 4 by 4 %,
results/specbench-1pc-128tok-avx2-policies.*). Afterwards k_hi grows by one whenever a request
accepts a whole draft of the length this rule proposed (the request is easier than warm-up showed),
so a moderately stable region (s < 1, k < k_hi) can still raise it. Growth by one is deliberate:
geometric growth (k_hi + ceil(k_hi / 2)) recovered a hard answer start one step sooner (qa trace: 6
steps vs 7, fixed:8 5), but raised the mean draft to 9.2 tokens on a pair where fixed:12 ran 10 %
slower than fixed:8 (results/specbench-1pc-128tok-avx2-policies-geomgrow.*).
Rows drafted by the n-gram level have no KL (q is one-hot); their signal is TVD = 1 - p(x).

Cost band (``dsde+cost``, and ``dsde`` under the adaptive router): the router, which has the
profiled forward costs and the row's acceptance estimate, hands the policy before each proposal the
band [b_lo, b_hi] of lengths whose predicted seconds per token lie within a slack of the best
(``router/latency.py``: ``length_band``). The rule then moves within it:

    lo = max(min_len, b_lo),   hi = max(lo, min(k_hi, b_hi)),   k = lo + round((hi - lo) * s)

and warm-up drafts clip(k_0, b_lo, b_hi). Why: a divergence signal does not know what a drafted
token costs. On a near-perfect draft (a w8a8 copy of the target, acceptance ~0.96) the rejections
are near-ties, a KL spike sends k to min_len and each short step pays a whole target pass for a few
tokens, and a hard warm-up leaves k_hi at 5 where the costs favour 7-12; with a weak draft the band
moves down instead, and stability picks the point inside it. Measured on AVX2 (one run each, 1 prompt
per category): at batch 1 neutral (1.40x vs plain dsde 1.41x, fixed:8 1.45x,
results/specbench-1pc-128tok-avx2-dsde-cost.*), since at alpha ~0.96 the i.i.d. band spans ~7-12 and
after a hard start it follows the row's low realized alpha down; at batch 8, where verifying 8 rows
is not free, 1.56x vs fixed:8 1.38x (results/specbench-1pc-128tok-avx2-batch8-dsde-cost.*).

Offline (``bench/replay.py``, greedy traces of that pair, 192 settings of these constants): no setting
reached the best fixed K (the best 1.7-2.8 % behind), while an oracle that drafts exactly what the
target will accept is 19-23 % ahead; the drafter's own top-1/top-2 margin flags the rejections far
better (AUC 0.96, vs 0.88 for the KL this rule reads and 0.87 for entropy), yet a stop on it
replayed 1.4 % behind the best fixed K: a stop only shortens drafts (results/replay-*.log).
"""

from __future__ import annotations

import math
from collections import deque

from .speculate import PairFeedback


def weighted_stats(values: list[float], rho: float, window: int) -> tuple[float, float]:
    """(weighted mean, weighted variance) of the ``window`` most recent values, newest weight 1."""
    recent = values[-window:][::-1]  # newest first
    w = [rho ** j for j in range(len(recent))]
    tot = sum(w)
    mu = sum(wi * x for wi, x in zip(w, recent)) / tot
    var = sum(wi * (x - mu) ** 2 for wi, x in zip(w, recent)) / tot
    return mu, var


def stability(values: list[float], rho: float = 0.7, window: int = 8, kappa: float = 0.5,
              eps: float = 0.01) -> float:
    """The DSDE stability score s in (0, 1] of a KL history (oldest first); 0.5 when empty."""
    if not values:
        return 0.5
    mu_w, var_w = weighted_stats(values, rho, window)
    mean = sum(values) / len(values)
    var_long = sum((x - mean) ** 2 for x in values) / len(values)
    wvir = (var_w + eps) / (var_long + eps)
    return math.exp(-mu_w / kappa) * min(1.0, 1.0 / wvir)


def length_from_stability(s: float, k_lo: int, k_hi: int) -> int:
    return k_lo + round((k_hi - k_lo) * min(max(s, 0.0), 1.0))


class DSDELength:
    name = "dsde"

    def __init__(self, min_len: int = 1, max_len: int = 12, initial: int = 4, warmup: int = 3,
                 history: int = 32, window: int = 8, rho: float = 0.7, kappa: float = 0.5):
        if not 1 <= min_len <= initial <= max_len:
            raise ValueError(f"need 1 <= min_len <= initial <= max_len, got {min_len}, {initial}, {max_len}")
        self.min_len, self.max_len, self.initial, self.warmup = min_len, max_len, initial, warmup
        self.history, self.window, self.rho, self.kappa = history, window, rho, kappa
        self.rows: list[dict] = []
        self.learned_hi: float | None = None  # running mean of finished requests' k_hi

    def start_length(self) -> int:
        """k_0, the warm-up length of the next request."""
        if self.learned_hi is None:
            return self.initial
        return min(self.max_len, max(self.min_len, round(self.learned_hi)))

    def add_row(self, row: int) -> None:
        assert row == len(self.rows), "rows are added at the end"
        k0 = self.start_length()
        self.rows.append({"kl": deque(maxlen=self.history), "seen": 0, "acc": [], "hi": self.max_len,
                          "k0": k0, "k": k0, "band": None})

    def set_band(self, row: int, b_lo: int, b_hi: int) -> None:
        """The cost band for row ``row``'s next proposal (see the module docstring)."""
        if not 1 <= b_lo <= b_hi:
            raise ValueError(f"need 1 <= b_lo <= b_hi, got {b_lo}, {b_hi}")
        self.rows[row]["band"] = (b_lo, b_hi)

    def remove_row(self, row: int, last: int) -> None:
        done = self.rows[row]
        if done["seen"] >= self.warmup:  # a finished request teaches the next one's warm-up length
            hi = float(done["hi"])
            self.learned_hi = hi if self.learned_hi is None else 0.7 * self.learned_hi + 0.3 * hi
        self.rows[row] = self.rows[last]
        self.rows.pop()

    def propose(self, row: int) -> int:
        st = self.rows[row]
        band = st["band"]
        if st["seen"] < self.warmup:
            k = st["k0"] if band is None else min(max(st["k0"], band[0]), band[1])
            st["k"] = min(max(k, self.min_len), self.max_len)  # the request's own bounds hold
            return st["k"]
        s = stability(list(st["kl"]), self.rho, self.window, self.kappa)
        lo, hi = self.min_len, st["hi"]
        if band is not None:
            lo = min(max(lo, band[0]), self.max_len)
            hi = max(lo, min(hi, band[1]))
        st["k"] = length_from_stability(s, lo, hi)
        return st["k"]

    def observe(self, row: int, fb: PairFeedback) -> None:
        st = self.rows[row]
        st["kl"].extend(fb.kl if fb.kl else fb.tvd)
        st["seen"] += 1
        if st["seen"] <= self.warmup:
            st["acc"].append(fb.n_accepted)
            if st["seen"] == self.warmup:
                st["hi"] = min(self.max_len, max(self.min_len, max(st["acc"]) + 2))
        elif fb.n_drafted and fb.n_accepted == fb.n_drafted and fb.n_drafted >= st["k"]:
            st["hi"] = min(self.max_len, st["hi"] + 1)
