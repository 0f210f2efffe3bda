"""``/v2/<name>/blobs/<digest>``: fetch (whole or a byte range), check, delete."""

from __future__ import annotations

import asyncio
import re
from typing import BinaryIO

from aiohttp import web

from aioreg.api.errors import error_response
from aioreg.api.http import registry
from aioreg.api.sendfile import sendfile
from aioreg.errors import ErrorCode, RegistryError
from aioreg.registry import StoredBlob

RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
FALLBACK_BLOCK = 1 << 20


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single ``bytes=`` range; None means the whole blob.

    A header we do not understand (or several ranges) is ignored, as RFC 9110
    allows: the client gets the whole blob with 200.
    """
    if not header:
        return None
    match = RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        length = int(last)
        if length == 0:
            raise _Unsatisfiable
        return max(size - length, 0), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or (last and int(last) < start):
        raise _Unsatisfiable
    return start, end


class _Unsatisfiable(Exception):
    """The range starts past the end of the blob."""


def _headers(blob: StoredBlob) -> dict[str, str]:
    return {
        "Docker-Content-Digest": blob.digest,
        "ETag": f'"{blob.digest}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Cache-Control": "max-age=31536000",
    }


async def get_blob(request: web.Request) -> web.StreamResponse:
    """GET and HEAD: the same headers, the body only for GET."""
    blob = await registry(request).blob(request.match_info["name"], request.match_info["digest"])
    headers = _headers(blob)
    if f'"{blob.digest}"' in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    try:
        span = _byte_range(request.headers.get("Range"), blob.size)
    except _Unsatisfiable:
        response = error_response(
            ErrorCode.SIZE_INVALID,
            f"range {request.headers.get('Range', '')[:100]!r} is outside a blob of "
            f"{blob.size} bytes",
            status=416,
        )
        response.headers["Content-Range"] = f"bytes */{blob.size}"
        return response
    start, end = span if span is not None else (0, blob.size)
    response = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
    response.content_length = end - start
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
    if request.method == "HEAD" or end == start:
        await response.prepare(request)
        await response.write_eof()
        return response
    try:
        file = open(blob.path, "rb")  # noqa: SIM115 - closed below, after the transfer
    except FileNotFoundError:
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {blob.digest} is missing") from None
    try:
        await response.prepare(request)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        if not await sendfile(transport, file, start, end - start):
            await _stream(response, file, start, end - start)
        await response.write_eof()
    finally:
        file.close()
    return response


async def _stream(response: web.StreamResponse, file: BinaryIO, offset: int, count: int) -> None:
    """Plain reads and writes, for transports that cannot sendfile (TLS)."""
    loop = asyncio.get_running_loop()
    file.seek(offset)
    while count > 0:
        block = await loop.run_in_executor(None, file.read, min(FALLBACK_BLOCK, count))
        if not block:
            raise ConnectionResetError("blob shrank during transfer")
        await response.write(block)
        count -= len(block)


async def delete_blob(request: web.Request) -> web.StreamResponse:
    await registry(request).delete_blob(request.match_info["name"], request.match_info["digest"])
    return web.Response(status=202)
