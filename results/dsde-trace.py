"""Per-step trace of DSDE on one Spec-Bench prompt (greedy unless T given): k, accepted, KL stats."""
import sys, torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams
from specrouter.bench.spec_bench import load_prompts
from specrouter.dsde import stability, weighted_stats
cat = sys.argv[1]; T = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
p = load_prompts("../shared/bench/spec_bench_question.jsonl", [cat], 1)[0]
import os
sr = SpecRouter.from_chain("1.5b@w8a8>1.5b", dtype="fp32", progress=False,
                           spec_len=os.environ.get("SPEC_LEN", "dsde"))  # SPEC_LEN=fixed:8 to compare
pol = sr.router.policy
if len(sys.argv) > 3:
    pol.learned_hi = float(sys.argv[3])  # as after earlier requests in a bench run
orig_p, orig_o = pol.propose, pol.observe
def propose(row):
    k = orig_p(row)
    if not hasattr(pol, "rows"):
        print(f"propose k={k}", end=" ")
        return k
    st = pol.rows[row]
    kl = list(st["kl"])
    s = stability(kl, pol.rho, pol.window, pol.kappa) if kl else float("nan")
    mu = weighted_stats(kl, pol.rho, pol.window)[0] if kl else float("nan")
    print(f"propose k={k} hi={st['hi']} seen={st['seen']} s={s:.3f} mu_w={mu:.3f}", end=" ")
    return k
def observe(row, fb):
    kls = fb.kl if fb.kl else fb.tvd
    print(f"| drafted {fb.n_drafted} accepted {fb.n_accepted} kl " + " ".join(f"{x:.2f}" for x in kls))
    orig_o(row, fb)
pol.propose, pol.observe = propose, observe
ids = sr.encode_prompt(p.text)
print("prompt", p.qid, len(ids), "tokens:", p.text[:120].replace("\n", " "))
sp = SamplingParams(temperature=T, max_new_tokens=128, seed=0) if T else SamplingParams(max_new_tokens=128)
g = sr.generate_ids([ids], sp)[0]
print("learned_hi", getattr(pol, "learned_hi", None))
print(sr.tokenizer.decode(g.tokens)[:300])
