"""Resolve a model spec (default name, HF folder, GGUF file) and build a ready ``LoadedModel``.

Boundary: turns *where a model lives* into a ``Transformer`` plus its ``Tokenizer``. A GGUF file is
dequantized once into an HF-style folder under ``$SPECROUTER_HOME/prepared`` (config.json,
fp32 safetensors, tokenizer files), so GGUF and HF sources share one code path after loading and
the second load of a GGUF is a plain safetensors read.

A chain level may carry a precision: ``1.5b@int4``, ``/path/model.gguf@int8`` (``parse_level``).
A quantized level is built from the same folder and cached packed (``quant_cache.py``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tokenizer import Tokenizer
from .args import ModelArgs
from .draft_vocab import draft_vocab_ids
from .quant import QuantScheme
from .quant_cache import load_quantized
from .registry import DEFAULT_MODELS, find_default, home, pull
from .transformer import Transformer

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return default_dtype()
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(sorted(DTYPES))}") from None


def default_dtype(device: str = "cpu") -> torch.dtype:
    """bf16 where the hardware computes it natively (CUDA, or CPUs with AVX512-BF16/AMX), else fp32."""
    if device.startswith("cuda"):
        return torch.bfloat16
    try:
        caps = torch.backends.cpu.get_cpu_capability()
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        if "avx512_bf16" in flags or "amx_bf16" in flags or caps in ("AVX512_BF16", "AMX"):
            return torch.bfloat16
    except Exception:  # pragma: no cover - exotic platforms
        pass
    return torch.float32


@dataclass
class LoadedModel:
    name: str
    folder: Path
    model: Transformer
    tokenizer: Tokenizer

    @property
    def args(self) -> ModelArgs:
        return self.model.args


class LazyStateDict(Mapping):
    """Safetensors tensors read on access, so a large fp32 checkpoint never sits whole in memory."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {folder}")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __getitem__(self, key):
        return self._where[key].get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


def _prepared_dir(gguf_path: Path) -> Path:
    st = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return home() / "prepared" / f"{gguf_path.stem}-{key}"


def prepare_gguf(gguf_path: Path, progress: bool = True) -> Path:
    """Dequantize ``gguf_path`` into an HF-style folder once; return the folder."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from .gguf_loader import load_gguf

    out = _prepared_dir(gguf_path)
    if (out / "READY").exists():
        return out
    if progress:
        print(f"preparing {gguf_path.name} (one-time dequantization) -> {out}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    cfg, sd = load_gguf(gguf_path, progress=progress)
    ModelArgs.from_hf_config(cfg)  # validate before writing anything large
    hf_cfg = ModelArgs.from_hf_config(cfg).to_hf_config()
    for k in ("bos_token_id", "eos_token_id"):
        if k in cfg:
            hf_cfg[k] = cfg[k]
    if cfg.get("attention_bias") and cfg["model_type"] != "qwen2":
        hf_cfg["attention_bias"] = True
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=1))
    if "eos_token_id" in cfg:
        (out / "generation_config.json").write_text(json.dumps({"eos_token_id": cfg["eos_token_id"]}))
    if hf_cfg["tie_word_embeddings"]:
        sd.pop("lm_head.weight", None)
    save_file(sd, str(out / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(str(out))
    (out / "READY").write_text(str(gguf_path.resolve()))
    return out


def resolve(spec: str, progress: bool = True) -> tuple[str, Path]:
    """Model spec -> (display name, HF-style folder). Pulls default models on first use."""
    default = find_default(spec)
    if default is not None:
        return default.name, prepare_gguf(pull(default.name, progress=progress), progress)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is a folder but has no config.json (expected a Hugging Face model folder)")
        return path.name, path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path}: expected a .gguf file or a Hugging Face model folder")
        return path.stem, prepare_gguf(path, progress)
    known = ", ".join(m.name for m in DEFAULT_MODELS)
    raise FileNotFoundError(f"unknown model {spec!r}: not a default model ({known}), "
                            f"not an existing folder, not a .gguf file")


def parse_level(spec: str) -> tuple[str, str | None]:
    """A chain level -> (model spec, quantization or None): ``"1.5b@int4"`` -> ``("1.5b", "int4")``.

    The ``@`` suffix is split off only when it is a valid scheme (see ``QuantScheme``), so a path
    that itself contains ``@`` still loads; a bad suffix on a spec that is not such a path is an error.
    """
    model, sep, suffix = spec.rpartition("@")
    if not sep:
        return spec, None
    try:
        QuantScheme.parse(suffix)
    except ValueError as e:
        if Path(spec).expanduser().exists():
            return spec, None
        raise ValueError(f"chain level {spec!r}: {e}") from None
    if not model.strip():
        raise ValueError(f"chain level {spec!r}: no model before '@'")
    return model.strip(), suffix.strip()


def load_model(spec: str, dtype: str | torch.dtype = "auto", device: str = "cpu", quant: str = "dense",
               progress: bool = True) -> LoadedModel:
    """``spec``: a model spec, optionally ``@quant`` (which wins over ``quant``, the default for
    specs without one). The LoadedModel's name carries the precision: ``qwen2.5-coder-1.5b@int4``."""
    model_spec, level_quant = parse_level(spec)
    scheme = QuantScheme.parse(level_quant if level_quant is not None else quant)
    name, folder = resolve(model_spec, progress)
    cfg = json.loads((folder / "config.json").read_text())
    args = ModelArgs.from_hf_config(cfg)
    tokenizer = Tokenizer.from_folder(folder, name)
    dt = parse_dtype(dtype)
    sd = LazyStateDict(folder)
    if scheme.is_dense:
        model = Transformer(args, sd, dtype=dt, device=device)
    else:
        model = load_quantized(folder, args, sd, scheme.weights, dt, device, label=f"{name}@{scheme.short()}",
                               progress=progress)
    if scheme.vocab is not None:
        untied = not args.tie_embeddings and "lm_head.weight" in sd
        ids = draft_vocab_ids(scheme.vocab, args.vocab_size, special_ids(tokenizer))
        model.restrict_head(ids, sd["lm_head.weight"] if untied else model.embed)
    if not (scheme.is_dense and scheme.vocab is None):
        name = f"{name}@{scheme.short()}"
    return LoadedModel(name=name, folder=folder, model=model, tokenizer=tokenizer)


def special_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids a restricted draft head always keeps: the tokenizer's added / special tokens and EOS ids."""
    added = getattr(tokenizer.hf, "added_tokens_decoder", None) or {}
    return {int(i) for i in added} | set(tokenizer.eos_ids) | set(getattr(tokenizer.hf, "all_special_ids", []))


def check_same_vocab(models: list[LoadedModel]) -> None:
    """A chain's levels must tokenize alike; fail at load time naming the first mismatching pair."""
    base = models[0]
    for other in models[1:]:
        if other.tokenizer.fingerprint() != base.tokenizer.fingerprint():
            raise ValueError(f"vocabulary mismatch: {base.name!r} ({len(base.tokenizer)} tokens) and "
                             f"{other.name!r} ({len(other.tokenizer)} tokens) do not share a tokenizer, "
                             f"so they cannot be levels of one chain")
