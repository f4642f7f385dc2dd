"""A draft head that scores only part of the vocabulary (``-vocab=N`` on a chain level).

Why: a draft's output head is a large share of its decode step — for Qwen the head is 151936 x dim,
measured here (bf16, Zen 4, 2 threads) a third of a one-token step of the int4 0.5B (12.4 of 37.7
ms) and a fifth of the int4 1.5B's — while the tokens a draft gets accepted are nearly all among the
frequent ones. Scoring only N of them cuts that share by V / N (the idea of FR-Spec, Zhao et al.
2025, which ranks by corpus frequency). Which N: the N lowest ids. For byte-level BPE vocabularies
(Qwen, GPT-2/4 style, Llama 3) ids follow merge order, and early merges are the frequent ones, so
no corpus is needed (``results/draft-vocab-coverage.py`` measures how much of the target's output
that covers), plus every special token of the tokenizer (end of turn must stay proposable).

Losslessness: the restricted head is the draft's whole distribution q, zero outside the kept ids
(logits -inf there). Verification compares the target's p with exactly that q, so a target token
outside the set is simply never proposed: it costs acceptance, never correctness. Only a draft may
carry it; the engine refuses a target whose head is restricted (``SpeculativeEngine``).

Boundary: which ids (``draft_vocab_ids``) and the head module; the loader decides when.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def draft_vocab_ids(n: int, vocab_size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The kept ids, sorted: ``[0, n)`` plus ``always`` (special tokens), all below ``vocab_size``.

    Returns a [N'] int64 tensor, N' <= vocab_size. ``n >= vocab_size`` keeps everything.
    """
    if n < 1:
        raise ValueError(f"a draft vocabulary needs at least one token, got {n}")
    keep = set(range(min(n, vocab_size)))
    keep.update(i for i in always if 0 <= i < vocab_size)
    return torch.tensor(sorted(keep), dtype=torch.long)


class VocabSubsetHead(nn.Module):
    """Logits over the whole vocabulary from a linear over some of its rows.

    inner: a linear [dim -> N'] whose output row j is vocabulary id ``ids[j]`` (any linear kind);
    ids: [N'] int64, sorted, unique; vocab_size: V, the width of the returned logits.
    forward: x [..., dim] -> [..., V] in the inner's dtype, -inf at every id not in ``ids``.
    """

    restricted = True

    def __init__(self, inner: nn.Module, ids: torch.Tensor, vocab_size: int):
        super().__init__()
        if ids.dim() != 1 or ids.numel() == 0 or int(ids.max()) >= vocab_size:
            raise ValueError(f"ids must be a non-empty [N] tensor of ids below {vocab_size}")
        self.inner, self.vocab_size = inner, vocab_size
        self.register_buffer("ids", ids.to(torch.long))

    @property
    def n_kept(self) -> int:
        return self.ids.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sub = self.inner(x)  # [..., N']
        out = sub.new_full((*sub.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.ids, sub)  # ids live on the head's device: no copy per step


def is_restricted(head: nn.Module) -> bool:
    return bool(getattr(head, "restricted", False))
