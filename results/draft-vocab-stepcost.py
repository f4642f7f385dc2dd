"""One-token decode step of draft levels with and without a restricted vocabulary (``-vocab=N``).

Loads every level given, fills each cache with the same 300 tokens, then interleaves one-token
steps over them (so all share the machine's state) and prints the median milliseconds of each.

Usage: .venv/bin/python results/draft-vocab-stepcost.py DTYPE SPEC [SPEC ...] [--steps N]
  e.g. results/draft-vocab-stepcost.py fp32 0.5b@w8a8 0.5b@w8a8-vocab=48k 1.5b@w8a8 1.5b@w8a8-vocab=48k
"""

import sys
import time

import torch

from specrouter.model.loader import load_model, parse_dtype

torch.set_num_threads(2)
args = sys.argv[1:]
steps = 40
if "--steps" in args:
    i = args.index("--steps")
    steps = int(args[i + 1])
    del args[i:i + 2]
dtype, specs = parse_dtype(args[0]), args[1:]
models = [load_model(s, dtype=dtype, progress=False).model for s in specs]
prompt = torch.randint(100, 20000, (1, 300), generator=torch.Generator().manual_seed(0))
caches, bases = [], []
for m in models:
    c = m.new_cache(1, 1024)
    m(prompt, c, logits_for="last")
    caches.append(c)
    bases.append(c.lengths[0])
tok = torch.tensor([[1234]])
times = [[] for _ in models]
for i in range(steps + 3):
    for m, c, base, ts in zip(models, caches, bases, times):
        t0 = time.perf_counter()
        m(tok, c, logits_for="last")
        dt_s = time.perf_counter() - t0
        c.rollback(0, base)
        if i >= 3:
            ts.append(dt_s)
print(f"{args[0]}, 2 threads, one-token step on a 300-token cache, median of {steps} interleaved:")
for s, ts in zip(specs, times):
    print(f"  {s:28s} {sorted(ts)[len(ts) // 2] * 1e3:7.1f} ms")
