"""The speculative loop: greedy output identical to the target alone, sampled output distributed
as the target's, batches with ragged acceptance, continuous batching and stops."""

import pytest
import torch
from stats import chi_square_pvalue
from tiny import perturbed, tiny_config, tiny_hf_model

from specrouter.drafters.model_level import ModelLevel
from specrouter.engine import SpeculativeEngine
from specrouter.router.fixed import FixedRouter
from specrouter.model.args import ModelArgs
from specrouter.sampling import SamplingParams, probs_from_logits
from specrouter.speclen import FixedLength, HeuristicLength


def models(vocab=259, noise=0.05, layers=2):
    cfg = tiny_config(vocab=vocab, layers=layers)
    hf = tiny_hf_model(cfg, 0)
    args = ModelArgs.from_hf_config(cfg.to_dict())
    from specrouter.model.transformer import Transformer
    t = Transformer(args, hf.state_dict(), dtype=torch.float32)
    d = Transformer(args, perturbed(hf, noise, 1).state_dict(), dtype=torch.float32)
    return t, d


T, D = models()
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3], [100, 50, 25], [7] * 20, list(range(60, 90))]


def make_engine(chain, policy=None, eos=frozenset([258]), max_batch=4, mods=None, vocab=259, max_seq_len=512,
                ngram=(3, 1)):
    """chain: level names lowest first; 't' is the target, 'd' the draft, 'ngram' the n-gram level."""
    mods = mods or {"t": T, "d": D}
    pool = {n: ModelLevel(mods[n], n, vocab, max_seq_len) for n in chain if n != "ngram"}
    if "ngram" in chain:
        pool["ngram"] = ngram
    router = FixedRouter(tuple(chain), policy or FixedLength(0 if len(chain) == 1 else 4))
    return SpeculativeEngine(pool, chain[-1], router, eos, max_seq_len=max_seq_len, max_batch=max_batch)


def target_only(prompts, params):
    return [g.tokens for g in make_engine(["t"]).generate(prompts, params)]


@pytest.mark.parametrize("drafter,policy,max_batch", [
    ("model", FixedLength(1), 1), ("model", FixedLength(4), 4), ("model", FixedLength(7), 2),
    ("model", HeuristicLength(), 4), ("ngram", FixedLength(3), 4), ("ngram", HeuristicLength(2, 1, 6), 3),
])
def test_greedy_equals_target_only(drafter, policy, max_batch):
    params = SamplingParams(max_new_tokens=40)
    ref = target_only(PROMPTS, params)
    eng = make_engine(["d", "t"] if drafter == "model" else ["ngram", "t"], policy, max_batch=max_batch)
    gens = eng.generate(PROMPTS, params)
    assert [g.tokens for g in gens] == ref
    total_acc = sum(g.stats.accepted for g in gens)
    assert total_acc > 0  # speculation actually happened
    assert sum(g.stats.steps for g in gens) < sum(len(g.tokens) for g in gens)
    # ragged acceptance inside the batch: rows accepted different numbers of drafts
    assert len({round(g.stats.acceptance_rate, 3) for g in gens}) > 1


def test_cache_invariants_after_every_step():
    eng = make_engine(["d", "t"], HeuristicLength(), eos=frozenset())
    reqs = [eng.add(p, SamplingParams(max_new_tokens=30, ignore_eos=True)) for p in PROMPTS]
    while eng.has_work():
        eng.step()
        for b, r in enumerate(eng.rows):
            assert r.slot == b
            assert eng.pool["t"].cache.lengths[b] == len(r.committed) - 1  # target: committed[:-1]
            assert eng.pool["d"].cache.lengths[b] <= len(r.committed) - 1  # drafter: a prefix, never more
    assert all(len(r.gen.tokens) == 30 and r.gen.finish_reason == "length" for r in reqs)


def test_continuous_batching_admits_and_aborts():
    params = SamplingParams(max_new_tokens=25, ignore_eos=True)
    ref = target_only(PROMPTS, params)
    eng = make_engine(["d", "t"], FixedLength(3), eos=frozenset(), max_batch=2)
    a, b = eng.add(PROMPTS[0], params), eng.add(PROMPTS[1], params)
    eng.step()
    c = eng.add(PROMPTS[2], params)  # waits: the batch is full
    assert c.slot is None and len(eng.rows) == 2
    eng.abort(b)
    eng.step()  # b leaves, c joins mid-flight
    assert b.gen.finish_reason == "abort" and c.slot is not None
    d = eng.add(PROMPTS[3], params)
    while eng.has_work():
        eng.step()
    assert a.gen.tokens == ref[0] and c.gen.tokens == ref[2] and d.gen.tokens == ref[3]


def test_eos_and_max_tokens_and_stop_callback():
    params = SamplingParams(max_new_tokens=12)
    ref = target_only([PROMPTS[0]], SamplingParams(max_new_tokens=12, ignore_eos=True))[0]
    eos = ref[5]
    eng = make_engine(["d", "t"], FixedLength(4), eos=frozenset([eos]))
    g = eng.generate([PROMPTS[0]], params)[0]
    assert g.tokens == ref[:ref.index(eos) + 1] and g.finish_reason == "stop"
    eng2 = make_engine(["d", "t"], FixedLength(4), eos=frozenset())
    g2 = eng2.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12), stop_checks=[lambda ids: len(ids) >= 3])[0]
    assert g2.tokens == ref[:3] and g2.finish_reason == "stop"


def test_prompt_longer_than_context_is_rejected():
    eng = make_engine(["t"], max_seq_len=16)
    with pytest.raises(ValueError, match="context"):
        eng.add(list(range(16)), SamplingParams())
    assert not eng.has_work()


def _exact_joint(model, prompt, params):
    """p(t1, t2) of the target under ``params``, by enumeration: [V, V]."""
    from specrouter.model.transformer import Transformer  # noqa: F401
    V = model.args.vocab_size
    p1 = probs_from_logits(model(torch.tensor([prompt]), model.new_cache(1, 64))[0, -1], params)
    rows = torch.tensor([prompt + [t] for t in range(V)])
    p2 = probs_from_logits(model(rows, model.new_cache(V, 64))[:, -1], params)
    return p1[:, None] * p2


@pytest.mark.parametrize("drafter,params", [
    ("model", SamplingParams(temperature=1.0, max_new_tokens=3, ignore_eos=True)),
    ("model", SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=3, ignore_eos=True)),
    ("ngram", SamplingParams(temperature=1.0, max_new_tokens=3, ignore_eos=True)),
])
def test_sampled_output_follows_target_distribution(drafter, params):
    V = 8
    t, d = models(vocab=V, noise=0.1, layers=1)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    joint = _exact_joint(t, prompt, params).flatten()
    chain = ["d", "t"] if drafter == "model" else ["ngram", "t"]
    eng = make_engine(chain, FixedLength(3), eos=frozenset(), max_batch=64, mods={"t": t, "d": d}, vocab=V,
                      max_seq_len=64, ngram=(2, 1))
    n = 4000
    plist = [SamplingParams(**{**params.__dict__, "seed": i}) for i in range(n)]
    gens = eng.generate([prompt] * n, plist)
    outs = torch.tensor([g.tokens[0] * V + g.tokens[1] for g in gens])
    assert sum(g.stats.accepted for g in gens) > n // (10 if drafter == "model" else 100)  # drafts accepted
    assert chi_square_pvalue(torch.bincount(outs, minlength=V * V), joint) > 1e-3


def test_same_seed_same_output():
    params = SamplingParams(temperature=0.9, max_new_tokens=20, seed=123)
    a = make_engine(["d", "t"], FixedLength(3)).generate([PROMPTS[0]], params)[0]
    b = make_engine(["d", "t"], FixedLength(3)).generate([PROMPTS[0]], params)[0]
    assert a.tokens == b.tokens


def _switching_router(explore):
    """An adaptive router over the candidates ``costmodel`` uses for the chain d>t — the chain, and
    the target alone — exploring a lot, so rows flip between drafting and not from step to step."""
    from specrouter.router.adaptive import AdaptiveRouter
    from specrouter.router.profiler import CostTable, Profiler
    from specrouter.router.similarity import Similarity

    prof = Profiler({"d": CostTable([[0.3, 0.3, 0.3, 0.3, 0.3]], (1,)), "t": CostTable([[1.0] * 5], (1,))},
                    prefill={"d": 0.001, "t": 0.002})
    return AdaptiveRouter(("d", "t"), prof, Similarity({("d", "t"): 0.6}), [("d", "t"), ("t",)],
                          explore=explore, probe_every=2)


def test_greedy_equals_target_only_when_rows_switch_between_drafting_and_not():
    params = SamplingParams(max_new_tokens=40)
    ref = target_only(PROMPTS, params)
    pool = {n: ModelLevel(m, n, 259, 512) for n, m in (("t", T), ("d", D))}
    router = _switching_router(explore=0.5)
    eng = SpeculativeEngine(pool, "t", router, frozenset([258]), max_seq_len=512, max_batch=4)
    gens = eng.generate(PROMPTS, params)
    assert [g.tokens for g in gens] == ref
    used = set().union(*(g.stats.chains for g in gens))
    assert used == {"d>t", "t"}  # both kinds of step happened


def test_sampled_output_follows_target_when_rows_switch_between_drafting_and_not():
    V = 8
    t, d = models(vocab=V, noise=0.1, layers=1)
    params = SamplingParams(temperature=1.0, max_new_tokens=3, ignore_eos=True)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    joint = _exact_joint(t, prompt, params).flatten()
    pool = {n: ModelLevel(m, n, V, 64) for n, m in (("t", t), ("d", d))}
    eng = SpeculativeEngine(pool, "t", _switching_router(explore=0.5), frozenset(), max_seq_len=64, max_batch=64)
    n = 3000
    gens = eng.generate([prompt] * n, [SamplingParams(**{**params.__dict__, "seed": i}) for i in range(n)])
    outs = torch.tensor([g.tokens[0] * V + g.tokens[1] for g in gens])
    assert sum(g.stats.accepted for g in gens) > n // 10
    assert chi_square_pvalue(torch.bincount(outs, minlength=V * V), joint) > 1e-3


def test_sampled_output_follows_target_distribution_when_drafts_stop_at_eos():
    """Drafting stops after a drafted EOS; sampled answers that end there still follow p exactly."""
    V = 8
    t, d = models(vocab=V, noise=0.1, layers=1)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    params = SamplingParams(temperature=1.0, max_new_tokens=4)  # budget for 3 drafts in the first step
    joint = _exact_joint(t, prompt, params)  # of the first two tokens
    eos = int(joint.sum(1).argsort()[-2])  # a likely first token: many answers end right there
    exp = joint.clone()
    exp[eos, 0], exp[eos, 1:] = joint[eos].sum(), 0.0  # an answer that starts with EOS is just (eos,)
    eng = make_engine(["d", "t"], FixedLength(3), eos=frozenset([eos]), max_batch=64, mods={"t": t, "d": d},
                      vocab=V, max_seq_len=64)
    n = 4000
    gens = eng.generate([prompt] * n, [SamplingParams(**{**params.__dict__, "seed": i}) for i in range(n)])
    outs = torch.tensor([g.tokens[0] * V + (g.tokens[1] if len(g.tokens) > 1 else 0) for g in gens])
    assert sum(g.tokens == [eos] for g in gens) > n // 20
    # an answer the draft ended at its first token: 1 drafted, not 3 (drafting stopped at the EOS)
    assert sum(g.tokens == [eos] and g.stats.drafted == 1 for g in gens) > n // 100
    assert chi_square_pvalue(torch.bincount(outs, minlength=V * V), exp.flatten()) > 1e-3
