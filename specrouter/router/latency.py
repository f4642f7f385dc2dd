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
        best = (cost(up, 1), 0)
        for k in range(1, k_max + 1):
            e = expected_tokens_ngram(alpha("ngram", up), match_rate(up), k)
            t = (NGRAM_COST_S + cost(up, k + 1)) / e
            best = min(best, (t, k))
        tau, ks = best[0], (best[1],)
        rest = chain[2:]
        lower = up
    else:
        tau, ks, rest, lower = cost(chain[0], 1), (), chain[1:], chain[0]
    for up in rest:
        a = alpha(lower, up)
        best = (float("inf"), 0)
        for k in range(1, k_max + 1):
            t = (k * tau + cost(up, k + 1)) / expected_tokens(a, k)
            best = min(best, (t, k))
        tau, ks, lower = best[0], ks + (best[1],), up
    return tau, ks
