"""``/healthz`` and ``/readyz``: probes for orchestrators and load balancers.

Both are unauthenticated and say nothing a stranger could use: no paths, no
versions, no error texts, only which check failed. Why it failed goes to the
log, once per change, not once per probe.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
from collections.abc import Awaitable
from pathlib import Path

import msgspec
from aiohttp import web

from aioreg.api.http import registry

log = logging.getLogger("aioreg.health")

INDEX_TIMEOUT = 5.0  # seconds an index read may take before the index counts as unreachable
_probe_names = itertools.count()


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    checks: dict[str, str] | None = None


def _json(payload: Health, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def healthz(request: web.Request) -> web.StreamResponse:
    """The process answers requests; nothing else is checked."""
    return _json(Health("ok"))


def _write_probe(directory: Path) -> None:
    """Create, write and remove a small file: what every push needs the data dir to allow."""
    path = directory / f".readyz-{os.getpid()}-{next(_probe_names)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(path)


async def _check(name: str, failures: dict[str, str], check: Awaitable[object]) -> str:
    try:
        await check
    except Exception as exc:
        failures[name] = f"{type(exc).__name__}: {exc}"
        return "fail"
    return "ok"


class Readiness:
    """Runs the readiness checks and logs when the answer changes."""

    def __init__(self) -> None:
        self._last_failures: dict[str, str] = {}

    async def checks(self, request: web.Request) -> tuple[bool, dict[str, str]]:
        reg = registry(request)
        data = reg.config.data_path
        minimum = reg.config.health.min_free_bytes
        failures: dict[str, str] = {}

        async def free_space() -> None:
            free = (await asyncio.to_thread(shutil.disk_usage, data)).free
            if free < minimum:
                raise OSError(f"{free} bytes free, below health.min_free_bytes ({minimum})")

        results = {
            "index": await _check(
                "index",
                failures,
                asyncio.wait_for(reg.index.ping(), INDEX_TIMEOUT),
            ),
            "storage": await _check("storage", failures, asyncio.to_thread(_write_probe, data)),
        }
        if minimum:
            results["free_space"] = await _check("free_space", failures, free_space())
        if failures != self._last_failures:
            if failures:
                log.warning(
                    "not ready: %s", "; ".join(f"{k}: {v}" for k, v in sorted(failures.items()))
                )
            else:
                log.info("ready again")
            self._last_failures = failures
        return not failures, results


READINESS_KEY = web.AppKey("readiness", Readiness)


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready: the index answers, the data dir takes a write, free space is above the floor."""
    ready, results = await request.app[READINESS_KEY].checks(request)
    return _json(Health("ready" if ready else "unready", results), 200 if ready else 503)


def add_routes(app: web.Application) -> None:
    app[READINESS_KEY] = Readiness()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
