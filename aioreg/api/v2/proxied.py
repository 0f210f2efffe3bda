"""Pulls through proxy namespaces (``aioreg.proxy``), and the refusal of writes to them.

A pull is proxied when its repository is under a proxy's namespace, or when
containerd's ``?ns=<host>`` names a configured upstream host (the answer then
carries ``OCI-Namespace: <host>``). A blob not cached yet streams to the client
from the shared transfer filling the cache.
"""

from __future__ import annotations

import contextlib
import logging

from aiohttp import web

from aioreg.api.errors import Handler
from aioreg.api.http import registry
from aioreg.api.v2.sendfile import send_file
from aioreg.proxy.fill import BlobFill
from aioreg.proxy.service import Proxies

log = logging.getLogger("aioreg.proxy")
PROXIES_KEY = web.AppKey("proxies", Proxies)
READ_METHODS = frozenset({"GET", "HEAD"})


def proxies(request: web.Request) -> Proxies:
    return request.app[PROXIES_KEY]


def proxied_name(request: web.Request) -> str | None:
    """The local repository a pull reads when it goes through a proxy; None if hosted."""
    return proxies(request).route(request.match_info["name"], request.query.get("ns"))


def authorised_name(request: web.Request, name: str) -> str:
    """The repository whose access rules a request answers to: a pull routed by ``?ns=``
    into a proxy namespace is checked there (``hub/library/alpine``), not on the URL's name."""
    if request.method in READ_METHODS and request.query.get("ns") and PROXIES_KEY in request.app:
        return proxies(request).route(name, request.query["ns"]) or name
    return name


async def add_namespace_header(request: web.Request, response: web.StreamResponse) -> None:
    """``OCI-Namespace: <host>`` when containerd's ``?ns=`` chose the proxy that answered."""
    ns = request.query.get("ns")
    name = request.match_info.get("name")
    if ns and name and request.method in READ_METHODS and PROXIES_KEY in request.app:
        routed = proxies(request).route(name, ns)
        if routed is not None and routed != name:
            response.headers["OCI-Namespace"] = ns


def _purges_cache(request: web.Request) -> bool:
    """``/api/v1`` deletes of a repository or an artifact purge cached content, as Harbor
    lets a proxy cache project's artifacts be deleted; the next pull fetches them again.
    Deprecations are settings on content the upstream owns, so they are refused."""
    return (
        request.method == "DELETE"
        and request.path.startswith("/api/v1/")
        and not request.path.endswith("/deprecation")
    )


@web.middleware
async def refuse_proxy_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Uploads, pushes, deletes, copies into and deprecations in a proxy namespace answer
    405 UNSUPPORTED, in /v2 and /api/v1 alike; only /api/v1 purges of cached content pass."""
    name = request.match_info.get("name")
    if (
        name
        and request.method not in READ_METHODS
        and request.path.startswith(("/v2/", "/api/v1/"))
        and not _purges_cache(request)
    ):
        proxies(request).refuse_write(name)
    return await handler(request)


async def send_head(request: web.Request, size: int, headers: dict[str, str]) -> web.StreamResponse:
    """A HEAD's headers with the blob's length and no body."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = size
    await response.prepare(request)
    await response.write_eof()
    return response


async def stream_fill(
    request: web.Request,
    fill: BlobFill,
    headers: dict[str, str],
    span: tuple[int, int] | None = None,
) -> web.StreamResponse:
    """A blob not cached yet (or never to be): the bytes as the shared transfer brings them,
    all of them or the ``span`` [start, end) of a Range request.

    Past the headers a failure can only show as a short body (the connection
    closes); the transfer goes on for the cache and the other readers.
    """
    if request.method == "HEAD":
        return await send_head(request, fill.size, headers)
    # Before any await: the transfer found running still has its file open.
    reader = fill.reader()
    try:
        start, end = span if span is not None else (0, fill.size)
        response = web.StreamResponse(status=200 if span is None else 206, headers=headers)
        response.content_length = end - start
        if span is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{fill.size}"
        await response.prepare(request)
        timeout = registry(request).config.server.send_timeout
        try:
            with reader.file() as file:
                async with contextlib.aclosing(reader.spans(start, end)) as spans:
                    async for offset, count in spans:
                        # Straight from the page cache to the socket, as a cached blob is.
                        if not await send_file(request, response, file, offset, count, timeout):
                            return response  # the client went away; the fill goes on
        except Exception as exc:  # the headers are sent: only a short body can say it
            log.warning("proxied blob %s to a client ended early: %r", fill.digest, exc)
            response.force_close()
            return response
        await response.write_eof()
        return response
    finally:
        reader.close()
