"""Length policies: DSDE's signal and rule on constructed KL sequences, the batch cap, entropy stop,
and losslessness under every policy."""

import pytest
from test_engine import PROMPTS, make_engine, target_only

from specrouter.dsde import DSDELength, length_from_stability, stability, weighted_stats
from specrouter.sampling import SamplingParams
from specrouter.speclen import EntropyLength, FixedLength, HeuristicLength, parse_length_policy
from specrouter.speculate import PairFeedback


def fb(kl, n_drafted=4, n_accepted=4):
    return PairFeedback(0, "d", "t", n_drafted, n_accepted, tvd=[min(1.0, x) for x in kl], kl=list(kl))


def test_weighted_stats_favour_recent_values():
    mu, var = weighted_stats([5.0] * 10 + [0.0] * 3, rho=0.5, window=8)
    assert mu < 1.0  # the three recent zeros dominate a window whose older half is 5s
    assert weighted_stats([2.0] * 8, 0.7, 8) == pytest.approx((2.0, 0.0))


def test_stability_stable_low_divergence_is_high_and_jumps_are_low():
    stable = [0.05, 0.06, 0.05, 0.04, 0.05, 0.06, 0.05, 0.05] * 3
    jumpy_recent = [0.05] * 20 + [0.1, 2.5, 0.05, 3.0]
    high = [2.0, 2.1, 1.9, 2.0] * 5
    low_but_jumping = [0.05] * 20 + [0.05, 0.6, 0.05, 0.5]
    s_stable, s_jumpy, s_high = stability(stable), stability(jumpy_recent), stability(high)
    assert s_stable > 0.8
    assert s_jumpy < 0.3
    assert s_high < 0.1  # steady but large divergence: also short
    # a modest mean, but a recent spread far above the request's own history: the WVIR term bites
    assert stability(low_but_jumping) < 0.5 * stability(low_but_jumping, eps=1e9)
    assert length_from_stability(1.0, 1, 10) == 10 and length_from_stability(0.0, 1, 10) == 1


def test_dsde_rule_long_when_stable_short_when_unstable():
    pol = DSDELength(min_len=1, max_len=12, initial=4, warmup=3)
    pol.add_row(0)
    for _ in range(3):  # warm-up: drafts of 4, all accepted -> request bound k_hi = 4 + 2
        assert pol.propose(0) == 4
        pol.observe(0, fb([0.05] * 4, 4, 4))
    assert pol.rows[0]["hi"] == 6
    for _ in range(5):
        pol.observe(0, fb([0.04, 0.05, 0.05, 0.04], 4, 4))
    long_k = pol.propose(0)
    assert long_k >= 5
    for kl in ([0.05, 3.0], [2.5, 0.1], [4.0]):
        pol.observe(0, fb(kl, 4, 1))
    assert pol.propose(0) <= 2 < long_k


def test_dsde_learns_a_higher_bound_when_whole_drafts_keep_passing():
    """KL ~0.2 (s ~ 0.67) proposes below k_hi; whole drafts of the proposed length still raise it."""
    stable = DSDELength(min_len=1, max_len=12, initial=2, warmup=2)  # the stable case first (KL ~0.01)
    stable.add_row(0)
    for _ in range(2):
        stable.observe(0, fb([0.01] * 2, 2, 1))
    assert stable.rows[0]["hi"] == 3
    for _ in range(4):
        k = stable.propose(0)
        stable.observe(0, fb([0.01] * k, k, k))
    assert stable.rows[0]["hi"] > 3
    pol = DSDELength(min_len=1, max_len=12, initial=4, warmup=3)
    pol.add_row(0)
    for _ in range(3):
        pol.observe(0, fb([0.2] * 4, 4, 4))
    assert pol.rows[0]["hi"] == 6
    ks = []
    for _ in range(6):
        k = pol.propose(0)
        ks.append(k)
        pol.observe(0, fb([0.2] * k, k, k))
    assert ks[0] < 6 and pol.rows[0]["hi"] == 12 and ks[-1] > ks[0], ks
    pol.observe(0, fb([0.2] * 3, 3, 3))  # a capped (shorter than proposed) draft teaches nothing
    assert pol.rows[0]["hi"] == 12


def test_dsde_warm_up_length_follows_what_finished_requests_sustained():
    pol = DSDELength(min_len=1, max_len=12, initial=4, warmup=3)
    pol.add_row(0)
    assert pol.propose(0) == 4  # nothing learned yet
    for _ in range(3):
        pol.observe(0, fb([0.01] * 4, 4, 4))
    for _ in range(8):
        k = pol.propose(0)
        pol.observe(0, fb([0.01] * k, k, k))
    assert pol.rows[0]["hi"] == 12
    pol.add_row(1)  # joins while row 0 runs: still nothing finished
    assert pol.propose(1) == 4
    pol.remove_row(0, 1)  # row 0 finishes, row 1 moves into slot 0
    pol.add_row(1)
    assert pol.propose(1) == 12  # the easy request's bound
    for _ in range(3):  # a hard request: nothing accepted -> k_hi = 2
        pol.observe(1, fb([3.0] * 12, 12, 0))
    pol.remove_row(1, 1)
    pol.add_row(1)
    assert pol.propose(1) == round(0.7 * 12 + 0.3 * 2)
    pol.remove_row(1, 1)  # a request that leaves during warm-up teaches nothing
    assert pol.learned_hi == pytest.approx(0.7 * 12 + 0.3 * 2)


def test_heuristic_and_parse():
    h = HeuristicLength(4, 1, 10)
    h.add_row(0)
    h.observe(0, fb([0.1] * 4, 4, 4))
    assert h.propose(0) == 6
    h.observe(0, fb([0.1], 6, 0))
    assert h.propose(0) == 5
    assert isinstance(parse_length_policy("dsde:1:8"), DSDELength)
    assert isinstance(parse_length_policy("entropy:8:0.5:0.3"), EntropyLength)
    assert parse_length_policy("fixed:3").k == 3
    for bad in ("fixed:x", "nope", "dsde:a", "entropy:5:0:0.3"):
        with pytest.raises(ValueError):
            parse_length_policy(bad)


def test_length_policy_constants_by_name():
    d = parse_length_policy("dsde:2:16:kappa=1.5:window=4")
    assert (d.min_len, d.max_len, d.kappa, d.window) == (2, 16, 1.5, 4) and isinstance(d.window, int)
    assert parse_length_policy("dsde:rho=0.9").rho == 0.9 and parse_length_policy("dsde").rho == 0.7
    for bad, why in (("dsde:kappa=x", "not a number"), ("dsde:foo=1", "no parameter 'foo'"),
                     ("dsde:window=2.5", "must be an integer"), ("dsde:kappa=1:4", "positional numbers come before")):
        with pytest.raises(ValueError, match=why):
            parse_length_policy(bad)


class Spread(FixedLength):
    """Row 0 asks for 12 drafts, every other row for 1: a straggler."""

    def propose(self, row):
        return 12 if row == 0 else 1


def test_batch_cap_limits_a_straggler():
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    capped = make_engine(["d", "t"], Spread(0), eos=frozenset(), max_batch=4)
    free = make_engine(["d", "t"], Spread(0), eos=frozenset(), max_batch=4)
    free.batch_cap = False
    for eng in (capped, free):
        for p in PROMPTS:
            eng.add(p, params)
        eng.step()
    # cap = ceil((12 + 1 + 1 + 1) / 4) = 4 drafts for row 0 instead of 12
    assert capped.rows[0].gen.stats.drafted <= 4
    assert free.rows[0].gen.stats.drafted > 4


@pytest.mark.parametrize("policy", [DSDELength(), EntropyLength(max_len=8, gamma=0.5, lam=0.4),
                                    HeuristicLength()])
def test_greedy_lossless_under_every_policy(policy):
    params = SamplingParams(max_new_tokens=40)
    eng = make_engine(["d", "t"], policy, max_batch=4)
    assert [g.tokens for g in eng.generate(PROMPTS, params)] == target_only(PROMPTS, params)


def test_entropy_policy_stops_early_on_uncertain_drafts():
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    eager = make_engine(["d", "t"], EntropyLength(max_len=8, gamma=100.0, lam=0.9), eos=frozenset())
    g = eager.generate([PROMPTS[1]], params)[0]
    # cap = 0.01 / 100: every second token is "too uncertain" -> at most one draft per step
    assert g.stats.steps - 1 <= g.stats.drafted <= g.stats.steps
    lax = make_engine(["d", "t"], EntropyLength(max_len=8, gamma=1e-6, lam=0.0), eos=frozenset())
    g2 = lax.generate([PROMPTS[1]], params)[0]
    assert g2.stats.drafted > 2 * g2.stats.steps  # no cap in reach: full drafts of up to 8


def test_drafting_stops_after_an_eos_token():
    """A draft that proposes EOS drafts nothing after it (never committed); output unchanged."""
    from test_engine import T

    probe = SamplingParams(max_new_tokens=12, ignore_eos=True)
    seq = target_only([PROMPTS[1]], probe)[0]
    eos = seq[3]  # make the target's 4th token the end of sequence
    end = seq.index(eos)
    params = SamplingParams(max_new_tokens=12)
    ref = make_engine(["t"], eos=frozenset([eos])).generate([PROMPTS[1]], params)[0]
    assert ref.tokens == seq[:end + 1]
    eng = make_engine(["d", "t"], FixedLength(8), eos=frozenset([eos]), mods={"t": T, "d": T})  # a perfect draft
    g = eng.generate([PROMPTS[1]], params)[0]
    assert g.tokens == ref.tokens
    assert g.stats.steps == 1 and g.stats.drafted == end + 1  # not 8: it stopped at the EOS
    on = make_engine(["d", "t"], FixedLength(8), eos=frozenset([eos]), mods={"t": T, "d": T})
    g2 = on.generate([PROMPTS[1]], SamplingParams(max_new_tokens=12, ignore_eos=True))[0]
    assert g2.tokens == seq and g2.stats.drafted > end + 1  # a row that ignores EOS drafts on
