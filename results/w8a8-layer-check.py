"""Which w8a8 layer costs the fidelity: teacher-forced argmax agreement of NAME@w8a8 with dense NAME (fp32) on
six Spec-Bench prompts (first 200 chat-template tokens), then with one slot kind per block put back to dense.

Run: python results/w8a8-layer-check.py 0.5b > results/w8a8-layer-check.log
"""
import json, sys, torch
torch.set_num_threads(2)
from specrouter.model.loader import load_model
path = sys.argv[2] if len(sys.argv) > 2 else "../shared/bench/spec_bench_question.jsonl"
rows = [json.loads(l) for l in open(path)]
cats = ["writing", "roleplay", "translation", "qa", "math", "coding"]
name = sys.argv[1]
ref = load_model(name, dtype="fp32", progress=False)
q = load_model(name + "@w8a8", dtype="fp32", progress=False)
tok = ref.tokenizer
texts = []
for c in cats:
    r = next(r for r in rows if r["category"] == c)
    ids = tok.chat([{"role": "user", "content": r["turns"][0]}])[:200]
    texts.append(ids)
def logits(m, ids):
    return m(torch.tensor([ids]), m.new_cache(1, len(ids) + 4))[0]
refl = [logits(ref.model, ids).argmax(-1) for ids in texts]
for rr in (True,):  # the kernel's reduce_range (fixed to True in quant.py)
    agree = [float((logits(q.model, ids).argmax(-1) == r).float().mean()) for ids, r in zip(texts, refl)]
    print(f"reduce_range={rr}: agreement per prompt {[round(a, 3) for a in agree]} mean {sum(agree)/len(agree):.3f}", flush=True)
for slot in ("down", "qkv", "gate_up", "o"):
    q2 = load_model(name + "@w8a8", dtype="fp32", progress=False)
    for bq, br in zip(q2.model.blocks, ref.model.blocks):
        setattr(bq, slot, getattr(br, slot))
    agree = [float((logits(q2.model, ids).argmax(-1) == r).float().mean()) for ids, r in zip(texts, refl)]
    print(f"{slot} dense: mean {sum(agree)/len(agree):.3f}", flush=True)
