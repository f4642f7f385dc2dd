"""Verification of drafted tokens: greedy matching and exact rejection sampling.

Glossary (as in vLLM's rejection sampler):
* **draft tokens** x_1..x_K: proposed by the drafter, x_i ~ q_i.
* **accepted** tokens: the longest prefix the verifier keeps. Token x_i is kept with probability
  min(1, p_i(x_i) / q_i(x_i)) given that all before it were kept.
* **recovered** token: at the first rejection i, a token drawn from the residual
  norm(max(p_i - q_i, 0)); it replaces x_i, and the step ends.
* **bonus** token: when all K drafts are accepted, one extra token drawn from p_{K+1}, the
  verifier's distribution after the last draft (it comes free with the verification pass).

Every step therefore commits n_accepted + 1 tokens, and the committed tokens are distributed exactly
as if sampled from p one at a time (Leviathan et al. 2023, Chen et al. 2023).

Rows of a batch may carry different numbers of drafts (``n_draft``); drafts past a row's count are
padding and are never accepted.

Shapes: B rows, K = max drafts per row, V vocab. p has K+1 positions: p[:, i] is the verifier's
distribution for the token after the prefix plus drafts x_1..x_i.
"""

from __future__ import annotations

import torch


def _valid(n_draft: list[int], K: int, device) -> torch.Tensor:
    """[B, K] bool: position i of row b holds a real draft."""
    return torch.arange(K, device=device)[None, :] < torch.tensor(n_draft, device=device)[:, None]


def greedy_verify(draft_tokens: torch.Tensor, target_argmax: torch.Tensor,
                  n_draft: list[int]) -> tuple[list[int], list[int]]:
    """Greedy verification.

    draft_tokens: [B, K] int64; target_argmax: [B, K+1] int64, the verifier's argmax at each position.
    Returns (n_accepted [B], next_token [B]): the verifier's own token after the accepted prefix
    (the correction at the first mismatch, or the bonus token when all drafts match).
    """
    B, K = draft_tokens.shape
    match = (draft_tokens == target_argmax[:, :K]) & _valid(n_draft, K, draft_tokens.device)
    n_acc = match.long().cumprod(-1).sum(-1)  # [B]
    nxt = target_argmax.gather(1, n_acc[:, None]).squeeze(1)  # [B]
    both = torch.stack([n_acc, nxt]).tolist()  # one host sync per step for the whole batch
    return both[0], both[1]


def rejection_sample(draft_tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, n_draft: list[int],
                     generators: list[torch.Generator]) -> tuple[list[int], list[int]]:
    """Exact speculative sampling.

    draft_tokens: [B, K] int64, x_i drawn from q[:, i].
    q: [B, K, V] float32, the drafter's distributions (one-hot for deterministic drafters such as n-gram).
    p: [B, K+1, V] float32, the verifier's distributions.
    n_draft: real drafts per row (<= K). generators: one ``torch.Generator`` per row.
    Returns (n_accepted [B], next_token [B]) where next_token is the recovered or bonus token.
    """
    B, K = draft_tokens.shape
    if K == 0:
        return [0] * B, [int(torch.multinomial(p[b, 0], 1, generator=generators[b])) for b in range(B)]
    idx = draft_tokens[..., None]
    p_x = p[:, :K].gather(-1, idx).squeeze(-1)  # [B, K]
    q_x = q.gather(-1, idx).squeeze(-1)  # [B, K]
    # Row b draws exactly n_draft[b] uniforms, so a seeded row's random stream is independent of the batch
    # (padding positions get 1.0 and are masked out by _valid anyway).
    u = torch.stack([torch.cat([torch.rand(n, generator=g, device=p.device), torch.ones(K - n, device=p.device)])
                     for g, n in zip(generators, n_draft)])  # [B, K]
    # accept x_i  <=>  u < p(x)/q(x); multiplied out so q(x) == 0 (impossible for a drawn x) can't divide
    accept = (u * q_x < p_x) & _valid(n_draft, K, p.device)
    n_acc = accept.long().cumprod(-1).sum(-1).tolist()  # one host sync per step
    nxt = []
    for b in range(B):
        n = n_acc[b]
        if n < n_draft[b]:  # first rejection at position n: draw the recovered token from the residual
            residual = (p[b, n] - q[b, n]).clamp_min(0)
            total = residual.sum()
            # total == 0 only if p == q numerically, where a rejection has probability 0; keep p then.
            dist = residual / total if total > 0 else p[b, n]
        else:  # every draft accepted: bonus token from the verifier's next distribution
            dist = p[b, n]
        nxt.append(int(torch.multinomial(dist, 1, generator=generators[b])))
    return n_acc, nxt
