"""Decode s/token with the CPU few-query attention path on and off, same process, same cache.

Run: python results/attention-decode-check.py 0.5b@int4 0.5b 1.5b > attention-decode-check.log
(the log of the run behind transformer.py's figures, AVX512-BF16 machine, was not kept).
One-row decode after a prompt of S random token ids; per (model, S): 3 interleaved rounds of 12
steps per variant, min over rounds of the median step. FEW_QUERIES = 0 sends every pass to
torch's fused scaled_dot_product_attention (the previous behaviour).
"""

import statistics
import sys
import time

import torch

import specrouter.model.transformer as tr
from specrouter.model.loader import load_model

torch.set_num_threads(2)
for spec in sys.argv[1:]:
    m = load_model(spec, dtype="auto", progress=False).model  # bf16 where native, else fp32
    for S in (300, 1500):
        cache = m.new_cache(1, 2048)
        m(torch.tensor([list(range(100, 100 + S))]), cache, logits_for="last")
        tok = torch.tensor([[500]])
        res: dict[str, list[float]] = {"fused": [], "few-query": []}
        for _ in range(3):
            for name, fq in (("fused", 0), ("few-query", 16)):
                tr.FEW_QUERIES = fq
                ts = []
                for _ in range(12):
                    t = time.perf_counter()
                    m(tok, cache, logits_for="last")
                    ts.append(time.perf_counter() - t)
                    cache.rollback(0, S)
                res[name].append(statistics.median(ts))
        f, n = min(res["fused"]), min(res["few-query"])
        print(f"{spec:10s} S={S:5d}  fused {f:.4f} s  few-query {n:.4f} s  ({f / n:.2f}x)", flush=True)
