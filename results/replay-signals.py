"""Which drafter-side signal flags the positions the target rejects (greedy, w8a8 twin of the target)?

Per output position of the traces: the drafter's top-1/top-2 margin q1 - q2 (teacher-forced, the
same pass as record()), its entropy H(q) and the post-hoc KL(p || q) from the trace. Prints the AUC
of each signal for "this position is a disagreement", and what a stop at margin < m would cost
(positions flagged) and catch (disagreements flagged).

    .venv/bin/python results/replay-signals.py results/replay-traces-2pc-128tok.json
"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.bench import replay as R
from specrouter.bench.spec_bench import load_prompts

d = json.loads(Path(sys.argv[1]).read_text())
meta = d["meta"]
sr = SpecRouter.from_chain(meta["chain"], dtype=meta["dtype"], progress=False, spec_len="fixed:8", max_batch=1)
by_qid = {p.qid: p for p in load_prompts("../shared/bench/spec_bench_question.jsonl")}
margin, ent, kl, bad = [], [], [], []
for t in d["traces"]:
    lq, _ = R._teacher_forced(sr, sr.encode_prompt(by_qid[t["qid"]].text), t["tokens"])
    top = lq.softmax(-1).topk(2, dim=-1).values
    margin += (top[:, 0] - top[:, 1]).tolist()
    ent += t["entropy"]
    kl += t["kl"]
    bad += [int(a != b) for a, b in zip(t["draft_tok"], t["tokens"])]


def auc(score, label):
    """P(score of a disagreement > score of an agreement), ties half."""
    pos = [s for s, y in zip(score, label) if y]
    neg = [s for s, y in zip(score, label) if not y]
    allv = sorted((s, y) for s, y in zip(score, label))
    rank, i, rsum = 0, 0, 0.0
    while i < len(allv):
        j = i
        while j < len(allv) and allv[j][0] == allv[i][0]:
            j += 1
        r = (i + j + 1) / 2  # mean 1-based rank of the tie group
        rsum += r * sum(y for _, y in allv[i:j])
        i = j
    return (rsum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


n, nb = len(bad), sum(bad)
print(f"{n} positions, {nb} disagreements ({nb / n:.3f})")
print(f"AUC for a disagreement: low margin {auc([-m for m in margin], bad):.3f}, high entropy {auc(ent, bad):.3f}, "
      f"high KL(p||q) {auc(kl, bad):.3f} (post hoc: known only after verification)")
for m in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
    flagged = [x < m for x in margin]
    caught = sum(f and b for f, b in zip(flagged, bad))
    print(f"margin < {m:4.2f}: flags {sum(flagged) / n:6.1%} of positions, {caught / nb:6.1%} of disagreements")
for h in (0.5, 1.0, 2.0, 3.0):
    flagged = [x > h for x in ent]
    caught = sum(f and b for f, b in zip(flagged, bad))
    print(f"H(q) > {h:3.1f}:    flags {sum(flagged) / n:6.1%} of positions, {caught / nb:6.1%} of disagreements")
