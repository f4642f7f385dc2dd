"""The adaptive router: per row and per step, the chain and draft lengths with the lowest predicted
seconds per committed token.

plan(slot):    for every candidate chain (each ordered sub-path of the pool that ends at the
               target, "target alone" included), evaluate the closed-form latency model with the
               profiler's costs at the current batch size and the row's acceptance estimates, plus
               the one-off cost of bringing the chain's levels up to date with the row (a level
               never used for this row must prefill the prompt), spread over the row's remaining
               budget; pick the minimum. Why the catch-up term: on a 1,500-token RAG prompt with a
               short answer, prefilling an int4 draft cost more than all the drafting saved.
               With probability ``explore`` pick another candidate instead, so that estimates of
               unused pairs don't go stale (their rows catch up lazily, see levels) — one whose
               predicted cost, catch-up included, is within ``explore_slack`` of the best: drawn
               among all, a rag row paid a 0.5B prefill of its 1,500-token prompt to explore.
               A row keeps its current chain unless another is predicted cheaper by more than
               ``switch_margin``: predictions of near-equal chains differ by less than the model's
               error (median 6-11 % over Spec-Bench runs), and a switch on noise may pay a catch-up.
               A row that has decoded with the target alone for ``probe_every`` steps in a row
               drafts once with the best drafting chain: without it a request whose acceptance
               dipped (say, a passage the draft cannot follow) would never learn that it recovered.
               Each probe that does not win the row back doubles the row's wait for the next
               (at most 8x).
               A length policy that overrides the top draft length and takes a cost band (dsde)
               gets, first, the lengths whose predicted tau is within ``band_slack`` of the best.
observe(fb):   feed pair feedback to the similarity estimates (and to a length policy, if one
               overrides the top draft length).
observe_text:  after a step commits text, replay the n-gram drafter's rounds on it (``shadow.py``)
               and feed (ngram, u) for each level u the candidates put right above the n-gram,
               except the one the row's own chain just verified it with (that pair got real
               feedback): the n-gram's estimates stay current whatever chain the row runs.
observe_step:  log (request, chain, predicted, realized seconds/token) for accuracy reports.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

from ..speculate import NGRAM, PairFeedback, Plan, RowContext
from .latency import chain_latency, length_band, top_pair_curve
from .profiler import Profiler
from .shadow import NgramShadow
from .similarity import Similarity


def candidate_chains(pool: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every ordered sub-path of ``pool`` (lowest first) that ends at its last level, the target."""
    *lower, target = pool
    out = []
    for r in range(len(lower) + 1):
        for combo in itertools.combinations(lower, r):
            out.append(tuple(combo) + (target,))
    return out


class AdaptiveRouter:
    def __init__(self, pool: tuple[str, ...], profiler: Profiler, similarity: Similarity,
                 candidates: list[tuple[str, ...]] | None = None, explore: float = 0.05, k_max: int = 12,
                 length_policy=None, seed: int = 0, probe_every: int = 8, band_slack: float = 0.05,
                 explore_slack: float = 0.25, switch_margin: float = 0.05,
                 ngram: tuple[int, int] | None = None):
        if not (0.0 <= explore <= 1.0 and explore_slack >= 0.0 and 0.0 <= switch_margin < 1.0):
            raise ValueError(f"need 0 <= explore <= 1, explore_slack >= 0, 0 <= switch_margin < 1; got "
                             f"{explore}, {explore_slack}, {switch_margin}")
        self.pool, self.profiler, self.sim = tuple(pool), profiler, similarity
        self.candidates = candidates or candidate_chains(self.pool)
        self.explore, self.k_max, self.policy = explore, k_max, length_policy
        self.probe_every = probe_every
        self.band_slack = band_slack  # a band-aware length policy may use k within this of the best tau
        self.explore_slack, self.switch_margin = explore_slack, switch_margin
        # ngram: the n-gram level's (max_ngram, min_ngram); with it in the pool, the router shadow-scores it
        self.shadow = NgramShadow(ngram) if ngram is not None and NGRAM in self.pool else None
        self.alone: list[int] = []  # per row: consecutive steps decoded by the target alone
        self.gap: list[int] = []  # per row: alone-steps before the next probe (doubles per probe)
        self.rng = random.Random(seed)
        self.n_rows = 0
        self.current: list[Plan | None] = []
        self.chosen: list[tuple[str, ...] | None] = []  # per row: the last chain picked on cost alone
        self.segments: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])  # pred*n, secs, n, steps
        self.decisions: list[dict] = []
        self.log_decisions = True
        self.max_segments = 10_000

    # ------------------------------------------------------------------ rows
    def add_row(self, slot: int) -> None:
        self.n_rows += 1
        self.current.append(None)
        self.chosen.append(None)
        self.alone.append(0)
        self.gap.append(self.probe_every)
        self.sim.add_row(slot)
        if self.shadow is not None:
            self.shadow.add_row(slot)
        if self.policy is not None:
            self.policy.add_row(slot)

    def remove_row(self, slot: int, last: int) -> None:
        self.n_rows -= 1
        self.current[slot] = self.current[last]
        self.current.pop()
        self.chosen[slot] = self.chosen[last]
        self.chosen.pop()
        self.alone[slot] = self.alone[last]
        self.alone.pop()
        self.gap[slot] = self.gap[last]
        self.gap.pop()
        self.sim.remove_row(slot, last)
        if self.shadow is not None:
            self.shadow.remove_row(slot, last)
        if self.policy is not None:
            self.policy.remove_row(slot, last)

    # ------------------------------------------------------------------ decide
    def predict(self, chain: tuple[str, ...], slot: int | None = None) -> tuple[float, tuple[int, ...]]:
        B = max(1, self.n_rows)
        return chain_latency(chain, lambda lv, T: self.profiler.cost(lv, B, T),
                             lambda lo, up: self.sim.alpha(lo, up, slot),
                             lambda up: self.sim.match_rate(up, slot), self.k_max)

    def candidates_for(self, slot: int) -> list[tuple[str, ...]]:
        """The chains row ``slot`` may use (all candidates here; per task in ``tasks/routing.py``)."""
        return self.candidates

    def catchup_s_per_token(self, chain: tuple[str, ...], ctx: RowContext | None) -> float:
        """One-off cost of feeding the chain's lower levels what they missed, per remaining token."""
        if ctx is None:
            return 0.0
        s = sum(self.profiler.prefill_cost(lv, ctx.pending.get(lv, 0)) for lv in chain[:-1] if lv != NGRAM)
        return s / max(1, ctx.budget)

    def plan(self, slot: int, ctx: RowContext | None = None) -> Plan:
        B = max(1, self.n_rows)
        scored = []
        for c in self.candidates_for(slot):
            tau, ks = self.predict(c, slot)
            scored.append((tau + self.catchup_s_per_token(c, ctx), ks, c))
        scored.sort(key=lambda x: x[0])
        tau, ks, chain = scored[0]
        kept = next((x for x in scored if x[2] == self.chosen[slot]), None)
        if kept is not None and tau >= (1 - self.switch_margin) * kept[0]:
            tau, ks, chain = kept  # the best is not cheaper by more than the margin: stay
        self.chosen[slot] = chain  # what the row returns to after an exploration or a probe
        near = [x for x in scored[1:] if x[0] <= (1 + self.explore_slack) * scored[0][0]]
        if near and self.rng.random() < self.explore:
            tau, ks, chain = self.rng.choice(near)
        elif len(chain) == 1 and self.alone[slot] >= self.gap[slot]:  # probe a drafting chain
            tau, ks, chain = next((x for x in scored if len(x[2]) > 1), (tau, ks, chain))
            ks = ks[:-1] + (max(ks[-1], 4),)  # several drafts: one probe should be worth its cost
            self.gap[slot] = min(2 * self.gap[slot], 8 * self.probe_every)
        elif len(chain) > 1:
            self.gap[slot] = self.probe_every
        self.alone[slot] = self.alone[slot] + 1 if len(chain) == 1 else 0
        if self.policy is not None and len(chain) > 1:
            if hasattr(self.policy, "set_band"):  # a policy that moves within the cost band (dsde)
                curve = top_pair_curve(chain, lambda lv, T: self.profiler.cost(lv, B, T),
                                       lambda lo, up: self.sim.alpha(lo, up, slot),
                                       lambda up: self.sim.match_rate(up, slot), self.k_max)
                self.policy.set_band(slot, *length_band(curve, self.band_slack))
            ks = ks[:-1] + (self.policy.propose(slot),)
        plan = Plan(chain, ks, tau)
        self.current[slot] = plan
        return plan

    # ------------------------------------------------------------------ learn
    def entropy_cap(self, slot: int) -> float | None:
        """Early-stop entropy for the top drafter of this row, if the length policy has one."""
        policy = self.policy
        return policy.entropy_cap(slot) if policy is not None and hasattr(policy, "entropy_cap") else None

    def observe(self, fb: PairFeedback) -> None:
        self.sim.observe(fb)
        cur = self.current[fb.slot] if fb.slot < len(self.current) else None
        if self.policy is not None and cur is not None and len(cur.chain) > 1 and \
                (fb.lower, fb.upper) == (cur.chain[-2], cur.chain[-1]):
            self.policy.observe(fb.slot, fb)

    def observe_text(self, slot: int, committed: list[int], n_new: int) -> None:
        """Row ``slot`` committed its last ``n_new`` tokens of ``committed`` (prompt + output)."""
        if self.shadow is None:
            return
        rounds = self.shadow.advance(slot, committed, len(committed) - n_new)
        if not rounds:
            return
        cur = self.current[slot].chain if self.current[slot] is not None else ()
        ran = {cur[i + 1] for i in range(len(cur) - 1) if cur[i] == NGRAM}
        uppers = {c[i + 1] for c in self.candidates_for(slot) for i in range(len(c) - 1) if c[i] == NGRAM}
        for up in sorted(uppers - ran):
            for n_drafted, n_accepted in rounds:
                self.sim.observe(PairFeedback(slot, NGRAM, up, n_drafted, n_accepted))

    def observe_step(self, slot: int, plan: Plan, seconds: float, n_tokens: int, tag=None) -> None:
        if plan.predicted_s_per_token is None or n_tokens == 0:
            return
        if len(self.segments) >= self.max_segments:  # a long-running server: forget the oldest
            del self.segments[next(iter(self.segments))]
        seg = self.segments[(tag, plan.chain)]
        seg[0] += plan.predicted_s_per_token * n_tokens
        seg[1] += seconds
        seg[2] += n_tokens
        seg[3] += 1
        if self.log_decisions and len(self.decisions) < self.max_segments * 10:
            self.decisions.append({"tag": tag, "chain": ">".join(plan.chain), "ks": list(plan.ks),
                                   "predicted_s_per_token": plan.predicted_s_per_token,
                                   "realized_s_per_token": seconds / n_tokens})

    def accuracy(self, min_steps: int = 4) -> list[tuple[float, float]]:
        """(predicted, realized) seconds per token of each (request, chain) run of >= min_steps steps."""
        return [(s[0] / s[2], s[1] / s[2]) for s in self.segments.values() if s[3] >= min_steps and s[2]]

    def reset_log(self) -> None:
        self.segments.clear()
        self.decisions.clear()
