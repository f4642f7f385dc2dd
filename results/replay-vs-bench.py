"""Replay (bench/replay.py) vs a measured bench run: target passes per prompt, same policies.

The replayed traces are the prompts the bench ran (a subset of a larger trace file is fine), in
the bench's order, so policies that learn across requests (dsde) see the same history.

    .venv/bin/python results/replay-vs-bench.py results/replay-traces-2pc-128tok.json \
        results/specbench-1pc-128tok-avx2-dsde-cost.rows.json fixed:8,heuristic,dsde,dsde+cost
"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.bench import replay as R
from specrouter.drafters.model_level import ModelLevel

traces_path, rows_path, specs = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
chain = "1.5b@w8a8>1.5b"
rows = json.loads(Path(rows_path).read_text())["rows"]
d = json.loads(Path(traces_path).read_text())
by_qid = {t["qid"]: R.Trace(**t) for t in d["traces"]}
traces = [by_qid[r["qid"]] for r in rows]
sr = SpecRouter.from_chain(chain, dtype="fp32", progress=False, spec_len="fixed:8", max_batch=1)
costs = R.measure_costs({n: lv for n, lv in sr.pool.items() if isinstance(lv, ModelLevel)}, 17)  # this machine now
cost = lambda lv, T: costs[lv][min(T, 17)]  # noqa: E731
print("costs T=1..17:", {n: " ".join(f"{c:.3f}" for c in row[1:]) for n, row in costs.items()})
for s in specs:
    res = R.score(sr, traces, s, costs, d["meta"]["max_new_tokens"])
    key = f"{chain} [{s}]"
    bench = [r[key]["steps"] for r in rows]
    btok = [r[key]["tokens"] for r in rows]
    pred = sum(r.alone_seconds for r in res) / sum(r.seconds for r in res)
    meas = sum(r["target"]["time"] for r in rows) / sum(r[key]["time"] for r in rows)
    print(f"{s:12s} passes replay {sum(r.passes for r in res):4d} bench {sum(bench):4d} | "
          f"prompts equal {sum(int(a.passes == b) for a, b in zip(res, bench))}/{len(rows)} | "
          f"tokens {sum(r.tokens for r in res)} vs {sum(btok)} | speedup replay-predicted {pred:.2f}x, bench measured {meas:.2f}x")
    print("   per prompt (replay/bench):", " ".join(f"{t.category[:5]}:{a.passes}/{b}" for t, a, b in zip(traces, res, bench)))
