"""Where a speculative step's time goes besides the timed forward passes (greedy, batch 1).

For each policy: decode seconds (engine stats) vs the sum of the levels' timed forwards (the
profiler's on_timing hook), per step and per drafted token, on a few Spec-Bench prompts.

    .venv/bin/python results/step-overhead.py > results/step-overhead.log
"""
import sys, time
from collections import defaultdict
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.bench.spec_bench import load_prompts
from specrouter.sampling import SamplingParams

prompts = load_prompts("../shared/bench/spec_bench_question.jsonl", ["writing", "math", "coding"], 1)
base = SpecRouter.from_chain("1.5b@w8a8>1.5b", dtype="fp32", progress=False, spec_len="fixed:8", max_batch=1)
for spec in sys.argv[1:] or ["fixed:4", "fixed:8", "fixed:12"]:
    sr = SpecRouter(base.models, base.levels, spec_len=spec, max_batch=1)
    fwd = defaultdict(float)
    calls = defaultdict(int)
    for lv in sr.engine.levels:
        lv.on_timing = lambda name, B, T, s: (fwd.__setitem__(name, fwd[name] + s), calls.__setitem__(name, calls[name] + 1))
    dec = steps = drafted = toks = 0
    for p in prompts:
        g = sr.generate_ids([sr.encode_prompt(p.text)], SamplingParams(max_new_tokens=128))[0]
        dec += g.stats.decode_s; steps += g.stats.steps; drafted += g.stats.drafted; toks += len(g.tokens)
    other = dec - sum(fwd.values())
    print(f"{spec:9s} decode {dec:6.1f}s  steps {steps} drafted {drafted} tokens {toks} | timed forwards: "
          + ", ".join(f"{n} {fwd[n]:.1f}s/{calls[n]} calls ({fwd[n] / calls[n] * 1e3:.0f} ms)" for n in fwd)
          + f" | outside forwards {other:.1f}s = {other / steps * 1e3:.0f} ms/step, "
          f"{other / max(1, drafted) * 1e3:.1f} ms/drafted token", flush=True)
