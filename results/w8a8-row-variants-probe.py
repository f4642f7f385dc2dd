import json, sys, torch
torch.set_num_threads(2)
from specrouter.model.loader import load_model, LazyStateDict
from specrouter.model.transformer import Transformer
from specrouter.model import quant as Q
from specrouter.model import w8a8 as W
name = sys.argv[1]
rows = [json.loads(l) for l in open("../shared/bench/spec_bench_question.jsonl")]
cats = ["writing", "roleplay", "translation", "qa", "math", "coding"]
ref = load_model(name, dtype="fp32", progress=False)
tok = ref.tokenizer
def ids_of(r): return tok.chat([{"role": "user", "content": r["turns"][0]}])[:200]
evalt = [ids_of(next(r for r in rows if r["category"] == c)) for c in cats]
def logits(m, ids): return m(torch.tensor([ids]), m.new_cache(1, len(ids) + 4))[0]
refp = [logits(ref.model, ids).softmax(-1) for ids in evalt]
refl = [p.argmax(-1) for p in refp]
sd = LazyStateDict(ref.folder)
orig = W.W8A8Linear.forward
def rownorm(self, x):
    x2 = Q._flat(x, self.in_features).float()
    r = x2.abs().amax(1, keepdim=True).clamp_min(1e-12)
    y = torch.ops.quantized.linear_dynamic(x2 / r, self._packed_nb, True) * r
    if self.bias is not None: y = y + self.bias
    return y.reshape(*x.shape[:-1], self.out_features)
m = Transformer(ref.args, sd, dtype=torch.float32, quant="w8a8")
for mod in m.modules():
    if isinstance(mod, W.W8A8Linear):
        wq = torch._make_per_channel_quantized_tensor(mod.qweight, mod.scales.double(), torch.zeros(mod.out_features, dtype=torch.long), 0)
        mod._packed_nb = torch.ops.quantized.linear_prepack(wq, None)
def rowaff(self, x):
    x2 = Q._flat(x, self.in_features).float()
    lo, hi = torch.aminmax(x2, dim=1, keepdim=True)
    a = (hi + lo) * 0.5; r = ((hi - lo) * 0.5).clamp_min(1e-30)
    y = torch.ops.quantized.linear_dynamic((x2 - a) / r, self._packed_nb, True) * r + a * self._rowsum
    if self.bias is not None: y = y + self.bias
    return y.reshape(*x.shape[:-1], self.out_features)
for mod in m.modules():
    if isinstance(mod, W.W8A8Linear):
        mod._rowsum = (mod.qweight.float().sum(1) * mod.scales)[None]
for label, fwd in (("per-tensor", orig), ("per-row", rownorm), ("per-row affine", rowaff)):
    W.W8A8Linear.forward = fwd
    ps = [logits(m, ids).softmax(-1) for ids in evalt]
    agree = [float((p.argmax(-1) == r).float().mean()) for p, r in zip(ps, refl)]
    tv = [float(1 - 0.5 * (p - pr).abs().sum(-1).mean()) for p, pr in zip(ps, refp)]
    print(f"   1-TVD {[round(a,3) for a in tv]} mean {sum(tv)/len(tv):.3f}")
    print(f"{label}: {[round(a,3) for a in agree]} mean {sum(agree)/len(agree):.3f}", flush=True)
    # also a token-by-token decode agreement of the prompt (M=1 passes)
    ids = evalt[4]; c = m.new_cache(1, len(ids) + 4); out = []
    for t in ids[:80]:
        out.append(m(torch.tensor([[t]]), c)[0, -1].argmax())
    print(f"  one-token passes over 80 tokens of 'math': {float((torch.stack(out) == refl[4][:80]).float().mean()):.3f}")
