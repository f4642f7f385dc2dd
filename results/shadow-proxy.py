"""How far is the n-gram shadow's estimate for a *lower* verifier from that pair's real rounds?

The router's shadow (specrouter/router/shadow.py) scores n-gram proposals against the committed
(target) text and feeds the result to (ngram, u) for every u above the n-gram, including the 0.5B,
whose own continuation differs from the target's. This script runs the fixed chain
``ngram > 0.5b@w8a8 > 1.5b`` (so the pair (ngram, 0.5b@w8a8) gets real rounds), records every
PairFeedback, and replays the shadow on the same committed text. Per row and pooled per category:

  real     (ngram, 0.5b) match rate and alpha = S / (S + F) from the chain's own rounds
  shadow   the same two figures from the shadow's rounds on the committed text (k = 3, the chain's
           inner n-gram length)
  x-corr   shadow alpha x the row's real alpha(0.5b, target): a correction that treats the
           0.5B's disagreements with the target as independent of the n-gram's

usage: .venv/bin/python results/shadow-proxy.py [--categories humanities,translation,rag] [--per-category 4]
"""
import argparse
import sys
import time
from collections import defaultdict

import torch

from specrouter.api import SpecRouter
from specrouter.bench.spec_bench import load_prompts
from specrouter.router.shadow import NgramShadow
from specrouter.sampling import SamplingParams

LOW, TOP = "0.5b@w8a8", "1.5b"


def alpha(rounds):
    s = sum(a for d, a in rounds if d)
    f = sum(1 for d, a in rounds if d and a < d)
    return s / (s + f) if s + f else float("nan")


def match(rounds):
    return sum(1 for d, _ in rounds if d) / len(rounds) if rounds else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="../shared/bench/spec_bench_question.jsonl")
    ap.add_argument("--categories", default="humanities,translation,rag,writing,qa")
    ap.add_argument("--per-category", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    prompts = load_prompts(a.prompts, a.categories.split(","), a.per_category)
    sr = SpecRouter.from_chain(f"ngram>{LOW}>{TOP}", progress=True)
    fbs = []
    inner = sr.router.observe
    sr.router.observe = lambda fb: (fbs.append(fb), inner(fb))[1]
    pooled = defaultdict(lambda: defaultdict(list))
    print(f"{'qid':>5} {'category':<13} {'real match':>10} {'real alpha':>10} {'shadow match':>12} "
          f"{'shadow alpha':>12} {'alpha(0.5b,t)':>13} {'x-corr':>7}")
    t0 = time.perf_counter()
    for n, p in enumerate(prompts, 1):
        fbs.clear()
        ids = sr.encode_prompt(p.text)
        g = sr.generate_ids([ids], SamplingParams(max_new_tokens=a.max_new_tokens))[0]
        real = [(fb.n_drafted, fb.n_accepted) for fb in fbs if (fb.lower, fb.upper) == ("ngram", LOW)]
        low_t = [(fb.n_drafted, fb.n_accepted) for fb in fbs if (fb.lower, fb.upper) == (LOW, TOP)]
        sh = NgramShadow(sr.pool["ngram"], k=3)
        sh.add_row(0)
        shadow = sh.advance(0, list(ids) + list(g.tokens), len(ids))
        xc = alpha(shadow) * alpha(low_t)
        print(f"{p.qid:>5} {p.category:<13} {match(real):10.3f} {alpha(real):10.3f} {match(shadow):12.3f} "
              f"{alpha(shadow):12.3f} {alpha(low_t):13.3f} {xc:7.3f}", flush=True)
        for key, r in (("real", real), ("shadow", shadow), ("low_t", low_t)):
            pooled[p.category][key].extend(r)
            pooled["ALL"][key].extend(r)
        print(f"  [{n}/{len(prompts)}, {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    print("\npooled rounds per category (alpha = S / (S + F) over all rounds):")
    print(f"{'category':<13} {'real match':>10} {'real alpha':>10} {'shadow match':>12} {'shadow alpha':>12} "
          f"{'alpha(0.5b,t)':>13} {'x-corr':>7}")
    for cat, d in pooled.items():
        print(f"{cat:<13} {match(d['real']):10.3f} {alpha(d['real']):10.3f} {match(d['shadow']):12.3f} "
              f"{alpha(d['shadow']):12.3f} {alpha(d['low_t']):13.3f} {alpha(d['shadow']) * alpha(d['low_t']):7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
