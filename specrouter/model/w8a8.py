"""w8a8: int8 weights per output channel and activations rounded to 7 bits on the fly, per row, on
fbgemm's ``quantized.linear_dynamic`` (CPU only).

Boundary: one weight matrix -> one linear layer, like the layers of ``quant.py`` (whose per-channel
int8 math and disk-cache form it shares); which matmuls get it is the transformer's business.

Not weight-only, so it drifts more from the dense model than int8; it exists because it is the one
fast low-bit kernel on AVX2-only CPUs, where the int8/int4 pack kernels of ``quant.py`` are slower
than dense fp32 (measured on a 2-core AMD EPYC, AVX2: one 8960x1536 layer at one row, dense fp32
3.0 ms, w8a8 0.50 ms, int4 with bf16 activations 1.15 ms, at nine rows w8a8 1.08 ms —
results/linear-kernels-check.log; the whole 1.5B per token, dense fp32 0.252 s, w8a8 0.097 s,
int8 0.825 s, int4 1.514 s — results/runtime-avx2-fp32-quant.log). A draft drafts and the chain's
last level verifies, so the drift costs acceptance, never losslessness.

The kernel takes one activation range per call. ``W8A8Linear`` makes it one range per row: each
row is mapped affinely onto [-1, 1] first (``w8a8_rows``) and the map is undone on the output,
exact in real arithmetic since W x = half * W z + mid * W 1. With one range per call, a single token
with outlier channels (Qwen's first tokens reach |x| ~ 480 in the ``down`` input, whose median
channel is ~5) coarsened the rounding of every other row of a prefill or verification pass: on six
Spec-Bench prompts, teacher-forced, 1 - TVD against the dense model per call / per row: 1.5B
0.531 / 0.889, 0.5B 0.588 / 0.922 (results/w8a8-rows-check.log); free-running greedy agreement of
the 1.5B copy 0.782 -> 0.955 (results/quant-eval-avx2-w8a8*.log). It also keeps a row's rounding
independent of the magnitudes of the rows batched with it.
"""

from __future__ import annotations

import warnings

import torch

from .quant import _flat, _PerChannelInt8, quantize_int8


def w8a8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [M, K] float32 -> (z [M, K], mid [M, 1], half [M, 1]) with x = mid + half * z and every
    row of z spanning [-1, 1] (up to an ulp; a constant row: z = 0, half = tiny). The kernel's
    activation range is then [-1, 1] whatever the batch: each row is rounded on a 127-step grid
    over its own range. Six small ops: at one row this costs 30-55 us per layer against the
    kernel's 100-440 us (1.5B shapes, results/w8a8-row-probes.log)."""
    lo, hi = torch.aminmax(x, dim=1, keepdim=True)  # fresh tensors: updated in place below
    half = hi.sub_(lo).mul_(0.5).clamp_min_(torch.finfo(torch.float32).tiny)
    mid = lo.add_(half)
    return (x - mid).div_(half), mid, half


class W8A8Linear(_PerChannelInt8):
    """y = half * (q8(z) @ q.T * s) + mid * W_hat 1 + b on fbgemm, with (z, mid, half) from
    ``w8a8_rows``: q int8 [N, K] per channel (``quantize_int8``), z rounded to 7 bits inside the
    kernel; fp32 in and out (other activation dtypes are converted). CPU only. The packed fbgemm
    object is not a tensor, so ``packed_state`` keeps (q, s) and loading packs again (about a
    second for a 1.5B model)."""

    kind = "w8a8"

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if qweight.device.type != "cpu":
            raise ValueError("w8a8 is a CPU kernel (fbgemm); on a GPU use @int8 or @int4")
        if qweight.dtype != torch.int8 or qweight.dim() != 2 or scales.shape != qweight.shape[:1]:
            raise ValueError(f"W8A8Linear wants int8 [N, K] weights and [N] scales, got {qweight.dtype} "
                             f"{tuple(qweight.shape)} and {tuple(scales.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().contiguous())
        # W_hat 1 [N]: integer row sums are exact in int32, one rounding when scaled
        self.row_sums = qweight.sum(1, dtype=torch.int32).float() * self.scales
        try:
            with warnings.catch_warnings():  # torch deprecates quantized tensors in favour of torchao,
                warnings.simplefilter("ignore")  # which has no AVX2 kernel of this speed yet
                wq = torch._make_per_channel_quantized_tensor(self.qweight, self.scales.double(),
                                                              torch.zeros(self.out_features, dtype=torch.long), 0)
                self._packed = torch.ops.quantized.linear_prepack(wq, None)  # bias: added after the rescale
        except (RuntimeError, AttributeError) as e:
            raise ValueError(f"w8a8 needs fbgemm (x86 CPUs with AVX2); this build/CPU refused it: {e}") from None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "W8A8Linear":
        q, s = quantize_int8(weight, scale_dtype=torch.float32)
        return cls(q, s, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, mid, half = w8a8_rows(_flat(x, self.in_features).float())  # [M, K], [M, 1], [M, 1]
        # reduce_range: 7-bit activations, as torch's fbgemm dynamic linear does (AVX2 without VNNI
        # accumulates u8 x s8 pairs in int16, which full-range activations overflow: measured on the
        # 0.5B with one range per call, teacher-forced argmax agreement with the dense model 0.505
        # with it, 0.043 without)
        y = torch.ops.quantized.linear_dynamic(z, self._packed, True)  # [M, N]
        y = y.mul_(half).addcmul_(mid, self.row_sums)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
