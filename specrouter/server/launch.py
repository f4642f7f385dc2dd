"""Start ``specrouter serve`` as a subprocess on loopback and wait until it answers ``/health``.

Used by the load benchmark and the tests: both talk to a real server process over real sockets.
Boundary: process management only (a free port, the command line, readiness, shutdown).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(["--chain", c, "--dtype", "fp32"]) as srv: srv.url`` -> http://127.0.0.1:PORT.

    ``args`` are ``serve`` options other than --host/--port; the server's output goes to ``log``.
    """

    def __init__(self, args: list[str], log: str | Path | None = None, startup_timeout: float = 120.0,
                 env: dict | None = None):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.cmd = [sys.executable, "-m", "specrouter.cli", "serve", "--host", LOOPBACK, "--port", str(self.port),
                    *args]
        self.log_path, self.startup_timeout = log, startup_timeout
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        import httpx

        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        if out is not subprocess.DEVNULL:
            out.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} before it was ready "
                                   f"(command: {' '.join(self.cmd)}; log: {self.log_path})")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {self.startup_timeout:.0f}s (log: {self.log_path})")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
