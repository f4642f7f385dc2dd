"""Chains of three levels: lossless for the target (greedy and sampled, batch >= 2), caches in sync."""

import pytest
import torch
from stats import chi_square_pvalue
from test_engine import PROMPTS, D, T, _exact_joint, make_engine, models, target_only
from tiny import perturbed, tiny_config, tiny_hf_model

from specrouter.model.args import ModelArgs
from specrouter.model.transformer import Transformer
from specrouter.sampling import SamplingParams
from specrouter.speclen import FixedLength, HeuristicLength


def poor_draft():
    cfg = tiny_config()
    hf = tiny_hf_model(cfg, 0)
    return Transformer(ModelArgs.from_hf_config(cfg.to_dict()), perturbed(hf, 0.15, 7).state_dict(),
                       dtype=torch.float32)


D2 = poor_draft()
MODS = {"t": T, "d": D, "d2": D2}


@pytest.mark.parametrize("chain", [["ngram", "d", "t"], ["d2", "d", "t"], ["ngram", "d2", "d", "t"]])
@pytest.mark.parametrize("policy", [FixedLength(5), HeuristicLength()])
def test_greedy_identical_for_deep_chains(chain, policy):
    params = SamplingParams(max_new_tokens=40)
    ref = target_only(PROMPTS, params)
    eng = make_engine(chain, policy, mods=MODS, max_batch=3)
    gens = eng.generate(PROMPTS, params)
    assert [g.tokens for g in gens] == ref
    assert sum(g.stats.accepted for g in gens) > 0


def test_every_level_holds_a_prefix_of_the_committed_text():
    eng = make_engine(["ngram", "d2", "d", "t"], FixedLength(6), eos=frozenset(), mods=MODS, max_batch=4)
    reqs = [eng.add(p, SamplingParams(max_new_tokens=30, ignore_eos=True)) for p in PROMPTS]
    while eng.has_work():
        eng.step()
        for b, r in enumerate(eng.rows):
            assert eng.pool["t"].cache.lengths[b] == len(r.committed) - 1
            for name in ("d", "d2"):
                lv = eng.pool[name]
                n = lv.cache.lengths[b]
                assert n <= len(r.committed) - 1
                # what the level holds is the committed text: its logits there equal a fresh prefill's
                if n:
                    fresh = lv.model.new_cache(1, 512)
                    ref = lv.model(torch.tensor([r.committed[:n]]), fresh)[0, -1]
                    # re-feed the level's last cached token through its own cache row
                    lv.cache.rollback(b, n - 1)
                    got = lv.model(torch.tensor([[r.committed[n - 1]]]), lv.cache, row0=b)[0, -1]
                    assert torch.allclose(got, ref, atol=1e-4)
    assert all(len(r.gen.tokens) == 30 for r in reqs)


@pytest.mark.parametrize("chain", [["ngram", "d", "t"], ["d2", "d", "t"]])
def test_sampling_with_three_levels_follows_target(chain):
    V = 8
    t, d = models(vocab=V, noise=0.1, layers=1)
    _, d2 = models(vocab=V, noise=0.2, layers=1)
    params = SamplingParams(temperature=1.0, max_new_tokens=3, ignore_eos=True)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    joint = _exact_joint(t, prompt, params).flatten()
    eng = make_engine(chain, FixedLength(2), eos=frozenset(), max_batch=64, mods={"t": t, "d": d, "d2": d2},
                      vocab=V, max_seq_len=64, ngram=(2, 1))
    n = 3000
    gens = eng.generate([prompt] * n, [SamplingParams(**{**params.__dict__, "seed": i}) for i in range(n)])
    outs = torch.tensor([g.tokens[0] * V + g.tokens[1] for g in gens])
    assert sum(g.stats.accepted for g in gens) > n // 10
    assert chi_square_pvalue(torch.bincount(outs, minlength=V * V), joint) > 1e-3


def test_sampling_with_w8a8_levels_follows_target():
    """w8a8 copies as drafts (activations rounded to 7 bits per row, so q is far from p's copy):
    rejection sampling against the q each row actually drew from keeps the target's distribution,
    here with a w8a8 copy of the target below it and a w8a8 poor draft below that."""
    V = 8
    cfg = tiny_config(vocab=V, layers=1)
    hf = tiny_hf_model(cfg, 0)
    args = ModelArgs.from_hf_config(cfg.to_dict())
    t = Transformer(args, hf.state_dict(), dtype=torch.float32)
    tq = Transformer(args, hf.state_dict(), dtype=torch.float32, quant="w8a8")
    dq = Transformer(args, perturbed(hf, 0.2, 3).state_dict(), dtype=torch.float32, quant="w8a8")
    params = SamplingParams(temperature=1.0, max_new_tokens=3, ignore_eos=True)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    joint = _exact_joint(t, prompt, params).flatten()
    eng = make_engine(["d", "tq", "t"], FixedLength(2), eos=frozenset(), max_batch=64,
                      mods={"t": t, "tq": tq, "d": dq}, vocab=V, max_seq_len=64)
    n = 3000
    gens = eng.generate([prompt] * n, [SamplingParams(**{**params.__dict__, "seed": i}) for i in range(n)])
    outs = torch.tensor([g.tokens[0] * V + g.tokens[1] for g in gens])
    assert sum(g.stats.accepted for g in gens) > n // 10
    assert chi_square_pvalue(torch.bincount(outs, minlength=V * V), joint) > 1e-3
