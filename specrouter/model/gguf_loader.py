"""GGUF -> (HF-style config, HF-named fp32 state dict), dequantized with the ``gguf`` package.

Boundary: the only module that knows GGUF tensor names and llama.cpp's conventions. Its output
feeds the same ``Transformer`` constructor as an HF folder does.

Quirk handled here: llama.cpp's converter permutes the q/k rows of *llama*-architecture models
(interleaved rotary layout); Qwen2 files are not permuted. We undo the permutation so every
weight is in HF's rotate_half layout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_TO_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
ARCH_MAP = {"qwen2": "qwen2", "llama": "llama", "mistral": "mistral"}


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def hf_config_from_gguf(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch not in ARCH_MAP:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {sorted(ARCH_MAP)}")
    a = lambda k, d=None: _field(reader, f"{arch}.{k}", d)  # noqa: E731
    n_heads = a("attention.head_count")
    dim = a("embedding_length")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = a("vocab_size") or (len(tokens) if tokens is not None else None)
    names = {t.name for t in reader.tensors}
    cfg = {
        "model_type": ARCH_MAP[arch],
        "vocab_size": int(vocab),
        "hidden_size": int(dim),
        "num_hidden_layers": int(a("block_count")),
        "num_attention_heads": int(n_heads),
        "num_key_value_heads": int(a("attention.head_count_kv", n_heads)),
        "head_dim": int(a("rope.dimension_count", dim // n_heads)),
        "intermediate_size": int(a("feed_forward_length")),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(a("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(a("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
    }
    for key, hf_key in (("tokenizer.ggml.bos_token_id", "bos_token_id"),
                        ("tokenizer.ggml.eos_token_id", "eos_token_id")):
        v = _field(reader, key)
        if v is not None:
            cfg[hf_key] = int(v)
    return cfg


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute`` for q/k rows (weights [out, in] or biases [out])."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def load_gguf(path: str | Path, progress: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and dequantize a GGUF file. Returns (hf_config, state_dict of fp32 tensors)."""
    import gguf  # imported lazily: only GGUF users pay for it

    reader = gguf.GGUFReader(str(path))
    cfg = hf_config_from_gguf(reader)
    permuted = cfg["model_type"] == "llama"
    sd: dict[str, torch.Tensor] = {}
    n = len(reader.tensors)
    for i, t in enumerate(reader.tensors):
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost-first
        if t.name in GGUF_TO_HF:
            name = GGUF_TO_HF[t.name]
        else:
            parts = t.name.split(".")  # blk.N.kind.weight|bias
            if parts[0] != "blk" or parts[2] not in BLOCK_TO_HF:
                raise ValueError(f"unexpected tensor {t.name!r} in {path}")
            name = f"model.layers.{parts[1]}.{BLOCK_TO_HF[parts[2]]}.{parts[3]}"
            if permuted and parts[2] in ("attn_q", "attn_k"):
                heads = cfg["num_attention_heads"] if parts[2] == "attn_q" else cfg["num_key_value_heads"]
                w = _unpermute(w, heads)
        sd[name] = torch.from_numpy(np.array(w, dtype=np.float32))  # copy: GGUF data is a read-only mmap
        if progress and (i + 1) % max(1, n // 20) == 0:
            print(f"\r  dequantizing {Path(path).name}: {i + 1}/{n} tensors", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return cfg, sd
