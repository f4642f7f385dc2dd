"""Draft heads restricted to part of the vocabulary (``-vocab=N``): the head, loading, and losslessness."""

import pytest
import torch
from stats import chi_square_pvalue
from test_engine import PROMPTS, _exact_joint, make_engine, models, target_only
from tiny import byte_tokenizer, perturbed, save_folder, tiny_config, tiny_hf_model

from specrouter.api import SpecRouter
from specrouter.model.draft_vocab import VocabSubsetHead, draft_vocab_ids, is_restricted
from specrouter.model.loader import load_model
from specrouter.model.quant import QuantScheme
from specrouter.model.transformer import Transformer
from specrouter.sampling import SamplingParams
from specrouter.speclen import FixedLength


def tiny_pair(vocab=259, noise=0.05, layers=2, keep=None, always=()):
    """(target, draft) as in ``test_engine.models``; with ``keep`` the draft's head scores only ids
    [0, keep) plus ``always``."""
    from specrouter.model.args import ModelArgs

    cfg = tiny_config(vocab=vocab, layers=layers)
    hf = tiny_hf_model(cfg, 0)
    args = ModelArgs.from_hf_config(cfg.to_dict())
    sd = perturbed(hf, noise, 1).state_dict()
    t = Transformer(args, hf.state_dict(), dtype=torch.float32)
    d = Transformer(args, sd, dtype=torch.float32)
    if keep is not None:
        d.restrict_head(draft_vocab_ids(keep, vocab, always), sd["lm_head.weight"])
    return t, d


def test_ids_are_the_lowest_n_plus_specials_sorted_and_clipped():
    assert draft_vocab_ids(3, 10, [9, 1, 42]).tolist() == [0, 1, 2, 9]
    assert draft_vocab_ids(50, 10).tolist() == list(range(10))
    with pytest.raises(ValueError, match="at least one"):
        draft_vocab_ids(0, 10)


def test_scheme_parses_vocab_and_round_trips():
    s = QuantScheme.parse("int4-vocab=48k")
    assert (s.body, s.head, s.vocab) == ("int4", "int8", 49152)
    assert QuantScheme.parse(s.short()) == s and QuantScheme.parse(str(s)) == s
    assert s.weights == QuantScheme.parse("int4") and s.weights.vocab is None
    assert QuantScheme.parse("dense-vocab=100").short() == "dense-vocab=100"
    for bad in ("int4-vocab=0", "int4-vocab=ten", "int4-vocab="):
        with pytest.raises(ValueError, match="-vocab"):
            QuantScheme.parse(bad)
    with pytest.raises(ValueError, match="restrict_head"):  # the loader applies it (it knows the specials)
        t, _ = models(layers=1)
        Transformer(t.args, {}, quant="dense-vocab=10")


def test_restricted_head_scores_kept_ids_like_the_full_head_and_nothing_else():
    _, full_d = tiny_pair(layers=1)
    t, r = tiny_pair(layers=1, keep=100, always=[258])
    t = full_d
    assert is_restricted(r.lm_head) and not is_restricted(t.lm_head) and r.lm_head.n_kept == 101
    x = torch.tensor([[5, 17, 200, 3]])
    full = t(x, t.new_cache(1, 16))  # [1, 4, V]
    part = r(x, r.new_cache(1, 16))
    kept = torch.zeros(t.args.vocab_size, dtype=torch.bool)
    kept[r.lm_head.ids] = True
    assert part.shape == full.shape
    assert torch.isneginf(part[..., ~kept]).all()
    torch.testing.assert_close(part[..., kept], full[..., kept], rtol=1e-5, atol=1e-5)
    probs = torch.softmax(part, -1)
    assert torch.isfinite(probs).all() and probs[..., ~kept].eq(0).all()


def test_subset_head_rejects_bad_ids():
    inner = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="below 3"):
        VocabSubsetHead(inner, torch.tensor([0, 3]), 3)


@pytest.mark.parametrize("chain", [["d", "t"], ["ngram", "d", "t"], ["d2", "d", "t"]])
def test_greedy_with_restricted_drafts_equals_target_only(chain):
    """Target tokens outside a draft's kept ids (here ids >= 150 of 259) are rejected, never lost."""
    t, d = tiny_pair(keep=150, always=[258])
    _, d2 = tiny_pair(noise=0.15, keep=120)
    mods = {"t": t, "d": d, "d2": d2}
    params = SamplingParams(max_new_tokens=40)
    ref = target_only(PROMPTS, params)
    assert any(tok >= 150 for r in ref for tok in r)  # the restriction is exercised
    gens = make_engine(chain, FixedLength(4), mods=mods, max_batch=3).generate(PROMPTS, params)
    assert [g.tokens for g in gens] == ref
    assert sum(g.stats.accepted for g in gens) > 0


def test_sampling_with_restricted_drafts_follows_target():
    """3 levels, both below the target restricted (ids < 5 and < 4 of 8; the target's likeliest first
    token, 4 at p = 0.60, is one the lowest level cannot propose): the joint of the first two sampled
    tokens matches the target's exactly computed one (batch 64)."""
    V = 8
    t, d = tiny_pair(vocab=V, noise=0.1, layers=1, keep=5)
    _, d2 = tiny_pair(vocab=V, noise=0.2, layers=1, keep=4)
    params = SamplingParams(temperature=1.0, max_new_tokens=3, ignore_eos=True)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    joint = _exact_joint(t, prompt, params).flatten()
    jv = joint.view(V, V)
    assert jv[5:].sum() + jv[:5, 5:].sum() > 0.1  # the target often wants a token no draft can propose
    eng = make_engine(["d2", "d", "t"], FixedLength(2), eos=frozenset(), max_batch=64, vocab=V, max_seq_len=64,
                      mods={"t": t, "d": d, "d2": d2})
    n = 3000
    gens = eng.generate([prompt] * n, [SamplingParams(**{**params.__dict__, "seed": i}) for i in range(n)])
    outs = torch.tensor([g.tokens[0] * V + g.tokens[1] for g in gens])
    assert sum(g.stats.accepted for g in gens) > n // 10
    assert chi_square_pvalue(torch.bincount(outs, minlength=V * V), joint) > 1e-3


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tied")
    hf = tiny_hf_model(tiny_config(tie=True), seed=0)
    save_folder(hf, root / "target", byte_tokenizer())
    save_folder(perturbed(hf, 0.05, seed=1), root / "draft", byte_tokenizer())
    return root


@pytest.mark.parametrize("suffix", ["dense-vocab=100", "int8-vocab=100"])
@pytest.mark.parametrize("tied", [False, True])
def test_loaded_level_keeps_specials_and_generates_the_targets_text(tiny_dir, tied_dir, suffix, tied):
    root = tied_dir if tied else tiny_dir
    lm = load_model(f"{root / 'draft'}@{suffix}", dtype="fp32", progress=False)
    assert lm.name.endswith("@" + suffix) and is_restricted(lm.model.lm_head)
    ids = set(lm.model.lm_head.ids.tolist())
    assert ids == set(range(100)) | {256, 257, 258}  # the byte tokenizer's three special tokens
    full = load_model(f"{root / 'draft'}@{suffix.split('-')[0]}", dtype="fp32", progress=False).model
    x = torch.tensor([[10, 20, 30]])
    kept = sorted(ids)
    torch.testing.assert_close(lm.model(x, lm.model.new_cache(1, 8))[..., kept],
                               full(x, full.new_cache(1, 8))[..., kept], rtol=1e-5, atol=1e-5)
    params = SamplingParams(max_new_tokens=24)
    ref = SpecRouter.from_chain(str(root / "target"), dtype="fp32", progress=False).generate(["hello"], params)
    sr = SpecRouter.from_chain(f"{root / 'draft'}@{suffix}>{root / 'target'}", dtype="fp32", progress=False)
    assert sr.generate(["hello"], params)[0].tokens == ref[0].tokens


def test_a_restricted_target_is_refused(tiny_dir):
    with pytest.raises(ValueError, match="target .* part of the vocabulary"):
        SpecRouter.from_chain(f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}@dense-vocab=100", dtype="fp32",
                              progress=False)
