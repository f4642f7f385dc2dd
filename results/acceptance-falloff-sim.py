"""Offline greedy rounds from acceptance-falloff.py's agreement vectors (see its docstring).

For each fixed K: target passes and tokens per pass, exactly as the engine would run them (drafts
capped at the row's remaining budget minus one); the geometric (i.i.d.) prediction from the alpha
fitted at K = 8; the per-position conditional acceptance a_j = P(draft j accepted | 1..j-1 were).

    .venv/bin/python results/acceptance-falloff-sim.py results/acceptance-falloff-2pc.json
"""
import json, sys
from collections import defaultdict

recs = json.load(open(sys.argv[1]))
N_NEW = 128
KS = list(range(1, 17))


def rounds(A, K):
    """[(drafted, accepted, committed)] of fixed-K greedy rounds over agreement vector A."""
    t, out = 0, []
    while t < len(A):
        budget = max(0, N_NEW - t - 1)
        k = min(K, budget)
        if len(A) < N_NEW and t + k > len(A):  # ended at EOS: drafting stops after a drafted EOS
            k = len(A) - t
        acc = 0
        while acc < k and A[t + acc]:
            acc += 1
        commit = min(acc + 1, len(A) - t)
        out.append((k, acc, commit))
        t += commit
    return out


def geometric_alpha(rs):
    S = sum(a for _, a, _ in rs)
    F = sum(1 for k, a, _ in rs if a < k)
    return S / (S + F)


def e_geom(alpha, k):
    alpha = min(alpha, 0.999)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def table(sel, label):
    tok = sum(len(r["A"]) for r in sel)
    r8 = [x for r in sel for x in rounds(r["A"], 8)]
    alpha = geometric_alpha(r8)
    print(f"\n## {label}: {len(sel)} prompts, {tok} tokens, greedy agreement {sum(sum(r['A']) for r in sel) / tok:.3f}, "
          f"alpha fitted at K=8: {alpha:.3f}")
    print("K   passes  tok/pass  full-K rounds: committed/round  geometric E(K)  ratio"
          "  | per-prompt alpha fitted at this K: E  ratio")
    for K in KS:
        rs = [x for r in sel for x in rounds(r["A"], K)]
        full = [c for k, a, c in rs if k == K]
        fm = sum(full) / len(full) if full else float("nan")
        # what a per-request estimate (as the router keeps) predicts: each prompt's own alpha at this K
        pe = n_full = 0
        for r in sel:
            rp = rounds(r["A"], K)
            nf = sum(1 for k, a, c in rp if k == K)
            if nf:
                pe += nf * e_geom(geometric_alpha(rp), K)
                n_full += nf
        pe = pe / n_full if n_full else float("nan")
        print(f"{K:2d}  {len(rs):6d}  {tok / len(rs):8.2f}  {fm:8.2f} ({len(full)} rounds)       {e_geom(alpha, K):8.2f}"
              f"  {fm / e_geom(alpha, K):.3f}  | {pe:8.2f}  {fm / pe:.3f}")
    r16 = [x for r in sel for x in rounds(r["A"], 16)]
    print("position j: at risk, accepted, a_j (K=16 rounds)")
    line = []
    for j in range(1, 17):
        risk = sum(1 for k, a, _ in r16 if k >= j and a >= j - 1)
        acc = sum(1 for k, a, _ in r16 if a >= j)
        line.append(f"{j}:{acc}/{risk}={acc / risk:.2f}" if risk else f"{j}:-")
    print("  ".join(line))


table(recs, "all")
by = defaultdict(list)
for r in recs:
    by[r["category"]].append(r)
for c, sel in sorted(by.items()):
    table(sel, c)
