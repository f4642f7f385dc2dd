"""Diagnostic: is a bf16 forward pass row-invariant (the same numbers for a token whether it is
computed alone, as in target-only decoding, or among T tokens, as in verification)?

Speculative greedy output equals target-only greedy output only if it is; measured greedy match on
bf16 was 0.6-0.8 (README). This script finds which op breaks it: for each op it compares row 0 of a
T-row call with a 1-row call on the same input, bit for bit, for T = 1..16.

Usage: .venv/bin/python results/bf16-row-invariance.py [model=1.5b] [dtype=bf16]
"""

import sys

import torch

from specrouter.model.loader import load_model, parse_dtype
from specrouter.model.transformer import few_query_attention

torch.manual_seed(0)
torch.set_num_threads(2)
spec = sys.argv[1] if len(sys.argv) > 1 else "1.5b"
dt = parse_dtype(sys.argv[2] if len(sys.argv) > 2 else "bf16")
lm = load_model(spec, dtype=dt, progress=False)
m = lm.model
blk = m.blocks[0]
Ts = list(range(1, 17))


def row_inv(fn, x):
    """x: [1, 16, K]. Returns {T: row 0 of fn(x[:, :T])}."""
    return {T: fn(x[:, :T])[:, 0].float() for T in Ts}


def show(name, outs):
    """Groups T by bitwise-equal row-0 output: one group = row-invariant."""
    groups = []
    for T, o in outs.items():
        for g in groups:
            if torch.equal(outs[g[0]], o):
                g.append(T)
                break
        else:
            groups.append([T])
    ref = outs[1]
    gap = max((o - ref).abs().max().item() for o in outs.values())
    print(f"{name:12s} {len(groups)} class(es) of T with bitwise-equal row 0: {groups}"
          + (f"; max |diff| vs T=1 {gap:.3g}" if len(groups) > 1 else ""), flush=True)


for name, lin in [("qkv", blk.qkv), ("o", blk.o), ("gate_up", blk.gate_up), ("down", blk.down),
                  ("lm_head", m.lm_head)]:
    K = lin.in_features if hasattr(lin, "in_features") else m.args.dim
    x = (torch.randn(1, 16, K) * 0.5).to(dt)
    show(name, row_inv(lin, x))

# attention over S keys, query 0 at position S - 16 (sees keys [0, S - 16]); T queries.
H, G, D, S = m.args.n_heads, m.args.n_kv_heads, m.args.head_dim, 300
q = torch.randn(1, H, 16, D).to(dt)
k = torch.randn(1, G, S, D).to(dt)
v = torch.randn(1, G, S, D).to(dt)
L = S - 16
d = {}
for T in Ts:
    mask = (torch.arange(L + T)[None, :] <= (L + torch.arange(T))[:, None])[None, None]
    outT = few_query_attention(q[:, :, :T], k[:, :, :L + T], v[:, :, :L + T], mask)[:, :, 0].float()
    d[T] = outT
show("attention", d)

# whole model: logits of one token decoded alone vs as row 0 of a T-token pass after the same prefix
ids = torch.randint(100, 20000, (1, 80))
nxt = torch.randint(100, 20000, (1, 16))
c1 = m.new_cache(1, 200)
m(ids, c1, logits_for="last")
d = {1: m(nxt[:, :1], c1, logits_for="all")[:, 0]}
for T in Ts[1:]:
    c = m.new_cache(1, 200)
    m(ids, c, logits_for="last")
    d[T] = m(nxt[:, :T], c, logits_for="all")[:, 0]
show("model", d)
