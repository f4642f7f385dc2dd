"""Offline test of a margin stop before building it: drafting ends before a token whose drafter
top-1/top-2 margin q1 - q2 is below m. Replayed with the entropy stop's mechanism on traces whose
entropy field is replaced by 1 - margin (the stop "1 - margin > cap" is "margin < 1 - cap").

    .venv/bin/python results/replay-margin-stop.py results/replay-traces-2pc-128tok.json
"""
import json, sys
from dataclasses import replace
from pathlib import Path
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.bench import replay as R
from specrouter.bench.spec_bench import load_prompts
from specrouter.drafters.model_level import ModelLevel
from specrouter.router.fixed import FixedRouter
from specrouter.speclen import EntropyLength, FixedLength

d = json.loads(Path(sys.argv[1]).read_text())
meta = d["meta"]
sr = SpecRouter.from_chain(meta["chain"], dtype=meta["dtype"], progress=False, spec_len="fixed:8", max_batch=1)
by_qid = {p.qid: p for p in load_prompts("../shared/bench/spec_bench_question.jsonl")}
traces = []
for t in d["traces"]:
    tr = R.Trace(**t)
    lq, _ = R._teacher_forced(sr, sr.encode_prompt(by_qid[tr.qid].text), tr.tokens)
    top = lq.softmax(-1).topk(2, dim=-1).values
    traces.append(replace(tr, entropy=(1 - (top[:, 0] - top[:, 1])).tolist()))
costs = R.measure_costs({n: lv for n, lv in sr.pool.items() if isinstance(lv, ModelLevel)}, 17)
print("costs T=1..17:", {n: " ".join(f"{c:.3f}" for c in row[1:]) for n, row in costs.items()})
chain, N, eos = tuple(sr.levels), meta["max_new_tokens"], sr.tokenizer.eos_ids
cost = lambda lv, T: costs[lv][min(T, 17)]  # noqa: E731


def speed(policy):
    router = FixedRouter(chain, policy)
    res = [R.replay(t, router, chain, cost, N, eos) for t in traces]
    return (sum(r.alone_seconds for r in res) / sum(r.seconds for r in res),
            sum(r.tokens for r in res) / sum(r.passes for r in res))


fixed = {K: speed(FixedLength(K)) for K in range(4, 17)}
best_k = max(fixed, key=lambda K: fixed[K][0])
print(f"{len(traces)} traces; best fixed K = {best_k}: {fixed[best_k][0]:.3f}x")
for K in (6, 8, 10, 12, 16):
    print(f"fixed:{K:<2d}            {fixed[K][0]:.3f}x ({fixed[K][0] / fixed[best_k][0] - 1:+.1%})  tok/pass {fixed[K][1]:5.2f}")
for mx in (8, 12, 16):
    for m in (0.02, 0.05, 0.1, 0.2, 0.3):
        s, tp = speed(EntropyLength(max_len=mx, gamma=1 / (1 - m), lam=0.0))
        print(f"margin<{m:<4} max{mx:<2d}  {s:.3f}x ({s / fixed[best_k][0] - 1:+.1%})  tok/pass {tp:5.2f}")
