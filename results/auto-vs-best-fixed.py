"""Per category of a bench rows file: auto's speedup, the best fixed chain's, and whether auto is
within 5 % of it (the issue-3 bar). Reads the JSON summary line the bench prints at the end of its log.

usage: python3 results/auto-vs-best-fixed.py results/specbench-....log
"""
import json
import sys

summary = json.loads([ln for ln in open(sys.argv[1]) if ln.startswith('{"overall"')][-1])
systems = summary["systems"]
# chains of ours only: baselines (the target alone, HF assisted, llama.cpp) are not fixed chains
fixed = [s for s in systems if s not in ("target", "target-exact", "auto", "hf_assisted", "llama.cpp")]
print(f"{'category':<16}{'auto':>7}{'best fixed':>12}  {'chain':<28}{'auto/best':>10}  within 5 %")
cats = list(systems["auto"]["categories"]) + ["OVERALL"]
hits = 0
for c in cats:
    get = (lambda s: systems[s]["overall"]["speedup_vs_target"]) if c == "OVERALL" else \
        (lambda s: systems[s]["categories"][c]["speedup_vs_target"])
    a = get("auto")
    best = max(fixed, key=get)
    r = a / get(best)
    ok = r >= 0.95
    hits += ok and c != "OVERALL"
    print(f"{c:<16}{a:>6.2f}x{get(best):>11.2f}x  {best:<28}{r:>10.3f}  {'yes' if ok else 'no'}")
print(f"within 5 % in {hits} of {len(cats) - 1} categories; lowest auto: "
      f"{min(systems['auto']['categories'][c]['speedup_vs_target'] for c in cats[:-1]):.2f}x")
