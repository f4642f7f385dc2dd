"""The speculative decoding loop over a pool of levels, with continuous batching.

Boundary: ids in, ids out. The engine knows nothing about text (stop strings reach it as a
per-request callback on generated ids) and nothing about *which* chain is best: a router hands it
a ``Plan`` (chain + draft lengths) per row and learns from the feedback.

One ``step()`` reads as schedule -> run -> postprocess:
  schedule:    admit waiting requests into free slots (prefill the target), retire aborted ones;
               the router plans each live row (chain, draft lengths), capped by the row's budget
               and, in a batch, by the ceiling of the batch's mean draft length (``batch_cap``);
  run:         rows are grouped by the level right below the target, which drafts for them
               (recursively speculating with the levels below it, see ``speculate.py``); the
               target then scores [last, x_1..x_k] for every row in ONE forward and decides;
  postprocess: commit accepted drafts + the target's token, roll every level's cache back to the
               committed text, feed the router (the step's latency; the committed text, on which
               an adaptive router replays the n-gram drafter), retire finished rows (compacting slots).

Invariant after every step, for each live row b with C_b committed tokens (prompt + output):
the target's cache holds exactly committed[b][:C_b - 1] (the last committed token is the input
of the next verification); every other level holds a prefix of that.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .drafters.model_level import ModelLevel
from .model.draft_vocab import is_restricted
from .sampling import SamplingParams
from .speculate import NGRAM, RowContext, draft, verify_round

StopCheck = Callable[[list[int]], bool]  # generated ids -> True when a stop string has appeared
OnTokens = Callable[["Request", list[int]], None]
# (request, p [n_new, V]): the target's distributions at the n_new tokens a step committed, as its
# verification computed them (greedy rows: softmax at T = 1; sampled rows: the tempered / top-p p)
OnTargetProbs = Callable[["Request", torch.Tensor], None]


@dataclass
class GenerationStats:
    steps: int = 0  # target forward passes after prefill
    drafted: int = 0  # drafts the target verified
    accepted: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    chains: dict = field(default_factory=lambda: defaultdict(int))  # chain -> steps that used it

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def mean_accepted_length(self, n_generated: int) -> float:
        """Tokens committed per target forward (tau): accepted drafts + the verifier's token."""
        return n_generated / self.steps if self.steps else 0.0


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS or stop string), "length", or "abort"
    stats: GenerationStats = field(default_factory=GenerationStats)


@dataclass(eq=False)
class Request:
    """One request's live state; ``slot`` is its batch row while running, else None."""

    gen: Generation
    params: SamplingParams
    generator: torch.Generator
    stop_check: StopCheck | None = None
    on_tokens: OnTokens | None = None
    on_target_probs: OnTargetProbs | None = None
    tag: object = None  # caller's handle (index, HTTP request id...)
    committed: list[int] = field(default_factory=list)
    slot: int | None = None
    aborted: bool = False
    rid: int = -1  # engine-assigned serial number (keys the router's per-request latency log)

    @property
    def done(self) -> bool:
        return self.gen.finish_reason is not None


class SpeculativeEngine:
    """pool: level name -> ModelLevel, plus ``"ngram": (max_ngram, min_ngram)`` when available."""

    def __init__(self, pool: dict, target: str, router, eos_ids: frozenset[int] = frozenset(),
                 max_seq_len: int = 4096, max_batch: int = 8, batch_cap: bool = True, exact: bool = True):
        self.pool, self.target_name, self.router = pool, target, router
        self.batch_cap, self.exact = batch_cap, exact
        self.target: ModelLevel = pool[target]
        if is_restricted(getattr(getattr(self.target, "model", None), "lm_head", None)):
            # its p would not be the model's distribution: output would follow a truncated target
            raise ValueError(f"the target {target!r} scores part of the vocabulary only (-vocab=N); a draft "
                             f"vocabulary is for draft levels, the target must score every token")
        # exact: every target pass is at least two tokens wide. A one-token pass takes other
        # kernels (oneDNN's one-row GEMV) whose logits differ in the last bits from the same token
        # verified among drafts, which flips near-tied argmaxes: bf16 greedy match 0.65 on
        # Spec-Bench before this (results/predictions-stop24.md). With it, speculative greedy
        # output is bitwise the target-alone greedy output; the cost is on one-token passes only
        # (target alone: +9-13 % bf16, +27-38 % fp32 per token on the 1.5B, results/pad-single-cost.log;
        # ~1.6x on a Zen 3, results/predictions-stop25.md). The router's profiler reads min_tokens
        # at each lookup and prices such a pass as the two-token pass it is (Profiler.width).
        self.target.min_tokens = 2 if exact else 1
        self.levels = [lv for name, lv in pool.items() if name != NGRAM]
        self.eos_ids = eos_ids
        self.max_seq_len = min(max_seq_len, *(lv.max_seq_len for lv in self.levels))
        self.max_batch = max_batch
        for lv in self.levels:
            lv.reserve(max_batch)
        self.rows: list[Request] = []  # live rows, rows[b].slot == b
        self.waiting: deque[Request] = deque()
        self._serial = itertools.count()

    # ------------------------------------------------------------------ requests
    def add(self, prompt: list[int], params: SamplingParams, stop_check: StopCheck | None = None,
            on_tokens: OnTokens | None = None, tag: object = None,
            on_target_probs: OnTargetProbs | None = None) -> Request:
        if not prompt:
            raise ValueError("prompt is empty")
        if len(prompt) + 1 > self.max_seq_len:
            raise ValueError(f"prompt has {len(prompt)} tokens; the context holds {self.max_seq_len} "
                             f"(prompt plus at least one new token)")
        req = Request(Generation(list(prompt)), params, params.generator(self.target.model.device), stop_check,
                      on_tokens, on_target_probs, tag, committed=list(prompt), rid=next(self._serial))
        self.waiting.append(req)
        return req

    def abort(self, req: Request) -> None:
        """Cancel a request; its slot is freed at the start of the next step."""
        req.aborted = True

    def has_work(self) -> bool:
        return bool(self.rows or self.waiting)

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 stop_checks: list[StopCheck | None] | None = None,
                 on_tokens: Callable[[int, list[int]], None] | None = None,
                 on_target_probs: Callable[[int, torch.Tensor], None] | None = None) -> list[Generation]:
        """Run every prompt to completion (at most ``max_batch`` at once). ``on_tokens(i, ids)`` streams;
        ``on_target_probs(i, p)`` receives the target's distributions at those tokens (``OnTargetProbs``)."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        stop_checks = stop_checks or [None] * len(prompts)
        cb = (lambda r, ids: on_tokens(r.tag, ids)) if on_tokens else None
        pb = (lambda r, p: on_target_probs(r.tag, p)) if on_target_probs else None
        reqs = [self.add(p, sp, sc, cb, tag=i, on_target_probs=pb)
                for i, (p, sp, sc) in enumerate(zip(prompts, params, stop_checks))]
        while self.has_work():
            self.step()
        return [r.gen for r in reqs]

    # ------------------------------------------------------------------ one step
    def step(self) -> list[Request]:
        """Advance every live row by one speculative step; return requests finished in it."""
        finished = self._schedule()
        if not self.rows:
            return finished
        rows, B = self.rows, len(self.rows)
        t0 = time.perf_counter()
        committed = [r.committed for r in rows]
        params = [r.params for r in rows]
        gens = [r.generator for r in rows]
        plans = [self.router.plan(b, self._context(b, r)) for b, r in enumerate(rows)]
        k = {b: min(p.ks[-1], self._budget(r)) if len(p.chain) > 1 else 0 for b, (p, r) in enumerate(zip(plans, rows))}
        if self.batch_cap and B > 1:  # one long draft must not make every other row wait
            cap = math.ceil(sum(k.values()) / B)
            k = {b: min(kb, cap) for b, kb in k.items()}
        caps = {b: c for b in range(B) if (c := self.router.entropy_cap(b)) is not None}

        # --- run: each group's top drafter proposes, then the target verifies every row at once
        groups: dict[str, list[int]] = defaultdict(list)
        for b, p in enumerate(plans):
            if k[b] > 0:
                groups[p.chain[-2]].append(b)
        tokens: dict[int, list[int]] = {b: [] for b in range(B)}
        qs: dict[int, torch.Tensor | None] = {b: None for b in range(B)}
        for name, gb in groups.items():
            t, q = draft(self.pool, name, gb, committed, k, plans, params, gens, self.router.observe,
                         self.target_name, caps, self.eos_ids)
            tokens.update(t)
            qs.update(q)
        lowers = [plans[b].chain[-2] if tokens[b] else None for b in range(B)]
        res = verify_round(self.target, committed, list(range(B)), [tokens[b] for b in range(B)],
                           [qs[b] for b in range(B)], params, gens, lowers, self.router.observe)

        # --- postprocess
        elapsed = time.perf_counter() - t0
        for b, r in enumerate(rows):
            st = r.gen.stats
            st.steps += 1
            st.drafted += len(tokens[b])
            st.accepted += res.n_acc[b]
            st.decode_s += elapsed
            st.chains[">".join(plans[b].chain)] += 1
            new, reason = self._truncate(r, tokens[b][:res.n_acc[b]] + [res.nxt[b]])
            r.committed.extend(new)
            r.gen.tokens.extend(new)
            if r.on_tokens is not None and new:
                r.on_tokens(r, new)
            if r.on_target_probs is not None and new:  # q_up[b][j]: p at the position of new[j]
                r.on_target_probs(r, res.q_up[b][:len(new)])
            r.gen.finish_reason = reason
            if new:
                self.router.observe_text(b, r.committed, len(new))
            self.router.observe_step(b, plans[b], elapsed, len(new), r.rid)
        for lv in self.levels:  # every level keeps only committed text (the target: committed[:-1])
            lv.sync(committed)
        done = [r for r in rows if r.done]
        for r in done:
            self._retire(r)
        return finished + done

    # ------------------------------------------------------------------ internals
    def _schedule(self) -> list[Request]:
        aborted = [r for r in self.rows if r.aborted]
        for r in aborted:
            r.gen.finish_reason = "abort"
            self._retire(r)
        if any(r.aborted for r in self.waiting):  # cancelled before admission: never prefilled
            for r in [r for r in self.waiting if r.aborted]:
                r.gen.finish_reason = "abort"
                aborted.append(r)
            self.waiting = deque(r for r in self.waiting if not r.aborted)
        while self.waiting and len(self.rows) < self.max_batch:
            self._admit(self.waiting.popleft())
        return aborted

    def _admit(self, r: Request) -> None:
        t0 = time.perf_counter()
        slot = len(self.rows)
        for lv in self.levels:
            lv.add_row(slot)  # drafters fill lazily, on first use
        self.target.prefill(slot, r.committed)  # prefill all but the last token, verified next step
        for lv in self.levels:
            if lv.twin is self.target:  # a quantized copy of the target takes its prompt keys/values
                lv.seed_from_twin(slot)
        self.router.add_row(slot)
        if hasattr(self.router, "label_row"):  # task-aware routers label the row now (tasks/routing.py)
            self.router.label_row(slot, r.committed)
        r.slot = slot
        self.rows.append(r)
        r.gen.stats.prefill_s = time.perf_counter() - t0

    def _retire(self, r: Request) -> None:
        """Free r's slot by moving the last live row into it (live rows stay packed in [0, B))."""
        b, last = r.slot, len(self.rows) - 1
        for lv in self.levels:
            lv.remove_row(b, last)
        self.router.remove_row(b, last)
        if b != last:
            self.rows[b] = self.rows[last]
            self.rows[b].slot = b
        self.rows.pop()
        r.slot = None

    def _context(self, b: int, r: Request) -> RowContext:
        """What the router may weigh for row b: tokens each non-target level still has to catch up
        on (its cache holds a prefix of committed[:-1]), and the tokens the row may still commit."""
        n = len(r.committed) - 1
        return RowContext({lv.name: n - lv.cache.lengths[b] for lv in self.levels if lv is not self.target},
                          self._budget(r) + 1)

    def _budget(self, r: Request) -> int:
        """Drafts row r may still send: its new-token budget minus the verifier's own token."""
        left = r.params.max_new_tokens - len(r.gen.tokens) - 1
        room = self.max_seq_len - len(r.committed) - 1
        return max(0, min(left, room))

    def _truncate(self, r: Request, new: list[int]) -> tuple[list[int], str | None]:
        """Cut ``new`` at EOS, the token budget or a stop string; return (kept, finish reason)."""
        if not r.params.ignore_eos:
            for i, t in enumerate(new):
                if t in self.eos_ids:
                    new = new[:i + 1]
                    break
        new = new[:r.params.max_new_tokens - len(r.gen.tokens)]
        if r.stop_check is not None:
            # Stop strings are text: commit token by token so the row ends on the token that completed one.
            for i in range(1, len(new) + 1):
                if r.stop_check(r.gen.tokens + new[:i]):
                    return new[:i], "stop"
        if new and new[-1] in self.eos_ids and not r.params.ignore_eos:
            return new, "stop"
        if len(r.gen.tokens) + len(new) >= r.params.max_new_tokens:
            return new, "length"
        if len(r.committed) + len(new) >= self.max_seq_len:
            return new, "length"
        return new, None
