"""Architecture hyper-parameters of a Llama-family decoder, read from an HF ``config.json``.

Boundary: this module knows the names HF uses in ``config.json``; it knows nothing about weights,
GGUF, or tokenizers. The GGUF loader writes an HF-style config so both sources meet here.
"""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_ARCHS = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class ModelArgs:
    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float
    rope_theta: float
    max_position: int
    qkv_bias: bool
    tie_embeddings: bool

    def __post_init__(self) -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported architecture {self.arch!r}; supported: {SUPPORTED_ARCHS}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim",
                     "max_position"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelArgs.{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for rotary embeddings")

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelArgs":
        model_type = cfg.get("model_type", "")
        if model_type not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported model_type {model_type!r} in config.json; supported: {SUPPORTED_ARCHS}")
        if cfg.get("rope_scaling") not in (None, {}) and (cfg["rope_scaling"] or {}).get("rope_type", "default") \
                not in ("default",):
            raise ValueError(f"rope_scaling {cfg['rope_scaling']} is not supported yet")
        n_heads = cfg["num_attention_heads"]
        dim = cfg["hidden_size"]
        rope_theta = cfg.get("rope_theta")
        if rope_theta is None:  # transformers >= 5 nests it under rope_parameters
            rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(
            arch=model_type,
            vocab_size=cfg["vocab_size"],
            dim=dim,
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or dim // n_heads,
            hidden_dim=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            max_position=cfg.get("max_position_embeddings", 4096),
            # Qwen2 carries a bias on q/k/v; Llama and Mistral may declare it with attention_bias.
            qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )

    def to_hf_config(self) -> dict:
        """The inverse of ``from_hf_config``: a config.json transformers can load."""
        names = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
        cfg = {
            "architectures": [names[self.arch]],
            "model_type": self.arch,
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.hidden_dim,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
        }
        if self.arch == "llama":
            cfg["attention_bias"] = self.qkv_bias
        return cfg
