"""Helpers for the server tests: a real ``specrouter serve`` process on loopback, and /metrics reads."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from specrouter.server.launch import ServerProcess

MODEL = "tiny"


def tiny_chain(tiny_dir: Path) -> str:
    return f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}"


def start_server(tiny_dir: Path, home: Path, *extra: str) -> ServerProcess:
    args = ["--chain", tiny_chain(tiny_dir), "--dtype", "fp32", "--model-name", MODEL, "--threads", "1",
            "--log-level", "warning", "--no-access-log", "--no-batch-cap", *extra]
    return ServerProcess(args, log=home / "server.log", env={"SPECROUTER_HOME": str(home)}).start()


def metric(url: str, name: str, **labels) -> float:
    """One sample of GET /metrics (0.0 when absent, e.g. a counter whose label set never occurred)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def wait_until(cond, timeout: float = 15.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()
