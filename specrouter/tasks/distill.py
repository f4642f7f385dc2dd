"""Distillation targets, loss and draft-acceptance metrics. Pure functions of tensors.

Notation as in the rest of SpecRouter: p = the target's distribution, q = the draft's.

Storage: a target distribution over a 150k vocabulary is 600 KB per position, so the training data
keeps its top-K (indices and probabilities) and the leftover mass p_rest = 1 - sum(top-K). The loss
is KL(p~ || q~) between the *coarsened* distributions over {top-K tokens, "everything else"}:

    sum_{i in top-K} p_i log(p_i / q_i) + p_rest log(p_rest / q_rest),  q_rest = 1 - sum_{top-K} q_i

which is exact when K = V and otherwise a lower bound of KL(p || q) (data processing inequality)
whose gradient pushes q's top-K mass towards p's. The acceptance metrics are exact, on full
distributions: greedy agreement (argmax q == argmax p: the per-token acceptance of greedy
verification) and 1 - TVD(p, q) (the acceptance probability of exact speculative sampling).
"""

from __future__ import annotations

import torch


def topk_targets(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [P, V] -> (indices [P, k] int64, probabilities [P, k] float32), most likely first."""
    probs = logits.float().softmax(-1)
    k = min(k, probs.shape[-1])
    top = probs.topk(k, dim=-1)
    return top.indices, top.values


def coarse_kl(draft_logits: torch.Tensor, idx: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(p~ || q~) per position [P] (see module docstring). draft_logits [P, V]; idx, p [P, K]."""
    logq = draft_logits.float().log_softmax(-1)
    logq_top = logq.gather(-1, idx)
    kl = (p * (p.clamp_min(1e-12).log() - logq_top)).sum(-1)
    p_rest = (1 - p.sum(-1)).clamp_min(0)
    q_rest = (1 - logq_top.exp().sum(-1)).clamp_min(1e-12)
    return kl + p_rest * (p_rest.clamp_min(1e-12).log() - q_rest.log())


def greedy_agreement(draft_logits: torch.Tensor, target_argmax: torch.Tensor) -> torch.Tensor:
    """[P] bool: the draft's argmax equals the target's."""
    return draft_logits.argmax(-1) == target_argmax


def one_minus_tvd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[P]: 1 - TVD(p, q) = sum_i min(p_i, q_i), for probability rows [P, V]."""
    return torch.minimum(p, q).sum(-1)
