"""The native runtime against transformers, and the KV cache's rollback invariants."""

import pytest
import torch
from tiny import tiny_config, tiny_hf_model

from specrouter.model.args import ModelArgs
from specrouter.model.linear import DenseLinear
from specrouter.model.transformer import Transformer


def build(cfg, seed=0, dtype=torch.float32):
    hf = tiny_hf_model(cfg, seed)
    return hf, Transformer(ModelArgs.from_hf_config(cfg.to_dict()), hf.state_dict(), dtype=dtype)


@pytest.mark.parametrize("arch,tie", [("qwen2", False), ("qwen2", True), ("llama", False), ("mistral", True)])
def test_logits_match_transformers_fp32(arch, tie):
    hf, ours = build(tiny_config(arch, tie=tie, layers=3))
    tok = torch.randint(0, 259, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(tok).logits
    cache = ours.new_cache(2, 64)
    # prefill in two chunks, then token by token: every path through the cache must agree
    out = torch.cat([ours(tok[:, :9], cache), ours(tok[:, 9:12], cache)]
                    + [ours(tok[:, i:i + 1], cache) for i in range(12, 17)], dim=1)
    assert (out - ref).abs().max().item() <= 1e-3
    assert cache.lengths == [17, 17]


def test_ragged_batch_equals_rows_alone():
    hf, m = build(tiny_config())
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 259, (1, 11), generator=g), torch.randint(0, 259, (1, 5), generator=g)
    cache = m.new_cache(2, 64)
    m(torch.stack([a[0, :6], b[0, :6] if b.shape[1] >= 6 else torch.cat([b[0], b[0, :1]])]), cache, n_new=[6, 4])
    # row 0 has 6 tokens, row 1 has 4; now ragged continuation: 5 more for row 0, 1 for row 1
    out = m(torch.stack([a[0, 6:11], torch.cat([b[0, 4:5], torch.zeros(4, dtype=torch.long)])]), cache,
            n_new=[5, 1])
    with torch.no_grad():
        ra, rb = hf(a).logits[0], hf(b[:, :5]).logits[0]
    assert (out[0] - ra[6:11]).abs().max() < 1e-4
    assert (out[1, 0] - rb[4]).abs().max() < 1e-4
    assert cache.lengths == [11, 5]


def test_rollback_then_refeed_reproduces_logits():
    _, m = build(tiny_config())
    tok = torch.randint(0, 259, (1, 12), generator=torch.Generator().manual_seed(2))
    cache = m.new_cache(1, 64)
    m(tok[:, :8], cache)
    first = m(tok[:, 8:12], cache)
    assert cache.lengths == [12]
    cache.rollback(0, 9)  # keep 9 tokens: the garbage past position 9 must be invisible
    again = m(tok[:, 9:12], cache)
    assert torch.allclose(again, first[:, 1:], atol=1e-5)
    with pytest.raises(ValueError):
        cache.rollback(0, 13)


def test_move_row_and_row_offset_forward():
    _, m = build(tiny_config())
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 259, (1, 7), generator=g), torch.randint(0, 259, (1, 7), generator=g)
    cache = m.new_cache(3, 64)
    m(a[:, :6], cache, row0=0)
    m(b[:, :6], cache, row0=2)  # a joining row prefilled alone in slot 2
    cache.move_row(2, 1)  # compaction: slot 2's row moves to slot 1
    out = m(torch.cat([a[:, 6:], b[:, 6:]]), cache)
    solo = m.new_cache(1, 64)
    m(b[:, :6], solo)
    assert torch.allclose(out[1], m(b[:, 6:], solo)[0], atol=1e-5)


def test_context_overflow_is_an_error():
    _, m = build(tiny_config())
    cache = m.new_cache(1, 8)
    with pytest.raises(ValueError, match="context"):
        m(torch.zeros(1, 9, dtype=torch.long), cache)


def test_packed_linear_matches_plain():
    from specrouter.model.linear import can_pack

    g = torch.Generator().manual_seed(4)
    assert can_pack(torch.float32) == torch.backends.mkldnn.is_available()
    for dtype in (torch.bfloat16, torch.float32):
        w = torch.randn(96, 64, generator=g).to(dtype)
        bias = torch.randn(96, generator=g).to(dtype)
        x = torch.randn(3, 5, 64, generator=g).to(dtype)
        fast, ref = DenseLinear(w, bias, pack=True), DenseLinear(w, bias, pack=False)
        # where this CPU cannot pack the dtype (bf16 on AVX2-only CPUs) the layer falls back to plain
        assert fast.packed == can_pack(dtype) and not ref.packed
        tol = 0 if dtype == torch.bfloat16 else 1e-4
        assert (fast(x).float() - ref(x).float()).abs().max() <= tol + 1e-2 * (dtype == torch.bfloat16)


def test_bf16_close_to_fp32():
    hf, m32 = build(tiny_config(), dtype=torch.float32)
    m16 = Transformer(m32.args, hf.state_dict(), dtype=torch.bfloat16)
    tok = torch.randint(0, 259, (1, 10), generator=torch.Generator().manual_seed(5))
    a, b = m32(tok, m32.new_cache(1, 32)), m16(tok, m16.new_cache(1, 32))
    assert (a.softmax(-1) - b.softmax(-1)).abs().max() < 0.05


@pytest.mark.parametrize("T,masked", [(1, False), (5, True)])
def test_few_query_attention_equals_fused_kernel(T, masked):
    """The CPU decode/verify path (two matmuls over grouped heads) against the fused kernel."""
    import torch.nn.functional as F

    from specrouter.model.transformer import few_query_attention

    g = torch.Generator().manual_seed(3)
    B, H, G, S, D = 3, 6, 2, 40, 16
    q, k, v = (torch.randn(shape, generator=g) for shape in ((B, H, T, D), (B, G, S, D), (B, G, S, D)))
    lengths = torch.tensor([S - T, 20, 7])  # ragged rows: each query sees its row's prefix + itself
    pos = lengths[:, None] + torch.arange(T)[None]  # [B, T]
    mask = (torch.arange(S)[None, None] <= pos[:, :, None])[:, None] if masked else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert (few_query_attention(q, k, v, mask) - ref).abs().max().item() <= 1e-5


def test_long_and_short_passes_agree():
    """A prefill longer than FEW_QUERIES (fused kernel) then short passes (matmul path) give the
    logits of one pass over everything."""
    from specrouter.model.transformer import FEW_QUERIES

    _, m = build(tiny_config(layers=2))
    n = FEW_QUERIES + 9
    tok = torch.randint(0, 259, (1, n + 3), generator=torch.Generator().manual_seed(4))
    whole = m(tok, m.new_cache(1, 64))
    cache = m.new_cache(1, 64)
    parts = torch.cat([m(tok[:, :n], cache), m(tok[:, n:n + 2], cache), m(tok[:, n + 2:], cache)], dim=1)
    assert (parts - whole).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_min_tokens_makes_a_tokens_logits_independent_of_pass_width(dtype):
    """With min_tokens=2 a token decoded alone gets bit for bit the logits it gets as row 0 of any
    wider pass (what exact speculative greedy decoding stands on), for each logits_for form; the
    padding leaves the cache's length, and what later passes see, unchanged."""
    _, m = build(tiny_config(layers=2, dim=64), dtype=dtype)
    tok = torch.randint(0, 259, (1, 30), generator=torch.Generator().manual_seed(5))
    cache = m.new_cache(1, 64)
    m(tok[:, :20], cache)

    def fresh(fn):
        out = fn()
        cache.rollback(0, 20)
        return out

    wide = [fresh(lambda T=T: m(tok[:, 20:20 + T], cache)[:, :1]) for T in range(2, 10)]
    assert all(torch.equal(w, wide[0]) for w in wide)
    alone = {"all": fresh(lambda: m(tok[:, 20:21], cache, min_tokens=2)),
             "last": fresh(lambda: m(tok[:, 20:21], cache, logits_for="last", min_tokens=2)),
             "pos": fresh(lambda: m(tok[:, 20:21], cache, logits_for=torch.zeros(1, 1, dtype=torch.long),
                                    min_tokens=2))}
    for form, out in alone.items():
        assert out.shape == (1, 1, 259), form
        assert torch.equal(out, wide[0]), form
    m(tok[:, 20:21], cache, min_tokens=2)
    assert cache.lengths == [21]
    after = m(tok[:, 21:23], cache)  # the padding column written at position 21 is overwritten
    cache.rollback(0, 20)
    ref = m(tok[:, 20:23], cache)[:, 1:]  # the same text fed as one pass
    tol = 1e-4 if dtype == torch.float32 else 0.1  # bf16 logits near 8 have a 1/16 ulp
    assert (after - ref).abs().max().item() <= tol
