"""Tiny seeded models and a byte-level tokenizer, written to disk as real HF folders.

A "pair" is a target and a draft that is the target plus weight noise, so they agree often but
not always: every acceptance path (all accepted, early rejection, bonus token) gets exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_tokenizer():
    """A real fast tokenizer: 256 byte tokens + 3 specials (ids 256..258)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab = {k: i for i, k in enumerate(sorted(vocab))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "qwen2", vocab: int = 259, layers: int = 2, dim: int = 64, heads: int = 4,
                kv_heads: int = 2, tie: bool = False, max_pos: int = 512):
    import transformers

    cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig,
           "mistral": transformers.MistralConfig}[arch]
    extra = {"sliding_window": None} if arch == "mistral" else {}
    return cls(vocab_size=vocab, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
               tie_word_embeddings=tie, rms_norm_eps=1e-6, rope_theta=10000.0, **extra)


def tiny_hf_model(cfg, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # HF's init is near-zero; widen it so outputs are not all ties
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


def perturbed(model, noise: float, seed: int):
    """A copy of ``model`` with Gaussian noise on its weight matrices (a cheap, imperfect draft)."""
    import copy

    g = torch.Generator().manual_seed(seed)
    d = copy.deepcopy(model)
    with torch.no_grad():
        for p in d.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * noise)
    return d


def save_folder(model, path: Path, tokenizer=None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 258}))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path
