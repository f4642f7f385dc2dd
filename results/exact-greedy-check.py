"""Exact target passes, checked on real prompts: does speculative greedy output equal the target's?

For 16 Spec-Bench prompts (every 20th, those under 400 characters), 64 greedy tokens with a bf16
target (default 0.5B) and ``ngram>target`` at fixed:4 drafts, each with and without exact target
passes (``SpecRouter(exact=...)``). Prints, per prompt, whether speculation equals the target alone
in each mode, and whether the two target-alone runs agree with each other.

Usage: .venv/bin/python results/exact-greedy-check.py [target=0.5b] [prompts=../shared/bench/spec_bench_question.jsonl]
"""

import json
import sys

import torch

from specrouter.api import SpecRouter
from specrouter.model.loader import load_model
from specrouter.sampling import SamplingParams

torch.set_num_threads(2)
name = sys.argv[1] if len(sys.argv) > 1 else "0.5b"
path = sys.argv[2] if len(sys.argv) > 2 else "../shared/bench/spec_bench_question.jsonl"
models = {name: load_model(name, dtype="bf16", progress=False)}
lines = [json.loads(line) for line in open(path)]
fast, exact = SpecRouter(models, [name], exact=False), SpecRouter(models, [name])
spec = SpecRouter(models, ["ngram", name], spec_len="fixed:4")
spec_in = SpecRouter(models, ["ngram", name], spec_len="fixed:4", exact=False)
p = SamplingParams(max_new_tokens=64)
tally = {"exact spec == exact target": 0, "inexact spec == inexact target": 0, "inexact target == exact": 0}
n = 0
for q in lines[::20][:16]:
    t = q["turns"][0]
    if len(t) > 400:
        continue
    ids = fast.tokenizer.chat([{"role": "user", "content": t}])
    f, e = fast.generate_ids([ids], p)[0].tokens, exact.generate_ids([ids], p)[0].tokens
    s, si = spec.generate_ids([ids], p)[0].tokens, spec_in.generate_ids([ids], p)[0].tokens
    n += 1
    for k, ok in zip(tally, (s == e, si == f, f == e)):
        tally[k] += ok
    print(f"{q['question_id']:>4} {q['category']:<15} exact spec==target {s == e!s:<5} "
          f"inexact spec==target {si == f!s:<5} inexact target==exact {f == e}", flush=True)
print("; ".join(f"{k}: {v}/{n}" for k, v in tally.items()))
