"""Prometheus metrics of one server (``GET /metrics``, text exposition format).

Boundary: metric definitions and the places that feed them: per HTTP response (app middleware),
per engine step and finished generation (worker), per verification of one level by the level
above (``FeedbackTap``, wrapped around the engine's router). Each ``Metrics`` has its own
``CollectorRegistry``, so several apps in one process never share counters.

Names (all prefixed ``specrouter_``):
  requests_total{route,status}              HTTP responses by route and status code
  generations_total{reason}                 finished generations: stop, length, abort, error
  prompt_tokens_total, generation_tokens_total
  time_per_output_token_seconds             per request: decode time / new tokens
  time_to_first_token_seconds, request_duration_seconds   (submit -> first token / -> done)
  drafted_tokens_total{level,verifier}, accepted_tokens_total{level,verifier},
  acceptance_rate{level,verifier}           per level of the chain and the level that verified it
  chain_steps_total{chain}                  engine steps by the chain a row ran on (router choices)
  speculation_length                        drafts the target verified per row per step
  accepted_per_step                         of those, accepted per row per step
  engine_steps_total, step_batch_size       steps and live rows in each
  batch_occupancy, batch_capacity, queue_depth   gauges: live rows, max rows, requests waiting for a row
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, chain: str, max_batch: int):
        r = self.registry = CollectorRegistry()
        self.chain_name = chain
        self.requests = Counter("specrouter_requests", "HTTP responses by route and status", ["route", "status"],
                                registry=r)
        self.generations = Counter("specrouter_generations", "Finished generations by finish reason", ["reason"],
                                   registry=r)
        self.prompt_tokens = Counter("specrouter_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("specrouter_generation_tokens", "Generated tokens", registry=r)
        self.time_per_token = Histogram("specrouter_time_per_output_token_seconds",
                                        "Decode time per generated token, per request", buckets=_TIME_BUCKETS,
                                        registry=r)
        self.ttft = Histogram("specrouter_time_to_first_token_seconds", "Submit to first generated token",
                              buckets=_TIME_BUCKETS, registry=r)
        self.duration = Histogram("specrouter_request_duration_seconds", "Submit to finished",
                                  buckets=_TIME_BUCKETS, registry=r)
        self.drafted = Counter("specrouter_drafted_tokens", "Tokens a level drafted for the level above",
                               ["level", "verifier"], registry=r)
        self.accepted = Counter("specrouter_accepted_tokens", "Drafted tokens the level above accepted",
                                ["level", "verifier"], registry=r)
        self.acceptance = Gauge("specrouter_acceptance_rate", "Accepted / drafted since start, per level pair",
                                ["level", "verifier"], registry=r)
        self.chain_steps = Counter("specrouter_chain_steps", "Row-steps by the chain the row ran on", ["chain"],
                                   registry=r)
        self.spec_len = Histogram("specrouter_speculation_length", "Drafts the target verified per row per step",
                                  buckets=tuple(range(0, 17)), registry=r)
        self.accepted_step = Histogram("specrouter_accepted_per_step", "Drafts accepted per row per step",
                                       buckets=tuple(range(0, 17)), registry=r)
        self.steps = Counter("specrouter_engine_steps", "Engine steps that ran a forward", registry=r)
        self.step_batch = Histogram("specrouter_step_batch_size", "Live rows in each engine step",
                                    buckets=tuple(range(1, max_batch + 1)), registry=r)
        self.batch = Gauge("specrouter_batch_occupancy", "Live rows in the running batch", registry=r)
        self.capacity = Gauge("specrouter_batch_capacity", "Maximum rows in the batch", registry=r)
        self.queue = Gauge("specrouter_queue_depth", "Requests waiting for a batch row", registry=r)
        self.capacity.set(max_batch)
        self._pairs: dict[tuple[str, str], list[int]] = {}  # (level, verifier) -> [drafted, accepted]

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ feeds (engine thread)
    def step(self, rows: list[tuple[int, int]]) -> None:
        """One engine step: (drafted, accepted) of every row that took part."""
        if not rows:
            return
        self.steps.inc()
        self.step_batch.observe(len(rows))
        for d, a in rows:
            self.spec_len.observe(d)
            self.accepted_step.observe(a)

    def verified(self, level: str, verifier: str, n_drafted: int, n_accepted: int) -> None:
        tot = self._pairs.setdefault((level, verifier), [0, 0])
        tot[0] += n_drafted
        tot[1] += n_accepted
        self.drafted.labels(level, verifier).inc(n_drafted)
        self.accepted.labels(level, verifier).inc(n_accepted)
        self.acceptance.labels(level, verifier).set(tot[1] / tot[0] if tot[0] else 0.0)

    def finished(self, gen, reason: str, submitted: float, now: float) -> None:
        st, n = gen.stats, len(gen.tokens)
        self.generations.labels(reason).inc()
        self.prompt_tokens.inc(len(gen.prompt))
        self.generation_tokens.inc(n)
        self.duration.observe(now - submitted)
        if n and reason != "abort":
            self.time_per_token.observe(st.decode_s / n)
        for chain, steps in (getattr(st, "chains", None) or {self.chain_name: st.steps}).items():
            self.chain_steps.labels(chain).inc(steps)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)


class FeedbackTap:
    """Wraps the engine's router: forwards everything, and counts each ``observe(PairFeedback)``.

    The engine reports every verification of a level by the level above to ``router.observe``;
    that is the only place per-level acceptance exists, so the tap reads it there.
    """

    def __init__(self, router, metrics: Metrics):
        self._router, self._metrics = router, metrics

    def observe(self, fb) -> None:
        self._metrics.verified(fb.lower, fb.upper, fb.n_drafted, fb.n_accepted)
        self._router.observe(fb)

    def __getattr__(self, name):
        return getattr(self._router, name)
