"""A smaller language model as drafter: K autoregressive steps over its own KV cache.

Cache invariant (per row b): after ``observe``, the drafter's cache holds a prefix of committed[b]
that is at most ``len(committed[b]) - 1`` long; the rest ("pending", one or two tokens) is fed at
the start of the next ``propose`` in one ragged forward. Nothing committed is ever re-prefilled.
"""

from __future__ import annotations

import torch

from ..model.transformer import Transformer
from ..sampling import SamplingParams, probs_from_logits, sample
from .base import Draft, pad_rows


class ModelDrafter:
    def __init__(self, model: Transformer, name: str, vocab: int, max_seq_len: int):
        self.model, self.name, self.vocab, self.max_seq_len = model, name, vocab, max_seq_len
        self.cache = None

    def reserve(self, max_batch: int) -> None:
        if self.cache is None or self.cache.batch_size < max_batch:
            self.cache = self.model.new_cache(max_batch, self.max_seq_len)

    def add_row(self, row: int, prompt: list[int]) -> None:
        self.cache.reset(row)
        # Prefill all but the last prompt token: that one is fed by the first propose().
        if len(prompt) > 1:
            self.model(torch.tensor([prompt[:-1]], device=self.model.device), self.cache, logits_for="last",
                       row0=row)

    def propose(self, committed: list[list[int]], k: list[int], params: list[SamplingParams],
                generators: list[torch.Generator]) -> Draft:
        B, K = len(committed), max(k)
        dev = self.model.device
        tokens = torch.zeros(B, K, dtype=torch.long, device=dev)
        if K == 0:
            return Draft(tokens, None, [0] * B)
        greedy = all(p.greedy for p in params)
        q = None if greedy else torch.zeros(B, K, self.vocab, device=dev)
        pending = [c[self.cache.lengths[b]:] for b, c in enumerate(committed)]
        logits = self.model(pad_rows(pending, device=dev), self.cache, n_new=[len(p) for p in pending],
                            logits_for="last")[:, 0, :self.vocab]  # [B, V]
        for i in range(K):
            if greedy:
                t = logits.argmax(-1)
            else:
                probs = torch.stack([probs_from_logits(logits[b], params[b]) for b in range(B)])  # [B, V]
                q[:, i] = probs
                t = torch.stack([sample(probs[b:b + 1], generators[b])[0] for b in range(B)])
            tokens[:, i] = t
            if i + 1 < K:  # the last draft is never fed: its successor is the verifier's job
                logits = self.model(t[:, None], self.cache, logits_for="last")[:, 0, :self.vocab]
        return Draft(tokens, q, list(k))

    def observe(self, committed: list[list[int]], n_accepted: list[int]) -> None:
        for b, c in enumerate(committed):
            # The cache holds old text + our drafts; the committed text agrees with it up to the
            # accepted drafts, and the verifier's own token (last) is never in our cache yet.
            self.cache.rollback(b, min(self.cache.lengths[b], len(c) - 1))

    def remove_row(self, row: int, last: int) -> None:
        if row != last:
            self.cache.move_row(last, row)
