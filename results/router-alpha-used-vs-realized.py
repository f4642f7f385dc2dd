"""Per pair: the acceptance the router planned with vs what the step's rounds realized.

auto over the given categories (one prompt each, in order; state carries over as in a bench). For
each step and each adjacent pair of the chosen chain: alpha used at planning time, and the rounds'
realized successes / (successes + failures) in that step. Usage: python ... CAT[,CAT]
"""
import sys
from collections import defaultdict
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams
from specrouter.bench.spec_bench import load_prompts

sr = SpecRouter.from_chain("auto", progress=False)
r = sr.router
used, real = defaultdict(list), defaultdict(lambda: [0, 0])
step_fb = []
orig_obs, orig_plan = r.observe, r.plan
def observe(fb):
    step_fb.append(fb)
    orig_obs(fb)
pending = {}
def plan(slot, ctx=None):
    p = orig_plan(slot, ctx)
    ch = p.chain
    pending[slot] = {(lo, up): r.sim.alpha(lo, up, slot) for lo, up in zip(ch, ch[1:])}
    return p
r.observe, r.plan = observe, plan
orig_step = sr.engine.step
def step():
    step_fb.clear()
    out = orig_step()
    for (lo, up), a in pending.get(0, {}).items():
        fbs = [f for f in step_fb if (f.lower, f.upper) == (lo, up) and f.n_drafted]
        if not fbs:
            continue
        s = sum(f.n_accepted for f in fbs); fl = sum(1 for f in fbs if f.n_accepted < f.n_drafted)
        used[(lo, up)].append((a, len(fbs)))
        real[(lo, up)][0] += s; real[(lo, up)][1] += fl
    return out
sr.engine.step = step
for bp in load_prompts("../shared/bench/spec_bench_question.jsonl", sys.argv[1].split(","), 1):
    out = sr.generate([bp.text], SamplingParams(max_new_tokens=128))[0]
    print(bp.category, dict(out.stats.chains), flush=True)
print("pair  steps  alpha used (round-weighted mean)  realized S/(S+F)")
for pair, u in used.items():
    w = sum(n for _, n in u)
    au = sum(a * n for a, n in u) / w
    s, f = real[pair]
    print(f"{pair[0]:>10s} > {pair[1]:10s} {len(u):4d}  {au:.3f}  {s / max(1, s + f):.3f}  (S {s}, F {f}, rounds {w})")
