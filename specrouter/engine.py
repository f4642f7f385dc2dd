"""The speculative decoding loop over one drafter and one target, with continuous batching.

Boundary: ids in, ids out. The engine knows nothing about text; stop strings reach it as a
per-request callback that inspects generated ids (``stop_check``).

One ``step()`` reads as schedule -> run -> postprocess:
  schedule:    admit waiting requests into free slots (prefill), retire aborted ones; each live
               row asks the length policy for k_b (capped by its remaining budget);
  run:         the drafter proposes; the target runs ONE forward over [last, x_1..x_k] per row;
               greedy_verify / rejection_sample decide n_accepted and the next token;
  postprocess: commit x_1..x_n + next, roll every cache back to the committed text, report
               feedback to drafter and length policy, retire finished rows (compacting slots).

Invariant after every step, for each live row b with C_b committed tokens (prompt + output):
the target's cache holds exactly committed[b][:C_b - 1]; the last committed token is the input of
the next verification. Drafters keep their own prefix of committed[b] (see drafters/).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .drafters.base import Drafter, one_hot_q
from .model.transformer import Transformer
from .sampling import SamplingParams, probs_from_logits
from .speclen import FixedLength, StepFeedback
from .verify import greedy_verify, rejection_sample

StopCheck = Callable[[list[int]], bool]  # generated ids -> True when a stop string has appeared
OnTokens = Callable[["Request", list[int]], None]


@dataclass
class GenerationStats:
    steps: int = 0  # target forward passes after prefill
    drafted: int = 0
    accepted: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

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
    tag: object = None  # caller's handle (index, HTTP request id...)
    committed: list[int] = field(default_factory=list)
    slot: int | None = None
    aborted: bool = False

    @property
    def done(self) -> bool:
        return self.gen.finish_reason is not None


class SpeculativeEngine:
    def __init__(self, target: Transformer, drafter: Drafter | None = None, length_policy=None,
                 eos_ids: frozenset[int] = frozenset(), vocab: int | None = None, max_seq_len: int = 4096,
                 max_batch: int = 8):
        self.target, self.drafter = target, drafter
        self.length_policy = length_policy or FixedLength(4 if drafter is not None else 0)
        self.eos_ids = eos_ids
        self.vocab = vocab or target.args.vocab_size
        self.max_seq_len = min(max_seq_len, target.args.max_position)
        self.max_batch = max_batch
        self.cache = target.new_cache(max_batch, self.max_seq_len)
        if drafter is not None:
            drafter.reserve(max_batch)
        self.rows: list[Request] = []  # live rows, rows[b].slot == b
        self.waiting: deque[Request] = deque()

    # ------------------------------------------------------------------ requests
    def add(self, prompt: list[int], params: SamplingParams, stop_check: StopCheck | None = None,
            on_tokens: OnTokens | None = None, tag: object = None) -> Request:
        if not prompt:
            raise ValueError("prompt is empty")
        if len(prompt) + 1 > self.max_seq_len:
            raise ValueError(f"prompt has {len(prompt)} tokens; the context holds {self.max_seq_len} "
                             f"(prompt plus at least one new token)")
        req = Request(Generation(list(prompt)), params, params.generator(self.target.device), stop_check, on_tokens,
                      tag, committed=list(prompt))
        self.waiting.append(req)
        return req

    def abort(self, req: Request) -> None:
        """Cancel a request; its slot is freed at the start of the next step."""
        req.aborted = True

    def has_work(self) -> bool:
        return bool(self.rows or self.waiting)

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 stop_checks: list[StopCheck | None] | None = None,
                 on_tokens: Callable[[int, list[int]], None] | None = None) -> list[Generation]:
        """Run every prompt to completion (at most ``max_batch`` at once). ``on_tokens(i, ids)`` streams."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        stop_checks = stop_checks or [None] * len(prompts)
        cb = (lambda r, ids: on_tokens(r.tag, ids)) if on_tokens else None
        reqs = [self.add(p, sp, sc, cb, tag=i) for i, (p, sp, sc) in enumerate(zip(prompts, params, stop_checks))]
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
        k = [min(self.length_policy.propose(b), self._budget(r)) if self.drafter else 0 for b, r in enumerate(rows)]

        # --- run: draft, then one verification pass of the target over [last, drafts]
        draft = self.drafter.propose(committed, k, params, gens) if self.drafter and max(k) > 0 else None
        n_draft = draft.n if draft is not None else [0] * B
        last = torch.tensor([c[-1] for c in committed], dtype=torch.long)[:, None]
        inputs = torch.cat([last, draft.tokens.cpu()], 1) if draft is not None else last  # [B, K+1]
        dev = self.target.device
        logits = self.target(inputs.to(dev), self.cache, n_new=[n + 1 for n in n_draft])[..., :self.vocab]
        dtok = inputs[:, 1:].to(dev)  # [B, K]
        if all(p.greedy for p in params):
            n_acc, nxt = greedy_verify(dtok, logits.argmax(-1), n_draft)
        else:
            p = torch.stack([probs_from_logits(logits[b], params[b]) for b in range(B)])  # [B, K+1, V]
            q = draft.q if draft is not None and draft.q is not None else one_hot_q(dtok, self.vocab)
            n_acc, nxt = rejection_sample(dtok, q, p, n_draft, gens)

        # --- postprocess
        elapsed = time.perf_counter() - t0
        for b, r in enumerate(rows):
            st = r.gen.stats
            st.steps += 1
            st.drafted += n_draft[b]
            st.accepted += n_acc[b]
            st.decode_s += elapsed
            new, reason = self._truncate(r, inputs[b, 1:1 + n_acc[b]].tolist() + [nxt[b]])
            r.committed.extend(new)
            r.gen.tokens.extend(new)
            if r.on_tokens is not None and new:
                r.on_tokens(r, new)
            r.gen.finish_reason = reason
            if reason is None:
                self.cache.rollback(b, len(r.committed) - 1)  # drop rejected drafts: keep committed[:-1]
                self.length_policy.observe(b, StepFeedback(n_draft[b], n_acc[b]))
        if self.drafter is not None:
            self.drafter.observe(committed, n_acc)
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
        while self.waiting and self.waiting[0].aborted:
            r = self.waiting.popleft()
            r.gen.finish_reason = "abort"
            aborted.append(r)
        while self.waiting and len(self.rows) < self.max_batch:
            self._admit(self.waiting.popleft())
        return aborted

    def _admit(self, r: Request) -> None:
        t0 = time.perf_counter()
        slot = len(self.rows)
        self.cache.reset(slot)
        if len(r.committed) > 1:  # prefill all but the last token, which the first step verifies from
            self.target(torch.tensor([r.committed[:-1]], device=self.target.device), self.cache,
                        logits_for="last", row0=slot)
        if self.drafter is not None:
            self.drafter.add_row(slot, r.committed)
        self.length_policy.add_row(slot)
        r.slot = slot
        self.rows.append(r)
        r.gen.stats.prefill_s = time.perf_counter() - t0

    def _retire(self, r: Request) -> None:
        """Free r's slot by moving the last live row into it (live rows stay packed in [0, B))."""
        b, last = r.slot, len(self.rows) - 1
        if b != last:
            self.cache.move_row(last, b)
            self.rows[b] = self.rows[last]
            self.rows[b].slot = b
        if self.drafter is not None:
            self.drafter.remove_row(b, last)
        self.length_policy.remove_row(b, last)
        self.rows.pop()
        r.slot = None

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
        budget = r.params.max_new_tokens - len(r.gen.tokens)
        new = new[:budget]
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
