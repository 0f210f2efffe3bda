"""``/v2/<name>/blobs/<digest>``: fetch (whole or a byte range), check, delete."""

from __future__ import annotations

import re

from aiohttp import web

from aioreg.api.errors import error_response
from aioreg.api.http import registry
from aioreg.api.v2.proxied import proxied_name, proxies, send_head, stream_fill
from aioreg.api.v2.sendfile import send_file
from aioreg.domain.registry import StoredBlob
from aioreg.errors import ErrorCode, RegistryError
from aioreg.proxy.fill import BlobFill

RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


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
        if not last.strip("0"):
            raise _Unsatisfiable
        return size - _position(last, size), size
    start = _position(first, size)
    if start >= size:
        raise _Unsatisfiable
    if not last:
        return start, size
    final = _position(last, size)
    if final < start:
        raise _Unsatisfiable
    return start, min(final + 1, size)


def _position(digits: str, cap: int) -> int:
    """A byte position from the header, capped at ``cap``.

    A number with more digits than ``cap`` is past it whatever its value, and
    is never converted (Python refuses strings of over 4,300 digits).
    """
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(cap)):
        return cap
    return min(int(digits), cap)


class _Unsatisfiable(Exception):
    """The range starts past the end of the blob."""


def blob_headers(digest: str) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest,
        "ETag": f'"{digest}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Cache-Control": "max-age=31536000",
    }


async def get_blob(request: web.Request) -> web.StreamResponse:
    """GET and HEAD: the same headers, the body only for GET."""
    name, digest = proxied_name(request), request.match_info["digest"]
    if name is None:
        return await send_blob(
            request, await registry(request).blob(request.match_info["name"], digest)
        )
    if request.method == "HEAD":
        head = await proxies(request).blob_head(name, digest)
        if isinstance(head, int):  # not cached: the upstream's answer, nothing downloaded
            return await send_head(request, head, blob_headers(digest))
        found: StoredBlob | BlobFill = head
    else:
        found = await proxies(request).blob(name, digest)
    if isinstance(found, StoredBlob):
        return await send_blob(request, found)
    headers = blob_headers(str(found.digest))
    try:
        span = _byte_range(request.headers.get("Range"), found.size)
    except _Unsatisfiable:
        return _unsatisfiable(request, found.size)
    return await stream_fill(request, found, headers, span)


async def send_blob(request: web.Request, blob: StoredBlob) -> web.StreamResponse:
    """A stored blob, whole or the requested range, from its file."""
    headers = blob_headers(blob.digest)
    if f'"{blob.digest}"' in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    try:
        span = _byte_range(request.headers.get("Range"), blob.size)
    except _Unsatisfiable:
        return _unsatisfiable(request, blob.size)
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
        timeout = registry(request).config.server.send_timeout
        sent = await send_file(request, response, file, start, end - start, timeout)
    finally:
        file.close()  # the send used its own copy of the descriptor
    if sent:
        await response.write_eof()
    else:
        response.force_close()  # the client is gone or stalled; the body is short
    return response


def _unsatisfiable(request: web.Request, size: int) -> web.Response:
    """416 for a range starting past the end of a blob of ``size`` bytes."""
    refusal = error_response(
        ErrorCode.SIZE_INVALID,
        f"range {request.headers.get('Range', '')[:100]!r} is outside a blob of {size} bytes",
        status=416,
    )
    refusal.headers["Content-Range"] = f"bytes */{size}"
    return refusal


async def delete_blob(request: web.Request) -> web.StreamResponse:
    await registry(request).delete_blob(request.match_info["name"], request.match_info["digest"])
    return web.Response(status=202)
