"""Forward-pass cost of each model as a function of batch size and tokens per pass.

A short calibration at start measures a grid (B in 1,2,4,8 up to max_batch; T in 1,2,4,8,16) on a
cache already holding ``ctx`` tokens, and is cached on disk keyed by model, dtype, device and
thread count. Afterwards the engine's own timings keep it current: every timed forward updates
its (B, T) cell by an exponential moving average, so a slower machine or a busy core raises the
estimates within a few steps. Lookups interpolate linearly in T and B between grid points.

Long passes (a level catching up on a prompt it never saw) are costed separately, as seconds per
token of a one-row pass of ``PREFILL_T`` tokens: calibrated once, then tracked from the engine's own
long passes. Why separately: the grid's slope between 8 and 16 tokens says little about 1,000 —
bf16 verification is nearly free at 16 tokens, while the int4 kernels scale with every row.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

T_GRID = (1, 2, 4, 8, 16)
PREFILL_T = 128
B_GRID = (1, 2, 4, 8, 16, 32)


def _interp(grid: tuple[int, ...], x: float) -> tuple[int, int, float]:
    """Indices i, j and weight w so that x ~ (1 - w) * grid[i] + w * grid[j]."""
    if x <= grid[0]:
        return 0, 0, 0.0
    for i in range(len(grid) - 1):
        if x <= grid[i + 1]:
            return i, i + 1, (x - grid[i]) / (grid[i + 1] - grid[i])
    return len(grid) - 1, len(grid) - 1, 0.0


class CostTable:
    """cost[b_index][t_index] in seconds; ``ema`` is the weight of a new observation."""

    def __init__(self, cost: list[list[float]], b_grid: tuple[int, ...], ema: float = 0.3):
        self.cost, self.b_grid, self.ema = cost, b_grid, ema

    def __call__(self, B: int, T: int) -> float:
        bi, bj, bw = _interp(self.b_grid, B)
        ti, tj, tw = _interp(T_GRID, T)
        row = lambda b: (1 - tw) * self.cost[b][ti] + tw * self.cost[b][tj]  # noqa: E731
        extra = max(0.0, T - T_GRID[-1]) * (self.cost[bi][-1] - self.cost[bi][-2]) / (T_GRID[-1] - T_GRID[-2])
        return (1 - bw) * row(bi) + bw * row(bj) + extra

    def observe(self, B: int, T: int, seconds: float) -> None:
        """Move the table toward an observed timing.

        The nearest cell moves by ``ema`` toward the observed/predicted ratio (it learns the shape
        c(T)); every cell of the same batch size moves by ``ema / 4`` (a machine that got slower
        or faster shifts all of them, including T values the engine has not used lately).
        """
        bi = min(range(len(self.b_grid)), key=lambda i: abs(self.b_grid[i] - B))
        ti = min(range(len(T_GRID)), key=lambda i: abs(T_GRID[i] - T))
        predicted = self(B, T)
        if predicted <= 0:
            return
        ratio = seconds / predicted
        for j in range(len(T_GRID)):
            w = self.ema if j == ti else self.ema / 4
            self.cost[bi][j] *= 1 + w * (ratio - 1)


class Profiler:
    """levels: name -> object with ``min_tokens`` (a ModelLevel), read at every lookup. A level whose
    passes are padded to ``min_tokens`` columns (the exact target, ``SpeculativeEngine(exact=True)``,
    which sets it after calibration) costs a T-token pass what a max(T, min_tokens)-token pass costs:
    a one-token target pass is priced, and learned, as the two-token pass it really is."""

    def __init__(self, tables: dict[str, CostTable], prefill: dict[str, float] | None = None, ema: float = 0.3,
                 levels: dict | None = None):
        self.tables = tables
        self.prefill = dict(prefill or {})  # level -> seconds per token of a long one-row pass
        self.ema = ema
        self.levels = dict(levels or {})

    def width(self, level: str, T: int) -> int:
        """Token columns a T-token pass of ``level`` really computes."""
        return max(T, getattr(self.levels.get(level), "min_tokens", 1))

    def cost(self, level: str, B: int, T: int) -> float:
        return self.tables[level](B, self.width(level, T))

    def prefill_cost(self, level: str, n_tokens: int) -> float:
        """Seconds for ``level`` to catch up on ``n_tokens`` it has not seen (0 for unknown levels)."""
        if n_tokens <= 0:
            return 0.0
        if n_tokens <= T_GRID[-1] or level not in self.prefill:
            return self.cost(level, 1, n_tokens) if level in self.tables else 0.0
        return self.prefill[level] * n_tokens

    def observe(self, level: str, B: int, T: int, seconds: float) -> None:
        if level not in self.tables:
            return
        if T <= 2 * T_GRID[-1]:
            self.tables[level].observe(B, self.width(level, T), seconds)
        elif B == 1:  # a catch-up pass: prefill-sized, not a decode cost
            rate = seconds / T
            old = self.prefill.get(level, rate)
            self.prefill[level] = old + self.ema * (rate - old)

    @classmethod
    def calibrate(cls, levels: dict, max_batch: int = 1, cache_dir: Path | None = None, ctx: int = 256,
                  repeats: int = 5, progress: bool = True) -> "Profiler":
        """levels: name -> ModelLevel. Measures (or loads) every level's cost grid."""
        b_grid = tuple(b for b in B_GRID if b <= max(1, max_batch))
        tables, prefill = {}, {}
        for name, lv in levels.items():
            key = _cache_key(lv, b_grid, ctx)
            path = cache_dir / f"{key}.json" if cache_dir else None
            saved = json.loads(path.read_text()) if path is not None and path.exists() else {}
            if "cost" in saved and "prefill_s_per_token" in saved:
                tables[name] = CostTable(saved["cost"], b_grid)
                prefill[name] = saved["prefill_s_per_token"]
                continue
            if progress:
                print(f"[profiler] calibrating {name}: B in {b_grid}, T in {T_GRID}, prefill {PREFILL_T}",
                      file=sys.stderr, flush=True)
            cost = [_time(lv.model, B, T_GRID, ctx, repeats) for B in b_grid]
            tables[name] = CostTable(cost, b_grid)
            prefill[name] = _time(lv.model, 1, (PREFILL_T,), ctx, 2)[0] / PREFILL_T
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"level": name, "cost": cost, "prefill_s_per_token": prefill[name]}))
        return cls(tables, prefill, levels=levels)


def _cache_key(level, b_grid, ctx) -> str:
    m = level.model
    dev = str(m.device)
    quant = getattr(level, "quant", "dense")
    return (f"{level.name.replace('/', '_').replace('@', '-')}-{m.args.n_layers}x{m.args.dim}-{quant}-"
            f"{str(m.dtype).split('.')[-1]}-{dev}-t{torch.get_num_threads()}-b{max(b_grid)}-c{ctx}")


@torch.inference_mode()
def _time(model, B: int, Ts: tuple[int, ...], ctx: int, repeats: int, reduce=min) -> list[float]:
    """Seconds of a forward over T new tokens per row, for each T in ``Ts``, on a cache holding ``ctx``
    tokens (prefilled once): ``reduce`` over ``repeats`` runs after two warm-ups. The default, the
    least disturbed run, suits a router's ratios: interference only ever adds time."""
    cache = model.new_cache(B, ctx + max(Ts) + 8)
    model(torch.zeros(B, ctx, dtype=torch.long, device=model.device), cache, logits_for="last")
    out = []
    for T in Ts:
        x = torch.zeros(B, T, dtype=torch.long, device=model.device)
        ts = []
        for _ in range(repeats + 2):
            t0 = time.perf_counter()
            model(x, cache)
            ts.append(time.perf_counter() - t0)
            for b in range(B):
                cache.rollback(b, ctx)
        out.append(reduce(ts[2:]))
    return out
