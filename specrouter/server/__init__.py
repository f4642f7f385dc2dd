"""OpenAI-compatible HTTP server over one ``SpecRouter`` (``specrouter serve``).

Layout, one concept per module:
  * ``config``     — ``ServerConfig``: bind address, queue limit, API key, defaults (validated).
  * ``protocol``   — request JSON -> ``GenerationRequest`` (ids + ``SamplingParams``), and the
                     OpenAI-style error body (``APIError``). Pure: no engine, no HTTP framework.
  * ``responses``  — ``Generation`` -> OpenAI response objects and SSE chunks, ``usage`` included.
  * ``textstream`` — incremental text for streaming that never shows a stop string and whose
                     concatenation equals the non-streamed text.
  * ``worker``     — the single engine thread (continuous batching) and the bridge to asyncio.
  * ``metrics``    — Prometheus metrics (``prometheus_client``, one registry per app).
  * ``app``        — FastAPI routes, auth, error handlers; ``serve()`` runs uvicorn.
  * ``launch``     — start a server as a subprocess on loopback and wait for it (bench, tests).

Boundary: the engine (``specrouter.engine``) is owned by exactly one thread, the worker's; the
event loop only parses, tokenizes (in a thread pool), formats and moves bytes. The model forward
never runs on the event loop thread.
"""
