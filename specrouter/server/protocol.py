"""OpenAI request bodies -> ``GenerationRequest`` (prompt ids + ``SamplingParams``); OpenAI error bodies.

Boundary: pure validation and tokenization through the two encode callables it is given; it knows
nothing of HTTP, threads or the engine. Every rejection is an ``APIError`` whose message names the
offending field (``param``), as OpenAI's API does.

Semantics chosen where OpenAI leaves room (documented for clients):
  * ``temperature`` omitted or null -> 1.0 (OpenAI's default), so an omitted temperature *samples*;
    send ``temperature: 0`` for greedy decoding. ``top_p: 0`` keeps only the most likely token,
    which is greedy as well.
  * ``max_tokens`` omitted -> the server's default (``--default-max-tokens``) clamped to the room left
    in the context; given explicitly, prompt + max_tokens must fit the context or the request is a 400.
  * ``/v1/completions`` sends ``prompt`` as raw text (no chat template); ``/v1/chat/completions``
    applies the model's chat template. One prompt and one choice (``n = 1``) per request.
  * ``seed``: the request samples from its own generator, so with a fixed chain and the server
    started with ``--no-batch-cap`` a seeded request gives the same text alone or in any batch. The
    batch cap and the adaptive router (``--chain auto``) choose draft lengths from batch / learned
    state, which changes how randomness is consumed: seeds are then best effort, as in OpenAI's API.
    Greedy output never depends on draft lengths.
  * Extensions: ``top_k`` (0 or -1 = off) and ``ignore_eos``. Features that would change the output
    and are not implemented (penalties, logit_bias, logprobs, echo, tools...) are rejected, not ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

from ..sampling import SamplingParams

_ERROR_TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error",
                500: "server_error", 503: "server_error"}
ROLES = ("system", "developer", "user", "assistant")
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed accepts


class APIError(Exception):
    """An HTTP error with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    chat: bool
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: one last chunk carrying ``usage``


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object; NaN and Infinity are not JSON and are rejected."""
    def no_constants(name):
        raise ValueError(f"{name} is not valid JSON")
    try:
        body = json.loads(raw, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise APIError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {_kind(body)}")
    return body


class RequestParser:
    """Validates one endpoint's body and tokenizes its prompt.

    encode_text: raw text -> ids (completions); encode_chat: messages -> ids (chat template applied).
    context: tokens the engine holds per row (prompt + output); vocab: valid ids are [0, vocab).
    """

    def __init__(self, model_name: str, encode_text: Callable[[str], list[int]],
                 encode_chat: Callable[[list[dict]], list[int]], vocab: int, context: int,
                 default_max_tokens: int, max_stop: int = 4):
        self.model_name, self.encode_text, self.encode_chat = model_name, encode_text, encode_chat
        self.vocab, self.context = vocab, context
        self.default_max_tokens, self.max_stop = default_max_tokens, max_stop

    def completion(self, body: dict) -> GenerationRequest:
        self._model(body)
        prompt = _completion_prompt(body.get("prompt"), self.vocab)
        _unsupported(body, "echo", lambda v: v is False, "echo")
        _unsupported(body, "best_of", lambda v: v == 1 and not isinstance(v, bool), "best_of other than 1")
        _unsupported(body, "suffix", lambda v: v == "", "suffix")
        _unsupported(body, "logprobs", lambda v: v is False, "logprobs")
        max_tokens = _integer(body, "max_tokens", 1, None)
        fields = self._sampling_fields(body)
        ids = self.encode_text(prompt) if isinstance(prompt, str) else list(prompt)
        return self._finish(ids, "prompt", max_tokens, fields, body, chat=False)

    def chat(self, body: dict) -> GenerationRequest:
        self._model(body)
        messages = _messages(body.get("messages"))
        for name in ("tools", "functions"):
            _unsupported(body, name, lambda v: v == [], name)
        for name in ("tool_choice", "function_call"):
            _unsupported(body, name, lambda v: v == "none", name)
        _unsupported(body, "response_format", lambda v: v == {"type": "text"}, "response_format other than text")
        _unsupported(body, "logprobs", lambda v: v is False, "logprobs")
        _unsupported(body, "top_logprobs", lambda v: v == 0 and not isinstance(v, bool), "top_logprobs")
        max_tokens = _integer(body, "max_completion_tokens", 1, None)
        if max_tokens is None:
            max_tokens = _integer(body, "max_tokens", 1, None)
        fields = self._sampling_fields(body)
        try:
            ids = self.encode_chat(messages)
        except ValueError as e:  # e.g. a tokenizer without a chat template
            raise APIError(400, str(e), "messages") from None
        return self._finish(ids, "messages", max_tokens, fields, body, chat=True)

    # ------------------------------------------------------------------ shared fields
    def _model(self, body: dict) -> None:
        model = body.get("model")
        if model is None:
            raise APIError(400, "model is required", "model")
        if not isinstance(model, str):
            raise APIError(400, f"model must be a string, got {_kind(model)}", "model")
        if model != self.model_name:
            raise APIError(404, f"model {model!r} does not exist; this server serves {self.model_name!r} "
                                f"(see GET /v1/models)", "model", code="model_not_found")

    def _sampling_fields(self, body: dict) -> dict:
        _unsupported(body, "n", lambda v: v == 1 and not isinstance(v, bool), "n other than 1")
        _unsupported(body, "logit_bias", lambda v: v == {}, "logit_bias")
        for name in ("presence_penalty", "frequency_penalty"):
            _unsupported(body, name, lambda v: v == 0 and not isinstance(v, bool), f"non-zero {name}")
        temperature = _number(body, "temperature", 0.0, 2.0)
        top_p = _number(body, "top_p", 0.0, 1.0)
        top_k = _integer(body, "top_k", -1, None)
        seed = _integer(body, "seed", *SEED_RANGE)
        stream = _boolean(body, "stream")
        ignore_eos = _boolean(body, "ignore_eos")
        include_usage = False
        opts = body.get("stream_options")
        if opts is not None:
            if not stream:
                raise APIError(400, "stream_options is only allowed when stream is true", "stream_options")
            if not isinstance(opts, dict):
                raise APIError(400, f"stream_options must be an object, got {_kind(opts)}", "stream_options")
            include_usage = bool(_boolean(opts, "include_usage", "stream_options.include_usage"))
        temperature = 1.0 if temperature is None else float(temperature)
        top_p = 1.0 if top_p is None else float(top_p)
        if top_p == 0.0:  # only the top token survives: greedy
            temperature, top_p = 0.0, 1.0
        return dict(temperature=temperature, top_p=top_p, top_k=max(top_k or 0, 0), seed=seed,
                    stop=_stop(body.get("stop"), self.max_stop), ignore_eos=bool(ignore_eos),
                    stream=bool(stream), include_usage=include_usage)

    def _finish(self, ids: list[int], prompt_field: str, max_tokens: int | None, f: dict, body: dict,
                chat: bool) -> GenerationRequest:
        n, ctx = len(ids), self.context
        if n == 0:
            raise APIError(400, f"{prompt_field} must not be empty", prompt_field)
        if n + 1 > ctx:
            raise APIError(400, f"{prompt_field} is too long: {n} tokens, but the context holds {ctx} tokens "
                                f"(prompt plus at least one new token)", prompt_field, code="context_length_exceeded")
        field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        if max_tokens is None:
            max_tokens = min(self.default_max_tokens, ctx - n)
        elif n + max_tokens > ctx:
            raise APIError(400, f"{field} is too large: {max_tokens} new tokens plus the {n}-token prompt exceed the "
                                f"context of {ctx} tokens (at most {ctx - n} new tokens fit)", field,
                           code="context_length_exceeded")
        stream, include_usage = f.pop("stream"), f.pop("include_usage")
        try:
            params = SamplingParams(max_new_tokens=max_tokens, **f)
        except ValueError as e:  # the fields were checked above; this is a second line of defence
            raise APIError(400, str(e)) from None
        return GenerationRequest(chat, tuple(ids), params, stream, include_usage)


# ---------------------------------------------------------------------- field helpers
def _kind(v) -> str:
    """A value as the client wrote it: JSON type and a short rendering."""
    name = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(v), type(v).__name__)
    text = json.dumps(v)
    return f"{name} {text if len(text) <= 40 else text[:37] + '...'}"


def _unsupported(body: dict, name: str, ok: Callable[[object], bool], what: str) -> None:
    v = body.get(name)
    if v is not None and not ok(v):
        raise APIError(400, f"{what} is not supported by this server (got {_kind(v)})", name)


def _integer(body: dict, name: str, lo: int | None, hi: int | None, label: str | None = None) -> int | None:
    v, label = body.get(name), label or name
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise APIError(400, f"{label} must be an integer, got {_kind(v)}", label)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise APIError(400, f"{label} must be {bound}, got {v}", label)
    return v


def _number(body: dict, name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise APIError(400, f"{name} must be a number, got {_kind(v)}", name)
    if not lo <= v <= hi:
        raise APIError(400, f"{name} must be in [{lo:g}, {hi:g}], got {v}", name)
    return v


def _boolean(body: dict, name: str, label: str | None = None) -> bool | None:
    v, label = body.get(name), label or name
    if v is not None and not isinstance(v, bool):
        raise APIError(400, f"{label} must be a boolean, got {_kind(v)}", label)
    return v


def _stop(v, max_stop: int) -> tuple[str, ...]:
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or any(not isinstance(s, str) for s in items):
        raise APIError(400, f"stop must be a string or an array of strings, got {_kind(v)}", "stop")
    if len(items) > max_stop:
        raise APIError(400, f"stop accepts at most {max_stop} strings, got {len(items)}", "stop")
    if any(not s for s in items):
        raise APIError(400, "stop strings must not be empty", "stop")
    return tuple(items)


def _completion_prompt(v, vocab: int) -> str | list[int]:
    if v is None:
        raise APIError(400, "prompt is required", "prompt")
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]  # a batch of one prompt
    if isinstance(v, str):
        if not v:
            raise APIError(400, "prompt must not be empty", "prompt")
        return v
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        for i, t in enumerate(v):
            if not 0 <= t < vocab:
                raise APIError(400, f"prompt[{i}] = {t} is not a token id (the vocabulary has {vocab})", "prompt")
        return v
    if isinstance(v, list) and len(v) > 1 and all(isinstance(x, (str, list)) for x in v):
        raise APIError(400, f"one prompt per request is supported, got {len(v)}; send them as separate requests",
                       "prompt")
    if isinstance(v, list) and not v:
        raise APIError(400, "prompt must not be empty", "prompt")
    raise APIError(400, f"prompt must be a string or an array of token ids, got {_kind(v)}", "prompt")


def _messages(v) -> list[dict]:
    if v is None:
        raise APIError(400, "messages is required", "messages")
    if not isinstance(v, list):
        raise APIError(400, f"messages must be an array of message objects, got {_kind(v)}", "messages")
    if not v:
        raise APIError(400, "messages must not be empty", "messages")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content', got {_kind(m)}", where)
        role = m.get("role")
        if role not in ROLES:
            raise APIError(400, f"{where}.role must be one of {', '.join(ROLES)}; got {_kind(role)}", f"{where}.role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m.get("content"), where)})
    return out


def _content(c, where: str) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for j, part in enumerate(c):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise APIError(400, f"{where}.content[{j}] must be a text part {{\"type\": \"text\", \"text\": ...}} "
                                    f"(other content types are not supported)", f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"{where}.content must be a string or an array of text parts, got {_kind(c)}",
                   f"{where}.content")
