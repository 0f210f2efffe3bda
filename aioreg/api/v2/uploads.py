"""``/v2/<name>/blobs/uploads/``: monolithic, chunked and resumable pushes, and mounts."""

from __future__ import annotations

import logging
import re

from aiohttp import web

from aioreg import logcontext
from aioreg.api.auth import IDENTITY, MOUNT_ALLOWED
from aioreg.api.errors import registry_error_response
from aioreg.api.forward import owned
from aioreg.api.http import body_stream, has_body, registry
from aioreg.auth.service import Identity
from aioreg.errors import ErrorCode, RangeError, RegistryError

log = logging.getLogger("aioreg.uploads")

# No offset has more digits than a 64-bit integer; longer numbers are malformed, not converted.
CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?")


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _progress(name: str, upload_id: str, offset: int, status: int) -> web.Response:
    """202/204 answer telling the client where the upload stands (``Range`` is inclusive)."""
    return web.Response(
        status=status,
        headers={
            "Location": _location(name, upload_id),
            "Range": f"0-{max(offset - 1, 0)}",
            "Docker-Upload-UUID": upload_id,
        },
    )


def _created(name: str, digest: str) -> web.Response:
    return web.Response(
        status=201,
        headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest},
    )


def _client(request: web.Request) -> str:
    """Whom the open-session cap counts against: the user when known, else the address."""
    identity: Identity | None = request.get(IDENTITY)
    if identity is not None and identity.name is not None:
        return f"user {identity.name}"
    return f"address {request.remote}"


def _chunk_start(request: web.Request) -> int | None:
    """First byte offset from ``Content-Range``, checked against ``Content-Length``."""
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    match = CONTENT_RANGE_RE.fullmatch(header.strip())
    if match is None:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID, f"malformed Content-Range {header[:100]!r}"
        )
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise RegistryError(ErrorCode.BLOB_UPLOAD_INVALID, f"empty Content-Range {header!r}")
    length = request.content_length
    if length is not None and length != end - start + 1:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            f"Content-Range {header!r} covers {end - start + 1} bytes, "
            f"Content-Length says {length}",
        )
    return start


def _out_of_order(name: str, upload_id: str, exc: RangeError) -> web.Response:
    response = registry_error_response(exc)
    response.headers["Location"] = _location(name, upload_id)
    response.headers["Range"] = f"0-{max(exc.offset - 1, 0)}"
    return response


async def start_upload(request: web.Request) -> web.StreamResponse:
    reg = registry(request)
    name = request.match_info["name"]
    query = request.query
    # With access control on, a mount needs pull access to a named source.
    if "mount" in query and request.get(MOUNT_ALLOWED, True):
        mounted = await reg.mount_blob(name, query["mount"], query.get("from"))
        if mounted is not None:
            return _created(name, mounted.digest)
    if "digest" in query:
        row = await reg.uploads.put(name, query["digest"], body_stream(request))
        return _created(name, row.digest)
    upload_id = await reg.uploads.start(name, _client(request), query.get("digest-algorithm"))
    logcontext.upload_id.set(upload_id)
    log.info("upload started in %s", name)
    response = _progress(name, upload_id, 0, 202)
    response.headers["OCI-Chunk-Min-Length"] = str(reg.config.storage.chunk_min_length)
    return response


@owned
async def upload_status(request: web.Request) -> web.StreamResponse:
    name, upload_id = request.match_info["name"], request.match_info["upload_id"]
    offset = await registry(request).uploads.offset(name, upload_id)
    return _progress(name, upload_id, offset, 204)


@owned
async def patch_upload(request: web.Request) -> web.StreamResponse:
    name, upload_id = request.match_info["name"], request.match_info["upload_id"]
    try:
        offset = await registry(request).uploads.append(
            name, upload_id, body_stream(request), _chunk_start(request)
        )
    except RangeError as exc:
        return _out_of_order(name, upload_id, exc)
    log.debug("upload at %d bytes", offset)
    return _progress(name, upload_id, offset, 202)


@owned
async def finish_upload(request: web.Request) -> web.StreamResponse:
    name, upload_id = request.match_info["name"], request.match_info["upload_id"]
    digest = request.query.get("digest")
    if not digest:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID, "closing an upload needs ?digest= of the whole blob"
        )
    body = body_stream(request) if has_body(request) else None
    try:
        row = await registry(request).uploads.finish(
            name, upload_id, digest, body, _chunk_start(request)
        )
    except RangeError as exc:
        return _out_of_order(name, upload_id, exc)
    log.info("upload finished: %s (%d bytes) in %s", row.digest, row.size, name)
    return _created(name, row.digest)


@owned
async def cancel_upload(request: web.Request) -> web.StreamResponse:
    name, upload_id = request.match_info["name"], request.match_info["upload_id"]
    await registry(request).uploads.cancel(name, upload_id)
    log.info("upload cancelled")
    return web.Response(status=204)
