"""Time one Spec-Bench prompt (first of CATEGORY) twice per chain, fp32, 2 threads, outside the bench.

Run: python results/one-prompt-timing.py coding "1.5b,1.5b@w8a8>1.5b" heuristic
"""
import json, sys, time, torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams
from specrouter.model.loader import load_model
rows = [json.loads(l) for l in open("../shared/bench/spec_bench_question.jsonl")]
r = next(r for r in rows if r["category"] == sys.argv[1])
models = {n: load_model(n, dtype="fp32", progress=False) for n in ("1.5b", "1.5b@w8a8")}
tok = models["1.5b"].tokenizer
ids = tok.chat([{"role": "user", "content": r["turns"][0]}])
for chain in sys.argv[2].split(","):
    lv = chain.split(">")
    sr = SpecRouter(models, lv, spec_len=None if len(lv) == 1 else sys.argv[3], max_batch=1, progress=False)
    for rep in range(2):
        t0 = time.perf_counter()
        out = sr.generate_ids([ids], SamplingParams(max_new_tokens=128))[0] if hasattr(sr, "generate_ids") else None
        dt = time.perf_counter() - t0
        print(chain, rep, len(out.tokens), f"{dt:.1f}s", out.stats.steps if hasattr(out.stats, "steps") else "", flush=True)
