"""Add the drafter's entropies H(q) to a trace file recorded before traces carried them (the same
teacher-forced pass record() runs; the greedy outputs are in the file, so nothing is regenerated).

    .venv/bin/python results/replay-add-entropy.py results/replay-traces-2pc-128tok.json
"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.bench import replay as R
from specrouter.bench.spec_bench import load_prompts

path = Path(sys.argv[1])
d = json.loads(path.read_text())
meta = d["meta"]
sr = SpecRouter.from_chain(meta["chain"], dtype=meta["dtype"], progress=False, spec_len="fixed:8", max_batch=1)
by_qid = {p.qid: p for p in load_prompts("../shared/bench/spec_bench_question.jsonl")}
for n, t in enumerate(d["traces"], 1):
    lq, _ = R._teacher_forced(sr, sr.encode_prompt(by_qid[t["qid"]].text), t["tokens"])
    assert lq.argmax(-1).tolist() == t["draft_tok"], t["qid"]  # the same pass as when recorded
    q = lq.softmax(-1)
    t["entropy"] = (-(q * q.clamp_min(1e-10).log()).sum(-1)).tolist()
    print(n, t["qid"], f"mean H(q) {sum(t['entropy']) / len(t['entropy']):.3f}", file=sys.stderr, flush=True)
path.write_text(json.dumps(d))
