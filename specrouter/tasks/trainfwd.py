"""A differentiable forward of the runtime ``Transformer``, for distillation training.

The runtime forward runs under ``torch.inference_mode`` over a KV cache and its CPU linears use
oneDNN's packed kernel, which has no backward. Training needs neither a cache nor packing: one
causal pass over one whole sequence. This module builds an fp32 copy of a model with plain
(unpacked) linears (``trainable_base``) and runs the same blocks differentiably
(``train_logits``); a test checks it against the runtime forward. When only the last blocks carry
an adapter, the blocks below are frozen and their output (``hidden_before``) is computed once per
sequence, not once per step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model.args import ModelArgs
from ..model.linear import DenseLinear
from ..model.loader import LazyStateDict
from ..model.transformer import Transformer, apply_rope, linear_slots


def trainable_base(folder: str | Path) -> Transformer:
    """The model in ``folder`` (HF-style: config.json + safetensors) in fp32 with unpacked linears."""
    folder = Path(folder)
    args = ModelArgs.from_hf_config(json.loads((folder / "config.json").read_text()))
    sd = LazyStateDict(folder)
    linears = {}
    for slot, (w_names, b_names) in linear_slots(args, not args.tie_embeddings and "lm_head.weight" in sd).items():
        w = torch.cat([sd[n].float() for n in w_names])
        b = torch.cat([sd[n].float() for n in b_names]) if b_names else None
        linears[slot] = DenseLinear(w, b, pack=False)
    return Transformer(args, sd, dtype=torch.float32, linears=linears)


def hidden_before(model: Transformer, ids: list[int] | torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream [T, dim] entering block ``layer`` (0: the embeddings), with autograd."""
    tokens = torch.as_tensor(ids, dtype=torch.long, device=model.device)[None]  # [1, T]
    return _blocks(model, F.embedding(tokens, model.embed), 0, layer)[0]


def train_logits(model: Transformer, ids: list[int] | torch.Tensor, positions: list[int] | None = None,
                 start: int = 0, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [P, V] (float32) at ``positions`` (default: all) of one sequence, with autograd.

    start, hidden: run blocks ``start..`` on ``hidden`` = ``hidden_before(model, ids, start)`` (kept
    from an earlier pass: when only the last blocks train, the frozen ones run once per sequence).
    """
    if hidden is None:
        x = hidden_before(model, ids, start)[None]
    else:
        x = hidden[None]
    x = _blocks(model, x, start, len(model.blocks))[0]
    if positions is not None:
        x = x[torch.as_tensor(positions, dtype=torch.long, device=model.device)]
    return model.lm_head(model.norm(x)).float()


def _blocks(model: Transformer, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Blocks ``lo..hi-1`` of one causal pass over x [1, T, dim], no cache."""
    T = x.shape[1]
    if T > model.cos.shape[0]:
        raise ValueError(f"sequence of {T} tokens exceeds the model's rotary table ({model.cos.shape[0]})")
    cos = model.cos[:T].to(model.dtype)[None, None]  # [1, 1, T, D]
    sin = model.sin[:T].to(model.dtype)[None, None]
    for blk in model.blocks[lo:hi]:
        qkv = blk.qkv(blk.attn_norm(x))
        q, k, v = qkv.split([blk.n_heads * blk.hd, blk.n_kv * blk.hd, blk.n_kv * blk.hd], dim=-1)
        q = q.view(1, T, blk.n_heads, blk.hd).transpose(1, 2)
        k = k.view(1, T, blk.n_kv, blk.hd).transpose(1, 2)
        v = v.view(1, T, blk.n_kv, blk.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=blk.n_heads != blk.n_kv)
        x = x + blk.o(att.transpose(1, 2).reshape(1, T, blk.n_heads * blk.hd))
        gate, up = blk.gate_up(blk.mlp_norm(x)).split(blk.hidden_dim, dim=-1)
        x = x + blk.down(F.silu(gate) * up)
    return x
