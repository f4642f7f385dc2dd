"""Prompt embeddings: mean-pooled final hidden states of a (small) model over a window of the prompt.

Boundary: token ids in, one vector out. Which model, and how the vector is classified, is decided
elsewhere (``fit.py``, ``classifier.py``, ``routing.py``).

The window: positions ``[s, e)`` of ``ids[:-1]`` — the tokens a level's prefill feeds, so at run
time the embedding *is* the prefill of the embedding level (``ModelLevel.embed_prefix``) and needs
no forward of its own. ``s = pool_from`` skips the chat template's shared prefix (a causal model
gives every prompt identical hidden states there, which would only shrink the differences);
``e - s <= max_tokens`` bounds the cost on long prompts (RAG, summarization: thousands of tokens).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class EmbedSpec:
    pool_from: int = 0  # first pooled position (the shared template prefix is skipped)
    max_tokens: int = 256  # pooled positions at most

    def __post_init__(self) -> None:
        if self.pool_from < 0 or self.max_tokens < 1:
            raise ValueError(f"EmbedSpec needs pool_from >= 0 and max_tokens >= 1, got {self}")

    def window(self, n_ids: int) -> tuple[int, int] | None:
        """Pooled positions [s, e) for a prompt of ``n_ids`` tokens; None when it has < 2 tokens."""
        e = min(n_ids - 1, self.pool_from + self.max_tokens)
        if e < 1:
            return None
        return min(self.pool_from, e - 1), e


def common_prefix_len(id_lists: list[list[int]]) -> int:
    """Length of the longest prefix every list shares."""
    if not id_lists:
        return 0
    first = id_lists[0]
    n = min(len(x) for x in id_lists)
    for i in range(n):
        t = first[i]
        if any(x[i] != t for x in id_lists):
            return i
    return n


def pool(hidden: torch.Tensor, start: int) -> np.ndarray:
    """hidden: [e, dim] hidden states of ids[:e] -> mean over positions [start, e), float64 [dim]."""
    return hidden[start:].double().mean(0).cpu().numpy()


class PromptEmbedder:
    """A model with its own one-row cache, for fitting and evaluating (not in the serving path)."""

    def __init__(self, model, spec: EmbedSpec):
        self.model, self.spec = model, spec
        self.cache = model.new_cache(1, min(spec.pool_from + spec.max_tokens + 8, model.args.max_position))
        self.last_tokens = 0  # tokens fed by the last call (for latency reports)

    @torch.inference_mode()
    def __call__(self, ids: list[int]) -> np.ndarray | None:
        w = self.spec.window(len(ids))
        if w is None:
            return None
        s, e = w
        self.cache.reset(0)
        hidden = self.model(torch.tensor([ids[:e]], device=self.model.device), self.cache, return_hidden=True)[0]
        self.last_tokens = e
        return pool(hidden, s)

    def many(self, id_lists: list[list[int]], label: str = "embedding") -> tuple[np.ndarray, list[float]]:
        """Embed every prompt (each must have >= 2 tokens); returns ([N, dim], seconds per prompt)."""
        out, secs = [], []
        t_start = time.perf_counter()
        for i, ids in enumerate(id_lists, 1):
            t0 = time.perf_counter()
            v = self(ids)
            secs.append(time.perf_counter() - t0)
            if v is None:
                raise ValueError(f"prompt {i} has {len(ids)} token(s); an embedding needs at least 2")
            out.append(v)
            if i % 20 == 0 or i == len(id_lists):
                el = time.perf_counter() - t_start
                print(f"[tasks] {label}: {i}/{len(id_lists)} prompts, {el:.0f}s elapsed, "
                      f"~{el / i * (len(id_lists) - i):.0f}s left", file=sys.stderr, flush=True)
        return np.stack(out), secs
