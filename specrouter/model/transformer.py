"""Native Llama-family decoder (Llama, Qwen2/2.5, Mistral, SmolLM) in plain PyTorch.

Boundary: tokens in, logits out, over a caller-owned ``KVCache``. No tokenizer, no sampling, no
speculation. Model quirks (Qwen's q/k/v bias, tied embeddings) are handled here from ``ModelArgs``.

Speed notes (decode on CPU is bound by bytes of weights read, plus per-op overhead on small models):
* q/k/v are one fused matmul and gate/up another, so a layer runs 4 GEMMs instead of 7;
* attention is ``scaled_dot_product_attention`` with grouped KV heads, no repeat of K/V;
* logits are computed only for the positions the caller asks for (``logits_for``).

Shapes: B = rows in the batch, T = new tokens per row this pass (padded to the longest row),
S = keys attended (max over rows of cache length + T), V = vocab size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs
from .kv_cache import KVCache
from .linear import make_linear


def rope_tables(args: ModelArgs, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [max_len, head_dim] in fp32, HF's non-interleaved (rotate_half) layout."""
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, dtype=torch.float32) / args.head_dim))
    t = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, 1, T, D] in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as the reference implementation does, scale in the model dtype.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


class Block(nn.Module):
    def __init__(self, args: ModelArgs, w: dict[str, torch.Tensor], quant: str):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = args.n_heads, args.n_kv_heads, args.head_dim
        qkv_w = torch.cat([w["q_proj.weight"], w["k_proj.weight"], w["v_proj.weight"]])
        qkv_b = torch.cat([w["q_proj.bias"], w["k_proj.bias"], w["v_proj.bias"]]) if args.qkv_bias else None
        self.qkv = make_linear(qkv_w, qkv_b, quant)
        self.o = make_linear(w["o_proj.weight"], None, quant)
        self.gate_up = make_linear(torch.cat([w["gate_proj.weight"], w["up_proj.weight"]]), None, quant)
        self.down = make_linear(w["down_proj.weight"], None, quant)
        self.attn_norm = RMSNorm(w["input_layernorm.weight"], args.norm_eps)
        self.mlp_norm = RMSNorm(w["post_attention_layernorm.weight"], args.norm_eps)
        self.hidden_dim = args.hidden_dim

    def forward(self, x, layer: int, cache: KVCache, row0: int, cos, sin, positions, start, n_keys, mask):
        B, T, _ = x.shape
        qkv = self.qkv(self.attn_norm(x))
        q, k, v = qkv.split([self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache.write(layer, row0, k, v, positions, start)
        keys, values = cache.view(layer, row0, B, n_keys)
        att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             enable_gqa=self.n_heads != self.n_kv)
        x = x + self.o(att.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))
        gate, up = self.gate_up(self.mlp_norm(x)).split(self.hidden_dim, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Transformer(nn.Module):
    """Build with ``Transformer(args, state_dict)``; the state dict uses HF parameter names."""

    def __init__(self, args: ModelArgs, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", quant: str = "dense"):
        super().__init__()
        self.args, self.dtype, self.device = args, dtype, torch.device(device)

        def get(name: str) -> torch.Tensor:
            if name not in sd:
                raise KeyError(f"weight {name!r} missing from checkpoint")
            return sd[name].to(device=self.device, dtype=dtype)

        self.embed = get("model.embed_tokens.weight")  # [V, dim]
        blocks = []
        for i in range(args.n_layers):
            p = f"model.layers.{i}."
            names = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                     "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                     "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]
            if args.qkv_bias:
                names += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
            w = {n.removeprefix("self_attn.").removeprefix("mlp."): get(p + n) for n in names}
            blocks.append(Block(args, w, quant))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(get("model.norm.weight"), args.norm_eps)
        head = self.embed if args.tie_embeddings or "lm_head.weight" not in sd else get("lm_head.weight")
        # The output head stays dense: it is the model's "final word" and the draft's q alike.
        self.lm_head = make_linear(head, None, "dense")
        cos, sin = rope_tables(args, args.max_position + 2 * 64, self.device)
        self.cos, self.sin = cos, sin

    def new_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        max_seq_len = min(max_seq_len or self.args.max_position, self.args.max_position)
        return KVCache(self.args.n_layers, batch_size, self.args.n_kv_heads, self.args.head_dim, max_seq_len,
                       self.dtype, self.device)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: KVCache, n_new: list[int] | None = None,
                logits_for: str = "all", row0: int = 0) -> torch.Tensor:
        """Append ``tokens`` to each row of ``cache`` and return logits.

        tokens: [B, T] int64 for cache rows [row0, row0 + B); row b's real tokens are
        ``tokens[b, :n_new[b]]`` (the rest is padding).
        logits_for: "all" -> [B, T, V]; "last" -> [B, 1, V] at each row's last real token.
        Returns float32 logits. Advances ``cache.lengths[row0 + b]`` by ``n_new[b]``.
        """
        B, T = tokens.shape
        if row0 + B > cache.batch_size:
            raise ValueError(f"rows [{row0}, {row0 + B}) for a cache of {cache.batch_size}")
        n_new = [T] * B if n_new is None else list(n_new)
        cache.check_room(row0, n_new)
        lengths = cache.lengths[row0:row0 + B]
        same_start = all(L == lengths[0] for L in lengths)
        base = torch.tensor(lengths, device=self.device)[:, None]  # [B, 1]
        positions = base + torch.arange(T, device=self.device)[None, :]  # [B, T]
        n_keys = max(lengths) + T
        if same_start and T == 1:
            mask = None  # every cached key is visible to the single new query
        else:
            # query t of row b sees key s iff s <= lengths[b] + t: [B, 1, T, S]
            mask = (torch.arange(n_keys, device=self.device)[None, None, :] <= positions[:, :, None])[:, None]
        cos = self.cos[positions].to(self.dtype)[:, None]  # [B, 1, T, D]
        sin = self.sin[positions].to(self.dtype)[:, None]
        start = lengths[0] if same_start else None

        x = F.embedding(tokens, self.embed)
        for i, block in enumerate(self.blocks):
            x = block(x, i, cache, row0, cos, sin, positions, start, n_keys, mask)
        for b in range(B):
            cache.lengths[row0 + b] += n_new[b]

        if logits_for == "last":
            if all(n == T for n in n_new):
                x = x[:, -1:]
            else:
                idx = torch.tensor([max(n, 1) - 1 for n in n_new], device=self.device)
                x = x[torch.arange(B, device=self.device), idx][:, None]
        elif logits_for != "all":
            raise ValueError(f"logits_for must be 'all' or 'last', got {logits_for!r}")
        return self.lm_head(self.norm(x)).float()
