"""Closed-form latency model of a chain: expected seconds per committed target token.

Pure functions. For a drafter/verifier pair with per-token acceptance alpha (i.i.d. model) and k
drafts per round, the verifier commits E(alpha, k) = (1 - alpha^(k+1)) / (1 - alpha) tokens per
round (accepted drafts + its own token). Recursively over a chain l_0 > l_1 > ... > l_n:

    tau(l_0)  = c_0(1)                                  (a lone model decodes token by token)
    tau(l_i)  = min over k of  [k * tau(l_{i-1}) + c_i(k + 1)] / E(alpha_i, k)
                (k = 0: l_i decodes alone, tau = c_i(1))

where c_i(T) is level i's forward cost over T tokens (from the profiler) and alpha_i the
acceptance of l_{i-1}'s drafts by l_i. The tokens a level passes up follow its own distribution
exactly, so alpha_i is the agreement of the adjacent pair (l_{i-1}, l_i) alone.

The n-gram level has no per-token cost worth modelling (microseconds), proposes only when the
text repeats (match rate m), and its proposals are accepted at rate alpha:
    E_ngram(k) = 1 + m * alpha * (1 - alpha^k) / (1 - alpha)

The top pair's whole curve tau(k), k = 1..k_max, is exposed too (``top_pair_curve``): a length
policy that decides k by another signal (DSDE) takes from it the *band* of lengths whose predicted
cost is within a slack of the minimum (``length_band``), so it moves within what the costs allow.
"""

from __future__ import annotations

from typing import Callable

NGRAM_COST_S = 1e-4


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens committed per verification round: accepted drafts + the verifier's own token."""
    alpha = min(max(alpha, 0.0), 0.999)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_tokens_ngram(alpha: float, match_rate: float, k: int) -> float:
    alpha = min(max(alpha, 0.0), 0.999)
    return 1 + match_rate * alpha * (1 - alpha ** k) / (1 - alpha)


def pair_curve(tau_lower: float, cost_up: Callable[[int], float], alpha: float, k_max: int) -> list[float]:
    """tau(k) for k = 1..k_max of a model drafter (seconds per token tau_lower) below a verifier."""
    return [(k * tau_lower + cost_up(k + 1)) / expected_tokens(alpha, k) for k in range(1, k_max + 1)]


def ngram_curve(cost_up: Callable[[int], float], alpha: float, match_rate: float, k_max: int) -> list[float]:
    """tau(k) for k = 1..k_max of the n-gram drafter below a verifier."""
    return [(NGRAM_COST_S + cost_up(k + 1)) / expected_tokens_ngram(alpha, match_rate, k)
            for k in range(1, k_max + 1)]


def _best(curve: list[float], alone: float) -> tuple[float, int]:
    """(tau, k) of the cheapest k >= 1, or (alone, 0) when the verifier decoding alone is cheaper."""
    k = min(range(len(curve)), key=curve.__getitem__)
    return (curve[k], k + 1) if curve[k] < alone else (alone, 0)


def top_pair_curve(chain: tuple[str, ...], cost: Callable[[str, int], float], alpha: Callable[[str, str], float],
                   match_rate: Callable[[str], float], k_max: int = 12) -> list[float]:
    """tau(k), k = 1..k_max, of ``chain`` as a function of the top pair's draft length alone.

    The levels below the top drafter keep their best lengths (``chain_latency`` of the sub-chain).
    """
    if len(chain) < 2:
        raise ValueError("a chain of one level has no draft length")
    up, low = chain[-1], chain[-2]
    if low == "ngram":
        return ngram_curve(lambda T: cost(up, T), alpha(low, up), match_rate(up), k_max)
    tau_lower, _ = chain_latency(chain[:-1], cost, alpha, match_rate, k_max)
    return pair_curve(tau_lower, lambda T: cost(up, T), alpha(low, up), k_max)


def length_band(curve: list[float], slack: float) -> tuple[int, int]:
    """(shortest, longest) k whose tau(k) = curve[k - 1] is within ``slack`` of the curve's minimum.

    Every k in between is cheap enough too when tau is unimodal in k, as it is for the i.i.d. model.
    """
    if not curve or slack < 0:
        raise ValueError(f"need a non-empty curve and slack >= 0, got {len(curve)} points, slack {slack}")
    bound = (1 + slack) * min(curve)
    ok = [k for k, t in enumerate(curve, start=1) if t <= bound]
    return ok[0], ok[-1]


def chain_latency(chain: tuple[str, ...], cost: Callable[[str, int], float], alpha: Callable[[str, str], float],
                  match_rate: Callable[[str], float], k_max: int = 12) -> tuple[float, tuple[int, ...]]:
    """Best (seconds per committed token, draft length per pair) for ``chain`` (lowest level first).

    cost(level, T): seconds of one forward over T tokens at the current batch size.
    alpha(lower, upper): per-token acceptance; match_rate(upper): n-gram proposal rate above it.
    The returned ks[i] is how many tokens level i sends up to level i+1 per round.
    """
    if chain[0] == "ngram":
        if len(chain) < 2:
            raise ValueError("a chain cannot end at the n-gram level")
        up = chain[1]
        tau, k = _best(ngram_curve(lambda T: cost(up, T), alpha("ngram", up), match_rate(up), k_max), cost(up, 1))
        ks, rest, lower = (k,), chain[2:], up
    else:
        tau, ks, rest, lower = cost(chain[0], 1), (), chain[1:], chain[0]
    for up in rest:
        tau, k = _best(pair_curve(tau, lambda T, up=up: cost(up, T), alpha(lower, up), k_max), float("inf"))
        ks, lower = ks + (k,), up
    return tau, ks
