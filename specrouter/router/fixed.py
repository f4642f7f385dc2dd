"""The fixed-chain router: every row uses one given chain; a length policy sets the top draft length.

It has the same shape as the adaptive router (``plan`` / ``observe`` / row bookkeeping), so the
engine never knows which one it drives.
"""

from __future__ import annotations

from ..speculate import PairFeedback, Plan

DEFAULT_INNER_K = {"ngram": 3}  # drafts a lower level sends per inner round, by level kind
INNER_K_MODEL = 4


class FixedRouter:
    def __init__(self, chain: tuple[str, ...], length_policy, inner_k: dict[str, int] | None = None):
        self.chain = tuple(chain)
        self.policy = length_policy
        inner_k = {**DEFAULT_INNER_K, **(inner_k or {})}
        self.inner = tuple(inner_k.get(level, INNER_K_MODEL) for level in self.chain[:-2])
        self.decisions: list[dict] = []

    def add_row(self, slot: int) -> None:
        self.policy.add_row(slot)

    def remove_row(self, slot: int, last: int) -> None:
        self.policy.remove_row(slot, last)

    def plan(self, slot: int, ctx=None) -> Plan:
        if len(self.chain) == 1:
            return Plan(self.chain, ())
        return Plan(self.chain, self.inner + (self.policy.propose(slot),))

    def entropy_cap(self, slot: int) -> float | None:
        """Early-stop entropy for the top drafter of this row, if the length policy has one."""
        policy = self.policy
        return policy.entropy_cap(slot) if policy is not None and hasattr(policy, "entropy_cap") else None

    def observe(self, fb: PairFeedback) -> None:
        if len(self.chain) > 1 and fb.upper == self.chain[-1] and fb.lower == self.chain[-2]:
            self.policy.observe(fb.slot, fb)

    def observe_text(self, slot: int, committed: list[int], n_new: int) -> None:
        pass  # a fixed chain learns nothing from the committed text

    def observe_step(self, slot: int, plan: Plan, seconds: float, n_tokens: int, tag=None) -> None:
        pass
