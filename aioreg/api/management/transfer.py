"""``/api/v1/export`` and ``/api/v1/import``: an OCI image layout streamed out and in (admin).

The archive code is blocking (tar, zstd); it runs on a worker thread that reads
the request body or writes the response through the event loop, one buffer at
a time, so neither direction holds more than a buffer of a blob.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from aioreg.api.http import body_stream, registry
from aioreg.api.management.handlers import _choice, _json, _require
from aioreg.api.management.schemas import ImportResult
from aioreg.errors import ErrorCode, RegistryError
from aioreg.transfer.archive import COPY_BYTES, SyncReader, SyncWriter
from aioreg.transfer.export import plan_export, write_export
from aioreg.transfer.importer import Importer, tar_entries

log = logging.getLogger("aioreg.transfer")

# What an export is sent as, and what an import may be sent as (told apart by content).
ARCHIVE_ZSTD = "application/zstd"
ARCHIVE_TAR = "application/x-tar"
ARCHIVE_GZIP = "application/gzip"


async def export_archive(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "pull")
    reg = registry(request)
    compress = _choice(request, "compress", "zstd", ("zstd", "none")) == "zstd"
    level = reg.config.transfer.zstd_level
    if "level" in request.query:
        raw = request.query["level"]
        if not raw.isdigit() or not 1 <= int(raw) <= 22:
            raise RegistryError(ErrorCode.BAD_REQUEST, "level must be 1-22", {"level": raw[:20]})
        level = int(raw)
    # Planned before the first byte goes out: a bad reference is an error response.
    plan = await plan_export(reg, request.query.getall("ref", []))
    response = web.StreamResponse(
        headers={
            "Content-Type": ARCHIVE_ZSTD if compress else ARCHIVE_TAR,
            "Content-Disposition": 'attachment; filename="export.tar'
            + ('.zst"' if compress else '"'),
        }
    )
    await response.prepare(request)
    # Unbuffered: zstd writes whole 1 MiB frames' worth, tar headers are few; and no buffer
    # is left to be flushed from the loop's thread when a failed stream is collected.
    sink = SyncWriter(response.write, asyncio.get_running_loop())

    def write() -> None:
        write_export(
            plan,
            sink,
            level=level if compress else None,
            threads=reg.config.transfer.zstd_threads,
        )

    try:
        await asyncio.to_thread(write)
    except Exception as exc:  # the status is sent: cut the stream so the client sees it fail
        log.warning("export to %s failed mid-stream: %s", request.remote, exc)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


class _Body:
    """``read(n)`` over the request body as it arrives (stalls time out as uploads do)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    async def read(self, n: int) -> bytes:
        if not self._pending:
            self._pending = await anext(self._chunks, b"")
        data, self._pending = self._pending[:n], self._pending[n:]
        return data


async def import_archive(request: web.Request) -> web.StreamResponse:
    actor = await _require(request, None, "push")
    dry_run = _choice(request, "dry_run", "false", ("true", "false")) == "true"
    verify = _choice(request, "verify", "false", ("true", "false")) == "true"
    reg = registry(request)
    body = _Body(body_stream(request))
    source = io.BufferedReader(SyncReader(body.read, asyncio.get_running_loop()), COPY_BYTES)
    importer = Importer(
        reg,
        repository=request.query.get("repository") or None,
        dry_run=dry_run,
        verify=verify,
        max_bytes=reg.config.transfer.import_max_bytes or None,
        actor=actor,
    )
    report = await importer.run(tar_entries(source))
    return _json(ImportResult.from_domain(report))
