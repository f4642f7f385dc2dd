"""Cost of padding a one-token decode pass to two token columns (the target's exactness padding).

Interleaves T=1 and padded T=2 decode steps of the same model over the same warm cache and prints
the median seconds of each and their ratio, then checks the padded logits equal a 2-token pass'
row 0 bit for bit.

Usage: .venv/bin/python results/pad-single-cost.py [model=1.5b] [dtype=bf16] [steps=40]
"""

import sys

import time

import torch

from specrouter.model.loader import load_model, parse_dtype

torch.set_num_threads(2)
spec = sys.argv[1] if len(sys.argv) > 1 else "1.5b"
dt = parse_dtype(sys.argv[2] if len(sys.argv) > 2 else "bf16")
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 40
m = load_model(spec, dtype=dt, progress=False).model
cache = m.new_cache(1, 1024)
m(torch.randint(100, 20000, (1, 300)), cache, logits_for="last")
base = cache.lengths[0]
tok = torch.tensor([[1234]])
t1, t2 = [], []
for i in range(steps + 3):
    for width, ts in ((1, t1), (2, t2)):
        t0 = time.perf_counter()
        m(tok, cache, logits_for="last", min_tokens=width)
        dt_s = time.perf_counter() - t0
        cache.rollback(0, base)
        if i >= 3:
            ts.append(dt_s)
med = lambda v: sorted(v)[len(v) // 2]
print(f"{spec} {sys.argv[2] if len(sys.argv) > 2 else 'bf16'}: T=1 {med(t1) * 1e3:.1f} ms, "
      f"padded T=2 {med(t2) * 1e3:.1f} ms, ratio {med(t2) / med(t1):.3f} ({steps} interleaved steps)")
a = m(tok, cache, logits_for="last", min_tokens=2)
cache.rollback(0, base)
b = m(torch.tensor([[1234, 99]]), cache, logits_for="all")[:, :1]
cache.rollback(0, base)
c = m(tok, cache, logits_for="last")
print("padded == row 0 of a 2-token pass:", torch.equal(a, b), "| unpadded == it:", torch.equal(c, b))
