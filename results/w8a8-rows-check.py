"""w8a8 with one activation range per kernel call vs per row (what W8A8Linear does): teacher-forced
argmax agreement and 1 - TVD of NAME@w8a8 against dense NAME (fp32) on six Spec-Bench prompts
(first 200 chat-template tokens, one prefill pass each, so 200 rows share a call).

Run: python results/w8a8-rows-check.py 0.5b 1.5b > results/w8a8-rows-check.log
"""
import json, sys, torch
torch.set_num_threads(2)
from specrouter.model import w8a8 as Q
from specrouter.model.loader import load_model
rows = [json.loads(l) for l in open("../shared/bench/spec_bench_question.jsonl")]
cats = ["writing", "roleplay", "translation", "qa", "math", "coding"]


def per_call(self, x):  # the kernel's own range: one (min, max) over the whole [M, K] input
    x2 = Q._flat(x, self.in_features).float()
    y = torch.ops.quantized.linear_dynamic(x2, self._packed, True)
    return (y if self.bias is None else y + self.bias).reshape(*x.shape[:-1], self.out_features)


per_row = Q.W8A8Linear.forward
for name in sys.argv[1:]:
    ref = load_model(name, dtype="fp32", progress=False)
    q = load_model(name + "@w8a8", dtype="fp32", progress=False)
    texts = [ref.tokenizer.chat([{"role": "user", "content": next(r for r in rows if r["category"] == c)["turns"][0]}])[:200]
             for c in cats]
    def probs(m, ids):
        return m(torch.tensor([ids]), m.new_cache(1, len(ids) + 4))[0].softmax(-1)
    refp = [probs(ref.model, ids) for ids in texts]
    for label, fwd in (("one range per call", per_call), ("one range per row", per_row)):
        Q.W8A8Linear.forward = fwd
        ps = [probs(q.model, ids) for ids in texts]
        agree = [float((p.argmax(-1) == r.argmax(-1)).float().mean()) for p, r in zip(ps, refp)]
        tv = [float(1 - 0.5 * (p - r).abs().sum(-1).mean()) for p, r in zip(ps, refp)]
        print(f"{name}@w8a8 {label}: argmax agreement {sum(agree)/6:.3f} {[round(a, 3) for a in agree]}; "
              f"1-TVD {sum(tv)/6:.3f} {[round(a, 3) for a in tv]}", flush=True)
    Q.W8A8Linear.forward = per_row
    del ref, q
