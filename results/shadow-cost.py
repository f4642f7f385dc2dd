"""Time NgramShadow.advance per step: a 1,600-token row of random tokens (every lookup misses, the
slowest case: each of the row's new tokens costs one full lookup), 3 tokens committed per step.

usage: .venv/bin/python results/shadow-cost.py
"""
import time

import numpy as np

from specrouter.router.shadow import NgramShadow

text = np.random.default_rng(0).integers(0, 150_000, 1600).tolist()
sh = NgramShadow((3, 2), 4)
sh.add_row(0)
start, n, t = 1472, 0, time.perf_counter()
for end in range(start + 3, 1600, 3):
    sh.advance(0, text[:end], start)
    n += 1
print(f"{(time.perf_counter() - t) / n * 1e3:.2f} ms per step over {n} steps (random text, all misses)")
