"""``aioreg serve`` as a subprocess, for tests that need a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"aioreg-{os.getpid()}-{id(self)}.log"
        )
        self.log = open(self.log_path, "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aioreg", "serve", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text()
            if "listening on" in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"server did not start:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code

    @property
    def output(self) -> str:
        return self.log_path.read_text()


def start(servers: list[Server], args: list[str], env: dict[str, str] | None = None) -> Server:
    server = Server(args, env)
    servers.append(server)
    server.wait_ready()
    return server
