"""``specrouter bench-load``: a bounded load test of the OpenAI server, loopback only.

    specrouter bench-load --chain 0.5b>1.5b --clients 32 --duration 120
    python -m specrouter.bench.load --url http://127.0.0.1:8000 --clients 8 --duration 15

1. Start ``specrouter serve`` on 127.0.0.1 (or use ``--url`` of a running loopback server), by
   default with ``--no-batch-cap`` so that a seeded request samples the same text in any batch.
2. Build a pool of ``--pool`` distinct requests: completions and chat, greedy and seeded sampling,
   some with stop strings, max_tokens drawn from [--min-tokens, --max-tokens].
3. Sequential phase: every pool request once, non-streamed, one at a time. Its texts are the
   references; its tokens / summed latency is the one-at-a-time throughput.
4. Concurrent phase: ``--clients`` clients stream requests taken round-robin from the pool until
   ``--duration`` seconds have passed (no new request after that; in-flight ones finish, and a hard
   deadline of duration + ``--grace`` ends the phase). With ``--disconnect-fraction f`` a client
   drops a fraction f of its streams after a random number of chunks.
5. Checks: each complete stream's text equals its reference (else *lost*: the reference with pieces
   missing, *duplicated*: the reference with pieces repeated or added, *mismatched*: any other
   difference, or equal text with a different completion_tokens or finish_reason);
   a dropped stream's text must be a prefix of its reference; afterwards /health answers 200, the
   batch drains (batch occupancy and queue depth reach 0) and a fresh request still matches.

Prints a summary and, last, one JSON line; the exit code is 1 when any check fails. Boundary:
client side only, over HTTP; the server is a separate process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from ..server.config import is_loopback

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in two sentences why the sky is blue.",
    "List five prime numbers and explain how you found them.",
    "def quicksort(xs):",
    "Translate to French: The cat sleeps on the warm windowsill.",
    "Summarize the plot of a heist movie in three lines.",
    "What is the capital of Australia? Answer briefly.",
    "Write a haiku about compilers.",
    "SELECT name, COUNT(*) FROM orders",
    "Give three tips for writing readable code.",
    "The quick brown fox",
    "Describe how a hash map handles collisions.",
]


@dataclass(frozen=True)
class LoadConfig:
    chain: str = "0.5b>1.5b"
    dtype: str = "auto"
    url: str | None = None  # a running server on loopback instead of starting one
    clients: int = 32
    duration: float = 120.0
    grace: float = 120.0
    pool: int = 32
    min_tokens: int = 16
    max_tokens: int = 64
    disconnect_fraction: float = 0.0
    max_batch: int = 8
    max_queue: int = 256
    spec_len: str | None = None
    batch_cap: bool = False  # the engine's batch cap makes seeded samples depend on the batch (see serve --help)
    threads: int | None = None
    seed: int = 0
    server_log: str | None = None

    def __post_init__(self) -> None:
        if self.url is not None:
            host = urlparse(self.url).hostname or ""
            if urlparse(self.url).scheme != "http" or not is_loopback(host):
                raise ValueError(f"--url must be http:// on loopback (127.0.0.1/localhost), got {self.url!r}")
        if not 1 <= self.clients <= 256:
            raise ValueError(f"--clients must be in [1, 256], got {self.clients}")
        if not 0 < self.duration <= 3600:
            raise ValueError(f"--duration must be in (0, 3600] seconds, got {self.duration}")
        if not 0 < self.grace <= 3600:
            raise ValueError(f"--grace must be in (0, 3600] seconds, got {self.grace}")
        if not 1 <= self.pool <= 10000:
            raise ValueError(f"--pool must be in [1, 10000], got {self.pool}")
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 1 <= --min-tokens <= --max-tokens, got {self.min_tokens}, {self.max_tokens}")
        if not 0.0 <= self.disconnect_fraction <= 1.0:
            raise ValueError(f"--disconnect-fraction must be in [0, 1], got {self.disconnect_fraction}")


@dataclass(frozen=True)
class Spec:
    """One pool request."""

    chat: bool
    body: dict

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"


@dataclass
class Outcome:
    text: str
    tokens: int | None
    finish: str | None
    seconds: float
    dropped: bool = False


@dataclass
class Report:
    sequential_requests: int = 0
    sequential_tokens: int = 0
    sequential_seconds: float = 0.0
    streams: int = 0
    complete: int = 0
    dropped: int = 0
    concurrent_tokens: int = 0
    concurrent_seconds: float = 0.0
    mean_batch_rows: float = 0.0
    errors: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0
    dropped_not_prefix: int = 0
    drained: bool = False
    healthy_after: bool = False
    fresh_request_ok: bool = False
    error_samples: list[str] = field(default_factory=list)

    @property
    def sequential_tps(self) -> float:
        return self.sequential_tokens / self.sequential_seconds if self.sequential_seconds else 0.0

    @property
    def concurrent_tps(self) -> float:
        return self.concurrent_tokens / self.concurrent_seconds if self.concurrent_seconds else 0.0

    @property
    def ok(self) -> bool:
        return (self.errors == self.lost == self.duplicated == self.mismatched == self.dropped_not_prefix == 0
                and self.drained and self.healthy_after and self.fresh_request_ok and self.complete > 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "sequential_tps": round(self.sequential_tps, 2),
                "concurrent_tps": round(self.concurrent_tps, 2),
                "speedup": round(self.concurrent_tps / self.sequential_tps, 3) if self.sequential_tps else None,
                "ok": self.ok}


def build_pool(model: str, cfg: LoadConfig) -> list[Spec]:
    rng = random.Random(cfg.seed)
    pool = []
    for i in range(cfg.pool):
        prompt, chat, mode = PROMPTS[i % len(PROMPTS)], i % 2 == 1, i % 3
        body: dict = {"model": model, "max_tokens": rng.randint(cfg.min_tokens, cfg.max_tokens)}
        body["temperature"] = 0.0 if mode == 0 else (0.8 if mode == 1 else 1.0)
        if mode == 2:
            body["top_p"] = 0.9
        if mode != 0:
            body["seed"] = 1000 * cfg.seed + i
        if i % 4 == 3:
            body["stop"] = ["\n\n", "."]
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        pool.append(Spec(chat, body))
    return pool


class StreamError(Exception):
    pass


async def complete_once(http, spec: Spec) -> Outcome:
    t0 = time.perf_counter()
    r = await http.post(spec.path, json=spec.body)
    if r.status_code != 200:
        raise StreamError(f"HTTP {r.status_code}: {r.text[:200]}")
    obj = r.json()
    ch = obj["choices"][0]
    text = ch["message"]["content"] if spec.chat else ch["text"]
    return Outcome(text, obj["usage"]["completion_tokens"], ch["finish_reason"], time.perf_counter() - t0)


async def stream_once(http, spec: Spec, drop_after: int | None) -> Outcome:
    """Stream one request; with ``drop_after`` leave (closing the connection) after that many deltas."""
    t0 = time.perf_counter()
    body = {**spec.body, "stream": True, "stream_options": {"include_usage": True}}
    parts: list[str] = []
    tokens = finish = None
    async with http.stream("POST", spec.path, json=body) as r:
        if r.status_code != 200:
            raise StreamError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                return Outcome("".join(parts), tokens, finish, time.perf_counter() - t0)
            obj = json.loads(data)
            if "error" in obj:
                raise StreamError(f"in-stream error: {obj['error'].get('message')}")
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
            for ch in obj["choices"]:
                delta = ch["delta"].get("content") if spec.chat else ch["text"]
                if delta:
                    parts.append(delta)
                finish = ch.get("finish_reason") or finish
            if drop_after is not None and len(parts) >= drop_after and finish is None:
                return Outcome("".join(parts), None, None, time.perf_counter() - t0, dropped=True)
    raise StreamError("stream ended without data: [DONE]")


def _subsequence(short: str, long: str) -> bool:
    """``short`` is ``long`` with some characters left out (what lost pieces of a stream look like)."""
    it = iter(long)
    return all(c in it for c in short)


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


async def _drained(http, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (await http.get("/metrics")).text
        if _metric(text, "specrouter_batch_occupancy") == 0 and _metric(text, "specrouter_queue_depth") == 0:
            return True
        await asyncio.sleep(0.2)
    return False


async def run_against(url: str, cfg: LoadConfig, log=print) -> Report:
    import httpx

    rep = Report()
    timeout = httpx.Timeout(cfg.duration + cfg.grace)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        pool = build_pool(model, cfg)
        refs = []
        for spec in pool:  # sequential phase: references and one-at-a-time throughput
            out = await complete_once(http, spec)
            refs.append(out)
            rep.sequential_tokens += out.tokens
            rep.sequential_seconds += out.seconds
        rep.sequential_requests = len(pool)
        log(f"[load] sequential: {len(pool)} requests, {rep.sequential_tokens} tokens in "
            f"{rep.sequential_seconds:.1f}s = {rep.sequential_tps:.1f} tok/s")
        m0 = (await http.get("/metrics")).text
        steps0 = (_metric(m0, "specrouter_step_batch_size_sum"), _metric(m0, "specrouter_step_batch_size_count"))

        counter = iter(range(10 ** 9))
        t_start = time.monotonic()
        t_stop = t_start + cfg.duration
        results: list[tuple[int, Outcome]] = []

        async def client(cid: int) -> None:
            rng = random.Random(cfg.seed * 7919 + cid)
            async with httpx.AsyncClient(base_url=url, timeout=timeout) as own:  # one connection per client
                while time.monotonic() < t_stop:
                    i = next(counter) % len(pool)
                    drop = rng.randint(1, 6) if rng.random() < cfg.disconnect_fraction else None
                    try:
                        results.append((i, await stream_once(own, pool[i], drop)))
                    except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                        rep.errors += 1
                        if len(rep.error_samples) < 5:
                            rep.error_samples.append(f"{type(e).__name__}: {e}")

        tasks = [asyncio.ensure_future(client(c)) for c in range(cfg.clients)]
        _, pending = await asyncio.wait(tasks, timeout=cfg.duration + cfg.grace)
        for t in pending:  # past the hard deadline
            t.cancel()
            rep.errors += 1
            rep.error_samples.append("client still running at the hard deadline")
        rep.concurrent_seconds = time.monotonic() - t_start
        for i, out in results:
            ref = refs[i]
            rep.streams += 1
            if out.dropped:
                rep.dropped += 1
                rep.dropped_not_prefix += not ref.text.startswith(out.text)
                continue
            rep.complete += 1
            rep.concurrent_tokens += out.tokens or 0
            if out.text != ref.text:
                if len(out.text) < len(ref.text) and _subsequence(out.text, ref.text):
                    rep.lost += 1
                elif len(out.text) > len(ref.text) and _subsequence(ref.text, out.text):
                    rep.duplicated += 1
                else:
                    rep.mismatched += 1
            elif out.tokens != ref.tokens or out.finish != ref.finish:
                rep.mismatched += 1
        m1 = (await http.get("/metrics")).text
        steps = (_metric(m1, "specrouter_step_batch_size_sum") - steps0[0],
                 _metric(m1, "specrouter_step_batch_size_count") - steps0[1])
        rep.mean_batch_rows = steps[0] / steps[1] if steps[1] else 0.0
        rep.drained = await _drained(http)
        rep.healthy_after = (await http.get("/health")).status_code == 200
        again = await complete_once(http, pool[0])
        rep.fresh_request_ok = again.text == refs[0].text
    log(f"[load] concurrent: {cfg.clients} clients x {cfg.duration:.0f}s: {rep.streams} streams ({rep.complete} "
        f"complete, {rep.dropped} dropped on purpose), {rep.concurrent_tokens} tokens in "
        f"{rep.concurrent_seconds:.1f}s = {rep.concurrent_tps:.1f} tok/s "
        f"({rep.concurrent_tps / rep.sequential_tps if rep.sequential_tps else 0:.2f}x one-at-a-time), "
        f"mean rows per step {rep.mean_batch_rows:.2f}")
    log(f"[load] errors {rep.errors} | lost {rep.lost} | duplicated {rep.duplicated} | mismatched "
        f"{rep.mismatched} | dropped-not-prefix {rep.dropped_not_prefix} | drained {rep.drained} | healthy "
        f"{rep.healthy_after} | fresh request ok {rep.fresh_request_ok}")
    for s in rep.error_samples:
        log(f"[load]   error: {s}")
    return rep


def run(cfg: LoadConfig, log=print) -> Report:
    if cfg.url is not None:
        return asyncio.run(run_against(cfg.url, cfg, log))
    from ..server.launch import ServerProcess

    server_log = cfg.server_log
    if server_log is None:
        fd, server_log = tempfile.mkstemp(prefix="specrouter-serve-", suffix=".log")
        os.close(fd)
    args = ["--chain", cfg.chain, "--dtype", cfg.dtype, "--max-batch", str(cfg.max_batch), "--max-queue",
            str(cfg.max_queue), "--log-level", "warning", "--no-access-log"]
    if cfg.spec_len:
        args += ["--spec-len", cfg.spec_len]
    if not cfg.batch_cap:
        args.append("--no-batch-cap")
    if cfg.threads:
        args += ["--threads", str(cfg.threads)]
    log(f"[load] starting server: chain {cfg.chain}, max batch {cfg.max_batch} (log: {server_log})")
    with ServerProcess(args, log=server_log) as srv:
        rep = asyncio.run(run_against(srv.url, cfg, log))
    if cfg.server_log is None and rep.ok:  # keep the log only when something went wrong
        os.unlink(server_log)
    return rep


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = LoadConfig()
    p.add_argument("--chain", default=d.chain, help="chain for the server this starts (default %(default)s)")
    p.add_argument("--dtype", default=d.dtype)
    p.add_argument("--url", default=None, help="use a running server on loopback instead of starting one")
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--duration", type=float, default=d.duration, help="seconds of new requests (default %(default)s)")
    p.add_argument("--grace", type=float, default=d.grace, help="extra seconds before the hard deadline")
    p.add_argument("--pool", type=int, default=d.pool, help="distinct requests (each also run one at a time)")
    p.add_argument("--min-tokens", type=int, default=d.min_tokens)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--disconnect-fraction", type=float, default=d.disconnect_fraction,
                   help="fraction of streams a client drops mid-way (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--max-queue", type=int, default=d.max_queue)
    p.add_argument("--spec-len", default=d.spec_len)
    p.add_argument("--batch-cap", action="store_true",
                   help="start the server with the engine's batch cap (seeded sampled streams may then differ "
                        "from their one-at-a-time reference)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--server-log", default=None)
    p.add_argument("--json-out", default=None, help="also write the JSON report here")


def run_from_args(a) -> int:
    cfg = LoadConfig(**{k: getattr(a, k) for k in LoadConfig.__dataclass_fields__})
    rep = run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    out = rep.to_dict()
    print(json.dumps(out))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if rep.ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m specrouter.bench.load", description=__doc__.splitlines()[0])
    add_arguments(p)
    try:
        return run_from_args(p.parse_args(argv))
    except ValueError as e:
        print(f"specrouter: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
