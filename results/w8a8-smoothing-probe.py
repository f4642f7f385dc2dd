import json, sys, time, torch
torch.set_num_threads(2)
from specrouter.model.loader import load_model, LazyStateDict
from specrouter.model.transformer import Transformer
from specrouter.model import quant as Q
from specrouter.model import w8a8 as W
def rownorm(self, x):
    x2 = Q._flat(x, self.in_features).float()
    r = x2.abs().amax(1, keepdim=True).clamp_min(1e-12)
    y = torch.ops.quantized.linear_dynamic(x2 / r, self._packed_nb, True) * r
    if self.bias is not None: y = y + self.bias
    return y.reshape(*x.shape[:-1], self.out_features)
def prep(m):
    for mod in m.modules():
        if isinstance(mod, W.W8A8Linear):
            wq = torch._make_per_channel_quantized_tensor(mod.qweight, mod.scales.double(), torch.zeros(mod.out_features, dtype=torch.long), 0)
            mod._packed_nb = torch.ops.quantized.linear_prepack(wq, None)
    return m

name = sys.argv[1]
rows = [json.loads(l) for l in open("../shared/bench/spec_bench_question.jsonl")]
cats = ["writing", "roleplay", "translation", "qa", "math", "coding"]
ref = load_model(name, dtype="fp32", progress=False)
tok = ref.tokenizer
def ids_of(r): return tok.chat([{"role": "user", "content": r["turns"][0]}])[:200]
evalt = [ids_of(next(r for r in rows if r["category"] == c)) for c in cats]
# calibration: prompts from other categories (never the evaluated ones)
seen = set(); calib = []
for r in rows:
    if r["category"] not in cats and r["category"] not in seen:
        seen.add(r["category"]); calib.append(ids_of(r))
print("calib categories", sorted(seen), sum(map(len, calib)), "tokens")
amax = {}
def hook(i):
    def f(mod, inp, out):
        a = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0).float()
        amax[i] = torch.maximum(amax[i], a) if i in amax else a
    return f
hs = [b.down.register_forward_hook(hook(i)) for i, b in enumerate(ref.model.blocks)]
def logits(m, ids): return m(torch.tensor([ids]), m.new_cache(1, len(ids) + 4))[0]
for ids in calib: logits(ref.model, ids)
for h in hs: h.remove()
refl = [logits(ref.model, ids).argmax(-1) for ids in evalt]
sd = LazyStateDict(ref.folder)
for alpha in [float(a) for a in sys.argv[2].split(",")]:
    t0 = time.time()
    if alpha < 0:
        sd2 = sd
    else:
        sd2 = {k: sd[k] for k in sd}
        for i in range(ref.args.n_layers):
            up, down = f"model.layers.{i}.mlp.up_proj.weight", f"model.layers.{i}.mlp.down_proj.weight"
            wd = sd2[down].float()
            wmax = wd.abs().amax(0).clamp_min(1e-5)
            s = (amax[i].clamp_min(1e-5) ** alpha / wmax ** (1 - alpha)).clamp_min(1e-5)
            sd2[up] = sd2[up].float() / s[:, None]
            sd2[down] = wd * s[None, :]
    m = prep(Transformer(ref.args, sd2, dtype=torch.float32, quant="w8a8")); W.W8A8Linear.forward = rownorm
    agree = [float((logits(m, ids).argmax(-1) == r).float().mean()) for ids, r in zip(evalt, refl)]
    print(f"alpha={alpha}: {[round(a,3) for a in agree]} mean {sum(agree)/len(agree):.3f} ({time.time()-t0:.0f}s)", flush=True)
