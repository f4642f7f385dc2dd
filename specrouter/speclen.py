"""Speculation-length policies: how many tokens each row drafts next (propose / observe shape).

* ``fixed:K``   — always K.
* ``heuristic`` — transformers' rule: +2 after a step where every draft was accepted, -1 otherwise,
                  kept within [min_len, max_len].
* ``entropy``   — AdaEDL-style early stop: draft up to max_len, but stop before a token whose draft
                  distribution has entropy H with 1 - sqrt(gamma * H) < lambda, i.e. whose lower
                  bound on acceptance is too low (cap: H > (1 - lambda)^2 / gamma).
* ``dsde``      — KL-divergence stability (see ``dsde.py``); ``dsde+cost`` moves it within the
                  band of lengths the router's profiled costs allow (built by the API layer; under
                  the adaptive router ``dsde`` always gets the band).
* ``costmodel`` — the router's closed-form choice for the chain (built by the API layer: the
                  adaptive router restricted to one candidate chain).

Per-row state lives in lists indexed by batch slot; ``add_row`` / ``remove_row`` mirror the
engine's admission and compaction of rows.
"""

from __future__ import annotations

import inspect

from .dsde import DSDELength
from .speculate import PairFeedback


class FixedLength:
    def __init__(self, k: int):
        if k < 0:
            raise ValueError(f"fixed speculation length must be >= 0, got {k}")
        self.k = k
        self.name = f"fixed:{k}"

    def add_row(self, row: int) -> None:
        pass

    def propose(self, row: int) -> int:
        return self.k

    def observe(self, row: int, fb: PairFeedback) -> None:
        pass

    def remove_row(self, row: int, last: int) -> None:
        pass


class HeuristicLength:
    name = "heuristic"

    def __init__(self, initial: int = 4, min_len: int = 1, max_len: int = 10):
        if not 0 <= min_len <= initial <= max_len:
            raise ValueError(f"need 0 <= min_len <= initial <= max_len, got {min_len}, {initial}, {max_len}")
        self.initial, self.min_len, self.max_len = initial, min_len, max_len
        self.k: list[int] = []

    def add_row(self, row: int) -> None:
        assert row == len(self.k), "rows are added at the end"
        self.k.append(self.initial)

    def propose(self, row: int) -> int:
        return self.k[row]

    def observe(self, row: int, fb: PairFeedback) -> None:
        if fb.n_drafted == 0:
            return
        if fb.n_accepted == fb.n_drafted:
            self.k[row] = min(self.max_len, self.k[row] + 2)
        else:
            self.k[row] = max(self.min_len, self.k[row] - 1)

    def remove_row(self, row: int, last: int) -> None:
        self.k[row] = self.k[last]
        self.k.pop()


class EntropyLength:
    name = "entropy"

    def __init__(self, max_len: int = 10, gamma: float = 0.5, lam: float = 0.4):
        if max_len < 1 or gamma <= 0 or not 0 <= lam < 1:
            raise ValueError(f"entropy policy needs max_len >= 1, gamma > 0, 0 <= lambda < 1; "
                             f"got {max_len}, {gamma}, {lam}")
        self.max_len, self.gamma, self.lam = max_len, gamma, lam

    def add_row(self, row: int) -> None:
        pass

    def propose(self, row: int) -> int:
        return self.max_len

    def entropy_cap(self, row: int) -> float:
        return (1 - self.lam) ** 2 / self.gamma

    def observe(self, row: int, fb: PairFeedback) -> None:
        pass

    def remove_row(self, row: int, last: int) -> None:
        pass


def _keywords(cls, spec: str, items: list[str]) -> dict:
    """``name=value`` items as keyword arguments of ``cls``, each cast to its default's type."""
    params = inspect.signature(cls.__init__).parameters
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in params or name == "self":
            raise ValueError(f"{spec!r}: {cls.__name__} has no parameter {name!r}; "
                             f"it takes {', '.join(p for p in params if p != 'self')}")
        kind = type(params[name].default)
        try:
            out[name] = kind(float(value)) if kind is int else kind(value)
        except ValueError:
            raise ValueError(f"{spec!r}: {name}={value!r} is not a number") from None
        if kind is int and out[name] != float(value):
            raise ValueError(f"{spec!r}: {name} must be an integer, got {value!r}")
    return out


def parse_length_policy(spec: str):
    """'fixed:K' | 'heuristic[:INITIAL:MIN:MAX]' | 'entropy[:MAX:GAMMA:LAMBDA]' | 'dsde[:MIN:MAX]'.

    After the positional numbers, ``name=value`` items set any other constructor parameter
    (``dsde:1:12:kappa=1.0:window=16``), so a policy's constants can be tried from the command line.
    """
    kind, _, rest = spec.partition(":")
    if kind == "fixed":
        if not rest.isdigit():
            raise ValueError(f"--spec-len fixed needs an integer, e.g. fixed:4 (got {spec!r})")
        return FixedLength(int(rest))
    items = rest.split(":") if rest else []
    named = [x for x in items if "=" in x]
    if any("=" in x for x in items[:len(items) - len(named)]):
        raise ValueError(f"{spec!r}: positional numbers come before name=value items")
    try:
        nums = [float(x) for x in items[:len(items) - len(named)]]
    except ValueError:
        raise ValueError(f"bad numbers in speculation-length policy {spec!r}") from None
    cls = {"heuristic": HeuristicLength, "entropy": EntropyLength, "dsde": DSDELength}.get(kind)
    if cls is None:
        raise ValueError(f"unknown speculation-length policy {spec!r}; use fixed:K, heuristic, entropy, dsde, "
                         f"dsde+cost or costmodel")
    kw = _keywords(cls, spec, named)
    if kind == "entropy":
        return cls(*([int(nums[0])] + nums[1:] if nums else []), **kw)
    return cls(*map(int, nums), **kw)
