"""Weight-only int8 / int4 quantization: the pure math, the scheme, and the two linear layers.

Boundary: this file turns one weight matrix into a quantized linear layer and back (for tests and
references). Which matrices get quantized is the transformer's business (``QuantScheme`` is only
read there); caching the packed weights on disk is ``quant_cache.py``'s.

Schemes (activations stay in the model dtype; only weights are stored in fewer bits):
* int8, per output channel, symmetric: ``s = max|w_row| / 127``, ``q = round(w / s)`` in [-127, 127],
  ``w ~= q * s``. Kernel: ``aten._weight_int8pack_mm`` (CPU; CUDA where this build has it).
* int4, group-wise along the input dimension, asymmetric: each run of G consecutive inputs of one
  output row gets ``s = (max - min) / 15`` and ``q = round((w - z) / s) + 8`` in [0, 15] with
  ``z = min + 8 s``, so ``w ~= (q - 8) * s + z``. That is the (scale, zero) convention of PyTorch's
  int4pack kernels (``_weight_int4pack_mm_for_cpu`` / ``_weight_int4pack_mm`` on CUDA), which take
  [K/G, N, 2] (scale, zero) pairs in the activation dtype.

* w8a8 (int8 weights, activations rounded per row on the fly; CPU only): ``w8a8.py``.

Scales and zeros are rounded to the dtype the kernel reads them in *before* ``q`` is computed, so
``dequantize_*`` reproduces exactly the weights the kernel multiplies by, and the error bound
``|w - w_hat| <= s / 2`` (plus a few ulps of the rounded scale at a group's extremes) holds for the
stored values, not for an idealised fp32 copy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_QUANT_KINDS = ("dense", "int8", "int4", "w8a8")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the int4pack kernels accept
DEFAULT_GROUP_SIZE = 128
# Which kind the output head gets when the scheme string does not say: see QuantScheme.parse.
DEFAULT_HEAD = {"dense": "dense", "int8": "int8", "int4": "int8", "w8a8": "w8a8"}


# ---------------------------------------------------------------------------------------- math
def quantize_int8(w: torch.Tensor, scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [N, K] float -> (q [N, K] int8 in [-127, 127], scale [N] in ``scale_dtype``)."""
    if w.dim() != 2:
        raise ValueError(f"expected a [out, in] matrix, got shape {tuple(w.shape)}")
    w = w.float()
    amax = w.abs().amax(dim=1)  # [N]
    # an all-zero row gets scale 1 (any scale reproduces it exactly)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).to(scale_dtype)
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q: [N, K] int8, scale: [N] -> [N, K] float32."""
    return q.float() * scale.float()[:, None]


def quantize_int4(w: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE,
                  scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w: [N, K] float, K divisible by ``group_size`` ->
    (q [N, K] uint8 in [0, 15], scale [N, K/G], zero [N, K/G] in ``scale_dtype``)."""
    if w.dim() != 2:
        raise ValueError(f"expected a [out, in] matrix, got shape {tuple(w.shape)}")
    N, K = w.shape
    if group_size < 1 or K % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide the input dimension {K}")
    g = w.float().reshape(N, K // group_size, group_size)  # [N, K/G, G]
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)  # [N, K/G]
    # A constant group gets a tiny positive step so q is well defined (it dequantizes to z exactly).
    step = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny * 1e6)
    scale = step.to(scale_dtype)
    zero = (lo + 8 * step).to(scale_dtype)
    s, z = scale.float()[..., None], zero.float()[..., None]
    q = (torch.round((g - z) / s) + 8).clamp_(0, 15).to(torch.uint8)
    return q.reshape(N, K), scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """q: [N, K] in [0, 15], scale/zero: [N, K/G] -> [N, K] float32 (w_hat = (q - 8) * s + z)."""
    N, K = q.shape
    G = K // scale.shape[1]
    g = q.float().reshape(N, K // G, G)
    return ((g - 8) * scale.float()[..., None] + zero.float()[..., None]).reshape(N, K)


def pick_group_size(in_features: int, requested: int) -> int:
    """The requested group if it divides K, else the largest smaller kernel group that does."""
    if requested not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {requested}")
    for g in sorted((g for g in INT4_GROUP_SIZES if g <= requested), reverse=True):
        if in_features % g == 0:
            return g
    return requested  # K is padded up to a multiple of the group (see Int4Linear)


# -------------------------------------------------------------------------------------- scheme
@dataclass(frozen=True)
class QuantScheme:
    """How a model's weight matrices are stored: ``body`` for every matmul of the decoder blocks,
    ``head`` for the output projection (the embedding lookup itself always stays in the model dtype).

    String form (the ``@...`` suffix of a chain level): ``dense``, ``int8``, ``int4``, ``int4-g32``,
    optionally ``-head=dense|int8|int4``, and ``-vocab=N`` (``N`` or ``Nk`` = N * 1024): the head
    scores only the N lowest token ids plus the special tokens, -inf elsewhere (a draft's fast head,
    ``draft_vocab.py``; not a precision, but it rides on the same suffix: ``0.5b@int4-vocab=48k``).
    Without a head part, int8 and int4 use an int8 head. For
    Qwen the head is 151936 x dim: 15-28% of the bf16 bytes read per token, and as many bytes as
    half an int4 body. Measured here (quant-eval / bench-runtime, 2 threads): an int8 head costs no
    agreement against a dense one (0.5B@int4: 0.907 greedy agreement either way), an int4 head does
    (1.5B@int4: 0.946 -> 0.918, perplexity drift 4.7% -> 7.3%) for ~12% less decode time, hence
    int8 by default and ``-head=int4`` for the fastest drafter. Group 128 is the default: group 32
    agrees more (1.5B: 0.967) but reads 18% more bytes and decodes ~5-10% slower.
    """

    body: str = "dense"
    group_size: int = DEFAULT_GROUP_SIZE  # int4 only
    head: str = "dense"
    vocab: int | None = None  # draft head rows kept (None: the whole vocabulary)

    def __post_init__(self):
        for part, kind in (("body", self.body), ("head", self.head)):
            if kind not in LINEAR_QUANT_KINDS:
                raise ValueError(f"unknown {part} quantization {kind!r}; choose from {', '.join(LINEAR_QUANT_KINDS)}")
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {self.group_size}")
        if self.vocab is not None and (not isinstance(self.vocab, int) or self.vocab < 1):
            raise ValueError(f"a draft vocabulary (-vocab=N) needs N >= 1, got {self.vocab!r}")

    @classmethod
    def parse(cls, spec: "str | QuantScheme | None") -> "QuantScheme":
        if spec is None:
            return cls()
        if isinstance(spec, QuantScheme):
            return spec
        parts = spec.strip().lower().split("-")
        body, group, head, vocab = parts[0], DEFAULT_GROUP_SIZE, None, None
        if body == "none":
            body = "dense"
        if body not in LINEAR_QUANT_KINDS:
            raise ValueError(f"unknown quantization {spec!r}: expected dense, int8, int4, int4-g32, w8a8, "
                             f"optionally followed by -head=dense|int8|int4|w8a8")
        group_given = False
        for p in parts[1:]:
            if p.startswith("g") and p[1:].isdigit():
                group, group_given = int(p[1:]), True
            elif p.startswith("head="):
                head = p.removeprefix("head=")
            elif p.startswith("vocab="):
                vocab = _parse_count(p.removeprefix("vocab="), spec)
            else:
                raise ValueError(f"unknown quantization option {p!r} in {spec!r} "
                                 f"(options: -gN for int4, -head=dense|int8|int4|w8a8, -vocab=N)")
        scheme = cls(body, group, DEFAULT_HEAD[body] if head is None else head, vocab)
        if group_given and "int4" not in (scheme.body, scheme.head):
            raise ValueError(f"{spec!r}: a group size (-g{group}) only applies to int4")
        return scheme

    @property
    def is_dense(self) -> bool:
        """Every weight in the model dtype (whatever ``vocab`` says)."""
        return self.body == "dense" and self.head == "dense"

    @property
    def weights(self) -> "QuantScheme":
        """This scheme without the draft vocabulary: what the stored weights depend on (cache keys)."""
        return QuantScheme(self.body, self.group_size, self.head)

    def _vocab_suffix(self) -> str:
        return "" if self.vocab is None else f"-vocab={self.vocab}"

    def __str__(self) -> str:
        """Canonical form: every option spelled out (used in cache keys and display names)."""
        if self.is_dense:
            return "dense" + self._vocab_suffix()
        group = f"-g{self.group_size}" if "int4" in (self.body, self.head) else ""
        return f"{self.body}{group}-head={self.head}" + self._vocab_suffix()

    def short(self) -> str:
        """The shortest string that parses back to this scheme."""
        if self.is_dense:
            return "dense" + self._vocab_suffix()
        s = self.body + (f"-g{self.group_size}" if self.group_size != DEFAULT_GROUP_SIZE else "")
        return s + (f"-head={self.head}" if self.head != DEFAULT_HEAD[self.body] else "") + self._vocab_suffix()


def _parse_count(text: str, spec: str) -> int:
    """``48k`` -> 49152, ``50000`` -> 50000."""
    mult = 1024 if text.endswith("k") else 1
    digits = text.removesuffix("k")
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError(f"{spec!r}: -vocab wants a positive count such as 49152 or 48k, got {text!r}")
    return int(digits) * mult


# -------------------------------------------------------------------------------------- layers
def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous, 64-byte aligned copy when ``t`` is not: tensors read zero-copy from a
    safetensors file start at arbitrary byte offsets, and the packed kernels' vector loads crash
    (SIGSEGV, measured with _weight_int8pack_mm) on misaligned weights."""
    t = t.contiguous()
    return t if t.data_ptr() % 64 == 0 else t.clone()


def _flat(x: torch.Tensor, k: int) -> torch.Tensor:
    """[..., K] -> [M, K] contiguous (the packed kernels take 2-D activations)."""
    return x.reshape(-1, k).contiguous()


class _PerChannelInt8(nn.Module):
    """What int8 and w8a8 layers share: buffers ``qweight`` [N, K] int8, ``scales`` [N], ``bias``,
    and the disk cache's (tensors, meta) form of them."""

    kind: str

    def packed_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        t = {"qweight": self.qweight, "scales": self.scales}
        if self.bias is not None:
            t["bias"] = self.bias
        return t, {"kind": self.kind}

    @classmethod
    def from_packed(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "_PerChannelInt8":
        return cls(tensors["qweight"], tensors["scales"], tensors.get("bias"))


class Int8Linear(_PerChannelInt8):
    """y = (x @ q.T) * s + b with q int8 [N, K] per-channel, s [N] in the activation dtype."""

    kind = "int8"

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2 or scales.shape != qweight.shape[:1]:
            raise ValueError(f"Int8Linear wants int8 [N, K] weights and [N] scales, got {qweight.dtype} "
                             f"{tuple(qweight.shape)} and {tuple(scales.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", _aligned(qweight))
        self.register_buffer("scales", _aligned(scales))
        self.register_buffer("bias", None if bias is None else bias.contiguous())
        self.use_kernel = qweight.device.type == "cpu" or _probe_int8_kernel(qweight.device, scales.dtype)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8Linear":
        """weight: [N, K] in the compute dtype (scales are stored in it too)."""
        q, s = quantize_int8(weight, scale_dtype=weight.dtype)
        return cls(q, s, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _flat(x, self.in_features)  # [M, K]
        if self.use_kernel:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)  # [M, N]
        else:  # CUDA builds without the kernel: dequantize on the fly (correct, not fast)
            y = F.linear(x2, self.qweight.to(x2.dtype)) * self.scales
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """y = x @ W_hat.T + b, W_hat = (q - 8) * s + z per group of G inputs, q stored 2 per byte in the
    layout of the device's int4pack kernel. N is padded to a multiple of 16 and K to a multiple of
    the group (and of 128 on CUDA) where the kernels demand it; padded outputs are sliced off and
    padded inputs are zeros, so padding never changes a result."""

    kind = "int4"

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, out_features: int, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.k_padded = scale_zero.shape[0] * group_size  # scale_zero: [K_pad/G, N_pad, 2]
        self.register_buffer("packed", _aligned(packed))
        self.register_buffer("scale_zero", _aligned(scale_zero))
        self.register_buffer("bias", None if bias is None else bias.contiguous())

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    group_size: int = DEFAULT_GROUP_SIZE) -> "Int4Linear":
        """weight: [N, K] in the compute dtype (scales/zeros are stored in it too)."""
        N, K = weight.shape
        dev = weight.device
        if dev.type == "cuda" and weight.dtype != torch.bfloat16:
            raise ValueError("int4 on CUDA needs bf16 activations (--dtype bf16)")
        G = pick_group_size(K, group_size)
        k_mult = G if dev.type == "cpu" else max(G, 128)  # CUDA: innerKTiles=8 -> K % 128
        n_pad, k_pad = -N % 16, -K % k_mult
        w = F.pad(weight.float(), (0, k_pad, 0, n_pad)) if n_pad or k_pad else weight  # [N_pad, K_pad]
        q, s, z = quantize_int4(w, G, scale_dtype=weight.dtype)
        # kernels want [K/G, N, 2] (scale, zero) pairs
        scale_zero = torch.stack([s, z], dim=-1).transpose(0, 1).contiguous()
        lin = cls(_pack_int4(q, dev), scale_zero, bias, K, N, G)
        if dev.type != "cpu" and dev.type not in _INT4_LAYOUT_CHECKED:
            _check_int4_layout(lin, q, s, z)
        return lin

    def packed_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        t = {"packed": self.packed, "scale_zero": self.scale_zero}
        if self.bias is not None:
            t["bias"] = self.bias
        return t, {"kind": self.kind, "in": self.in_features, "out": self.out_features, "group": self.group_size}

    @classmethod
    def from_packed(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "Int4Linear":
        return cls(tensors["packed"], tensors["scale_zero"], tensors.get("bias"), int(meta["in"]),
                   int(meta["out"]), int(meta["group"]))

    def _mm(self, x2: torch.Tensor) -> torch.Tensor:
        """x2: [M, K_pad] -> [M, N_pad]."""
        if self.packed.device.type == "cpu":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scale_zero)
        return torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size, self.scale_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _flat(x, self.in_features)  # [M, K]
        if self.k_padded != self.in_features:
            x2 = F.pad(x2, (0, self.k_padded - self.in_features))
        y = self._mm(x2)  # [M, N_pad]
        if y.shape[1] != self.out_features:
            y = y[:, :self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def _pack_int4(q: torch.Tensor, device: torch.device) -> torch.Tensor:
    """q: [N, K] uint8 in [0, 15] -> the int4pack kernel's layout for ``device``."""
    if device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    # CUDA (torch >= 2.5): uint8 [N, K/2], even column in the high nibble, then tiled by the op
    pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    return torch.ops.aten._convert_weight_to_int4pack(pairs.contiguous(), 8)


_INT4_LAYOUT_CHECKED: set[str] = set()


def _check_int4_layout(lin: "Int4Linear", q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> None:
    """Once per process and device type (off-CPU layouts are not covered by this repo's CPU tests):
    the packed kernel must reproduce x @ W_hat.T for the W_hat the pure functions define."""
    x = torch.randn(2, lin.k_padded, dtype=lin.scale_zero.dtype, device=q.device)
    ref = x.float() @ dequantize_int4(q, s, z).T  # [2, N_pad]
    got = lin._mm(x).float()
    if not torch.allclose(got, ref, atol=2 ** -5 * ref.abs().max().item(), rtol=0):
        raise RuntimeError(f"the int4pack kernel on {q.device.type} does not match the dequantized reference "
                           f"(max error {(got - ref).abs().max().item():.3g}): unsupported packed layout in "
                           f"torch {torch.__version__}; use @int8 or a dense level there")
    _INT4_LAYOUT_CHECKED.add(q.device.type)


_INT8_KERNEL_OK: dict[tuple, bool] = {}


def _probe_int8_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``_weight_int8pack_mm`` runs on this (non-CPU) device, checked once per process."""
    key = (device.type, dtype)
    if key not in _INT8_KERNEL_OK:
        try:
            q = torch.ones(16, 32, dtype=torch.int8, device=device)
            y = torch.ops.aten._weight_int8pack_mm(torch.ones(1, 32, dtype=dtype, device=device), q,
                                                   torch.ones(16, dtype=dtype, device=device))
            _INT8_KERNEL_OK[key] = bool(torch.all(y == 32))
        except (RuntimeError, NotImplementedError):
            _INT8_KERNEL_OK[key] = False
    return _INT8_KERNEL_OK[key]
