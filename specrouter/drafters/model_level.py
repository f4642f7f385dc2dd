"""A model in the pool: its KV cache over every batch slot, and one timed, ragged forward.

Boundary: a level knows its model, its cache and how to score "pending text + drafts" for a set of
rows. Who drafts for whom (the chain) is decided elsewhere (``speculate.py``, the router); the same
level can verify for one row and draft for another in the same step.

Cache invariant (per slot b, after every engine step): the cache holds a prefix of the row's
committed text that is at most ``len(committed) - 1`` long. The missing tail ("pending") is fed
at the start of the level's next forward for that row, so a level that sat out some steps, or a
row just admitted, catches up in one ragged forward — nothing committed is ever re-prefilled.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..model.transformer import Transformer
from .base import pad_rows

# profiler hook: (level name, rows in the pass, tokens per row, seconds)
TimingHook = Callable[[str, int, int, float], None]


class ModelLevel:
    kind = "model"

    def __init__(self, model: Transformer, name: str, vocab: int, max_seq_len: int):
        self.model, self.name, self.vocab, self.max_seq_len = model, name, vocab, max_seq_len
        self.cache = None
        self.on_timing: TimingHook | None = None
        self.extra_delay_s = 0.0  # injected cost per forward (adaptation tests and demos)
        # A level with the same weights in another precision (``1.5b@int4`` and ``1.5b``): when the
        # twin prefills a row, this level takes the twin's prompt keys/values instead of running
        # its own prefill. Why: int4/int8 kernels are fast at one row but slow over hundreds
        # (a 768-token prefill of the int4 1.5B costs 2.3x the bf16 one here). The seeded cache
        # makes this level's proposals q slightly different from its own-prefill ones; lossless
        # all the same, because verification uses exactly the q this level drafted from.
        self.twin: ModelLevel | None = None
        # Passes narrower than this are padded (``Transformer.forward``). The engine sets 2 on its
        # target so a token's logits do not depend on the pass width (exact greedy equality).
        self.min_tokens = 1

    # ------------------------------------------------------------------ rows
    def reserve(self, max_batch: int) -> None:
        if self.cache is None or self.cache.batch_size < max_batch:
            self.cache = self.model.new_cache(max_batch, self.max_seq_len)

    def add_row(self, slot: int) -> None:
        self.cache.reset(slot)  # filled lazily: the first forward for this row feeds its whole prompt

    def prefill(self, slot: int, prompt: list[int]) -> None:
        """Feed prompt[:-1] to an empty slot now (the target does this at admission)."""
        self.cache.reset(slot)
        if len(prompt) > 1:
            self.model(torch.tensor([prompt[:-1]], device=self.model.device), self.cache, logits_for="last",
                       row0=slot)

    def seed_from_twin(self, slot: int) -> bool:
        """Copy the twin's cached prefix of row ``slot`` (right after the twin's prefill); True if done."""
        if self.twin is None:
            return False
        self.cache.copy_row_from(self.twin.cache, slot, self.twin.cache.lengths[slot])
        return True

    def embed_prefix(self, slot: int, ids: list[int]) -> torch.Tensor:
        """Feed ``ids`` to an empty slot; return their final normed hidden states [len(ids), dim], fp32.

        ``ids`` must be a prefix of the row's committed text, shorter than it (the cache invariant):
        this is the level's prefill of that prefix, whose hidden states a task classifier pools
        (``specrouter/tasks``), so the embedding costs no forward beyond the prefill itself.
        """
        if not ids:
            raise ValueError("embed_prefix needs at least one token")
        self.cache.reset(slot)
        return self.model(torch.tensor([ids], device=self.model.device), self.cache, row0=slot,
                          return_hidden=True)[0]

    def remove_row(self, slot: int, last: int) -> None:
        if slot != last:
            self.cache.move_row(last, slot)

    def sync(self, seqs: list[list[int]]) -> None:
        """Roll every row back to the part of its cache that ``seqs`` confirms.

        Valid whenever seqs[b] agrees with what the cache holds except possibly in its last token —
        true after any verification, at any level, since a verifier only appends its own token.
        """
        for b, s in enumerate(seqs):
            self.cache.rollback(b, min(self.cache.lengths[b], len(s) - 1))

    # ------------------------------------------------------------------ scoring
    def score(self, seqs: list[list[int]], drafts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """Logits for rows ``rows`` at the last seqs token and after each draft: [len(rows), K+1, V].

        seqs: the text each row stands on (all live rows; only ``rows`` are fed); drafts: per entry
        of ``rows``, the tokens proposed after it. The forward covers slots [0, max(rows)] so it
        stays a slice of the cache; other rows get no tokens (their padding is written past their
        length and never read).
        """
        width = max(rows) + 1
        feeds, n_new = [[] for _ in range(width)], [0] * width
        pos = torch.zeros(width, 1 + max(len(d) for d in drafts), dtype=torch.long)
        for i, b in enumerate(rows):
            pending = seqs[b][self.cache.lengths[b]:]
            feeds[b] = pending + drafts[i]
            n_new[b] = len(feeds[b])
            pos[b, :len(drafts[i]) + 1] = torch.arange(len(pending) - 1, len(feeds[b]))
        t0 = time.perf_counter()
        logits = self.model(pad_rows(feeds, device=self.model.device), self.cache, n_new=n_new, logits_for=pos,
                            min_tokens=self.min_tokens)
        if self.extra_delay_s:
            time.sleep(self.extra_delay_s)
        if self.on_timing is not None:
            self.on_timing(self.name, len(rows), max(n_new), time.perf_counter() - t0)
        return logits[rows, :, :self.vocab]

    def rollback(self, slot: int, length: int) -> None:
        self.cache.rollback(slot, length)
