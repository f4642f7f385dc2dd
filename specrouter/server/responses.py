"""OpenAI response objects and server-sent-event chunks for one request.

Boundary: formatting only. Text comes in already finished (stop strings cut) or as stream deltas;
``usage`` carries OpenAI's three counts plus a ``speculative`` extension field:

    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52,
              "speculative": {"chain": "0.5b>1.5b", "chains": {"0.5b>1.5b": 14},
                              "target_steps": 14, "drafted_tokens": 50,
                              "accepted_tokens": 26, "acceptance_rate": 0.52,
                              "mean_accepted_length": 2.86, "prefill_s": 0.04, "decode_s": 0.91}}

``chain`` is what the server runs (a fixed chain, or the pool the adaptive router picks from);
``chains`` maps each chain this request actually used to its number of steps. ``target_steps``
counts verification forwards of the target after prefill; ``mean_accepted_length`` is tokens
committed per such forward (1.0 means no speedup from speculation).
"""

from __future__ import annotations

import json
import time
import uuid

from ..engine import Generation

DONE = b"data: [DONE]\n\n"


def usage(gen: Generation, chain: str) -> dict:
    n, st = len(gen.tokens), gen.stats
    return {"prompt_tokens": len(gen.prompt), "completion_tokens": n, "total_tokens": len(gen.prompt) + n,
            "speculative": {"chain": chain, "chains": dict(getattr(st, "chains", None) or {chain: st.steps}),
                            "target_steps": st.steps, "drafted_tokens": st.drafted,
                            "accepted_tokens": st.accepted, "acceptance_rate": round(st.acceptance_rate, 4),
                            "mean_accepted_length": round(st.mean_accepted_length(n), 4),
                            "prefill_s": round(st.prefill_s, 6), "decode_s": round(st.decode_s, 6)}}


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class Formatter:
    """Builds every body of one request; chunks of a stream share its id and ``created``."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def response(self, text: str, finish_reason: str, usage: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict:
        """A stream chunk: a text delta, the final one (``finish_reason``), or chat's opening role chunk."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        """The last chunk when ``stream_options.include_usage``: no choices, only ``usage``."""
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": usage}
