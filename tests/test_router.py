"""The adaptive router: closed-form latency model, lossless output under auto, adaptation to cost changes."""

import pytest

from specrouter.api import SpecRouter
from specrouter.router.adaptive import candidate_chains
from specrouter.router.latency import chain_latency, expected_tokens, expected_tokens_ngram
from specrouter.sampling import SamplingParams


def test_expected_tokens_closed_form():
    assert expected_tokens(0.0, 5) == pytest.approx(1.0)
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    assert expected_tokens(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    assert expected_tokens_ngram(0.5, 0.0, 4) == pytest.approx(1.0)  # no match, no gain
    assert expected_tokens_ngram(0.5, 1.0, 2) == pytest.approx(1 + 0.5 + 0.25)


def _costs(table):
    return lambda level, T: table[level] * (1 + 0.02 * (T - 1))


def test_latency_model_prefers_cheap_agreeing_drafts_and_falls_back_to_target():
    cost = _costs({"big": 1.0, "small": 0.2, "tiny": 0.05})
    good = lambda lo, up: 0.9  # noqa: E731
    bad = lambda lo, up: 0.1  # noqa: E731
    none = lambda up: 0.0  # noqa: E731
    alone, _ = chain_latency(("big",), cost, good, none)
    assert alone == pytest.approx(1.0)
    two, ks = chain_latency(("small", "big"), cost, good, none)
    assert two < 0.5 and ks[0] >= 3  # agreement 0.9 at 1/5 the cost: long drafts, > 2x faster
    three, ks3 = chain_latency(("tiny", "small", "big"), cost, good, none)
    assert three < two and len(ks3) == 2
    worse, _ = chain_latency(("small", "big"), cost, bad, none)
    assert worse > alone  # a poor draft loses to the target alone, so auto keeps "big" then
    assert set(candidate_chains(("ngram", "small", "big"))) == {
        ("big",), ("ngram", "big"), ("small", "big"), ("ngram", "small", "big")}


@pytest.fixture()
def auto(tiny_dir):
    def make(ngram=True, draft="draft", **kw):
        pool = ("ngram>" if ngram else "") + f"{tiny_dir / draft}>{tiny_dir / 'target'}"
        return SpecRouter.from_chain("auto", pool=pool, dtype="fp32", progress=False, **kw)
    return make


def test_auto_is_lossless_in_a_batch(auto, tiny_dir):
    target = SpecRouter.from_chain(str(tiny_dir / "target"), dtype="fp32", progress=False)
    prompts = ["hello hello hello", "def f(x): return x", "the cat sat on the mat, the cat"]
    params = SamplingParams(max_new_tokens=40)
    ref = [o.tokens for o in target.generate(prompts, params)]
    sr = auto(explore=0.3)  # explore a lot: every chain gets used, and none may change the output
    sr.router.explore_slack = float("inf")
    outs = sr.generate(prompts, params)
    assert [o.tokens for o in outs] == ref
    used = set()
    for o in outs:
        used |= set(o.stats.chains)
    assert len(used) >= 3


def test_router_switches_chain_when_a_level_slows_down(auto, tiny_dir):
    sr = auto(ngram=False, draft="close", explore=0.0)
    t, d = sr.pool[str(tiny_dir / "target")], sr.pool[str(tiny_dir / "close")]
    t.extra_delay_s = 0.1  # an expensive target: drafting with the (nearly free, faithful) draft pays off
    req = sr.engine.add(sr.encode_prompt("count: 1 2 3 4 5 6 7 8"), SamplingParams(max_new_tokens=400,
                                                                                   ignore_eos=True))
    chains = []
    for _ in range(12):
        sr.engine.step()
        chains.append(sr.router.current[0].chain)
    assert any(d.name in c for c in chains[-4:]), chains
    d.extra_delay_s = 0.4  # now the draft is slow: every chain through it loses
    sr.router.probe_every = sr.router.gap[0] = 1000  # probes are tested on their own below
    after = []
    for _ in range(10):
        sr.engine.step()
        after.append(sr.router.current[0].chain)
    switched = next(i for i, c in enumerate(after) if d.name not in c)
    assert switched <= 4, after
    assert all(d.name not in c for c in after[switched + 2:]), after
    sr.engine.abort(req)
    sr.engine.step()


class _Costs:
    """Profiler stand-in with fixed per-forward costs: the router only reads cost(level, B, T)."""

    def __init__(self, costs):
        self.costs = costs

    def cost(self, level, B, T):
        return self.costs[level] * (1 + 0.05 * (T - 1))


def test_router_probes_a_drafting_chain_when_the_target_has_decoded_alone_for_a_while():
    from specrouter.router.adaptive import AdaptiveRouter
    from specrouter.router.similarity import Similarity
    from specrouter.speculate import PairFeedback

    sim = Similarity({("d", "t"): 0.5})
    router = AdaptiveRouter(("d", "t"), _Costs({"d": 0.2, "t": 1.0}), sim, explore=0.0, probe_every=4)
    router.add_row(0)
    for _ in range(10):  # the row's draft keeps failing: the target decodes alone, with sparse probes
        plan = router.plan(0)
        if len(plan.chain) > 1:
            router.observe(PairFeedback(0, "d", "t", plan.ks[-1], 0, tvd=[0.95] * plan.ks[-1]))
    chains = []
    for _ in range(40):
        plan = router.plan(0)
        chains.append(len(plan.chain))
        if len(plan.chain) > 1:
            router.observe(PairFeedback(0, "d", "t", plan.ks[-1], 0, tvd=[0.95] * plan.ks[-1]))
    probes = [i for i, n in enumerate(chains) if n > 1]
    assert 2 <= len(probes) <= 4, chains  # probes happen, and back off (gaps 4, 8, 16, ... alone steps)
    assert all(b - a > 4 for a, b in zip(probes, probes[1:]))
    chains = []
    for _ in range(60):  # the draft recovers: a probe sees full acceptance and the row drafts again
        plan = router.plan(0)
        chains.append(len(plan.chain))
        if len(plan.chain) > 1:
            router.observe(PairFeedback(0, "d", "t", plan.ks[-1], plan.ks[-1], tvd=[0.01] * plan.ks[-1]))
    assert chains[-10:] == [2] * 10, chains


def _rounds(sink, slot, lower, upper, n, k, acc):
    from specrouter.speculate import PairFeedback
    for _ in range(n):
        sink(PairFeedback(slot, lower, upper, k, acc, tvd=[0.0] * k))


def test_a_row_transfers_acceptance_through_a_third_level():
    """alpha(d, t) for a row that only verified d > m > t: the product of its two hops; other rows
    keep the prior; direct evidence wins once present."""
    from specrouter.router.similarity import Similarity

    sim = Similarity({("d", "t"): 0.3, ("d", "m"): 0.3, ("m", "t"): 0.3})
    sim.add_row(0)
    sim.add_row(1)
    _rounds(sim.observe, 0, "d", "m", 10, 4, 3)  # 3 of 4 accepted, then a rejection: alpha = 3 / 4
    _rounds(sim.observe, 0, "m", "t", 10, 10, 9)  # alpha = 9 / 10
    assert sim.alpha("d", "m", 0) == pytest.approx(0.75) and sim.alpha("m", "t", 0) == pytest.approx(0.9)
    assert sim.alpha("d", "t", 0) == pytest.approx(0.75 * 0.9)
    assert sim.alpha("d", "t", 1) == pytest.approx(0.3)  # row 1 saw nothing: the prior
    _rounds(sim.observe, 0, "d", "t", 10, 4, 1)  # direct evidence on the pair itself: alpha = 1 / 2
    assert sim.alpha("d", "t", 0) == pytest.approx(0.5)


def test_router_tries_the_direct_pair_that_the_three_level_chain_implies():
    """A row that drafted d > m > t at high acceptance switches to d > t (m costs 0.8 of the target)
    on the transferred estimate, though the prior says d and t rarely agree."""
    from specrouter.router.adaptive import AdaptiveRouter
    from specrouter.router.similarity import Similarity

    sim = Similarity({("d", "t"): 0.2, ("d", "m"): 0.95, ("m", "t"): 0.97})
    router = AdaptiveRouter(("d", "m", "t"), _Costs({"d": 0.05, "m": 0.8, "t": 1.0}), sim, explore=0.0)
    router.add_row(0)
    assert router.plan(0).chain == ("d", "m", "t")
    _rounds(router.observe, 0, "d", "m", 8, 6, 5)
    _rounds(router.observe, 0, "m", "t", 8, 30, 29)
    assert router.plan(0).chain == ("d", "t")


def test_router_weighs_the_catch_up_of_a_level_that_has_not_seen_the_prompt():
    """A cheap, faithful draft wins on a short prompt; on a 2,000-token prompt with a short budget its
    prefill outweighs the savings and the target decodes alone; once caught up it drafts again."""
    from specrouter.router.adaptive import AdaptiveRouter
    from specrouter.router.profiler import CostTable, Profiler
    from specrouter.router.similarity import Similarity
    from specrouter.speculate import RowContext

    tables = {"d": CostTable([[0.2, 0.21, 0.22, 0.25, 0.3]], (1,)), "t": CostTable([[1.0, 1.0, 1.05, 1.1, 1.2]], (1,))}
    prof = Profiler(tables, prefill={"d": 0.01, "t": 0.02})
    assert prof.prefill_cost("d", 2000) == pytest.approx(20.0)
    router = AdaptiveRouter(("d", "t"), prof, Similarity({("d", "t"): 0.8}), explore=0.0)
    router.add_row(0)
    assert router.plan(0, RowContext({"d": 30}, 128)).chain == ("d", "t")
    assert router.plan(0, RowContext({"d": 2000}, 16)).chain == ("t",)
    assert router.plan(0, RowContext({"d": 2000}, 100_000)).chain == ("d", "t")  # amortized away
    assert router.plan(0, RowContext({"d": 1}, 16)).chain == ("d", "t")
    prof.observe("d", 1, 500, 500 * 0.03)  # a slower catch-up pass observed: the rate moves toward it
    assert 0.01 < prof.prefill["d"] < 0.03


def test_cost_table_interpolates_and_tracks_a_slower_machine():
    from specrouter.router.profiler import CostTable

    table = CostTable([[1.0, 1.1, 1.2, 1.6, 2.4]], (1,), ema=0.3)  # T grid 1, 2, 4, 8, 16
    assert table(1, 3) == pytest.approx(1.15)
    assert table(1, 32) > table(1, 16)  # extrapolates past the grid
    for _ in range(12):  # the machine got twice as slow: observed timings are 2x the table
        table.observe(1, 1, 2.0 * 1.0)
    assert table(1, 1) == pytest.approx(2.0, rel=0.05)
    assert table(1, 8) > 1.6 * 1.15  # cells the engine did not use moved too


def test_profiler_prices_a_padded_one_token_pass_as_the_two_token_pass_it_runs():
    """The exact target pads one-token passes to two columns: target-alone decoding costs a 2-token
    pass, so the router must predict (and learn) that, not the unpadded 1-token cell."""
    from types import SimpleNamespace

    from specrouter.router.adaptive import AdaptiveRouter
    from specrouter.router.profiler import CostTable, Profiler
    from specrouter.router.similarity import Similarity

    target = SimpleNamespace(min_tokens=1)
    tables = {"d": CostTable([[0.2, 0.21, 0.22, 0.25, 0.3]], (1,)), "t": CostTable([[1.0, 1.6, 1.7, 1.8, 2.0]], (1,))}
    prof = Profiler(tables, levels={"t": target, "d": SimpleNamespace(min_tokens=1)})
    router = AdaptiveRouter(("d", "t"), prof, Similarity({("d", "t"): 0.8}), explore=0.0)
    assert prof.cost("t", 1, 1) == pytest.approx(1.0)
    assert router.predict(("t",))[0] == pytest.approx(1.0)
    target.min_tokens = 2  # what SpeculativeEngine(exact=True) sets after calibration
    assert prof.cost("t", 1, 1) == pytest.approx(1.6) and prof.cost("t", 1, 4) == pytest.approx(1.7)
    assert router.predict(("t",))[0] == pytest.approx(1.6)
    assert prof.cost("d", 1, 1) == pytest.approx(0.2)  # unpadded levels unchanged
    prof.observe("t", 1, 1, 3.2)  # a padded one-token pass took 2x: the 2-token cell learns it
    assert prof.tables["t"].cost[0][1] > 1.6 and prof.tables["t"].cost[0][0] < 1.0 * 1.3


def test_profile_is_cached_on_disk(tiny_dir, tmp_path):
    from specrouter.drafters.model_level import ModelLevel
    from specrouter.model.loader import load_model
    from specrouter.router.profiler import Profiler

    lm = load_model(str(tiny_dir / "target"), dtype="fp32", progress=False)
    lv = ModelLevel(lm.model, "t", 259, 128)
    p1 = Profiler.calibrate({"t": lv}, max_batch=2, cache_dir=tmp_path, ctx=32, repeats=1, progress=False)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and "fp32" not in files[0].name and "float32" in files[0].name
    p2 = Profiler.calibrate({"t": lv}, max_batch=2, cache_dir=tmp_path, ctx=32, repeats=1, progress=False)
    assert p2.tables["t"].cost == p1.tables["t"].cost
    assert p2.prefill == p1.prefill and p1.prefill["t"] > 0  # the long-pass rate is cached too
    assert p1.cost("t", 2, 1) > 0
    lv.min_tokens = 2  # the exact target's padding, set by the engine after calibration, is seen live
    assert p1.cost("t", 1, 1) == p1.cost("t", 1, 2)


def test_row_keeps_its_chain_unless_another_is_cheaper_by_the_margin():
    """Near-equal predictions (closer than the model's error) do not flip a row's chain; a clear
    difference does, and a row returns to its chain after an exploration step."""
    from specrouter.router.adaptive import AdaptiveRouter
    from specrouter.router.similarity import Similarity

    costs = _Costs({"d": 0.2, "e": 0.21, "t": 1.0})
    sim = Similarity({("d", "t"): 0.8, ("e", "t"): 0.8, ("d", "e"): 0.8})
    router = AdaptiveRouter(("d", "e", "t"), costs, sim, [("d", "t"), ("e", "t")], explore=0.0)
    router.add_row(0)
    router.add_row(1)
    assert router.plan(0).chain == ("d", "t")
    costs.costs["d"] = 0.215  # e > t is now predicted a little cheaper: within the margin
    assert router.plan(0).chain == ("d", "t")
    assert router.plan(1).chain == ("e", "t")  # a new row picks on cost alone
    costs.costs["d"] = 0.4  # now clearly dearer: switch
    assert router.plan(0).chain == ("e", "t")
    costs.costs["d"] = 0.22  # near again (explorable), though not cheaper
    router.explore, router.rng.random = 1.0, lambda: 0.0  # the next step explores
    assert router.plan(0).chain == ("d", "t")
    router.explore = 0.0
    assert router.plan(0).chain == ("e", "t")  # back to the chain chosen on cost
    with pytest.raises(ValueError, match="switch_margin"):
        AdaptiveRouter(("d", "t"), costs, sim, switch_margin=1.0)


def test_exploration_skips_candidates_whose_catch_up_is_expensive():
    """Exploring a chain whose draft has not seen a 2,000-token prompt would pay its prefill: only
    candidates predicted within explore_slack of the best are explored."""
    from specrouter.router.adaptive import AdaptiveRouter
    from specrouter.router.profiler import CostTable, Profiler
    from specrouter.router.similarity import Similarity
    from specrouter.speculate import RowContext

    tab = lambda c: CostTable([[c, c * 1.05, c * 1.1, c * 1.2, c * 1.4]], (1,))  # noqa: E731
    prof = Profiler({"d": tab(0.2), "e": tab(0.21), "f": tab(0.2), "t": tab(1.0)},
                    prefill={"d": 0.01, "e": 0.01, "f": 0.01, "t": 0.02})
    ctx = RowContext({"d": 1, "e": 1, "f": 2000}, 128)  # f never saw the prompt: 20 s of prefill
    cands = [("d", "t"), ("e", "t"), ("f", "t"), ("t",)]
    seen = set()
    for slack in (0.25, float("inf")):
        sim = Similarity({(lo, "t"): 0.8 for lo in "def"})
        router = AdaptiveRouter(("d", "e", "f", "t"), prof, sim, cands, explore=1.0, explore_slack=slack)
        router.add_row(0)
        seen = {router.plan(0, ctx).chain for _ in range(40)}
        if slack == 0.25:
            assert seen == {("e", "t")}, seen  # the one alternative within 25 % of d > t
    assert ("f", "t") in seen and ("t",) in seen  # unbounded, exploration pays f's prefill too
