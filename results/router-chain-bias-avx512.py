"""auto alone over one prompt per category (bench order); per chain: predicted vs realized s/token."""
import sys, time
from collections import defaultdict
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams
from specrouter.bench.spec_bench import load_prompts

sr = SpecRouter.from_chain("auto", progress=False)
r = sr.router
tot = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
for bp in load_prompts("../shared/bench/spec_bench_question.jsonl", None, 1):
    r.reset_log()
    t = time.time()
    out = sr.generate([bp.text], SamplingParams(max_new_tokens=128))[0]
    dt = time.time() - t
    share = defaultdict(int)
    for d in r.decisions:
        share[d["chain"]] += 1
    print(f"{bp.category:15s} {len(out.tokens)/dt:5.2f} tok/s  steps {len(r.decisions)}  " +
          "  ".join(f"{c} {n}" for c, n in sorted(share.items(), key=lambda x: -x[1])), flush=True)
    for (tag, chain), s in r.segments.items():
        c = ">".join(chain); tot[c][0] += s[0]; tot[c][1] += s[1]; tot[c][2] += s[2]; tot[c][3] += s[3]
print("chain  steps tokens  predicted_s/tok realized_s/tok realized/predicted")
for c, s in sorted(tot.items(), key=lambda x: -x[1][3]):
    print(f"{c:35s} {s[3]:4d} {s[2]:5.0f}  {s[0]/s[2]:.4f}  {s[1]/s[2]:.4f}  {s[1]/s[0]:.2f}")
