"""The cost band: the draft lengths the profiled costs allow, and DSDE moving within it
(``dsde+cost``; ``dsde`` under the adaptive router)."""

import pytest
from test_engine import PROMPTS, D, T, target_only

from specrouter.drafters.model_level import ModelLevel
from specrouter.dsde import DSDELength
from specrouter.engine import SpeculativeEngine
from specrouter.router.adaptive import AdaptiveRouter
from specrouter.router.latency import chain_latency, length_band, top_pair_curve
from specrouter.router.profiler import CostTable, Profiler
from specrouter.router.similarity import Similarity
from specrouter.sampling import SamplingParams
from specrouter.speculate import PairFeedback

COSTS = {"n": 0.02, "d": 0.1}  # seconds per one-token pass; the target below: 1 + 0.02 T


def cost(level, T):
    return COSTS[level] * (1 + 0.05 * (T - 1)) if level in COSTS else 1.0 + 0.02 * T


def no_match(_):
    return 0.0


def test_band_holds_the_near_optimal_lengths_and_moves_down_with_acceptance():
    for a in (0.6, 0.8, 0.95):
        curve = top_pair_curve(("d", "t"), cost, lambda lo, up: a, no_match, 12)
        tau, ks = chain_latency(("d", "t"), cost, lambda lo, up: a, no_match, 12)
        assert min(curve) == pytest.approx(tau) and curve.index(min(curve)) + 1 == ks[-1]
        assert length_band(curve, 0.0) == (ks[-1], ks[-1])
        lo, hi = length_band(curve, 0.05)
        assert lo <= ks[-1] <= hi
        assert all(curve[k - 1] <= 1.05 * tau for k in range(lo, hi + 1))
        assert lo == 1 or curve[lo - 2] > 1.05 * tau
        assert hi == 12 or curve[hi] > 1.05 * tau
    weak = length_band(top_pair_curve(("d", "t"), cost, lambda lo, up: 0.6, no_match, 12), 0.05)
    strong = length_band(top_pair_curve(("d", "t"), cost, lambda lo, up: 0.95, no_match, 12), 0.05)
    assert weak[1] < strong[0], (weak, strong)  # a weak draft: short lengths; a strong one: long
    # deeper chains: the top pair's curve stands on the sub-chain's best latency
    alpha = {("n", "d"): 0.7, ("d", "t"): 0.9, ("ngram", "t"): 0.8}
    a3 = lambda lo, up: alpha[(lo, up)]  # noqa: E731
    assert min(top_pair_curve(("n", "d", "t"), cost, a3, no_match)) == \
        pytest.approx(chain_latency(("n", "d", "t"), cost, a3, no_match)[0])
    assert min(top_pair_curve(("ngram", "t"), cost, a3, lambda up: 0.5)) == \
        pytest.approx(chain_latency(("ngram", "t"), cost, a3, lambda up: 0.5)[0])
    with pytest.raises(ValueError):
        length_band([], 0.05)
    with pytest.raises(ValueError):
        length_band([1.0], -0.1)
    with pytest.raises(ValueError):
        top_pair_curve(("t",), cost, a3, no_match)


def fb(kl, n_drafted, n_accepted):
    return PairFeedback(0, "d", "t", n_drafted, n_accepted, tvd=[min(1.0, x) for x in kl], kl=list(kl))


def test_dsde_moves_within_the_cost_band():
    pol = DSDELength(min_len=1, max_len=12, initial=4, warmup=3)
    pol.add_row(0)
    pol.set_band(0, 6, 10)
    assert pol.propose(0) == 6  # warm-up length 4, clipped into the band
    for acc in (1, 3, 0):  # a hard start: the request's own bound would be 3 + 2 = 5
        pol.observe(0, fb([0.05] * (acc + 1), 6, acc))
    assert pol.rows[0]["hi"] == 5
    pol.observe(0, fb([0.05, 3.0], 6, 1))  # a divergence spike: s ~ 0, the plain rule says min_len
    assert pol.propose(0) == 6  # the band's floor: a short step would pay a target pass for ~2 tokens
    plain = DSDELength(min_len=1, max_len=12, initial=4, warmup=3)
    plain.add_row(0)
    for acc in (1, 3, 0):
        plain.observe(0, fb([0.05] * (acc + 1), 4, acc))
    plain.observe(0, fb([0.05, 3.0], 6, 1))
    assert plain.propose(0) <= 2
    easy = DSDELength(min_len=1, max_len=12, initial=4, warmup=3)
    easy.add_row(0)
    for _ in range(6):
        easy.observe(0, fb([0.01] * 4, 4, 4))
    easy.set_band(0, 1, 12)
    k_free = easy.propose(0)
    easy.set_band(0, 2, 3)  # costs say a long draft does not pay: the band caps a stable row
    assert k_free > 3 and easy.propose(0) == 3
    small = DSDELength(min_len=1, max_len=4, initial=2, warmup=1)
    small.add_row(0)
    small.set_band(0, 6, 10)
    assert small.propose(0) == 4  # the request's own max_len still holds
    small.observe(0, fb([0.01] * 2, 2, 2))
    assert small.propose(0) == 4
    with pytest.raises(ValueError):
        small.set_band(0, 3, 2)


def _router(alpha, policy, cand=(("d", "t"),)):
    prof = Profiler({"d": CostTable([[0.1, 0.1, 0.11, 0.12, 0.15]], (1,)),
                     "t": CostTable([[1.0, 1.02, 1.04, 1.1, 1.3]], (1,))}, prefill={"d": 0.001, "t": 0.002})
    return AdaptiveRouter(("d", "t"), prof, Similarity({("d", "t"): alpha}), list(cand), explore=0.0,
                          length_policy=policy)


@pytest.mark.parametrize("alpha", [0.5, 0.95])
def test_adaptive_router_hands_dsde_the_profiled_band(alpha):
    pol = DSDELength(min_len=1, max_len=12, initial=4, warmup=3)
    router = _router(alpha, pol)
    router.add_row(0)
    plan = router.plan(0)
    curve = top_pair_curve(("d", "t"), lambda lv, T: router.profiler.cost(lv, 1, T),
                           lambda lo, up: alpha, no_match, router.k_max)
    band = length_band(curve, router.band_slack)
    assert pol.rows[0]["band"] == band
    assert band[0] <= plan.ks[-1] <= band[1]
    assert (band[1] <= 4) if alpha == 0.5 else (band[0] > 4)  # the warm-up 4, moved by the costs


def test_greedy_lossless_with_dsde_in_the_cost_band():
    params = SamplingParams(max_new_tokens=40)
    pool = {n: ModelLevel(m, n, 259, 512) for n, m in (("t", T), ("d", D))}
    router = _router(0.9, DSDELength())
    eng = SpeculativeEngine(pool, "t", router, frozenset([258]), max_seq_len=512, max_batch=4)
    gens = eng.generate(PROMPTS, params)
    assert [g.tokens for g in gens] == target_only(PROMPTS, params)
    assert sum(g.stats.accepted for g in gens) > 0


def test_dsde_plus_cost_on_a_chain(tiny_dir):
    from specrouter.api import SpecRouter

    chain = f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}"
    params = SamplingParams(max_new_tokens=24)
    prompts = ["def fib(n):", "hello hello hello"]
    ref = SpecRouter.from_chain(str(tiny_dir / "target"), dtype="fp32", progress=False).generate(prompts, params)
    sr = SpecRouter.from_chain(chain, dtype="fp32", progress=False, spec_len="dsde+cost")
    assert isinstance(sr.router, AdaptiveRouter) and isinstance(sr.router.policy, DSDELength)
    assert sr.router.candidates == [tuple(sr.levels)]  # this chain only: no target-alone steps
    out = sr.generate(prompts, params)
    assert [o.tokens for o in out] == [r.tokens for r in ref]
    assert all(set(o.stats.chains) == {">".join(sr.levels)} for o in out)
    for bad in ("fixed:4+cost", "heuristic+cost"):
        with pytest.raises(ValueError, match=r"\+cost"):
            SpecRouter.from_chain(chain, dtype="fp32", progress=False, spec_len=bad)
