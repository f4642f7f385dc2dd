import time, torch
torch.set_num_threads(2)
from specrouter.model import quant as Q
from specrouter.model import w8a8 as W
def t(f, n=200, reps=15):
    for _ in range(20): f()
    best = 1e9
    for r in range(reps):
        t0 = time.perf_counter()
        for _ in range(n): f()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best
for N, K in [(1536, 1536), (1536, 8960)]:
    lin = W.W8A8Linear.from_weight(torch.randn(N, K) * 0.02)
    x = torch.randn(1, 1, K); x2 = x.reshape(1, K)
    z, mid, half = W.w8a8_rows(x2)
    print(N, K, "kernel(x2) %.0f kernel(z) %.0f rows %.0f forward %.0f" % (
        t(lambda: torch.ops.quantized.linear_dynamic(x2, lin._packed, True)),
        t(lambda: torch.ops.quantized.linear_dynamic(z, lin._packed, True)),
        t(lambda: W.w8a8_rows(x2)), t(lambda: lin(x))))
N, K = 1536, 8960
lin = W.W8A8Linear.from_weight(torch.randn(N, K) * 0.02)
x = torch.randn(1, 1, K); x2 = x.reshape(1, K)
z, mid, half = W.w8a8_rows(x2)
y = torch.ops.quantized.linear_dynamic(z, lin._packed, True)
print("mul_", t(lambda: y.mul_(half)))
print("addcmul_", t(lambda: y.addcmul_(mid, lin.row_sums)))
print("to", t(lambda: y.to(x.dtype)))
print("flat", t(lambda: Q._flat(x, K).float()))
def f1():
    z, mid, half = W.w8a8_rows(x2)
    return torch.ops.quantized.linear_dynamic(z, lin._packed, True)
print("rows+kernel", t(f1))
def f2():
    z, mid, half = W.w8a8_rows(x2)
    y = torch.ops.quantized.linear_dynamic(z, lin._packed, True)
    return y.mul_(half).addcmul_(mid, lin.row_sums)
print("rows+kernel+tail", t(f2))
