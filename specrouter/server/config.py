"""``ServerConfig``: everything about the HTTP server that is not the model chain.

Boundary: plain validated values; the chain, dtype, batch size and speculation policy belong to
``SpecRouter`` and are given to ``create_app`` with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    model_name: str  # the id clients send as ``model`` and /v1/models lists
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 64  # requests waiting for a batch slot before new ones get 429
    api_key: str | None = None  # when set, /v1/* needs ``Authorization: Bearer <key>``
    default_max_tokens: int = 256  # used when a request omits max_tokens (clamped to the context)
    max_body_bytes: int = 1 << 20
    max_stop: int = 4  # OpenAI's limit on stop strings per request

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ValueError("model_name must be a non-empty string")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError("host must be a non-empty string")
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ValueError(f"port must be an integer in [0, 65535], got {self.port!r}")
        if not (isinstance(self.max_queue, int) and self.max_queue >= 0):
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string when given")
        if not (isinstance(self.default_max_tokens, int) and self.default_max_tokens >= 1):
            raise ValueError(f"default_max_tokens must be an integer >= 1, got {self.default_max_tokens!r}")
        if not (isinstance(self.max_body_bytes, int) and self.max_body_bytes >= 1024):
            raise ValueError(f"max_body_bytes must be an integer >= 1024, got {self.max_body_bytes!r}")
        if not (isinstance(self.max_stop, int) and self.max_stop >= 1):
            raise ValueError(f"max_stop must be an integer >= 1, got {self.max_stop!r}")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)
