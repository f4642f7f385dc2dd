"""One layer's matmul kernels on the AVX512 (no bf16) VM, ms per call: fp32 oneDNN-packed, bf16 plain and packed, fbgemm w8a8, int4 (bf16 activations).

Run: python results/linear-kernels-avx512.py  (output of one run, 2026-12-03: linear-kernels-avx512.log)
"""
import time, torch
torch.set_num_threads(2)
import torch.nn.functional as F
from specrouter.model.quant import Int4Linear
def bench(f, x, n=20):
    for _ in range(3): f(x)
    t = time.perf_counter()
    for _ in range(n): f(x)
    return 1000*(time.perf_counter()-t)/n
for (N, K) in ((8960, 1536), (1536, 8960)):
    w = torch.randn(N, K) * 0.02
    pk = torch.ops.mkldnn._reorder_linear_weight(w, 1)
    wb = w.bfloat16(); pkb = torch.ops.mkldnn._reorder_linear_weight(wb, 1)
    scales = w.abs().amax(1) / 127
    wq = torch.quantize_per_channel(w, scales.double(), torch.zeros(N, dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(wq, None)
    i4 = Int4Linear.from_weight(wb, None, 128)
    for T in (1, 2, 5, 9, 17):
        x = torch.randn(T, K); xb = x.bfloat16()
        r = dict(fp32pk=bench(lambda x: torch.ops.mkldnn._linear_pointwise(x, pk, None, "none", [], ""), x),
                 bf16plain=bench(lambda x: F.linear(x, wb), xb),
                 bf16pk=bench(lambda x: torch.ops.mkldnn._linear_pointwise(x, pkb, None, "none", [], ""), xb),
                 dyn8=bench(lambda x: torch.ops.quantized.linear_dynamic(x, packed, True), x),
                 int4bf=bench(lambda x: i4(x), xb))
        print(f"{N}x{K} T={T:2d} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
