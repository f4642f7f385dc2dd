"""The engine thread: continuous batching behind a thread-safe inbox, results bridged to asyncio.

Threads and ownership:
  * the event loop (uvicorn) calls ``submit`` and ``cancel``; they only put commands into a
    ``queue.SimpleQueue`` and never touch the engine;
  * one engine thread owns ``SpeculativeEngine``: between steps it drains the inbox (an ``add``
    joins the batch at the next step, an ``abort`` frees its row at the next step), then runs one
    ``step()``. Every row keeps its own caches, sampler and speculation state inside the engine;
  * results go back as events on each job's ``asyncio.Queue``, always through
    ``loop.call_soon_threadsafe``: ("tokens", ids) for streams, then exactly one of
    ("done", Generation) or ("error", APIError).

Admission control: at most ``max_batch + max_queue`` requests are outstanding (submitted and not
finished); ``submit`` beyond that raises a 429 ``APIError``. If a step raises, every request in the
engine gets a 500, the engine is reset by aborting them, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

from ..engine import Request
from ..sampling import SamplingParams
from .metrics import Metrics
from .protocol import APIError

log = logging.getLogger("specrouter.server")


@dataclass(eq=False)
class Job:
    """One HTTP request's handle on its generation; ``events`` is read on the event loop."""

    prompt: list[int]
    params: SamplingParams
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    submitted: float
    req: Request | None = None  # set by the engine thread once added
    first_token: float | None = None
    seen: tuple[int, int, int] = (0, 0, 0)  # (steps, drafted, accepted) already fed to the metrics


class EngineWorker:
    def __init__(self, sr, metrics: Metrics, max_queue: int):
        self.sr, self.engine, self.metrics = sr, sr.engine, metrics
        self.max_batch, self.max_queue = self.engine.max_batch, max_queue
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outstanding = 0  # submitted and not finished (running rows + waiting)
        self.live_rows = 0  # rows in the running batch after the last step
        self._active: set[Job] = set()  # engine thread only: added to the engine and not finished
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: str | None = None

    # ------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="specrouter-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._inbox.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def healthy(self) -> bool:
        return (self._thread is not None and self._thread.is_alive() and self.failure is None
                and not self._stopping.is_set())

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def submit(self, prompt: list[int], params: SamplingParams, stream: bool) -> Job:
        """Queue a generation (call on the event loop); raises APIError 429 when full, 503 when down."""
        if not self.healthy:
            raise APIError(503, f"the engine is not running{': ' + self.failure if self.failure else ''}",
                           code="engine_unavailable")
        with self._lock:
            if self._outstanding >= self.max_batch + self.max_queue:
                raise APIError(429, f"the server is at capacity ({self.max_batch} running, {self.max_queue} "
                                    f"waiting); retry later", code="queue_full")
            self._outstanding += 1
            self._set_queue_gauge()
        job = Job(list(prompt), params, stream, asyncio.get_running_loop(), asyncio.Queue(), time.perf_counter())
        self._inbox.put(("add", job))
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: free the job's row at the next step (no-op once it finished)."""
        self._inbox.put(("abort", job))

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._drain(block=not self.engine.has_work())
                if self._stopping.is_set() or not self.engine.has_work():
                    continue
                finished = self.engine.step()
                self._after_step(finished)
            except Exception as e:  # noqa: BLE001 - one failing step must not end the server
                log.exception("engine step failed")
                self._recover(e)
        self._shutdown()

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, cmd: str, job: Job | None) -> None:
        if cmd == "add":
            try:
                job.req = self.engine.add(job.prompt, job.params, self.sr.stop_check(job.params.stop),
                                          self._on_tokens, tag=job)
            except ValueError as e:  # the parser checks lengths first; this is the engine's own guard
                self._close(job, ("error", APIError(400, str(e), "prompt")))
                return
            self._active.add(job)
        elif cmd == "abort" and job in self._active:
            self.engine.abort(job.req)

    def _on_tokens(self, req: Request, ids: list[int]) -> None:
        job: Job = req.tag
        if job.first_token is None:
            job.first_token = time.perf_counter()
            self.metrics.first_token(job.first_token - job.submitted)
        if job.stream:
            self._post(job, ("tokens", ids))

    def _after_step(self, finished: list[Request]) -> None:
        rows = []
        for job in self._active:
            st = job.req.gen.stats
            if st.steps != job.seen[0]:
                rows.append((st.drafted - job.seen[1], st.accepted - job.seen[2]))
                job.seen = (st.steps, st.drafted, st.accepted)
        self.metrics.step(rows)
        now = time.perf_counter()
        for req in finished:
            job: Job = req.tag
            self._active.discard(job)
            self.metrics.finished(req.gen, req.gen.finish_reason, job.submitted, now)
            self._close(job, ("done", req.gen))
        self.live_rows = len(self.engine.rows)
        self.metrics.batch.set(self.live_rows)
        self._set_queue_gauge()

    def _recover(self, exc: Exception) -> None:
        """Fail every request in the engine, then reset it by aborting them all."""
        err = APIError(500, f"the engine failed while running this request ({type(exc).__name__}: {exc})",
                       code="engine_error")
        jobs = list(self._active)
        for job in jobs:
            self.engine.abort(job.req)
        try:
            self.engine.step()  # retires aborted rows and drops aborted waiting requests; runs no forward
        except Exception as e2:  # noqa: BLE001
            log.exception("engine reset failed")
            self.failure = f"engine reset failed after an error ({type(e2).__name__}: {e2})"
        if self.engine.has_work() and self.failure is None:
            self.failure = "engine reset left requests behind"
        for job in jobs:
            self._active.discard(job)
            self.metrics.generations.labels("error").inc()
            self._close(job, ("error", err))
        self.live_rows = len(self.engine.rows)
        self.metrics.batch.set(self.live_rows)
        if self.failure is not None:
            self._stopping.set()  # health turns 503; the loop exits and fails what is left

    def _shutdown(self) -> None:
        err = APIError(503, "the server is shutting down", code="engine_unavailable")
        for job in list(self._active):
            self._close(job, ("error", err))
        self._active.clear()
        while True:
            try:
                cmd, job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if cmd == "add":
                self._close(job, ("error", err))

    # ------------------------------------------------------------------ helpers
    def _close(self, job: Job, event: tuple) -> None:
        self._post(job, event)
        with self._lock:
            self._outstanding -= 1
            self._set_queue_gauge()

    def _set_queue_gauge(self) -> None:
        self.metrics.queue.set(max(0, self._outstanding - self.live_rows))

    @staticmethod
    def _post(job: Job, event: tuple) -> None:
        try:
            job.loop.call_soon_threadsafe(job.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass
