"""Weight-only int8/int4: error bounds of the math, the packed kernels against a dequantized
reference, the packed-weight disk cache, level syntax, and lossless chains with quantized levels."""

import json

import pytest
import torch

from specrouter.model import quant as Q
from specrouter.model.linear import make_linear
from specrouter.model.loader import load_model, parse_level
from specrouter.model.quant import (Int4Linear, Int8Linear, QuantScheme, dequantize_int4, dequantize_int8,
                                    quantize_int4, quantize_int8)
from specrouter.model.quant_cache import cache_dir, quantized_linears
from specrouter.model.w8a8 import W8A8Linear


def weights(n, k, seed=0):
    """Rows and groups on very different scales, an all-zero row and a constant run of 256 inputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.logspace(-3, 1, n)[:, None]
    w[:, : k // 2] *= 0.1
    w[1] = 0
    w[2, :256] = 0.37
    return w


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_int8_error_within_half_step_per_row(scale_dtype):
    w = weights(48, 256)
    q, s = quantize_int8(w, scale_dtype)
    assert q.dtype == torch.int8 and s.dtype == scale_dtype and s.shape == (48,)
    assert q.min() >= -127 and q.max() <= 127
    err = (w - dequantize_int8(q, s)).abs().amax(dim=1)  # [N]
    # bf16 scales: the row max may land at 127 * (1 + 2^-8) steps and be clamped, still < half a step
    assert torch.all(err <= 0.5 * s.float() * (1 + 1e-5))
    assert err[1] == 0  # a zero row is exact
    assert torch.all(q.abs().amax(dim=1)[torch.arange(48) != 1] >= 126)  # the range is used


@pytest.mark.parametrize("group", [32, 64, 128, 256])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_int4_error_within_half_step_per_group(group, scale_dtype):
    w = weights(40, 512)
    q, s, z = quantize_int4(w, group, scale_dtype)
    assert q.dtype == torch.uint8 and q.min() >= 0 and q.max() <= 15
    assert s.shape == z.shape == (40, 512 // group) and s.dtype == z.dtype == scale_dtype
    err = (w - dequantize_int4(q, s, z)).abs().reshape(40, 512 // group, group).amax(dim=-1)  # [N, K/G]
    # half a step, plus (bf16 only) the scale's and zero's rounding carried across <= 8 steps
    slack = 0 if scale_dtype == torch.float32 else 8 * 2 ** -8 * s.float() + z.float().abs() * 2 ** -8
    assert torch.all(err <= 0.5 * s.float() * (1 + 1e-5) + slack)
    # asymmetric: each group's extremes map to (about) the ends of [0, 15]
    qg = q.reshape(40, 512 // group, group)
    varying = w.reshape(40, 512 // group, group).std(dim=-1) > 0
    assert torch.all(qg.amin(-1)[varying] <= 1) and torch.all(qg.amax(-1)[varying] >= 14)
    # the constant group and the zero row reproduce (almost) exactly
    assert err[1].max() == 0
    assert err[2, 0] <= 1e-6 + 0.37 * (0 if scale_dtype == torch.float32 else 2 ** -8)


def test_int4_needs_a_dividing_group():
    with pytest.raises(ValueError, match="does not divide"):
        quantize_int4(torch.randn(4, 96), 64)
    with pytest.raises(ValueError, match="group size"):
        QuantScheme("int4", group_size=48)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,group", [(96, 256, 128), (100, 96, 64), (24, 80, 32), (48, 512, 256)])
def test_quantized_linear_matches_dequantized_reference(kind, dtype, n, k, group):
    """The packed kernel computes x @ W_hat.T + b for the W_hat the pure functions define; odd N / K
    exercise the padding (N to 16, K to the group)."""
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    x = torch.randn(3, 5, k, generator=g).to(dtype)  # [B, T, K]
    if kind == "int8":
        lin = make_linear(w, b, "int8")
        assert isinstance(lin, Int8Linear)
        ref_w = dequantize_int8(*quantize_int8(w, dtype))
    else:
        lin = make_linear(w, b, "int4", group_size=group)
        assert isinstance(lin, Int4Linear)
        G = Q.pick_group_size(k, group)
        kp = -k % G
        wp = torch.nn.functional.pad(w.float(), (0, kp))
        ref_w = dequantize_int4(*quantize_int4(wp, G, dtype))[:, :k]
    ref = x.float() @ ref_w.T + b.float()  # [B, T, N]
    y = lin(x)
    assert y.shape == (3, 5, n) and y.dtype == dtype
    # fp32: accumulation order only; bf16: the kernels round the output (and int8 the activations'
    # products) to bf16, i.e. ~2^-8 relative to the output's scale
    tol = 1e-4 if dtype == torch.float32 else 2 ** -7
    assert (y.float() - ref).abs().max() <= tol * ref.abs().max()
    # and the quantization itself is not a no-op: the dense product differs
    assert (x.float() @ w.float().T + b.float() - ref).abs().max() > 0


@pytest.mark.parametrize("n,k", [(96, 256), (100, 96), (7, 40)])
def test_w8a8_linear_within_the_activation_rounding_bound(n, k):
    """w8a8 = int8 weights (the same per-channel math as int8) times activations rounded per row:
    against x @ W_hat.T + b, output (m, n) may move by at most half of row m's activation step times
    row n's |W_hat| sum; the step is row m's own range over 127 (7-bit, reduce_range), however
    different the other rows' ranges are."""
    g = torch.Generator().manual_seed(n * k)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    x = torch.randn(2, 3, k, generator=g) * torch.tensor([1.0, 50.0, 0.01])[:, None]  # rows of very different ranges
    x[1, 2] += 3.0  # and one off-centre row
    lin = make_linear(w, b, "w8a8")
    assert isinstance(lin, W8A8Linear) and lin.scales.dtype == torch.float32
    w_hat = dequantize_int8(*quantize_int8(w))
    ref = x @ w_hat.T + b  # [2, 3, N]
    y = lin(x)
    assert y.shape == (2, 3, n) and y.dtype == torch.float32
    step = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 127  # [2, 3, 1]: per row
    # plus fp32 rounding of the affine map and its inverse, relative to the row's offset
    bound = 0.5 * step * w_hat.abs().sum(1) * (1 + 1e-3) + 1e-5 * (x.abs().amax(-1, keepdim=True) * w_hat.abs().sum(1) + 1)
    err = (y - ref).abs()
    assert torch.all(err <= bound), float((err / bound).max())
    assert err.max() > 0  # activations really are quantized
    # a per-call range would have coarsened the 0.01-scale rows past that bound
    coarse = 0.5 * (x.max() - x.min()) / 127 * w_hat.abs().sum(1)
    assert torch.all(bound[:, 2] < coarse / 100)
    # each row is rounded on its own grid, alone or batched with rows 5000x larger
    assert torch.allclose(lin(x[0, 2:3]), y[0, 2:3], rtol=0, atol=float(bound[0, 2].max()))
    # a constant row is exact up to fp32 rounding (nothing left to round)
    c = torch.full((1, k), 0.7)
    assert torch.allclose(lin(c), c @ w_hat.T + b, rtol=1e-5, atol=1e-5)
    # bf16 models run it too (fp32 inside)
    assert lin(x.bfloat16()).dtype == torch.bfloat16


def test_scheme_strings_round_trip():
    assert QuantScheme.parse("int4") == QuantScheme("int4", 128, "int8")
    assert QuantScheme.parse("int4-g32-head=int4") == QuantScheme("int4", 32, "int4")
    assert QuantScheme.parse("int8") == QuantScheme("int8", 128, "int8")
    assert QuantScheme.parse("dense").is_dense and QuantScheme.parse(None).is_dense
    assert QuantScheme.parse("w8a8") == QuantScheme("w8a8", 128, "w8a8")
    for s in ["int4", "int4-g64", "int8-head=dense", "int4-head=int4", "dense", "int8-head=int4-g32",
              "w8a8", "w8a8-head=dense", "int4-head=w8a8"]:
        sch = QuantScheme.parse(s)
        assert QuantScheme.parse(sch.short()) == sch == QuantScheme.parse(str(sch))
    for bad in ["int3", "int4-g48", "int4-x", "int8-g32", "int4-head=fp8", "w8a8-g32"]:
        with pytest.raises(ValueError):
            QuantScheme.parse(bad)


def test_parse_level(tmp_path):
    assert parse_level("1.5b@int4") == ("1.5b", "int4")
    assert parse_level("1.5b") == ("1.5b", None)
    assert parse_level("/m/model.gguf@int8-head=dense") == ("/m/model.gguf", "int8-head=dense")
    odd = tmp_path / "model@v2"
    odd.mkdir()
    assert parse_level(str(odd)) == (str(odd), None)  # '@' in an existing path is not a suffix
    with pytest.raises(ValueError, match="unknown quantization"):
        parse_level("1.5b@int5")
    with pytest.raises(ValueError, match="no model"):
        parse_level("@int4")


@pytest.mark.parametrize("scheme", ["int4", "w8a8"])
def test_cache_round_trip(tiny_dir, monkeypatch, scheme):
    spec = f"{tiny_dir / 'target'}@{scheme}"
    first = load_model(spec, dtype="bf16", progress=False)
    assert first.name == f"target@{scheme}"
    folder = cache_dir(first.folder, QuantScheme.parse(scheme), torch.bfloat16, torch.device("cpu"))
    assert (folder / "READY").exists()

    def no_requantizing(*a, **k):
        raise AssertionError("the cached load quantized again")

    monkeypatch.setattr(Q, "quantize_int4", no_requantizing)
    monkeypatch.setattr(Q, "quantize_int8", no_requantizing)
    again = load_model(spec, dtype="bf16", progress=False)
    a, b = quantized_linears(first.model), quantized_linears(again.model)
    assert sorted(a) == sorted(b) and "lm_head" in a and "blocks.1.gate_up" in a
    for slot in a:
        sa, ma = a[slot].packed_state()
        sb, mb = b[slot].packed_state()
        assert ma == mb and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    tok = torch.randint(0, 259, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(first.model(tok, first.model.new_cache(2, 16)), again.model(tok, again.model.new_cache(2, 16)))
    # another scheme or dtype is another entry
    assert cache_dir(first.folder, QuantScheme.parse("int8"), torch.bfloat16, torch.device("cpu")) != folder
    assert cache_dir(first.folder, QuantScheme.parse("int4"), torch.float32, torch.device("cpu")) != folder


def test_quantized_model_close_to_dense(tiny_dir):
    """int8 logits sit much closer to the dense model's than int4's, and both keep fp32 logits."""
    dense = load_model(str(tiny_dir / "target"), dtype="fp32", progress=False).model
    tok = torch.randint(0, 259, (1, 24), generator=torch.Generator().manual_seed(1))
    ref = dense(tok, dense.new_cache(1, 32)).softmax(-1)
    tvd = {}
    for q in ("int8", "int4", "int4-head=int4"):
        m = load_model(f"{tiny_dir / 'target'}@{q}", dtype="fp32", progress=False).model
        out = m(tok, m.new_cache(1, 32))
        assert out.dtype == torch.float32
        tvd[q] = 0.5 * (out.softmax(-1) - ref).abs().sum(-1).mean().item()
    assert 0 < tvd["int8"] < tvd["int4"] / 3
    assert tvd["int4"] < 0.5


@pytest.mark.parametrize("chain", ["{t}@int4>{t}", "{t}@int8>{t}", "{d}@int4>{t}", "{t}@int4-g32-head=int4>{t}@int8",
                                   "{t}@w8a8>{t}", "{d}@w8a8>{t}@w8a8>{t}"])
def test_quantized_levels_are_lossless(tiny_dir, chain):
    """Greedy output of a chain with quantized levels equals its last level alone."""
    from specrouter.api import SpecRouter
    from specrouter.sampling import SamplingParams

    chain = chain.format(t=tiny_dir / "target", d=tiny_dir / "draft")
    last = chain.split(">")[-1]
    params = SamplingParams(max_new_tokens=32)
    prompts = ["def fib(n):", "hello hello hello", "The quick brown fox"]
    ref = SpecRouter.from_chain(last, dtype="fp32", progress=False).generate(prompts, params)
    sr = SpecRouter.from_chain(chain, dtype="fp32", progress=False, spec_len="fixed:4")
    assert len(sr.models) == chain.count(">") + 1  # the same folder in two precisions is two levels
    out = sr.generate(prompts, params)
    assert [o.tokens for o in out] == [r.tokens for r in ref]
    steps = sum(o.stats.steps for o in out)
    assert steps < sum(len(o.tokens) for o in out)  # the quantized draft was accepted at times


def test_agreement_and_overlap_math():
    from specrouter.bench.quant_eval import agreement_and_overlap, total_nll

    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    assert agreement_and_overlap(a, a) == (2, pytest.approx(2.0))
    b = torch.tensor([[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]])  # row 0: argmax moves, mass swaps
    agree, overlap = agreement_and_overlap(a, b)
    p = a[0].softmax(-1)
    assert agree == 1 and overlap == pytest.approx(1 + (1 - 0.5 * (p - p[[1, 0, 2]]).abs().sum().item()))
    assert total_nll(torch.zeros(4, 8), torch.arange(4)) == pytest.approx(4 * torch.log(torch.tensor(8.0)).item())


def test_quant_eval_on_tiny_models(tiny_dir, capsys):
    from specrouter.bench.quant_eval import evaluate, print_report, summarize
    from specrouter.bench.spec_bench import BenchPrompt

    base = load_model(str(tiny_dir / "target"), dtype="fp32", progress=False)
    same = load_model(str(tiny_dir / "target"), dtype="fp32", progress=False)
    q4 = load_model(f"{tiny_dir / 'target'}@int4", dtype="fp32", progress=False)
    prompts = [BenchPrompt("1", "coding", "def add(a, b):"), BenchPrompt("2", "chat", "Tell me a story"),
               BenchPrompt("3", "chat", "x" * 400)]  # the last one is over the prompt limit
    rows = summarize(evaluate(base, {"same": same, "q4": q4}, prompts, new_tokens=12, max_prompt_tokens=100,
                              log=lambda m: None))
    assert rows["same"]["greedy_agreement"] == 1 and rows["same"]["one_minus_tvd"] == pytest.approx(1)
    assert rows["same"]["ppl_drift"] == pytest.approx(0, abs=1e-9)
    assert rows["q4"]["positions"] == rows["same"]["positions"] <= 24
    assert set(rows["q4"]["agreement_by_category"]) == {"coding", "chat"}
    assert 0 < rows["q4"]["one_minus_tvd"] < 1 and rows["q4"]["ppl_drift"] != 0
    print_report({"target@int4": {"reference": "target", **rows["q4"]}})
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("target@int4") and json.loads(out[-1])["target@int4"]["positions"] == rows["q4"]["positions"]


def test_int4_layout_self_check(monkeypatch):
    """The once-per-device check run off-CPU accepts the real layout and rejects a scrambled one."""
    monkeypatch.setattr(Q, "_INT4_LAYOUT_CHECKED", set())
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    lin = Int4Linear.from_weight(w, None, 64)
    q, s, z = quantize_int4(w, 64, torch.bfloat16)
    Q._check_int4_layout(lin, q, s, z)
    assert Q._INT4_LAYOUT_CHECKED == {"cpu"}
    with pytest.raises(RuntimeError, match="does not match"):
        Q._check_int4_layout(lin, q.flip(1).contiguous(), s, z)


def test_quantized_copy_of_the_target_takes_its_prompt_kv(tiny_dir):
    """A quantized twin of the target is seeded with the target's prompt keys/values at admission
    (no prefill of its own), the seeded cache equals the target's, and output stays lossless."""
    from specrouter.api import SpecRouter
    from specrouter.sampling import SamplingParams

    t = tiny_dir / "target"
    sr = SpecRouter.from_chain(f"{t}@int4>{t}", dtype="fp32", progress=False, spec_len="fixed:3")
    q, target = sr.pool[f"{sr.levels[0]}"], sr.pool[sr.levels[-1]]
    assert q.twin is target
    other = SpecRouter.from_chain(f"{tiny_dir / 'draft'}@int4>{t}", dtype="fp32", progress=False)
    assert other.pool[other.levels[0]].twin is None  # another model's weights: no twin

    ids = sr.encode_prompt("The quick brown fox", chat=False)
    req = sr.engine.add(ids, SamplingParams(max_new_tokens=8))
    sr.engine._schedule()  # admission: the target prefills, the twin is seeded
    n = len(ids) - 1
    assert q.cache.lengths[0] == target.cache.lengths[0] == n
    for a, b in zip(q.cache.k + q.cache.v, target.cache.k + target.cache.v):
        assert torch.equal(a[0, :, :n], b[0, :, :n])
    while sr.engine.has_work():
        sr.engine.step()
    ref = SpecRouter.from_chain(str(t), dtype="fp32", progress=False).generate_ids([ids], SamplingParams(max_new_tokens=8))
    assert req.gen.tokens == ref[0].tokens
