"""LoRA adapters on the draft's matmuls, and drafts that share one copy of the base weights.

An adapter holds, per adapted slot (``blocks.{i}.qkv|o|gate_up|down`` of ``linear_slots``), two
matrices A [r, in] and B [out, r]; the adapted layer computes y = base(x) + (x A^T) B^T * alpha / r.
The runtime fuses q/k/v into ``qkv`` and gate/up into ``gate_up``, so one adapter there is q/k/v
(gate/up) adapters sharing their A. B starts at zero: a fresh adapter leaves the model unchanged.

``adapted(base, adapter)`` builds a second ``Transformer`` whose every tensor is the base's (same
storage: embeddings, norms, all base linears) except the adapters' own A and B. It is a separate
model object, so a pool gives it a separate ``ModelLevel`` and a separate KV cache — two adapters
produce different keys and values, and must never share a cache row. Switching the draft per
request is then picking a level: nothing is reloaded.

File format: one safetensors file per adapter, tensors ``{slot}.A`` / ``{slot}.B`` (float32) and
metadata rank, alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..model.args import ModelArgs
from ..model.transformer import Transformer

SLOT_KINDS = ("qkv", "o", "gate_up", "down")


def slot_shapes(args: ModelArgs, kinds: tuple[str, ...] = SLOT_KINDS) -> dict[str, tuple[int, int]]:
    """Adaptable slot -> (out_features, in_features)."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    per = {"qkv": (q + 2 * kv, args.dim), "o": (args.dim, q), "gate_up": (2 * args.hidden_dim, args.dim),
           "down": (args.dim, args.hidden_dim)}
    unknown = set(kinds) - set(per)
    if unknown:
        raise ValueError(f"unknown adapter slots {sorted(unknown)}; known: {SLOT_KINDS}")
    return {f"blocks.{i}.{k}": per[k] for i in range(args.n_layers) for k in kinds}


class LoRALinear(nn.Module):
    """base(x) + (x @ A.T @ B.T) * scale; the base module is shared, never copied."""

    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, scale: float, trainable: bool = False):
        super().__init__()
        self.base, self.scale = base, scale
        self.A = nn.Parameter(A, requires_grad=trainable)
        self.B = nn.Parameter(B, requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scale


@dataclass
class Adapter:
    rank: int
    alpha: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # slot -> (A [r, in], B [out, r])

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"adapter needs rank >= 1 and alpha > 0, got {self.rank}, {self.alpha}")
        for slot, (A, B) in self.weights.items():
            if A.shape[0] != self.rank or B.shape[1] != self.rank:
                raise ValueError(f"adapter slot {slot}: A {tuple(A.shape)}, B {tuple(B.shape)} for rank {self.rank}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def init(cls, args: ModelArgs, rank: int = 16, alpha: float = 32.0, seed: int = 0,
             kinds: tuple[str, ...] = SLOT_KINDS, layers: "range | None" = None) -> "Adapter":
        """A ~ U(-1/sqrt(in), 1/sqrt(in)) (seeded), B = 0: the adapted model equals the base.

        layers: the blocks that carry an adapter (default: all).
        """
        g = torch.Generator().manual_seed(seed)
        w = {}
        keep = {f"blocks.{i}." for i in (range(args.n_layers) if layers is None else layers)}
        for slot, (out, inp) in slot_shapes(args, kinds).items():
            if slot[:slot.rindex(".") + 1] not in keep:
                continue
            bound = 1 / math.sqrt(inp)
            w[slot] = ((torch.rand(rank, inp, generator=g) * 2 - 1) * bound, torch.zeros(out, rank))
        return cls(rank, alpha, w)

    def check(self, args: ModelArgs) -> None:
        shapes = slot_shapes(args)
        for slot, (A, B) in self.weights.items():
            if slot not in shapes:
                raise ValueError(f"adapter slot {slot!r} does not exist in a {args.n_layers}-layer model")
            out, inp = shapes[slot]
            if A.shape[1] != inp or B.shape[0] != out:
                raise ValueError(f"adapter slot {slot}: A {tuple(A.shape)}, B {tuple(B.shape)} do not fit a "
                                 f"[{out}, {inp}] layer: the adapter was trained for another model")

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        t = {}
        for slot, (A, B) in self.weights.items():
            t[f"{slot}.A"] = A.detach().float().contiguous()
            t[f"{slot}.B"] = B.detach().float().contiguous()
        save_file(t, str(path), metadata={"rank": str(self.rank), "alpha": str(self.alpha)})

    @classmethod
    def load(cls, path: str | Path) -> "Adapter":
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"adapter file {path} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "rank" not in meta or "alpha" not in meta:
                raise ValueError(f"{path} is not an adapter file (no rank/alpha metadata)")
            names = list(f.keys())
            slots = sorted({n.rsplit(".", 1)[0] for n in names})
            w = {s: (f.get_tensor(f"{s}.A"), f.get_tensor(f"{s}.B")) for s in slots}
        return cls(int(meta["rank"]), float(meta["alpha"]), w)


def adapted(base: Transformer, adapter: Adapter, trainable: bool = False) -> Transformer:
    """A Transformer sharing every tensor of ``base``, with ``adapter`` on its slots.

    trainable: A and B stay float32 parameters with gradients (training on an fp32 base); otherwise
    they are cast to the base's dtype and frozen (serving).
    """
    adapter.check(base.args)
    sd = {"model.embed_tokens.weight": base.embed, "model.norm.weight": base.norm.weight.detach()}
    linears: dict[str, nn.Module] = {"lm_head": base.lm_head}
    for i, blk in enumerate(base.blocks):
        sd[f"model.layers.{i}.input_layernorm.weight"] = blk.attn_norm.weight.detach()
        sd[f"model.layers.{i}.post_attention_layernorm.weight"] = blk.mlp_norm.weight.detach()
        for kind in SLOT_KINDS:
            slot, mod = f"blocks.{i}.{kind}", getattr(blk, kind)
            if slot in adapter.weights:
                A, B = adapter.weights[slot]
                if not trainable:
                    A, B = A.detach().to(base.device, base.dtype), B.detach().to(base.device, base.dtype)
                mod = LoRALinear(mod, A, B, adapter.scale, trainable)
            linears[slot] = mod
    model = Transformer(base.args, sd, dtype=base.dtype, device=base.device, quant=base.quant, linears=linears)
    model.cos, model.sin = base.cos, base.sin  # share the rotary tables too
    return model


def extract(model: Transformer, rank: int, alpha: float) -> Adapter:
    """The adapter inside an ``adapted`` model (its current A and B, detached, float32)."""
    w = {}
    for i, blk in enumerate(model.blocks):
        for kind in SLOT_KINDS:
            mod = getattr(blk, kind)
            if isinstance(mod, LoRALinear):
                w[f"blocks.{i}.{kind}"] = (mod.A.detach().float().clone(), mod.B.detach().float().clone())
    if not w:
        raise ValueError("the model carries no LoRA adapter")
    return Adapter(rank, alpha, w)


def lora_parameters(model: Transformer) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.A, m.B) if p.requires_grad]
