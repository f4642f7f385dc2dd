"""Shadow rounds of the n-gram drafter: the same rounds ``ngram > target`` runs, fed to the router
for the pairs the row's chain did not run."""

from test_engine import PROMPTS, D, T

from specrouter.drafters.model_level import ModelLevel
from specrouter.engine import SpeculativeEngine
from specrouter.router.adaptive import AdaptiveRouter
from specrouter.router.fixed import FixedRouter
from specrouter.router.profiler import CostTable, Profiler
from specrouter.router.shadow import NgramShadow
from specrouter.router.similarity import Similarity
from specrouter.sampling import SamplingParams
from specrouter.speclen import FixedLength
from specrouter.speculate import NGRAM, Plan


class _Recording(FixedRouter):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.rounds = []

    def observe(self, fb):
        if fb.lower == NGRAM:
            self.rounds.append((fb.n_drafted, fb.n_accepted))


def test_shadow_replays_the_rounds_ngram_over_target_ran():
    """Greedy ``ngram > t`` with k = 4: the shadow, replayed on the finished text, proposes and
    accepts exactly what the real rounds did (up to where the token budget started capping k)."""
    accepted = [_replay_matches(prompt) for prompt in PROMPTS]
    assert sum(accepted) > 0, "the n-gram must have been accepted somewhere"


def _replay_matches(prompt) -> int:
    new = 80
    router = _Recording(("ngram", "t"), FixedLength(4))
    eng = SpeculativeEngine({"t": ModelLevel(T, "t", 259, 512), NGRAM: (3, 1)}, "t", router, frozenset(),
                            max_seq_len=512, max_batch=1)
    gen = eng.generate([prompt], SamplingParams(max_new_tokens=new, ignore_eos=True))[0]
    shadow = NgramShadow((3, 1), k=4)
    shadow.add_row(0)
    text = prompt + gen.tokens
    replay = shadow.advance(0, text, len(prompt))
    # the real rounds until the budget caps k (budget = tokens left - 1 < 4 near the end)
    real, pos = [], len(prompt)
    for nd, na in router.rounds:
        if pos - len(prompt) > new - 5:
            break
        real.append((nd, na))
        pos += na + 1
    assert sum(nd > 0 for nd, _ in real) > 0, "the n-gram must have proposed somewhere"
    assert replay[:len(real)] == real
    return sum(na for _, na in real)


def test_shadow_resolves_a_round_only_once_the_text_does():
    sh = NgramShadow((2, 1), k=4)
    sh.add_row(0)
    text = [5, 6, 7, 8, 9, 5, 6]  # proposal after "5 6" at the end: 7 8 9 5
    assert sh.advance(0, text, len(text)) == []  # nothing committed after the start yet
    assert sh.advance(0, text + [7, 8], len(text)) == []  # matches so far, proposal not used up
    assert sh.advance(0, text + [7, 8, 1], len(text)) == [(4, 2)]  # third token differs: 2 accepted
    # the next round starts after the verifier's token (1): "8 1" never occurred, "1" neither: a miss
    assert sh.advance(0, text + [7, 8, 1, 3], len(text)) == [(0, 0)]


def _router(candidates):
    prof = Profiler({n: CostTable([[c] * 5], (1,)) for n, c in (("d", 0.3), ("t", 1.0))},
                    prefill={"d": 0.001, "t": 0.002})
    sim = Similarity({("d", "t"): 0.9, (NGRAM, "d"): 0.2, (NGRAM, "t"): 0.2}, {"d": 0.1, "t": 0.1})
    return AdaptiveRouter((NGRAM, "d", "t"), prof, sim, candidates, explore=0.0, ngram=(3, 1))


def test_router_learns_ngram_pairs_its_chain_did_not_run():
    router = _router([(NGRAM, "d", "t"), (NGRAM, "t"), ("d", "t"), ("t",)])
    router.add_row(0)
    router.plan(0)
    copy = list(range(10, 70))
    text = copy + copy[:50]  # the second part repeats the first: the n-gram is right throughout
    router.current[0] = Plan(("d", "t"), (4,))
    router.observe_text(0, text, 50)
    for up in ("d", "t"):
        assert router.sim.match_rate(up, 0) > 0.8
        assert router.sim.alpha(NGRAM, up, 0) > 0.9
    # a chain with the n-gram right below d: (ngram, d) had real rounds, the shadow leaves it alone
    router.add_row(1)
    router.plan(1)
    router.current[1] = Plan((NGRAM, "d", "t"), (3, 4))
    router.observe_text(1, text, 50)
    assert router.sim.alpha(NGRAM, "t", 1) > 0.9
    assert (NGRAM, "d") not in router.sim.rows[1]


def test_engine_feeds_the_shadow_while_the_router_runs_another_chain():
    """Through the engine: the router only ever picks d > t (n-gram chains priced out by a poor
    prior), yet its (ngram, t) estimate learns the repetitive prompt's continuation."""
    router = _router([(NGRAM, "t"), ("d", "t")])
    router.sim.prior[(NGRAM, "t")] = 0.0
    pool = {"t": ModelLevel(T, "t", 259, 512), "d": ModelLevel(D, "d", 259, 512), NGRAM: (3, 1)}
    eng = SpeculativeEngine(pool, "t", router, frozenset(), max_seq_len=512, max_batch=1)
    gen = eng.generate([[7] * 20], SamplingParams(max_new_tokens=30, ignore_eos=True))[0]
    assert set(gen.stats.chains) == {"d>t"}
    est = router.sim.glob[(NGRAM, "t")]
    assert est.rounds >= 4 and est.succ > 0
