"""The one seam every weight matrix of the runtime goes through.

``make_linear(weight, bias, quant)`` is the only constructor the transformer uses, so a quantized
layer only has to implement ``forward(x) -> x @ W.T + b`` and register itself in ``LINEAR_KINDS``.
Registered: ``dense`` (here), ``int8`` and ``int4`` (weight-only, ``quant.py``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .quant import Int4Linear, Int8Linear


def _can_pack(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float32)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class DenseLinear(nn.Module):
    """y = x @ W.T + b with W kept in the model dtype (bf16 / fp32 / fp16).

    On CPU the weight is reordered once into oneDNN's blocked layout. Measured here (2 threads,
    bf16, 24 layers of the 0.5B's shapes, cold cache): plain ``F.linear`` streams 13.8 GB/s at one
    row, the packed kernel 27.5 GB/s, with bit-identical bf16 results; at 4-16 rows (verification)
    the gap is similar. ``pack=False`` keeps the plain path (the reference in tests).
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
                                          "int4": Int4Linear.from_weight}


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None = None, quant: str = "dense",
                **options) -> nn.Module:
    """weight: [out, in] already in the compute dtype; bias: [out] or None; options go to the kind's
    factory (``group_size`` for int4)."""
    try:
        factory = LINEAR_KINDS[quant]
    except KeyError:
        raise ValueError(f"unknown linear kind {quant!r}; known: {sorted(LINEAR_KINDS)}") from None
    return factory(weight, bias, **options)
