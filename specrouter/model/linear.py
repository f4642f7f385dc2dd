"""The one seam every weight matrix of the runtime goes through.

``make_linear(weight, bias, quant)`` is the only constructor the transformer uses, so a quantized
layer only has to implement ``forward(x) -> x @ W.T + b`` and register itself in ``LINEAR_KINDS``.
Registered: ``dense`` (here), ``int8`` and ``int4`` (weight-only) and ``w8a8`` (``quant.py``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .quant import Int4Linear, Int8Linear
from .w8a8 import W8A8Linear


_PACKABLE: dict[torch.dtype, bool] = {}


def can_pack(dtype: torch.dtype) -> bool:
    """Whether oneDNN can prepack ``dtype`` weights on this CPU, probed once per dtype.

    Why a probe and not a dtype list: the bf16 reorder needs AVX512 (bw/vl/dq) or AVX-NE-CONVERT
    and raises on AVX2-only CPUs (AMD Zen 2/3, many cloud VMs), where fp32 packing still works
    and still pays: measured on a 2-core EPYC (AVX2), fp32 8960x1536 at one row 3.0 ms packed vs
    4.3 ms plain, at five rows 5.0 vs 14.0 ms.
    """
    if dtype not in _PACKABLE:
        ok = (dtype in (torch.bfloat16, torch.float32) and torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
        if ok:
            try:
                torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 1)
            except RuntimeError:
                ok = False
        _PACKABLE[dtype] = ok
    return _PACKABLE[dtype]


def _can_pack(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and can_pack(weight.dtype)


class DenseLinear(nn.Module):
    """y = x @ W.T + b with W kept in the model dtype (bf16 / fp32 / fp16).

    On CPU the weight is reordered once into oneDNN's blocked layout. Measured here (2 threads,
    bf16, 24 layers of the 0.5B's shapes, cold cache): plain ``F.linear`` streams 13.8 GB/s at one
    row, the packed kernel 27.5 GB/s, with bit-identical bf16 results; at 4-16 rows (verification)
    the gap is similar. ``pack=False`` keeps the plain path (the reference in tests); so does a CPU
    whose oneDNN cannot pack the dtype (``can_pack``).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, pack: bool = True):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = pack and _can_pack(weight)
        if self.packed:
            weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 1)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


LinearFactory = Callable[..., nn.Module]  # (weight, bias, **options) -> module
LINEAR_KINDS: dict[str, LinearFactory] = {"dense": DenseLinear, "int8": Int8Linear.from_weight,
                                          "int4": Int4Linear.from_weight, "w8a8": W8A8Linear.from_weight}


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None = None, quant: str = "dense",
                **options) -> nn.Module:
    """weight: [out, in] already in the compute dtype; bias: [out] or None; options go to the kind's
    factory (``group_size`` for int4)."""
    try:
        factory = LINEAR_KINDS[quant]
    except KeyError:
        raise ValueError(f"unknown linear kind {quant!r}; known: {sorted(LINEAR_KINDS)}") from None
    return factory(weight, bias, **options)
