"""FastAPI app: OpenAI routes, auth, error bodies, streaming; ``serve()`` runs it under uvicorn.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream: true`` as SSE
in OpenAI's chunk format, ending ``data: [DONE]``), ``GET /v1/models``, ``GET /health``,
``GET /metrics`` (Prometheus text). With an API key configured, ``/v1/*`` require
``Authorization: Bearer <key>`` (compared with ``hmac.compare_digest``); ``/health`` and
``/metrics`` stay open for probes and scrapers on the same host.

Boundary: HTTP only. Bodies are parsed by ``protocol`` (in a thread pool: tokenizing a long prompt
must not stall the loop), generations run on the ``worker`` thread, bodies are built by
``responses``. Every error a client can cause is an OpenAI-style JSON body with a 4xx status; an
unexpected exception is a 500 for that request only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import ServerConfig
from .metrics import CONTENT_TYPE, FeedbackTap, Metrics
from .protocol import APIError, GenerationRequest, RequestParser, parse_json
from .responses import DONE, Formatter, sse, usage
from .textstream import TextStream
from .worker import EngineWorker, Job

log = logging.getLogger("specrouter.server")
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")


def create_app(sr, config: ServerConfig) -> FastAPI:
    """An app serving ``sr`` (a ``SpecRouter``); its engine thread starts and stops with the app."""
    chain = ">".join(sr.levels)
    metrics = Metrics(chain, sr.engine.max_batch)
    router = sr.engine.router  # tap the router's feedback: per-level acceptance for /metrics
    sr.engine.router = FeedbackTap(router._router if isinstance(router, FeedbackTap) else router, metrics)
    worker = EngineWorker(sr, metrics, config.max_queue)
    vocab = min(len(sr.tokenizer), *(m.args.vocab_size for m in sr.models.values()))
    parser = RequestParser(config.model_name, sr.tokenizer.encode, sr.tokenizer.chat, vocab,
                           min(sr.max_seq_len, sr.engine.max_seq_len), config.default_max_tokens, config.max_stop)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        print(f"specrouter: serving {config.model_name!r} (chain {chain}, max batch {worker.max_batch}, "
              f"queue {config.max_queue}) on http://{config.host}:{config.port}", file=sys.stderr, flush=True)
        yield
        worker.stop()

    app = FastAPI(title="SpecRouter", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.metrics = worker, metrics
    app.add_middleware(_CountResponses, metrics=metrics)

    @app.exception_handler(APIError)
    async def _api_error(_req, exc: APIError):
        return JSONResponse(exc.body(), exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc: StarletteHTTPException):  # unknown route, wrong method
        err = APIError(exc.status_code, f"{exc.detail}: see /v1/completions, /v1/chat/completions, /v1/models")
        return JSONResponse(err.body(), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_req, exc: Exception):
        log.error("unhandled error: %s: %s", type(exc).__name__, exc)
        err = APIError(500, f"internal error ({type(exc).__name__}); the request was not completed")
        return JSONResponse(err.body(), 500)

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    @app.get("/health")
    async def health():
        ok = worker.healthy
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": config.model_name,
                             "running": worker.live_rows, "outstanding": worker.outstanding,
                             "max_batch": worker.max_batch, "max_queue": config.max_queue,
                             **({} if worker.failure is None else {"failure": worker.failure})},
                            200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def model_card() -> dict:
        return {"id": config.model_name, "object": "model", "created": started, "owned_by": "specrouter"}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        check_key(request)
        if model_id != config.model_name:
            raise APIError(404, f"model {model_id!r} does not exist; this server serves {config.model_name!r}",
                           "model", code="model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    async def generate(request: Request, chat: bool):
        check_key(request)
        body = parse_json(await _read_body(request, config.max_body_bytes))
        greq = await run_in_threadpool(parser.chat if chat else parser.completion, body)
        job = worker.submit(list(greq.prompt_ids), greq.params, greq.stream)
        fmt = Formatter(chat, config.model_name)
        if greq.stream:
            return _JobStream(stream_events(job, greq, fmt), on_close=lambda: worker.cancel(job),
                              media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        event = await _result_or_disconnect(request, job, worker)
        if event is None:  # the client went away; its row was cancelled
            return Response(status_code=499)
        kind, payload = event
        if kind == "error":
            raise payload
        text = sr.finish_text(payload.tokens, greq.params.stop)
        return JSONResponse(fmt.response(text, payload.finish_reason, usage(payload, chain)))

    async def stream_events(job: Job, greq: GenerationRequest, fmt: Formatter):
        text = TextStream(sr.tokenizer, greq.params.stop)
        try:
            if fmt.chat:
                yield sse(fmt.chunk(None, role=True))
            while True:
                kind, payload = await job.events.get()
                if kind == "tokens":
                    delta = text.push(payload)
                    if delta:
                        yield sse(fmt.chunk(delta))
                    continue
                if kind == "done":
                    delta = text.finish(sr.finish_text(payload.tokens, greq.params.stop))
                    if delta:
                        yield sse(fmt.chunk(delta))
                    yield sse(fmt.chunk(None, finish_reason=payload.finish_reason))
                    if greq.include_usage:
                        yield sse(fmt.usage_chunk(usage(payload, chain)))
                else:
                    yield sse(payload.body())
                yield DONE
                return
        except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
            log.exception("stream failed")
            yield sse(APIError(500, f"internal error while streaming ({type(e).__name__})").body())
            yield DONE

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise APIError(413, f"request body is {size} bytes; the limit is {limit}", code="request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
    return bytes(data)


async def _result_or_disconnect(request: Request, job: Job, worker: EngineWorker):
    """The job's final event, or None if the client disconnected first (then the job is cancelled)."""
    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    result = asyncio.ensure_future(job.events.get())
    gone = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if result.done():
            return result.result()
        worker.cancel(job)
        return None
    except asyncio.CancelledError:  # the server is shutting the connection down
        worker.cancel(job)
        raise
    finally:
        result.cancel()
        gone.cancel()


class _JobStream(StreamingResponse):
    """A streaming response that calls ``on_close`` however it ends (done, disconnect, error)."""

    def __init__(self, content, on_close, **kw):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class _CountResponses:
    """Pure ASGI middleware: count every response by route and status (streams included)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)
        await self.app(scope, receive, counting_send)


def serve(sr, config: ServerConfig, log_level: str = "info", access_log: bool = True) -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    if not config.loopback:
        print(f"specrouter: warning: listening on {config.host}, reachable beyond this machine"
              f"{'' if config.api_key else ' and without an API key (--api-key)'}", file=sys.stderr)
    uvicorn.run(create_app(sr, config), host=config.host, port=config.port, log_level=log_level,
                access_log=access_log, timeout_graceful_shutdown=5)
