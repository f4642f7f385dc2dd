"""Diagnose auto's chain choice on one prompt: per step, chain, ks, predicted/realized s/token,
and the alpha estimates of the pairs that matter."""
import sys, json, time
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams
from specrouter.bench.spec_bench import load_prompts

cats = sys.argv[1].split(",")
sr = SpecRouter.from_chain("auto", progress=False)
r = sr.router
print("prior:", {f"{a}>{b}": round(v, 3) for (a, b), v in r.sim.prior.items()})
for lv in r.pool:
    if lv != "ngram":
        print(lv, "cost T=1,2,9:", [round(r.profiler.cost(lv, 1, T), 4) for T in (1, 2, 9)])
orig = r.plan
pairs = [("0.5b@w8a8", "1.5b@w8a8"), ("1.5b@w8a8", "1.5b"), ("0.5b@w8a8", "1.5b"), ("ngram", "0.5b@w8a8"), ("ngram", "1.5b@w8a8")]
log = []
def plan(slot, ctx=None):
    p = orig(slot, ctx)
    scored = sorted((r.predict(c, slot)[0] + r.catchup_s_per_token(c, ctx), ">".join(c)) for c in r.candidates)
    log.append({"chain": ">".join(p.chain), "ks": p.ks, "tau": round(p.predicted_s_per_token, 4),
                "alpha": {f"{a}>{b}": round(r.sim.alpha(a, b, slot), 3) for a, b in pairs},
                "top3": [(round(t, 4), c) for t, c in scored[:4]]})
    return p
r.plan = plan
for bp in load_prompts("../shared/bench/spec_bench_question.jsonl", cats, 1):
    log.clear(); r.reset_log()
    t = time.time()
    out = sr.generate([bp.text], SamplingParams(max_new_tokens=128))[0]
    dt = time.time() - t
    print(f"== {bp.category} {len(out.tokens)} tokens {dt:.1f}s {len(out.tokens)/dt:.2f} tok/s, prompt {out.prompt_tokens}")
    for i, (e, d) in enumerate(zip(log, r.decisions)):
        print(i, e["chain"], e["ks"], "pred", e["tau"], "real", round(d["realized_s_per_token"], 4), e["alpha"])
        if i < 3 or i % 5 == 0:
            print("    best:", e["top3"])
