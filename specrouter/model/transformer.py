"""Native Llama-family decoder (Llama, Qwen2/2.5, Mistral, SmolLM) in plain PyTorch.

Boundary: tokens in, logits out, over a caller-owned ``KVCache``. No tokenizer, no sampling, no
speculation. Model quirks (Qwen's q/k/v bias, tied embeddings) are handled here from ``ModelArgs``.

Speed notes (decode on CPU is bound by bytes of weights read, plus per-op overhead on small models):
* q/k/v are one fused matmul and gate/up another, so a layer runs 4 GEMMs instead of 7;
* attention is ``scaled_dot_product_attention`` with grouped KV heads, no repeat of K/V, except for
  the few-query passes of decode and verification on CPU (``few_query_attention``): there the CPU
  flash kernel costs 0.47 ms per layer for one query over 300 keys and 2.3 ms over 1,500 (AVX512-BF16 CPU, 0.5B
  shapes, 2 threads), against 0.08 / 0.15 ms for two plain matmuls — a quarter of the 0.5B's
  decode time, and 8x at batch 8;
* logits are computed only for the positions the caller asks for (``logits_for``).

Shapes: B = rows in the batch, T = new tokens per row this pass (padded to the longest row),
S = keys attended (max over rows of cache length + T), V = vocab size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs
from .draft_vocab import VocabSubsetHead
from .kv_cache import PAD_SLACK, KVCache
from .linear import make_linear
from .quant import QuantScheme


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


# Query blocks up to this many tokens per row take the plain-matmul path on CPU (decode: 1,
# verification: k + 1); longer ones (prefill, catch-up) keep the flash kernel, which wins there.
FEW_QUERIES = 16


def few_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention as two matmuls, for short query blocks.

    q: [B, H, T, D]; k, v: [B, G, S, D] with H = G * g (grouped KV heads, never repeated: the g
    query heads of a group and the T positions fold into one matrix of g * T rows); mask: None or
    [B, 1, T, S] bool (True = visible). Scores and softmax in float32, as the fused kernel keeps
    them; returns [B, H, T, D] in q's dtype.
    """
    B, H, T, D = q.shape
    G = k.shape[1]
    g = H // G
    scores = torch.matmul(q.reshape(B, G, g * T, D).float(), k.float().transpose(-1, -2))  # [B, G, gT, S]
    scores = scores.mul_(D ** -0.5).view(B, G, g, T, -1)
    if mask is not None:
        scores = scores.masked_fill_(~mask[:, :, None], float("-inf"))
    probs = scores.softmax(-1).view(B, G, g * T, -1).to(v.dtype)
    return torch.matmul(probs, v).view(B, H, T, D)


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as the reference implementation does, scale in the model dtype.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


def linear_slots(args: ModelArgs, untied_head: bool) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every matmul of the model: module name -> (HF weight names stacked along the output dim,
    HF bias names). q/k/v and gate/up are fused; per-output-row quantization commutes with that
    stacking. The one source of truth for building the model and for the packed-weight cache."""
    slots = {}
    for i in range(args.n_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        qkv = tuple(a + f"{x}_proj." for x in "qkv")
        slots[f"blocks.{i}.qkv"] = (tuple(x + "weight" for x in qkv),
                                    tuple(x + "bias" for x in qkv) if args.qkv_bias else ())
        slots[f"blocks.{i}.o"] = ((a + "o_proj.weight",), ())
        slots[f"blocks.{i}.gate_up"] = ((m + "gate_proj.weight", m + "up_proj.weight"), ())
        slots[f"blocks.{i}.down"] = ((m + "down_proj.weight",), ())
    slots["lm_head"] = (("lm_head.weight" if untied_head else "model.embed_tokens.weight",), ())
    return slots


class Block(nn.Module):
    def __init__(self, args: ModelArgs, linears: dict[str, nn.Module], norms: tuple[torch.Tensor, torch.Tensor]):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = args.n_heads, args.n_kv_heads, args.head_dim
        self.qkv, self.o = linears["qkv"], linears["o"]
        self.gate_up, self.down = linears["gate_up"], linears["down"]
        self.attn_norm = RMSNorm(norms[0], args.norm_eps)
        self.mlp_norm = RMSNorm(norms[1], args.norm_eps)
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
        if T <= FEW_QUERIES and x.device.type == "cpu":
            att = few_query_attention(q, keys, values, mask)
        else:
            att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                 enable_gqa=self.n_heads != self.n_kv)
        x = x + self.o(att.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))
        gate, up = self.gate_up(self.mlp_norm(x)).split(self.hidden_dim, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Transformer(nn.Module):
    """Build with ``Transformer(args, state_dict)``; the state dict uses HF parameter names.

    quant: a ``QuantScheme`` or its string (``dense``, ``int8``, ``int4``, ``int4-g32-head=dense``…):
    which linear kind the block matmuls and the output head get (see quant.py). ``linears``: modules
    already built for some slots of ``linear_slots`` (the packed-weight cache); their HF weights are
    then never read from ``sd``. Logits are float32 whatever the head's storage.
    """

    def __init__(self, args: ModelArgs, sd: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", quant: "str | QuantScheme" = "dense",
                 linears: Mapping[str, nn.Module] | None = None):
        super().__init__()
        self.args, self.dtype, self.device = args, dtype, torch.device(device)
        self.quant = QuantScheme.parse(quant)
        if self.quant.vocab is not None:  # it needs the tokenizer's special ids: load_model applies it
            raise ValueError(f"quant {quant!r}: build with the weights scheme and call restrict_head "
                             f"for a draft vocabulary (load_model does both)")
        prebuilt = dict(linears or {})
        slots = linear_slots(args, untied_head=not args.tie_embeddings and "lm_head.weight" in sd)

        def get(name: str) -> torch.Tensor:
            if name not in sd:
                raise KeyError(f"weight {name!r} missing from checkpoint")
            return sd[name].to(device=self.device, dtype=dtype)

        def linear(slot: str) -> nn.Module:
            if slot in prebuilt:
                return prebuilt.pop(slot)
            w_names, b_names = slots[slot]
            if w_names == ("model.embed_tokens.weight",):
                w = self.embed  # tied head: share the table (packing / quantizing copies it anyway)
            else:
                w = torch.cat([get(n) for n in w_names]) if len(w_names) > 1 else get(w_names[0])  # [N, K]
            b = torch.cat([get(n) for n in b_names]) if b_names else None
            kind = self.quant.head if slot == "lm_head" else self.quant.body
            return make_linear(w, b, kind, **({"group_size": self.quant.group_size} if kind == "int4" else {}))

        self.embed = get("model.embed_tokens.weight")  # [V, dim]
        blocks = []
        for i in range(args.n_layers):
            p = f"model.layers.{i}."
            mods = {k: linear(f"blocks.{i}.{k}") for k in ("qkv", "o", "gate_up", "down")}
            norms = (get(p + "input_layernorm.weight"), get(p + "post_attention_layernorm.weight"))
            blocks.append(Block(args, mods, norms))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(get("model.norm.weight"), args.norm_eps)
        # The head is the model's "final word" and a draft's q alike; by default a quantized model
        # keeps it in int8 (QuantScheme), and its logits are float32 either way.
        self.lm_head = linear("lm_head")
        if prebuilt:
            raise ValueError(f"prebuilt linears for unknown slots: {sorted(prebuilt)[:4]}")
        cos, sin = rope_tables(args, args.max_position + PAD_SLACK, self.device)
        self.cos, self.sin = cos, sin

    def restrict_head(self, ids: torch.Tensor, weight: torch.Tensor) -> None:
        """From now on the head scores only token ids ``ids`` ([N] int64, sorted), -inf elsewhere: a
        draft's fast head (``draft_vocab.py``). weight: the full head matrix [V, dim] in HF layout (the
        embedding table for a tied head); its rows ``ids`` are stored in the head's own linear kind."""
        kind = self.quant.head
        opts = {"group_size": self.quant.group_size} if kind == "int4" else {}
        rows = weight[ids.to(weight.device)].to(device=self.device, dtype=self.dtype).contiguous()  # [N, dim]
        self.lm_head = VocabSubsetHead(make_linear(rows, None, kind, **opts), ids.to(self.device), self.args.vocab_size)

    def new_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        max_seq_len = min(max_seq_len or self.args.max_position, self.args.max_position)
        return KVCache(self.args.n_layers, batch_size, self.args.n_kv_heads, self.args.head_dim, max_seq_len,
                       self.dtype, self.device)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: KVCache, n_new: list[int] | None = None,
                logits_for: "str | torch.Tensor" = "all", row0: int = 0,
                return_hidden: bool = False, min_tokens: int = 1) -> torch.Tensor:
        """Append ``tokens`` to each row of ``cache`` and return logits.

        tokens: [B, T] int64 for cache rows [row0, row0 + B); row b's real tokens are
        ``tokens[b, :n_new[b]]`` (the rest is padding).
        logits_for: "all" -> [B, T, V]; "last" -> [B, 1, V] at each row's last real token;
            a [B, P] int64 tensor -> [B, P, V] at those positions of this pass (the head, the most
            expensive matmul of a small model, then runs only where a verifier needs scores).
        Returns float32 logits. Advances ``cache.lengths[row0 + b]`` by ``n_new[b]``.
        return_hidden: return the final normed hidden states [B, T, dim] (float32) of every position
            instead of logits (prompt embeddings for task classification, ``specrouter/tasks``).
        min_tokens: pad the pass to at least this many token columns (padding is written past each
            row's length and never read). Why: CPU kernels compute a one-token pass differently
            from a wider one (oneDNN's one-row GEMV path; bitwise different logits, measured in
            ``results/bf16-row-invariance.py``), while every width >= 2 gives the same bits. A
            target run with ``min_tokens=2`` gives a token the same logits whether it is decoded
            alone or verified among drafts — what makes speculative greedy output identical to
            target-only greedy output (``SpeculativeEngine``).
        """
        B, T = tokens.shape
        n_new = [T] * B if n_new is None else list(n_new)
        width = T  # columns the caller sees ("all", return_hidden)
        if T < min_tokens:
            tokens = torch.cat([tokens, tokens[:, -1:].expand(B, min_tokens - T)], dim=1)
            T = min_tokens
        if row0 + B > cache.batch_size:
            raise ValueError(f"rows [{row0}, {row0 + B}) for a cache of {cache.batch_size}")
        cache.check_room(row0, n_new)
        lengths = cache.lengths[row0:row0 + B]
        same_start = all(L == lengths[0] for L in lengths)
        base = torch.tensor(lengths, device=self.device)[:, None]  # [B, 1]
        # Real tokens sit below max_seq_len (check_room); only padding of short rows can pass the
        # cache's capacity, and clamping it there writes into the never-read slack region.
        positions = (base + torch.arange(T, device=self.device)[None, :]).clamp_max(cache.capacity - 1)  # [B, T]
        n_keys = min(max(lengths) + T, cache.capacity)
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
        if return_hidden:
            return self.norm(x[:, :width]).float()

        if isinstance(logits_for, torch.Tensor):  # [B, P] positions (within this pass) to score
            x = x.gather(1, logits_for.to(self.device)[..., None].expand(-1, -1, x.shape[-1]))
        elif logits_for == "last":
            if all(n == T for n in n_new):
                x = x[:, -1:]
            else:
                idx = torch.tensor([max(n, 1) - 1 for n in n_new], device=self.device)
                x = x[torch.arange(B, device=self.device), idx][:, None]
        elif logits_for != "all":
            raise ValueError(f"logits_for must be 'all', 'last' or a [B, P] tensor, got {logits_for!r}")
        else:
            x = x[:, :width]
        P = x.shape[1]
        if P < min_tokens:  # the head has the same one-row kernel path: give it min_tokens rows too
            x = torch.cat([x, x[:, -1:].expand(B, min_tokens - P, x.shape[-1])], dim=1)
        return self.lm_head(self.norm(x)).float()[:, :P]
