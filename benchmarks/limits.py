"""What this machine can do at all, measured in the same run as the registries.

- sha256 on one core (every push and verified pull hashes its bytes),
- sequential write + fsync on the disk holding the data directories,
- TCP over loopback between two sockets of our own.
"""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import threading
import time
from pathlib import Path

from benchmarks.units import MiB

BLOCK = 16 * MiB


def sha256_mbps(total: int) -> float:
    block = os.urandom(BLOCK)
    h = hashlib.sha256()
    rounds = max(1, total // BLOCK)
    start = time.perf_counter()
    for _ in range(rounds):
        h.update(block)
    h.hexdigest()
    return rounds * BLOCK / (time.perf_counter() - start) / 1e6


def write_fsync_mbps(directory: Path, total: int) -> float:
    """Write ``total`` bytes in 16 MiB blocks to a new file, fsync it, and time the lot."""
    block = os.urandom(BLOCK)
    rounds = max(1, total // BLOCK)
    path = directory / f"limits-write-{os.getpid()}.bin"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            start = time.perf_counter()
            for _ in range(rounds):
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
            elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    return rounds * BLOCK / elapsed / 1e6


def loopback_tcp_mbps(total: int, chunk: int = 1 * MiB) -> float:
    """One connection over 127.0.0.1: a thread sends ``total`` bytes, this thread receives."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    payload = os.urandom(chunk)
    rounds = max(1, total // chunk)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port)) as out:
                for _ in range(rounds):
                    out.sendall(payload)
        except BaseException as exc:  # reported by the receiver
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    try:
        sender.start()
        conn, _ = listener.accept()
        with conn:
            buf = bytearray(chunk)
            view = memoryview(buf)
            expected = rounds * chunk
            got = 0
            start = time.perf_counter()
            while got < expected:
                n = conn.recv_into(view)
                if n == 0:
                    break
                got += n
            elapsed = time.perf_counter() - start
    finally:
        listener.close()
        sender.join(30)
    if errors:
        raise errors[0]
    if got != expected:
        raise AssertionError(f"loopback: received {got} of {expected} bytes")
    return got / elapsed / 1e6


ROUNDS = 3


def measure(directory: Path, scale: float) -> dict[str, object]:
    """Each limit measured ``ROUNDS`` times (this VM is noisy): the median, and every sample."""
    probes = {
        "sha256_MBps": lambda: sha256_mbps(max(64 * MiB, int(1024 * MiB * scale))),
        "write_fsync_MBps": lambda: write_fsync_mbps(
            directory, max(16 * MiB, int(1024 * MiB * scale))
        ),
        "loopback_tcp_MBps": lambda: loopback_tcp_mbps(max(64 * MiB, int(2048 * MiB * scale))),
    }
    out: dict[str, object] = {}
    samples: dict[str, list[float]] = {}
    for key, probe in probes.items():
        samples[key] = [probe() for _ in range(ROUNDS)]
        out[key] = statistics.median(samples[key])
    out["samples"] = samples
    return out
