"""One layer's matmul kernels side by side (ms per call), the evidence behind the w8a8 kind on AVX2 CPUs.

Run: python results/linear-kernels-check.py  (output of one run: linear-kernels-check.log)
Shapes: the 1.5B's gate_up (8960x1536) and down (1536x8960), the 0.5B's head (151936x896); T rows.
"""
import time, torch
torch.set_num_threads(2)
import torch.nn.functional as F
from specrouter.model.quant import Int4Linear, Int8Linear
def bench(f, x, n=30):
    for _ in range(3): f(x)
    t = time.perf_counter()
    for _ in range(n): f(x)
    return 1000*(time.perf_counter()-t)/n
for (N, K) in ((8960, 1536), (1536, 8960), (151936, 896)):
    w = torch.randn(N, K) * 0.02
    pk = torch.ops.mkldnn._reorder_linear_weight(w, 1)
    # fbgemm dynamic int8
    scales = w.abs().amax(1) / 127
    wq = torch.quantize_per_channel(w, scales.double(), torch.zeros(N, dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(wq, None)
    fb = torch.ops.quantized.linear_prepack_fp16(w, None) if hasattr(torch.ops.quantized, "linear_prepack_fp16") else None
    i4 = Int4Linear.from_weight(w.bfloat16(), None, 128)
    for T in (1, 2, 5, 9, 16):
        x = torch.randn(T, K)
        r = dict(plain=bench(lambda x: F.linear(x, w), x),
                 mkldnn=bench(lambda x: torch.ops.mkldnn._linear_pointwise(x, pk, None, "none", [], ""), x),
                 dyn8=bench(lambda x: torch.ops.quantized.linear_dynamic(x, packed, True), x),
                 fp16=bench(lambda x: torch.ops.quantized.linear_dynamic_fp16(x, fb), x) if fb is not None else -1,
                 int4bf=bench(lambda x: i4(x), x.bfloat16()))
        gb = N*K*4/1e9
        print(f"{N}x{K} T={T:2d} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()) + f"   (fp32 plain {gb/r['plain']*1000:.1f} GB/s)", flush=True)
