"""How much of the target's output a draft head restricted to the N lowest token ids can propose.

A restricted draft head (``-vocab=N`` on a level, ``specrouter/model/quant.py``) scores only the N
lowest ids (for byte-level BPE vocabularies such as Qwen's: the earliest, most frequent merges)
plus the tokenizer's special tokens; a target token outside that set is always rejected. This
script generates the target's greedy output for prompts the bench's first four per category do
not use (``items[4:4+n]`` of each category), and prints the share of output tokens (and of prompt
tokens) inside the set, per N and per category. No ranking is fitted: nothing here can leak.

Usage: .venv/bin/python results/draft-vocab-coverage.py [prompts.jsonl] [per_category=2] [max_new=128]
"""

import collections
import json
import sys
import time

import torch

from specrouter.api import SpecRouter
from specrouter.bench.spec_bench import load_prompts
from specrouter.sampling import SamplingParams

torch.set_num_threads(2)
path = sys.argv[1] if len(sys.argv) > 1 else "../shared/bench/spec_bench_question.jsonl"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2
max_new = int(sys.argv[3]) if len(sys.argv) > 3 else 128
by_cat = collections.defaultdict(list)
for p in load_prompts(path):
    by_cat[p.category].append(p)
prompts = [p for items in by_cat.values() for p in items[4:4 + n]]
sr = SpecRouter.from_chain("ngram>0.5b@int4>1.5b", dtype="bf16", progress=False)
V = len(sr.tokenizer)
outs, ins = collections.defaultdict(list), collections.defaultdict(list)
t0 = time.time()
for i, p in enumerate(prompts):
    ids = sr.encode_prompt(p.text)
    g = sr.generate_ids([ids], SamplingParams(max_new_tokens=max_new))[0]
    outs[p.category] += g.tokens
    ins[p.category] += ids
    print(f"[{i + 1}/{len(prompts)}] {p.category} q{p.qid}: {len(g.tokens)} tokens, {time.time() - t0:.0f} s",
          file=sys.stderr, flush=True)
print(f"{len(prompts)} prompts ({n} per category, items[4:{4 + n}]), chain ngram>0.5b@int4>1.5b, greedy, "
      f"{max_new} new tokens; vocabulary {V}")
allo = [t for v in outs.values() for t in v]
alli = [t for v in ins.values() for t in v]
Ns = (16384, 32768, 49152, 65536, 98304)
print("share of tokens with id < N (output | prompt):")
print(f"{'category':<16}" + "".join(f"{N:>16}" for N in Ns))
for cat in list(outs) + ["ALL"]:
    o, q = (allo, alli) if cat == "ALL" else (outs[cat], ins[cat])
    print(f"{cat:<16}" + "".join(f"{sum(t < N for t in o) / len(o):>8.3f}|{sum(t < N for t in q) / len(q):<7.3f}"
                                 for N in Ns))
