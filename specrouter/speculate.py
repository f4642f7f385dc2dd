"""Collaborative verification over a chain of levels: one round of verification, and recursive drafting.

A chain is a path of levels, lowest first, e.g. ``ngram > 0.5b > 1.5b``. Level i drafts for level
i+1; a model level that has a level below it produces its drafts by speculating itself: rounds of
"lower level proposes, this level verifies in one forward, keeps the accepted prefix plus its own
token" until it holds k tokens. Those tokens are an exact sample of this level's own distribution
(greedy: its argmax continuation), so they go up with this level's distributions as their q, and
the level above verifies them the same way. Only the target's verdict commits text.

Notation: p = the verifier's distribution, q = the drafter's, at each drafted position.

Signals (for the router's similarity estimates and the DSDE length policy) come from
distributions the forward passes computed anyway: per compared position, TVD(p, q) and KL(p || q).
Compared positions are those whose prefix was accepted: 0 .. min(n_accepted, n_drafted - 1).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .drafters.model_level import ModelLevel
from .drafters.ngram import ngram_lookup
from .sampling import SamplingParams, probs_from_logits
from .verify import greedy_verify, rejection_sample

NGRAM = "ngram"


@dataclass
class PairFeedback:
    """One row's verification by ``upper`` of what ``lower`` drafted."""

    slot: int
    lower: str
    upper: str
    n_drafted: int
    n_accepted: int
    tvd: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # empty when q is one-hot (KL is infinite)


Sink = Callable[[PairFeedback], None]


@dataclass
class RoundResult:
    n_acc: list[int]  # per entry of rows
    nxt: list[int]
    q_up: list[torch.Tensor]  # per entry: [n_acc + 1, V] the verifier's distributions at its committed positions


@dataclass(frozen=True)
class RowContext:
    """What a router may know about a row when it plans the row's next step.

    pending: level name -> committed tokens that level has not seen yet (a level that never ran for
    this row has the whole prompt pending: using it first costs a prefill); budget: tokens the row
    may still commit (an upper bound on what that one-off cost is spread over).
    """

    pending: dict[str, int]
    budget: int


@dataclass(frozen=True)
class Plan:
    """A row's chain for one step: levels lowest first, target last; ks[i] = drafts level i sends up."""

    chain: tuple[str, ...]
    ks: tuple[int, ...]
    predicted_s_per_token: float | None = None

    def lower_of(self, level: str) -> tuple[str | None, int]:
        i = self.chain.index(level)
        return (self.chain[i - 1], self.ks[i - 1]) if i > 0 else (None, 0)


def _signals(p: torch.Tensor, q: torch.Tensor | None, drafts: list[int], n_cmp: int) -> tuple[list, list]:
    """p: [>= n_cmp, V], q: [>= n_cmp, V] or None (one-hot on drafts). Returns (tvd, kl) lists."""
    if n_cmp == 0:
        return [], []
    p = p[:n_cmp]
    if q is None:  # one-hot q: TVD = 1 - p(x)
        x = torch.tensor(drafts[:n_cmp], device=p.device)
        return (1 - p.gather(-1, x[:, None]).squeeze(-1)).tolist(), []
    q = q[:n_cmp]
    tvd = 0.5 * (p - q).abs().sum(-1)
    kl = (p * (p.clamp_min(1e-10).log() - q.clamp_min(1e-10).log())).sum(-1)
    both = torch.stack([tvd, kl]).tolist()
    return both[0], both[1]


def verify_round(level: ModelLevel, seqs: list[list[int]], rows: list[int], drafts: list[list[int]],
                 qs: list[torch.Tensor | None], params: list[SamplingParams], gens: list[torch.Generator],
                 lowers: list[str | None], sink: Sink | None) -> RoundResult:
    """``level`` scores seqs[b] + drafts for each b in ``rows`` in one forward and decides.

    drafts[i], qs[i], lowers[i] belong to rows[i]; qs[i] is [len(drafts[i]), V] or None (one-hot
    drafter); lowers[i] names the level that drafted them (for the feedback sent to ``sink``).
    Leaves the level's cache holding seqs[b] + drafts[i]; the caller rolls it back once it knows
    what was kept. Returns per-row accepted counts, next tokens and this level's distributions.
    """
    logits = level.score(seqs, drafts, rows)  # [R, K+1, V]
    R, V = len(rows), logits.shape[-1]
    K = logits.shape[1] - 1
    n_draft = [len(d) for d in drafts]
    dtok = torch.zeros(R, K, dtype=torch.long)
    for i, d in enumerate(drafts):
        dtok[i, :len(d)] = torch.tensor(d, dtype=torch.long)
    dtok = dtok.to(logits.device)
    rp = [params[b] for b in rows]
    # p: the verifier's distributions; under greedy, softmax at T=1 (used for signals and as q above)
    if all(p.greedy for p in rp):
        n_acc, nxt = greedy_verify(dtok, logits.argmax(-1), n_draft)
        p = logits.softmax(-1)
    else:
        p = torch.stack([probs_from_logits(logits[i], rp[i]) if not rp[i].greedy else logits[i].softmax(-1)
                         for i in range(R)])
        q = torch.zeros(R, K, V, device=logits.device)
        for i in range(R):
            if n_draft[i]:
                q[i, :n_draft[i]] = qs[i][:n_draft[i], :V] if qs[i] is not None else \
                    torch.nn.functional.one_hot(dtok[i, :n_draft[i]], V).float()
        # greedy rows inside a sampled batch: one-hot p and q make rejection sampling an argmax match
        p_dec = torch.stack([p[i] if not rp[i].greedy else
                             torch.nn.functional.one_hot(logits[i].argmax(-1), V).float() for i in range(R)])
        q_dec = torch.stack([q[i] if not rp[i].greedy or qs[i] is None else
                             torch.nn.functional.one_hot(dtok[i], V).float() for i in range(R)])
        n_acc, nxt = rejection_sample(dtok, q_dec, p_dec, n_draft, [gens[b] for b in rows])
    if sink is not None:
        for i, b in enumerate(rows):
            if n_draft[i] and lowers[i] is not None:
                tvd, kl = _signals(p[i], qs[i], drafts[i], min(n_acc[i] + 1, n_draft[i]))
                sink(PairFeedback(b, lowers[i], level.name, n_draft[i], n_acc[i], tvd, kl))
    return RoundResult(n_acc, nxt, [p[i, :n_acc[i] + 1] for i in range(R)])


def entropy(probs: torch.Tensor) -> float:
    """H(q) in nats of one distribution [V]."""
    return float(-(probs * probs.clamp_min(1e-10).log()).sum())


def draft(pool: dict, name: str, rows: list[int], seqs: list[list[int]], k: dict[int, int],
          plans: list[Plan], params: list[SamplingParams], gens: list[torch.Generator],
          sink: Sink | None, upper: str, entropy_cap: dict[int, float] | None = None,
          eos_ids: frozenset[int] = frozenset()) -> tuple[dict[int, list[int]], dict[int, torch.Tensor | None]]:
    """Level ``name`` proposes k[b] tokens continuing seqs[b] for each b in rows, for level ``upper``.

    entropy_cap[b] (AdaEDL-style early stop): while this level drafts token by token, a token whose
    distribution has entropy above the cap is dropped and row b stops drafting (at least one stays).
    eos_ids: a row (unless it ignores EOS) stops drafting after an end-of-sequence token: whatever
    is drafted past it is never committed (accepted, the EOS ends the row; rejected, so is all after
    it), so those tokens would only cost drafting and verification width.
    Returns (tokens, q) per row; q[b] is [len(tokens[b]), V] (this level's distributions) or None
    for the n-gram level (one-hot).
    """
    if name == NGRAM:
        out = {b: ngram_lookup(np.asarray(seqs[b], dtype=np.int64), k[b], *pool[NGRAM]) for b in rows}
        if sink is not None:  # a miss is feedback too: it sets the n-gram level's match rate
            for b in rows:
                if not out[b]:
                    sink(PairFeedback(b, NGRAM, upper, 0, 0))
        return out, {b: None for b in rows}
    level: ModelLevel = pool[name]
    acc: dict[int, list[int]] = {b: [] for b in rows}
    qacc: dict[int, list[torch.Tensor]] = {b: [] for b in rows}
    while True:
        need = [b for b in rows if len(acc[b]) < k[b]]
        if not need:
            break
        work = list(seqs)
        for b in need:
            work[b] = seqs[b] + acc[b]
        # the level below drafts for the rows whose plan has one (capped so acc never passes k)
        groups: dict[str, list[int]] = defaultdict(list)
        k_low: dict[int, int] = {}
        for b in need:
            low, kl = plans[b].lower_of(name)
            k_low[b] = min(kl, k[b] - len(acc[b]) - 1)
            if low is not None and k_low[b] > 0:
                groups[low].append(b)
        low_tok = {b: [] for b in need}
        low_q: dict[int, torch.Tensor | None] = {b: None for b in need}
        low_of = {}
        for low, gb in groups.items():
            t, q = draft(pool, low, gb, work, k_low, plans, params, gens, sink, name, eos_ids=eos_ids)
            low_tok.update(t)
            low_q.update(q)
            low_of.update({b: low for b in gb})
        res = verify_round(level, work, need, [low_tok[b] for b in need], [low_q[b] for b in need],
                           params, gens, [low_of.get(b) for b in need], sink)
        for i, b in enumerate(need):
            n = res.n_acc[i]
            level.rollback(b, len(work[b]) + n)  # keep work + accepted drafts = (work + new)[:-1]
            if entropy_cap and b in entropy_cap and not low_tok[b] and acc[b] and \
                    entropy(res.q_up[i][-1]) > entropy_cap[b]:
                k[b] = len(acc[b])  # too uncertain to be worth verifying: stop before this token
                continue
            new = low_tok[b][:n] + [res.nxt[i]]
            acc[b] += new
            qacc[b].append(res.q_up[i])
            work[b] = seqs[b] + acc[b]
            if eos_ids and not params[b].ignore_eos:
                end = next((j for j, t in enumerate(new) if t in eos_ids), None)
                if end is not None:  # stop after the EOS (the return cuts acc and q to k[b])
                    k[b] = min(k[b], len(acc[b]) - len(new) + end + 1)
        for low in groups:
            if low != NGRAM:
                pool[low].sync(work)
    return ({b: acc[b][:k[b]] for b in rows},
            {b: torch.cat(qacc[b])[:k[b]] if qacc[b] else None for b in rows})
