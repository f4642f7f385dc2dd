"""DSDE's constants scored offline (bench/replay.py) against fixed K, on one half of a trace file.

Tune on the prompts the bench will NOT run (--half 1: the second prompt of each category), then
measure the pick with `specrouter bench --per-category 1` (the first prompts).

    .venv/bin/python results/replay-dsde-grid.py results/replay-traces-2pc-128tok.json 1
"""
import itertools, json, sys
from collections import defaultdict
from pathlib import Path
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.bench import replay as R
from specrouter.drafters.model_level import ModelLevel
from specrouter.dsde import DSDELength
from specrouter.router.fixed import FixedRouter
from specrouter.speclen import EntropyLength, FixedLength, HeuristicLength

path, half = sys.argv[1], int(sys.argv[2])
d = json.loads(Path(path).read_text())
seen = defaultdict(int)
traces = []
for t in d["traces"]:
    if seen[t["category"]] == half:
        traces.append(R.Trace(**t))
    seen[t["category"]] += 1
chain = ("1.5b@w8a8", "1.5b")
sr = SpecRouter.from_chain(">".join(chain), dtype="fp32", progress=False, spec_len="fixed:8", max_batch=1)
costs = R.measure_costs({n: lv for n, lv in sr.pool.items() if isinstance(lv, ModelLevel)}, 17)  # this machine now
cost = lambda lv, T: costs[lv][min(T, 17)]  # noqa: E731
print("costs T=1..17:", {n: " ".join(f"{c:.3f}" for c in row[1:]) for n, row in costs.items()})
eos = sr.tokenizer.eos_ids
N = d["meta"]["max_new_tokens"]
cats = sorted({t.category for t in traces})
print(f"{len(traces)} traces (half {half}); cost per token: target {cost('1.5b', 1):.3f}s, "
      f"draft {cost(chain[0], 1):.3f}s; verify T=9 {cost('1.5b', 9):.3f}s")


def run(policy):
    if isinstance(policy, str):  # a --spec-len the API builds (dsde+cost: the adaptive router's band)
        res = R.score(sr, traces, policy, costs, N)
    else:
        router = FixedRouter(chain, policy)
        res = [R.replay(t, router, chain, cost, N, eos) for t in traces]
    by = defaultdict(list)
    for t, r in zip(traces, res):
        by[t.category].append(r)
    sp = lambda rs: sum(r.alone_seconds for r in rs) / sum(r.seconds for r in rs)  # noqa: E731
    return sp(res), {c: sp(by[c]) for c in cats}, sum(r.tokens for r in res) / sum(r.passes for r in res)


class Oracle:
    """Drafts exactly the run the target will accept (<= 16): the headroom any length policy has."""
    def __init__(self):
        self.trace, self.t = None, 0

    def add_row(self, row): self.t = 0
    def remove_row(self, row, last): pass
    def propose(self, row):
        A, toks, k = self.trace.draft_tok, self.trace.tokens, 0
        while k < 16 and self.t + k < len(toks) and A[self.t + k] == toks[self.t + k]:
            k += 1
        return max(1, k)
    def observe(self, row, fb): self.t += fb.n_accepted + 1


def run_oracle():
    o = Oracle()
    router = FixedRouter(chain, o)
    res = []
    for t in traces:
        o.trace = t
        res.append(R.replay(t, router, chain, cost, N, eos))
    sp = lambda rs: sum(r.alone_seconds for r in rs) / sum(r.seconds for r in rs)  # noqa: E731
    return sp(res), {c: sp([r for t, r in zip(traces, res) if t.category == c]) for c in cats}, \
        sum(r.tokens for r in res) / sum(r.passes for r in res)


rows = []
for K in range(3, 15):
    rows.append((f"fixed:{K}", *run(FixedLength(K))))
rows.append(("heuristic", *run(HeuristicLength())))
rows.append(("dsde (defaults)", *run(DSDELength())))
rows.append(("dsde+cost (defaults)", *run("dsde+cost")))
best_fixed = max(r[1] for r in rows if r[0].startswith("fixed"))
best_cat = {c: max(r[2][c] for r in rows if r[0].startswith("fixed")) for c in cats}
grid = itertools.product((1, 2, 4), (12, 16), (4, 8), (0.25, 0.5, 1.0, 2.0), (8, 16), (0.7, 0.9))
for mn, mx, init, kappa, window, rho in grid:
    name = f"dsde min{mn} max{mx} k0={init} kappa{kappa} w{window} rho{rho}"
    rows.append((name, *run(DSDELength(min_len=mn, max_len=mx, initial=init, kappa=kappa, window=window, rho=rho))))


def show(r):
    worst = min(r[2][c] / best_cat[c] for c in cats)
    print(f"{r[0]:48s} {r[1]:.3f}x ({r[1] / best_fixed - 1:+.1%} vs best fixed) tok/pass {r[3]:5.2f} "
          f"worst category vs its best fixed {worst - 1:+.1%}")


print("-- baselines (oracle: drafts exactly what will be accepted)")
show(("oracle", *run_oracle()))
for r in rows[:15]:
    show(r)
print("-- best 12 DSDE settings by overall predicted speedup")
for r in sorted(rows[15:], key=lambda r: -r[1])[:12]:
    show(r)
print("-- entropy stop (AdaEDL-style: drafting stops before a token whose H(q) > cap), by cap and max_len")
ent = []
for mx in (8, 12, 16):
    for cap in (0.05, 0.1, 0.2, 0.3, 0.5, 0.72, 1.0, 1.5, 2.0):
        ent.append((f"entropy max{mx} cap{cap}", *run(EntropyLength(max_len=mx, gamma=1 / cap, lam=0.0))))
for r in sorted(ent, key=lambda r: -r[1])[:10]:
    show(r)
show(("entropy (defaults: max 10, cap 0.72)", *run(EntropyLength())))
print("-- best 5 DSDE settings by worst category")
for r in sorted(rows[15:], key=lambda r: -min(r[2][c] / best_cat[c] for c in cats))[:5]:
    show(r)
