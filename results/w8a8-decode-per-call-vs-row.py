import time, torch
torch.set_num_threads(2)
from specrouter.model import quant as Q
from specrouter.model import w8a8 as W
from specrouter.model.loader import load_model
def per_call(self, x):
    x2 = Q._flat(x, self.in_features).float()
    y = torch.ops.quantized.linear_dynamic(x2, self._packed, True)
    return (y if self.bias is None else y + self.bias).reshape(*x.shape[:-1], self.out_features)
per_row = W.W8A8Linear.forward
m = load_model("1.5b@w8a8", dtype="fp32", progress=False).model
def decode(n=16):
    c = m.new_cache(1, 64); m(torch.tensor([[1, 2, 3, 4]]), c)
    t0 = time.perf_counter()
    for i in range(n): m(torch.tensor([[5 + i]]), c, logits_for="last")
    return (time.perf_counter() - t0) / n
def verify(T=9, n=6):
    c = m.new_cache(1, 128); m(torch.tensor([[1, 2, 3, 4]]), c)
    t0 = time.perf_counter()
    for i in range(n):
        m(torch.tensor([list(range(5, 5 + T))]), c); c.lengths[0] -= T
    return (time.perf_counter() - t0) / n
decode(4)
for rep in range(4):
    for name, f in (("per-call", per_call), ("per-row", per_row)):
        W.W8A8Linear.forward = f
        print(f"{name}: decode {decode()*1000:.1f} ms/token, verify 9 tokens {verify()*1000:.1f} ms", flush=True)
