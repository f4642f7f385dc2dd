"""The drafting interface: propose, then observe (the shape of transformers' CandidateGenerator).

Boundary: a drafter sees token ids and per-row sampling state, never text. The engine owns the
committed sequences; a drafter keeps whatever private state it needs (a KV cache, an n-gram index)
and must leave it consistent with the committed text after ``observe``.

Row protocol (shared by every level of a chain and the length policies): live rows are slots
[0, B) packed at the front; ``add_row(B, prompt)`` opens slot B (continuous batching admits
requests between steps), ``remove_row`` retires one by moving the last live row into its slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..sampling import SamplingParams


@dataclass
class Draft:
    """What a drafter proposes for a batch.

    tokens: [B, K] int64, row b's drafts are tokens[b, :n[b]] (the rest is padding).
    q: [B, K, V] float32 draft distributions the tokens were drawn from, or None when the drafter is
       deterministic (one-hot q, e.g. n-gram lookup or greedy decoding).
    n: drafts per row, each <= K.
    """

    tokens: torch.Tensor
    q: torch.Tensor | None
    n: list[int]


class Drafter(Protocol):
    name: str

    def reserve(self, max_batch: int) -> None:
        """Make room for up to ``max_batch`` live rows (called while no row is live)."""

    def add_row(self, row: int, prompt: list[int]) -> None:
        """Open slot ``row`` (== number of live rows) with this prompt (its whole committed text)."""

    def propose(self, committed: list[list[int]], k: list[int], params: list[SamplingParams],
                generators: list[torch.Generator]) -> Draft:
        """Propose up to k[b] tokens continuing committed[b] for every live row b."""

    def observe(self, committed: list[list[int]], n_accepted: list[int]) -> None:
        """Feedback after verification: committed[b] now ends with the accepted drafts + one verifier token."""

    def remove_row(self, row: int, last: int) -> None:
        """Row ``row`` finished; move row ``last`` (the last live one) into its slot."""


def one_hot_q(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """q for a deterministic drafter: [B, K] -> [B, K, V] one-hot float32."""
    return torch.nn.functional.one_hot(tokens, vocab).float()


def pad_rows(rows: list[list[int]], pad: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
    """Ragged token lists -> [B, max_len] int64, right-padded."""
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            out[b, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)
