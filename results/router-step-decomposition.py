"""Where a chain's realized seconds per token go, against the latency model's prediction.

For each chain (auto's router restricted to it, no exploration) on one prompt per category given:
per step, wall time = model forwards (timed in ModelLevel.score) + the rest (engine overhead:
sampling, verification, signals, cache bookkeeping, Python); forwards are compared with the
profiler's cost for the same (B, T). Usage: python results/router-step-decomposition.py CAT[,CAT] CHAIN[,CHAIN]
"""
import sys, time
from collections import defaultdict
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams
from specrouter.bench.spec_bench import load_prompts
from specrouter.drafters import model_level

cats, chains = sys.argv[1].split(","), [tuple(c.split(">")) for c in sys.argv[2].split(",")]
sr = SpecRouter.from_chain("auto", progress=False)
r = sr.router
r.explore = 0.0
prof = r.profiler
log = []
orig = model_level.ModelLevel.score
def score(self, seqs, drafts, rows):
    width = max(rows) + 1
    T = max(len(seqs[b]) - self.cache.lengths[b] + len(drafts[i]) for i, b in enumerate(rows))
    pred = prof.cost(self.name, len(rows), T) if T <= 32 else prof.prefill_cost(self.name, T)
    t0 = time.perf_counter()
    out = orig(self, seqs, drafts, rows)
    log.append((self.name, T, time.perf_counter() - t0, pred))
    return out
model_level.ModelLevel.score = score
for bp in load_prompts("../shared/bench/spec_bench_question.jsonl", cats, 1):
    for chain in chains:
        r.candidates = [chain]
        r.reset_log(); log.clear()
        t = time.perf_counter()
        out = sr.generate([bp.text], SamplingParams(max_new_tokens=128))[0]
        wall = time.perf_counter() - t
        st = out.stats
        fw = defaultdict(lambda: [0, 0.0, 0.0])
        for name, T, s, p in log:
            f = fw[name]; f[0] += 1; f[1] += s; f[2] += p
        pred = sum(d["predicted_s_per_token"] for d in r.decisions) / max(1, len(r.decisions))
        fwd = sum(f[1] for f in fw.values())
        print(f"{bp.category:14s} {'>'.join(chain):32s} tok {len(out.tokens):3d} steps {st.steps:3d} "
              f"wall {wall:6.2f} prefill {st.prefill_s:5.2f} decode {st.decode_s:6.2f} fwd {fwd:6.2f} "
              f"other {st.decode_s - fwd:6.2f} ({(st.decode_s - fwd) / max(1, len(log)) * 1000:.1f} ms/pass)  "
              f"pred s/tok {pred:.4f} real {st.decode_s/len(out.tokens):.4f}", flush=True)
        for name, f in fw.items():
            print(f"    {name:12s} passes {f[0]:4d} actual {f[1]:6.2f}s profiled {f[2]:6.2f}s "
                  f"({f[1]/max(f[2],1e-9):.2f}x)", flush=True)
