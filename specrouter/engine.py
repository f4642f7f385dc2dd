"""The speculative decoding loop over one drafter and one target, for a batch of rows.

Boundary: ids in, ids out. The engine knows nothing about text; stop strings reach it as a
per-request callback that inspects generated ids (``stop_check``).

One ``step()`` reads as schedule -> run -> postprocess:
  schedule:    each live row asks the length policy for k_b (capped by its remaining budget);
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
from dataclasses import dataclass, field
from typing import Callable

import torch

from .drafters.base import Drafter, one_hot_q, pad_rows
from .model.transformer import Transformer
from .sampling import SamplingParams, probs_from_logits
from .speclen import FixedLength, StepFeedback
from .verify import greedy_verify, rejection_sample

StopCheck = Callable[[list[int]], bool]  # generated ids -> True when a stop string has appeared


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
    finish_reason: str | None = None  # "stop" (EOS or stop string) or "length"
    stats: GenerationStats = field(default_factory=GenerationStats)


@dataclass
class _Row:
    """Live state of one request in a batch slot."""

    gen: Generation
    committed: list[int]
    params: SamplingParams
    generator: torch.Generator
    stop_check: StopCheck | None
    index: int  # position in the caller's request list


class SpeculativeEngine:
    def __init__(self, target: Transformer, drafter: Drafter | None = None, length_policy=None,
                 eos_ids: frozenset[int] = frozenset(), vocab: int | None = None, max_seq_len: int = 4096):
        self.target, self.drafter = target, drafter
        self.length_policy = length_policy or FixedLength(4 if drafter is not None else 0)
        self.eos_ids = eos_ids
        self.vocab = vocab or target.args.vocab_size
        self.max_seq_len = min(max_seq_len, target.args.max_position)
        self.cache = None

    # ------------------------------------------------------------------ public API
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 stop_checks: list[StopCheck | None] | None = None,
                 on_tokens: Callable[[int, list[int]], None] | None = None) -> list[Generation]:
        """Generate for every prompt as one batch. ``on_tokens(i, ids)`` streams newly committed ids."""
        n = len(prompts)
        params = params if isinstance(params, list) else [params] * n
        stop_checks = stop_checks or [None] * n
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) + 1 > self.max_seq_len:
                raise ValueError(f"prompt {i} has {len(p)} tokens; the context holds {self.max_seq_len}")
        rows = [_Row(Generation(list(p)), list(p), sp, sp.generator(self.target.device), sc, i)
                for i, (p, sp, sc) in enumerate(zip(prompts, params, stop_checks))]
        t0 = time.perf_counter()
        self._start(rows)
        prefill = time.perf_counter() - t0
        for r in rows:
            r.gen.stats.prefill_s = prefill
        results: list[Generation] = [r.gen for r in rows]
        while rows:
            self.step(rows, on_tokens)
        return results

    # ------------------------------------------------------------------ internals
    def _start(self, rows: list[_Row]) -> None:
        B = len(rows)
        if self.cache is None or self.cache.batch_size < B:
            self.cache = self.target.new_cache(B, self.max_seq_len)
        self.cache.reset()
        heads = [r.committed[:-1] for r in rows]
        if max(len(h) for h in heads):
            self.target(pad_rows(heads, device=self.target.device), self.cache, n_new=[len(h) for h in heads],
                        logits_for="last")
        if self.drafter is not None:
            self.drafter.start([r.committed for r in rows])
        self.length_policy.start(B)

    def _budget(self, r: _Row) -> int:
        """Drafts row r may still send: its new-token budget minus the verifier's own token."""
        left = r.params.max_new_tokens - len(r.gen.tokens) - 1
        room = self.max_seq_len - len(r.committed) - 1
        return max(0, min(left, room))

    def step(self, rows: list[_Row], on_tokens=None) -> None:
        t0 = time.perf_counter()
        B = len(rows)
        committed = [r.committed for r in rows]
        params = [r.params for r in rows]
        gens = [r.generator for r in rows]
        # --- schedule
        k = [min(self.length_policy.propose(b), self._budget(r)) if self.drafter else 0
             for b, r in enumerate(rows)]
        # --- run: draft, then one verification pass of the target over [last, drafts]
        if self.drafter is not None and max(k) > 0:
            draft = self.drafter.propose(committed, k, params, gens)
        else:
            draft = None
        n_draft = draft.n if draft is not None else [0] * B
        K = draft.tokens.shape[1] if draft is not None else 0
        last = torch.tensor([c[-1] for c in committed], dtype=torch.long)[:, None]
        inputs = torch.cat([last, draft.tokens.cpu()], 1) if K else last  # [B, K+1]
        logits = self.target(inputs.to(self.target.device), self.cache, n_new=[n + 1 for n in n_draft])
        logits = logits[..., :self.vocab]  # [B, K+1, V]
        if all(p.greedy for p in params):
            n_acc, nxt = greedy_verify(inputs[:, 1:].to(logits.device), logits.argmax(-1), n_draft)
        else:
            p = torch.stack([probs_from_logits(logits[b], params[b]) for b in range(B)])  # [B, K+1, V]
            dtok = inputs[:, 1:].to(logits.device)
            q = draft.q if draft is not None and draft.q is not None else one_hot_q(dtok, self.vocab)
            n_acc, nxt = rejection_sample(dtok, q, p, n_draft, gens)
        # --- postprocess
        elapsed = time.perf_counter() - t0
        done = []
        for b, r in enumerate(rows):
            new = inputs[b, 1:1 + n_acc[b]].tolist() + [nxt[b]]
            st = r.gen.stats
            st.steps += 1
            st.drafted += n_draft[b]
            st.accepted += n_acc[b]
            st.decode_s += elapsed
            new, reason = self._truncate(r, new)
            r.committed.extend(new)
            r.gen.tokens.extend(new)
            if on_tokens is not None and new:
                on_tokens(r.index, new)
            if reason is not None:
                r.gen.finish_reason = reason
                done.append(b)
            else:
                # target cache: drop the rejected drafts, keep committed[:-1]
                self.cache.rollback(b, len(r.committed) - 1)
                self.length_policy.observe(b, StepFeedback(n_draft[b], n_acc[b]))
        if self.drafter is not None:
            self.drafter.observe(committed, n_acc)
        for b in reversed(done):  # retire finished rows, keeping live rows packed in [0, B')
            last_row = len(rows) - 1
            if b != last_row:
                self.cache.move_row(last_row, b)
            if self.drafter is not None:
                self.drafter.remove_row(b, last_row)
            self.length_policy.remove_row(b, last_row)
            rows[b] = rows[last_row]
            rows.pop()

    def _truncate(self, r: _Row, new: list[int]) -> tuple[list[int], str | None]:
        """Cut ``new`` at EOS, the token budget or a stop string; return (kept, finish reason)."""
        if not r.params.ignore_eos:
            for i, t in enumerate(new):
                if t in self.eos_ids:
                    return new[:i + 1], "stop"
        budget = r.params.max_new_tokens - len(r.gen.tokens)
        reason = None
        if len(new) >= budget:
            new, reason = new[:budget], "length"
        if r.stop_check is not None:
            # Stop strings are text: commit token by token so the row ends on the token that completed one.
            for i in range(1, len(new) + 1):
                if r.stop_check(r.gen.tokens + new[:i]):
                    return new[:i], "stop"
        if reason is None and len(r.committed) + len(new) >= self.max_seq_len:
            reason = "length"
        return new, reason
