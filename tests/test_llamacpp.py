"""The llama.cpp bench baseline: it is skipped (never fatal) where it cannot run, and on the real
0.5B GGUF it decodes greedily and deterministically from our prompt ids."""

import sys

import pytest

from specrouter.bench.llamacpp import LlamaCppBaseline, LlamaCppUnavailable, target_gguf


def test_non_gguf_target_is_unavailable(tiny_dir):
    with pytest.raises(LlamaCppUnavailable, match="not a GGUF"):
        target_gguf(str(tiny_dir / "target"))
    with pytest.raises(LlamaCppUnavailable, match="does not exist"):
        target_gguf("/nonexistent/model.gguf@int4")


def test_missing_package_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(LlamaCppUnavailable, match="pip install"):
        LlamaCppBaseline(tmp_path / "x.gguf", n_threads=1, eos_ids={0})


@pytest.mark.real
def test_real_05b_greedy_decode():
    pytest.importorskip("llama_cpp")
    from specrouter.model.loader import load_model

    gguf = target_gguf("0.5b@int4")  # the suffix is ignored: llama.cpp runs the file
    tok = load_model("0.5b", dtype="bf16", progress=False).tokenizer
    ids = tok.chat([{"role": "user", "content": "Write a Python function that adds two numbers."}])
    base = LlamaCppBaseline(gguf, n_threads=2, eos_ids=tok.eos_ids)
    (a, steps), = base([ids], 16)
    (b, _), = base([ids], 16)
    assert a == b and 0 < len(a) <= 16 and steps == len(a)
    assert "def" in tok.decode(a)
