"""Request-rate load: ``wrk`` for GET, and an aiohttp load generator of our own for HEAD
(Debian's wrk 4.1 hangs on HEAD responses).

The aiohttp generator runs as ``python -m benchmarks.loadgen`` in one or more
worker processes so that the client is not a single-core bottleneck; each
checks every answer (status, digest, length) and prints JSON with its counts
and latencies. Everything is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from benchmarks.units import percentile


@dataclass
class LoadResult:
    tool: str
    connections: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    first_error: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "tool": self.tool,
            "connections": self.connections,
            "seconds": self.seconds,
            "requests": self.requests,
            "errors": self.errors,
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "first_error": self.first_error,
            **self.extra,
        }


# -- wrk ----------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def run_wrk(
    wrk: str, url: str, connections: int, duration: float, headers: dict[str, str]
) -> LoadResult:
    threads = max(1, min(2, connections))
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise AssertionError(f"wrk failed ({out.returncode}):\n{text}")
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s*50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)
    if not (done and rps and p50 and p99):
        raise AssertionError(f"unreadable wrk output:\n{text}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: (.*)", text)
    errors = int(bad[1]) if bad else 0
    first_error = f"{errors} non-2xx responses" if bad else ""
    if sock:
        counts = [int(n) for n in re.findall(r"\d+", sock[1])]
        errors += sum(counts)
        first_error = (first_error + "; " if first_error else "") + f"socket errors: {sock[1]}"
    return LoadResult(
        tool="wrk",
        connections=connections,
        seconds=_ms(done[2] + done[3]) / 1e3,
        requests=int(done[1]),
        errors=errors,
        rps=float(rps[1]),
        p50_ms=_ms(p50[1]),
        p99_ms=_ms(p99[1]),
        first_error=first_error,
    )


# -- aiohttp generator --------------------------------------------------------


def run_aiohttp(
    url: str,
    method: str,
    connections: int,
    duration: float,
    headers: dict[str, str],
    expect: dict[str, str],
    processes: int,
) -> LoadResult:
    """Spread ``connections`` over ``processes`` workers; merge their counts and latencies."""
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    spec = json.dumps({"url": url, "method": method, "headers": headers, "expect": expect})
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.loadgen",
                "--spec",
                spec,
                "--connections",
                str(share),
                "--duration",
                str(duration),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in shares
    ]
    outputs = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=duration + 60)
            if worker.returncode != 0:
                raise AssertionError(f"load generator failed ({worker.returncode}):\n{err}")
            outputs.append(json.loads(out))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    latencies = [lat for o in outputs for lat in o["latencies_us"]]
    requests = sum(o["requests"] for o in outputs)
    errors = sum(o["errors"] for o in outputs)
    seconds = max(o["seconds"] for o in outputs)
    first_error = next((o["first_error"] for o in outputs if o["first_error"]), "")
    return LoadResult(
        tool=f"aiohttp x{processes}",
        connections=connections,
        seconds=seconds,
        requests=requests,
        errors=errors,
        rps=requests / seconds if seconds > 0 else math.nan,
        p50_ms=percentile(latencies, 50) / 1e3,
        p99_ms=percentile(latencies, 99) / 1e3,
        first_error=first_error,
    )


async def _worker_main(
    url: str,
    method: str,
    connections: int,
    duration: float,
    headers: dict[str, str],
    expect: dict[str, str],
) -> dict[str, object]:
    latencies: list[int] = []
    errors = 0
    first_error = ""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + duration
        clock = time.perf_counter

        async def loop() -> None:
            nonlocal errors, first_error
            while clock() < deadline:
                start = clock()
                try:
                    async with session.request(method, url, headers=headers) as r:
                        await r.read()
                        problem = ""
                        if r.status != 200:
                            problem = f"status {r.status}"
                        else:
                            for name, value in expect.items():
                                if r.headers.get(name) != value:
                                    problem = f"{name}: {r.headers.get(name)!r} != {value!r}"
                                    break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if problem:
                    errors += 1
                    first_error = first_error or problem
                else:
                    latencies.append(int((clock() - start) * 1e6))

        started = clock()
        await asyncio.gather(*(loop() for _ in range(connections)))
        seconds = clock() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "first_error": first_error,
        "seconds": seconds,
        "latencies_us": latencies,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("--spec", required=True, help="JSON: url, method, headers, expect")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    duration = min(max(args.duration, 0.1), 600.0)
    coro = _worker_main(
        spec["url"], spec["method"], args.connections, duration, spec["headers"], spec["expect"]
    )
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    json.dump(result, sys.stdout)
    return 0


def wrk_path() -> str | None:
    return shutil.which("wrk")


if __name__ == "__main__":
    sys.exit(main())
