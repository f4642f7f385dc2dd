"""Running estimates of how well each adjacent pair of levels agrees, globally and per request.

Two estimates per (lower, upper) pair, both from distributions the verifications computed anyway:
* ``1 - TVD(p, q)`` averaged over compared positions: the acceptance probability of exact
  speculative sampling at that position (Leviathan et al.), available from the first step;
* the *realized* per-token acceptance, the MLE of a geometric run: each round adds its accepted
  drafts to the successes and, if it stopped early, one failure; alpha = S / (S + F).
Both decay exponentially (recent text matters more). ``alpha`` prefers the realized estimate once
it rests on enough evidence, then the row's own estimate over the global one. For the n-gram level
it also tracks the match rate (rounds in which a proposal existed).

Transfer within a row: a row that has used ``a > m > t`` knows (a, m) and (m, t) but not (a, t).
Acceptance is 1 - TVD (greedy: P(argmax agree), the same with one-hot distributions), and TVD is a
metric, so for any third level m

    alpha(a, m) + alpha(m, t) - 1  <=  alpha(a, t)  <=  1 - |alpha(a, m) - alpha(m, t)|.

Where the row lacks evidence on a pair but has it on both hops through some m, ``alpha`` returns
alpha(a, m) * alpha(m, t) (independent disagreements; it always lies within those bounds) instead
of the global estimate, through the m whose bounds are tightest: a math request that found the 0.5B accepted at 0.95 by the w8a8 1.5B, itself
accepted at 0.97 by the 1.5B, learns that the 0.5B alone is worth trying as the 1.5B's draft. The
n-gram level is left out (its alpha is a precision given a match, not a distance).

Bootstrap: ``prior_from_text`` scores one calibration text with every model (teacher-forced) and
measures greedy agreement per pair, and the n-gram level's match rate and precision on it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ..drafters.ngram import ngram_lookup
from ..speculate import NGRAM, PairFeedback


@dataclass
class PairEstimate:
    one_minus_tvd: float
    succ: float = 0.0
    fail: float = 0.0
    rounds: float = 0.0  # for the n-gram level: verification rounds attempted
    matched: float = 0.0  # ... and those with a proposal
    match_prior: float = 0.3

    def update(self, fb: PairFeedback, decay: float) -> None:
        keep = 1 - decay
        self.rounds = keep * self.rounds + 1
        if fb.n_drafted == 0:  # an n-gram miss: nothing to verify
            self.matched *= keep
            return
        self.matched = keep * self.matched + 1
        self.succ = keep * self.succ + fb.n_accepted
        self.fail = keep * self.fail + (1 if fb.n_accepted < fb.n_drafted else 0)
        if fb.tvd:
            self.one_minus_tvd += decay * (1 - sum(fb.tvd) / len(fb.tvd) - self.one_minus_tvd)

    @property
    def evidence(self) -> float:
        return self.succ + self.fail

    def alpha(self, min_evidence: float) -> float:
        if self.evidence >= min_evidence:
            return self.succ / self.evidence
        return self.one_minus_tvd

    def match_rate(self) -> float:
        if self.rounds >= 4:
            return self.matched / self.rounds
        return self.match_prior


class Similarity:
    def __init__(self, prior: dict[tuple[str, str], float], match_prior: dict[str, float] | None = None,
                 decay_global: float = 0.02, decay_row: float = 0.15, min_evidence: float = 6.0):
        self.prior = dict(prior)
        self.match_prior = dict(match_prior or {})
        self.decay_global, self.decay_row, self.min_evidence = decay_global, decay_row, min_evidence
        self.glob: dict[tuple[str, str], PairEstimate] = {}
        self.rows: list[dict[tuple[str, str], PairEstimate]] = []

    def _new(self, pair) -> PairEstimate:
        g = self.glob.get(pair)
        base = g.alpha(self.min_evidence) if g else self.prior.get(pair, 0.5)
        return PairEstimate(base, match_prior=(g.match_rate() if g else self.match_prior.get(pair[1], 0.3)))

    def add_row(self, slot: int) -> None:
        assert slot == len(self.rows)
        self.rows.append({})

    def remove_row(self, slot: int, last: int) -> None:
        self.rows[slot] = self.rows[last]
        self.rows.pop()

    def observe(self, fb: PairFeedback) -> None:
        pair = (fb.lower, fb.upper)
        if pair not in self.glob:
            self.glob[pair] = PairEstimate(self.prior.get(pair, 0.5), match_prior=self.match_prior.get(fb.upper, 0.3))
        self.glob[pair].update(fb, self.decay_global)
        if fb.slot < len(self.rows):
            row = self.rows[fb.slot]
            if pair not in row:
                row[pair] = self._new(pair)
            row[pair].update(fb, self.decay_row)

    def _est(self, lower: str, upper: str, slot: int | None) -> PairEstimate | None:
        pair = (lower, upper)
        if slot is not None and slot < len(self.rows) and pair in self.rows[slot]:
            return self.rows[slot][pair]
        return self.glob.get(pair)

    def alpha(self, lower: str, upper: str, slot: int | None = None) -> float:
        row = self.rows[slot] if slot is not None and slot < len(self.rows) else None
        if row is not None and NGRAM not in (lower, upper) and not self._known(row, lower, upper):
            via = self._through_third(row, lower, upper)
            if via is not None:
                return via
        est = self._est(lower, upper, slot)
        return est.alpha(self.min_evidence) if est else self.prior.get((lower, upper), 0.5)

    def _known(self, row: dict, a: str, b: str) -> bool:
        """Whether the row has realized evidence on the pair, in either orientation."""
        return any(p in row and row[p].evidence >= self.min_evidence for p in ((a, b), (b, a)))

    def _row_alpha(self, row: dict, a: str, b: str) -> float:
        p = (a, b) if (a, b) in row and row[(a, b)].evidence >= self.min_evidence else (b, a)
        return row[p].alpha(self.min_evidence)

    def _through_third(self, row: dict, a: str, b: str) -> float | None:
        """The transfer estimate of alpha(a, b) through the third level with the tightest bounds."""
        best = None
        for m in sorted({x for pair in row for x in pair} - {a, b, NGRAM}):
            if self._known(row, a, m) and self._known(row, m, b):
                a1, a2 = self._row_alpha(row, a, m), self._row_alpha(row, m, b)
                width = (1 - abs(a1 - a2)) - max(0.0, a1 + a2 - 1)
                if best is None or width < best[0]:
                    best = (width, a1 * a2)
        return None if best is None else best[1]

    def match_rate(self, upper: str, slot: int | None = None) -> float:
        est = self._est(NGRAM, upper, slot)
        return est.match_rate() if est else self.match_prior.get(upper, 0.3)


@torch.inference_mode()
def prior_from_text(levels: dict, order: list[str], ids: list[int], ngram: tuple[int, int] | None):
    """Teacher-forced agreement on one text. levels: name -> ModelLevel; order: lowest first.

    Returns ({(lower, upper): greedy agreement}, {upper: n-gram match rate}, {(ngram, upper): precision}).
    """
    argmax = {}
    for name in order:
        if name == NGRAM:
            continue
        m = levels[name].model
        logits = m(torch.tensor([ids], device=m.device), m.new_cache(1, len(ids) + 8))[0, :, :levels[name].vocab]
        argmax[name] = logits.argmax(-1).cpu().numpy()
    prior = {}
    models = [n for n in order if n != NGRAM]
    for i, lo in enumerate(models):
        for up in models[i + 1:]:
            prior[(lo, up)] = float((argmax[lo] == argmax[up]).mean())
    match, precision = {}, {}
    if ngram is not None:
        arr = np.asarray(ids, dtype=np.int64)
        for up in models:
            hits = tot = good = 0
            for t in range(8, len(ids) - 1):
                prop = ngram_lookup(arr[:t + 1], 1, *ngram)
                tot += 1
                if prop:
                    hits += 1
                    good += int(prop[0] == argmax[up][t])
            match[up] = hits / max(1, tot)
            precision[(NGRAM, up)] = good / hits if hits else 0.3
    return prior, match, precision


def merged_prior(prior: dict, precision: dict) -> dict:
    out = defaultdict(lambda: 0.5)
    out.update(prior)
    out.update(precision)
    return dict(out)
