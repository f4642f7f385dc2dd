"""Per category of a bench log: a length policy's speedup against the best `fixed:K` system and
against `heuristic` (the issue-4 bars: within 3 % of the best fixed K in every category, ahead of
every fixed K and of heuristic overall). Reads the JSON summary line the bench prints at the end.

usage: python3 results/policy-vs-best-fixed.py results/specbench-....log [policy=dsde] [tolerance=0.03]
"""
import json
import sys

summary = json.loads([ln for ln in open(sys.argv[1]) if ln.startswith('{"overall"')][-1])
policy = sys.argv[2] if len(sys.argv) > 2 else "dsde"
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 0.03
systems = summary["systems"]
name = next(s for s in systems if s.endswith(f"[{policy}]"))
fixed = [s for s in systems if "[fixed:" in s]
heur = next((s for s in systems if s.endswith("[heuristic]")), None)
cats = list(systems[name]["categories"]) + ["OVERALL"]
print(f"{'category':<16}{policy:>8}{'best fixed':>12} {'K':<10}{'ratio':>7}  within {tol:.0%}"
      + ("   heuristic  ratio" if heur else ""))
hits = 0
for c in cats:
    def get(s):
        stats = systems[s]["overall"] if c == "OVERALL" else systems[s]["categories"][c]
        return stats["speedup_vs_target"]
    best = max(fixed, key=get)
    r = get(name) / get(best)
    ok = r >= 1 - tol
    hits += ok and c != "OVERALL"
    k = best[best.index("[") + 1:-1]
    line = f"{c:<16}{get(name):>7.2f}x{get(best):>11.2f}x {k:<10}{r:>7.3f}  {'yes' if ok else 'no'}"
    if heur:
        line += f"   {get(heur):>8.2f}x {get(name) / get(heur):>6.3f}"
    print(line)
print(f"{policy} within {tol:.0%} of the best fixed K in {hits} of {len(cats) - 1} categories")
