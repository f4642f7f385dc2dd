"""Packed quantized weights on disk: a model is quantized once per scheme, later loads read the
kernel-ready layout directly.

Boundary: given an HF-style folder (what ``loader.resolve`` returns for any source: HF folder or
prepared GGUF) and a ``QuantScheme``, return a quantized ``Transformer``. The math lives in
``quant.py``; which matmuls exist lives in ``transformer.linear_slots``.

Layout: ``$SPECROUTER_HOME/quantized/<folder name>-<key>/model.safetensors`` (+ ``READY``) holding
* for each quantized slot (``blocks.3.qkv``, ``lm_head``…) its ``packed_state()`` tensors, named
  ``<slot>.<buffer>``, and its metadata in the file's JSON header (``__manifest__``);
* every other tensor the model reads (embedding, norms, a dense head), under its HF name, already
  in the compute dtype, so a cached load never opens the (often fp32) source weights.
The key hashes the source folder (path, sizes, mtimes), the canonical scheme, the compute dtype,
the device type and the torch version: the int4 layout is the kernel's own, which differs between
CPU and CUDA and may change between releases. A stale entry is never reused, only orphaned.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from .args import ModelArgs
from .quant import Int4Linear, Int8Linear, QuantScheme
from .registry import home
from .transformer import Transformer, linear_slots
from .w8a8 import W8A8Linear

_LAYER = re.compile(r"model\.layers\.(\d+)\.")
PACKED_LINEARS: dict[str, type[torch.nn.Module]] = {"int8": Int8Linear, "int4": Int4Linear, "w8a8": W8A8Linear}


def linear_from_packed(tensors: dict[str, torch.Tensor], meta: dict) -> torch.nn.Module:
    """Rebuild a quantized linear from ``packed_state()`` output (the disk cache's unit)."""
    try:
        cls = PACKED_LINEARS[meta["kind"]]
    except KeyError:
        raise ValueError(f"unknown packed linear kind {meta.get('kind')!r}") from None
    return cls.from_packed(tensors, meta)



def cache_dir(folder: Path, scheme: QuantScheme, dtype: torch.dtype, device: torch.device) -> Path:
    folder = Path(folder).resolve()
    parts = [str(folder), str(scheme), str(dtype), device.type, torch.__version__]
    for f in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]
    return home() / "quantized" / f"{folder.name}-{str(scheme).replace('=', '')}-{key}"


class _Recording(Mapping):
    """Wraps a state dict: remembers which names were read and reports per-layer progress."""

    def __init__(self, sd: Mapping, label: str, n_layers: int, progress: bool):
        self.sd, self.label, self.n_layers, self.progress = sd, label, n_layers, progress
        self.read: list[str] = []
        self._layer, self._t0 = -1, time.perf_counter()

    def __getitem__(self, key):
        m = _LAYER.match(key)
        if self.progress and m and int(m.group(1)) != self._layer:
            self._layer = int(m.group(1))
            print(f"\r  quantizing {self.label}: layer {self._layer + 1}/{self.n_layers} "
                  f"({time.perf_counter() - self._t0:.0f}s)", end="", file=sys.stderr, flush=True)
        self.read.append(key)
        return self.sd[key]

    def __iter__(self):
        return iter(self.sd)

    def __len__(self):
        return len(self.sd)

    def __contains__(self, key):
        return key in self.sd


def quantized_linears(model: Transformer) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, tuple(PACKED_LINEARS.values()))}


def save_quantized(model: Transformer, source: Mapping[str, torch.Tensor], read: list[str], path: Path) -> None:
    """Write ``model``'s quantized slots plus every other tensor it read from ``source``."""
    from safetensors.torch import save_file

    slots = linear_slots(model.args, untied_head=not model.args.tie_embeddings and "lm_head.weight" in source)
    tensors, manifest, consumed = {}, {}, set()
    for slot, mod in quantized_linears(model).items():
        state, meta = mod.packed_state()
        manifest[slot] = meta
        tensors.update({f"{slot}.{k}": v.detach().contiguous().cpu() for k, v in state.items()})
        consumed.update(slots[slot][0] + slots[slot][1])
    consumed.discard("model.embed_tokens.weight")  # the lookup table is always needed as such
    for name in dict.fromkeys(read):  # ordered, unique
        if name not in consumed:
            tensors[name] = source[name].to(model.dtype).contiguous()
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f"model.safetensors.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"__manifest__": json.dumps(manifest)})
    os.replace(tmp, path / "model.safetensors")
    (path / "READY").write_text(json.dumps({"scheme": str(model.quant), "dtype": str(model.dtype)}))


def load_cached(path: Path, args: ModelArgs, scheme: QuantScheme, dtype: torch.dtype,
                device: torch.device) -> Transformer:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt", device=str(device)) as f:
        manifest = json.loads(f.metadata()["__manifest__"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    linears = {}
    for slot, meta in manifest.items():
        prefix = slot + "."
        state = {k[len(prefix):]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        linears[slot] = linear_from_packed(state, meta)
    return Transformer(args, tensors, dtype=dtype, device=device, quant=scheme, linears=linears)


def load_quantized(folder: Path, args: ModelArgs, source: Mapping[str, torch.Tensor], scheme: QuantScheme,
                   dtype: torch.dtype, device: str | torch.device = "cpu", label: str = "",
                   progress: bool = True) -> Transformer:
    """A quantized Transformer of the model in ``folder``: from the cache when present, else built
    from ``source`` (the folder's state dict), then cached."""
    device = torch.device(device)
    path = cache_dir(folder, scheme, dtype, device)
    if (path / "READY").exists():
        return load_cached(path, args, scheme, dtype, device)
    t0 = time.perf_counter()
    rec = _Recording(source, f"{label or folder.name} -> {scheme}", args.n_layers, progress)
    model = Transformer(args, rec, dtype=dtype, device=device, quant=scheme)
    save_quantized(model, source, rec.read, path)
    if progress:
        print(f"\r  quantized {label or folder.name} -> {scheme} in {time.perf_counter() - t0:.0f}s, "
              f"cached at {path}", file=sys.stderr, flush=True)
    return model
