"""Verification functions: greedy matching, and rejection sampling against the exact distribution."""

import pytest
import torch
from stats import chi_square_pvalue

from specrouter.sampling import SamplingParams, probs_from_logits
from specrouter.verify import greedy_verify, rejection_sample


def test_greedy_verify_cases():
    drafts = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 9, 7], [1, 2, 0]])
    target = torch.tensor([[5, 6, 7, 8], [4, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]])
    n_acc, nxt = greedy_verify(drafts, target, n_draft=[3, 3, 3, 2])
    assert n_acc == [3, 0, 1, 2]  # all / none / first only / all of a shorter row (padding ignored)
    assert nxt == [8, 4, 6, 3]  # bonus / correction / correction / bonus after the row's 2 drafts


def _toy(V=6, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(K + 1, V, generator=g).pow(2)
    q = torch.rand(K, V, generator=g).pow(2)
    return p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)


def _run(p, q, n, sampler, seed=0):
    K, V = q.shape
    g = torch.Generator().manual_seed(seed)
    drafts = torch.stack([torch.multinomial(q[i], n, replacement=True, generator=g) for i in range(K)], 1)  # [n, K]
    gens = [torch.Generator().manual_seed(seed * 100003 + i) for i in range(n)]
    n_acc, nxt = sampler(drafts, q.expand(n, K, V), p.expand(n, K + 1, V), [K] * n, gens)
    first = torch.tensor([drafts[i, 0].item() if n_acc[i] > 0 else nxt[i] for i in range(n)])
    second = torch.tensor([(drafts[i, 1].item() if n_acc[i] > 1 else nxt[i]) for i in range(n) if n_acc[i] >= 1])
    return first, second


def biased_rejection_sample(draft_tokens, q, p, n_draft, generators):
    """A plausible-looking bug: recovered tokens drawn from p instead of the residual max(p - q, 0)."""
    B, K = draft_tokens.shape
    n_acc, nxt = [], []
    for b in range(B):
        n = 0
        while n < n_draft[b]:
            x = draft_tokens[b, n]
            if torch.rand(1, generator=generators[b]).item() * q[b, n, x] < p[b, n, x]:
                n += 1
            else:
                break
        n_acc.append(n)
        nxt.append(int(torch.multinomial(p[b, n], 1, generator=generators[b])))
    return n_acc, nxt


def test_rejection_sample_follows_target_distribution():
    p, q = _toy()
    first, second = _run(p, q, 20000, rejection_sample)
    V = p.shape[1]
    assert chi_square_pvalue(torch.bincount(first, minlength=V), p[0]) > 1e-3
    assert chi_square_pvalue(torch.bincount(second, minlength=V), p[1]) > 1e-3


def test_distribution_test_catches_a_biased_sampler():
    p, q = _toy()
    first, _ = _run(p, q, 20000, biased_rejection_sample)
    assert chi_square_pvalue(torch.bincount(first, minlength=p.shape[1]), p[0]) < 1e-3


def test_rejection_with_one_hot_q_is_greedy_when_p_is_one_hot():
    V = 5
    p = torch.nn.functional.one_hot(torch.tensor([[2, 3, 4]]), V).float()  # [1, 3, V]
    drafts = torch.tensor([[2, 1]])
    q = torch.nn.functional.one_hot(drafts, V).float()
    n_acc, nxt = rejection_sample(drafts, q, p, [2], [torch.Generator().manual_seed(0)])
    assert (n_acc, nxt) == ([1], [3])


def test_probs_from_logits_top_k_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    pk = probs_from_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (pk[0, 2:] == 0).all() and torch.isclose(pk.sum(), torch.tensor(1.0))
    full = logits.softmax(-1)[0]
    pp = probs_from_logits(logits, SamplingParams(temperature=1.0, top_p=float(full[0] + 0.01)))
    assert (pp[0] > 0).tolist() == [True, True, False, False, False]  # smallest set reaching top_p
    g = probs_from_logits(logits, SamplingParams(temperature=0.0))
    assert g.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("kw", [dict(temperature=-0.1), dict(temperature="hot"), dict(top_p=0.0), dict(top_p=1.5),
                                dict(top_k=-1), dict(max_new_tokens=0), dict(max_new_tokens=2.5),
                                dict(seed="x"), dict(stop=("",))])
def test_invalid_sampling_values_are_rejected(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)
