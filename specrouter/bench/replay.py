"""Offline replay of greedy speculative decoding: draft-length policies scored in seconds, not hours.

Why it is exact: under greedy decoding every accepted draft equals the target's own token, so at
each position the drafter is conditioned on the target's text and its token there is its argmax
given that text -- a teacher-forced quantity. So are the verifier's p and the drafter's q at every
position a verification compares (the accepted ones and the first rejected one), hence the KL and
TVD feedback the engine would send. One greedy generation plus one teacher-forced pass per model
records a *trace* (per output position: the drafter's argmax, KL(p || q), TVD(p, q)); the rounds of
any router / length policy then follow from it: a round at position t drafting k tokens accepts the
run of agreements from t (capped at k, and after a drafted EOS drafting stops, as in the engine),
and the verifier commits one token more. The router sees the same ``PairFeedback`` it would see
in the engine, so DSDE, the heuristic and the cost-model policies replay unchanged. One thing is
not in a trace: the drafter's own text past its first rejected token. Where it would have drafted
an EOS there, the engine stops drafting and the replay does not (a few drafted tokens more; the
accepted counts and every signal a policy sees are unchanged).

Time: a round costs one drafter pass per drafted token (the first over the tokens the drafter has
not yet seen: 2 after a fully accepted round, else 1) plus one verifier pass over k + 1 tokens.
``measure_costs`` times every T from 1 to k_max + 1 on this machine, median of repeats (the
profiler's calibration takes the minimum on a coarse grid, which is what a router needs for
ratios but flatters long verifications on a noisy machine: on the 2-core VM its T = 16 pass cost
less than a real T = 13 one). Prefill is not counted (the same for every policy). The seconds are
a prediction, not a measurement: use them to compare policies, and `specrouter bench` to measure
the winner.

An entropy stop (``entropy``) replays from the drafter's teacher-forced entropies, exactly up to
the first rejected position; past it the replay assumes no stop (at most a few drafted tokens more).

Boundary: one drafter model under the target (two-level chains), batch 1, greedy. Sampling,
batches and deeper chains are what the engine's bench measures.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..sampling import SamplingParams
from ..speculate import NGRAM, PairFeedback, _signals


@dataclass
class Trace:
    qid: str
    category: str
    tokens: list[int]  # the target's greedy output
    draft_tok: list[int]  # draft_tok[i]: the drafter's argmax given prompt + tokens[:i]
    kl: list[float]  # KL(p || q) at position i, p the target's and q the drafter's (T = 1)
    tvd: list[float]  # TVD(p, q) at position i
    finish: str  # "stop" (ended on EOS) or "length"
    entropy: list[float] = field(default_factory=list)  # H(q) at position i (for an entropy stop)


@dataclass
class ReplayResult:
    passes: int  # target forward passes (rounds)
    tokens: int
    drafted: int
    seconds: float  # predicted from the cost table
    alone_seconds: float  # the target decoding alone, same table


@torch.inference_mode()
def _teacher_forced(sr, prompt: list[int], tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(drafter logits, target logits), each [len(tokens), V], predicting tokens[i] from
    prompt + tokens[:i]: one scoring pass per level through the engine's own levels (slot 0, free
    between requests), so the drafter's prompt cache is what the engine gives it -- a quantized copy
    of the target takes the target's prompt keys/values (``ModelLevel.seed_from_twin``), which makes
    it agree more than its own prefill would."""
    lo, up = (sr.pool[x] for x in sr.levels)
    up.prefill(0, prompt)
    lo.add_row(0)
    if not lo.seed_from_twin(0):
        lo.prefill(0, prompt)
    out = tuple(lv.score([prompt], [tokens[:-1]], [0])[0].float().cpu() for lv in (lo, up))
    for lv in (lo, up):
        lv.cache.reset(0)
    return out


def record(sr, prompts, max_new_tokens: int, progress: bool = True) -> list[Trace]:
    """Greedy traces of ``sr``'s two-level chain (drafter, target) on ``prompts`` (BenchPrompts)."""
    _check_pair(sr.levels)
    out = []
    for n, p in enumerate(prompts, 1):
        t0 = time.perf_counter()
        ids = sr.encode_prompt(p.text)
        g = sr.generate_ids([ids], SamplingParams(max_new_tokens=max_new_tokens))[0]
        if g.finish_reason not in ("stop", "length"):
            raise ValueError(f"prompt {p.qid}: finished by {g.finish_reason!r}; replay needs EOS or the token budget")
        lq, lp = _teacher_forced(sr, ids, g.tokens)  # [n, V] each
        top = lp.argmax(-1).tolist()
        if top != g.tokens:  # numerics of one long pass vs incremental decoding
            agree = sum(int(a == b) for a, b in zip(top, g.tokens))
            print(f"  note: {p.qid}: teacher-forced target argmax = generated at {agree}/{len(g.tokens)}",
                  file=sys.stderr)
        q = lq.softmax(-1)
        tvd, kl = _signals(lp.softmax(-1), q, g.tokens, len(g.tokens))  # the engine's own formulas
        ent = -(q * q.clamp_min(1e-10).log()).sum(-1)
        out.append(Trace(p.qid, p.category, list(g.tokens), lq.argmax(-1).tolist(), kl, tvd,
                         g.finish_reason, ent.tolist()))
        if progress:
            agree = sum(int(a == b) for a, b in zip(out[-1].draft_tok, g.tokens)) / len(g.tokens)
            print(f"  trace {n}/{len(prompts)} {p.category} {p.qid}: {len(g.tokens)} tokens, "
                  f"draft agreement {agree:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return out


def _check_pair(levels: list[str]) -> None:
    if len(levels) != 2 or NGRAM in levels:
        raise ValueError(f"replay needs a drafter model and the target ('draft>target'), got {'>'.join(levels)!r}")


def save(path: Path, meta: dict, traces: list[Trace]) -> None:
    path.write_text(json.dumps({"meta": meta, "traces": [asdict(t) for t in traces]}))


def load(path: Path, meta: dict) -> list[Trace] | None:
    """The traces saved at ``path`` if they were recorded with the same ``meta``, else None."""
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    return [Trace(**t) for t in d["traces"]] if d.get("meta") == meta else None


def replay(trace: Trace, router, chain: tuple[str, str], cost, max_new_tokens: int,
           eos_ids: frozenset[int]) -> ReplayResult:
    """Rounds of ``router`` (plan / observe / add_row / remove_row, as the engine drives it) over one
    trace at batch 1. cost(level, T): seconds of a one-row forward over T tokens."""
    lo, up = chain
    toks, n = trace.tokens, len(trace.tokens)
    router.add_row(0)
    if router.entropy_cap(0) is not None and len(trace.entropy) != n:
        raise ValueError(f"trace {trace.qid} has no drafter entropies: record it again to score an entropy stop")
    t = passes = drafted = 0
    seconds, lag = 0.0, 1  # lag: committed tokens the drafter has not processed yet
    while t < n:
        plan = router.plan(0, None)
        k = min(plan.ks[-1], max(0, max_new_tokens - t - 1)) if len(plan.chain) > 1 else 0
        # acc: the run of agreements from t, stopping after an accepted EOS (t + acc < n: a row that
        # ended at the context length has fewer tokens than its budget)
        acc = 0
        while acc < k and t + acc < n and trace.draft_tok[t + acc] == toks[t + acc]:
            acc += 1
            if toks[t + acc - 1] in eos_ids:
                break
        d = k
        if acc and toks[t + acc - 1] in eos_ids:
            d = acc  # drafting stopped after the drafted (and accepted) EOS
        elif acc < k and t + acc < n and trace.draft_tok[t + acc] in eos_ids:
            d = acc + 1  # the drafter proposed EOS where the target did not: it stopped there
        cap = router.entropy_cap(0)
        if cap is not None:  # the engine drops the first token (after the first) with H(q) > cap
            # and stops; H is known up to the first rejected position (beyond it: no stop assumed)
            stop = next((j for j in range(1, min(d, acc + 1)) if trace.entropy[t + j] > cap), None)
            if stop is not None:
                d, acc = stop, min(acc, stop)
        if d:
            n_cmp = min(acc + 1, d)
            router.observe(PairFeedback(0, lo, up, d, acc, trace.tvd[t:t + n_cmp], trace.kl[t:t + n_cmp]))
            seconds += cost(lo, lag) + (d - 1) * cost(lo, 1)
            lag = 2 if acc == d else 1
        else:
            lag += 1
        seconds += cost(up, d + 1)
        commit = min(acc + 1, n - t)
        t += commit
        passes += 1
        drafted += d
    router.remove_row(0, 0)
    return ReplayResult(passes, n, drafted, seconds, n * cost(up, 1))


def measure_costs(levels: dict, t_max: int, ctx: int = 320, repeats: int = 5) -> dict[str, list[float]]:
    """{level: [seconds of a one-row pass over T tokens for T = 0 .. t_max]} (index 0 unused): the
    median of ``repeats`` (the profiler's timing loop), on a cache holding ``ctx`` tokens, made
    non-decreasing in T (``monotone``). levels: name -> ModelLevel."""
    from statistics import median

    from ..router.profiler import _time

    return {name: [0.0] + monotone(_time(lv.model, 1, tuple(range(1, t_max + 1)), ctx, repeats, median))
            for name, lv in levels.items()}


def monotone(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in squared error (pool adjacent violators).

    A pass over more tokens never costs less; on a noisy machine single timings say otherwise
    (T = 9 below T = 8), and a replay would then rank draft lengths by that noise."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return [s / c for s, c in blocks for _ in range(c)]


def costs_profiler(costs: dict[str, list[float]]):
    """A batch-1 ``Profiler`` holding ``costs`` at its grid, for routers that plan with costs."""
    from ..router.profiler import T_GRID, CostTable, Profiler

    short = [n for n, row in costs.items() if len(row) <= max(T_GRID)]
    if short:  # clamping would price long passes at a shorter pass's cost and flatter long drafts
        raise ValueError(f"costs of {short} stop before T = {max(T_GRID)}, which a cost-planning router "
                         f"reads: measure_costs(..., t_max >= {max(T_GRID)})")
    return Profiler({n: CostTable([[row[T] for T in T_GRID]], (1,)) for n, row in costs.items()},
                    {n: 0.0 for n in costs})


def trace_meta(chain: str, dtype: str, max_new_tokens: int, prompts) -> dict:
    """What a saved trace file must match to be reused."""
    return {"chain": chain, "dtype": dtype, "max_new_tokens": max_new_tokens, "qids": [p.qid for p in prompts],
            "recorder": 2}  # 2: the drafter's prompt cache as the engine builds it (twin-seeded)


def score(sr, traces: list[Trace], spec_len: str, costs: dict[str, list[float]],
          max_new_tokens: int) -> list[ReplayResult]:
    """Replay every trace, in order, through one router built for ``spec_len`` on ``sr``'s models
    (one router for the whole run, as in the bench: a policy may learn across requests). Rounds are
    costed with ``costs`` (``measure_costs``), and a router that plans with costs (dsde+cost,
    costmodel) plans with the same ones."""
    from ..api import SpecRouter  # the API builds routers exactly as `generate` / `bench` do

    fresh = SpecRouter(sr.models, sr.levels, spec_len=spec_len, max_batch=1)
    if hasattr(fresh.router, "profiler"):
        fresh.router.profiler = costs_profiler(costs)

    def cost(level, T):
        row = costs[level]
        return row[min(T, len(row) - 1)]
    chain = tuple(sr.levels)
    return [replay(t, fresh.router, chain, cost, max_new_tokens, sr.tokenizer.eos_ids) for t in traces]


def _max_len(spec: str) -> int:
    """The longest draft a --spec-len policy may propose (for the cost table's range)."""
    from ..speclen import parse_length_policy

    base = spec.removesuffix("+cost")
    if base == "costmodel":
        return 12  # the adaptive router's k_max
    policy = parse_length_policy(base)
    k = getattr(policy, "k", None)
    return k if isinstance(k, int) else policy.max_len


def add_parser(sub) -> None:
    r = sub.add_parser("replay", help="score draft-length policies offline on recorded greedy traces")
    r.add_argument("--prompts", required=True, help="Spec-Bench-format JSONL (question_id, category, turns)")
    r.add_argument("--per-category", type=int, default=1)
    r.add_argument("--categories", default=None, help="comma-separated; default: all in the file")
    r.add_argument("--chain", required=True, help="drafter>target, e.g. '1.5b@w8a8>1.5b'")
    r.add_argument("--spec-len", default="fixed:4,fixed:8,heuristic,dsde",
                   help="comma-separated length policies to score (as bench --spec-len)")
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.add_argument("--traces", default=None, help="trace file: reused when it matches, else recorded and saved")
    r.add_argument("--dtype", default="auto")
    r.add_argument("--threads", type=int, default=None)
    r.set_defaults(fn=cmd_replay)


def cmd_replay(a) -> int:
    from collections import defaultdict

    from ..api import SpecRouter, parse_chain
    from ..drafters.model_level import ModelLevel
    from ..router.profiler import T_GRID
    from .spec_bench import load_prompts

    if a.threads:
        torch.set_num_threads(a.threads)
    _check_pair(parse_chain(a.chain))  # before loading anything
    for s in a.spec_len.split(","):
        _max_len(s)  # an unknown policy fails now, not after recording
    prompts = load_prompts(a.prompts, a.categories.split(",") if a.categories else None, a.per_category)
    sr = SpecRouter.from_chain(a.chain, dtype=a.dtype, spec_len="fixed:8", max_batch=1)
    meta = trace_meta(a.chain, a.dtype, a.max_new_tokens, prompts)
    path = Path(a.traces) if a.traces else None
    traces = load(path, meta) if path else None
    if traces is None:
        print(f"recording {len(prompts)} greedy traces ...", file=sys.stderr, flush=True)
        traces = record(sr, prompts, a.max_new_tokens)
        if path:
            save(path, meta, traces)
    else:
        print(f"reusing {len(traces)} traces from {path}", file=sys.stderr)
    # costs of this machine now, every T a policy may use (not the cached calibration: a shared
    # machine's speed drifts, and which length wins depends on the drafter's cost against the target's)
    models = {n: lv for n, lv in sr.pool.items() if isinstance(lv, ModelLevel)}
    # at least the profiler's grid: a router that plans with costs reads T_GRID's cells (16) even
    # when every policy of the run drafts fewer tokens
    t_max = max(1 + max(_max_len(s) for s in a.spec_len.split(",")), max(T_GRID))
    print(f"timing passes over T = 1..{t_max} tokens ...", file=sys.stderr, flush=True)
    costs = measure_costs(models, t_max)
    for n, row in costs.items():
        print(f"{n}: s per pass over T = 1..{t_max}: " + " ".join(f"{c:.3f}" for c in row[1:]))
    print(f"chain {a.chain}, {len(traces)} prompts, {a.max_new_tokens} new tokens, greedy, batch 1; "
          "predicted speedup vs the target alone (cost table) | tokens per target pass")
    cats = sorted({t.category for t in traces})
    print(f"{'policy':22s} {'overall':>14s} " + " ".join(f"{c[:12]:>14s}" for c in cats))
    for s in a.spec_len.split(","):
        res = score(sr, traces, s, costs, a.max_new_tokens)
        by = defaultdict(list)
        for t, r in zip(traces, res):
            by[t.category].append(r)

        def cell(rs):
            return (f"{sum(r.alone_seconds for r in rs) / sum(r.seconds for r in rs):5.2f}x | "
                    f"{sum(r.tokens for r in rs) / sum(r.passes for r in rs):5.2f}")
        print(f"{s:22s} {cell(res):>14s} " + " ".join(f"{cell(by[c]):>14s}" for c in cats), flush=True)
    return 0
