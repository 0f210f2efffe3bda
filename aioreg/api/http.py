"""Small request/response helpers shared by the handlers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode

import msgspec
from aiohttp import web
from multidict import MultiDict

from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError, RequestTimeoutError, TooLargeError

REGISTRY_KEY = web.AppKey("registry", Registry)
ASCII_DIGITS = re.compile(r"[0-9]+")


def registry(request: web.Request) -> Registry:
    return request.app[REGISTRY_KEY]


def json_response(payload: object, content_type: str = "application/json") -> web.Response:
    return web.Response(body=msgspec.json.encode(payload), content_type=content_type)


def has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get("Transfer-Encoding", "").lower() == (
        "chunked"
    )


async def body_stream(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a body that stalls past the timeout is abandoned.

    One received buffer at a time (``readchunk``), as the parser handed it over:
    ``readany`` would join everything buffered into a new copy first.
    """
    timeout = request.app[REGISTRY_KEY].config.server.body_read_timeout
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk, end_of_http_chunk = await request.content.readchunk()
        except TimeoutError:
            raise RequestTimeoutError(
                f"request body stalled for more than {timeout:g}s", timeout
            ) from None
        if chunk:
            yield chunk
        elif not end_of_http_chunk or request.content.at_eof():
            return  # an empty body's reader says (b"", True) forever


async def read_form(request: web.Request, limit: int) -> MultiDict[str]:
    """A small ``application/x-www-form-urlencoded`` body, read like ``read_limited``.

    aiohttp's ``request.post()`` waits for the body with no timeout; any other
    content type reads as an empty form, as it does there.
    """
    body = await read_limited(request, limit)
    if request.content_type != "application/x-www-form-urlencoded":
        return MultiDict()
    text = body.decode(request.charset or "utf-8", errors="replace")
    return MultiDict(parse_qsl(text, keep_blank_values=True))


async def read_limited(request: web.Request, limit: int) -> bytes:
    """Read a small body whole, refusing it as soon as it passes ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"body is {request.content_length} bytes; the limit is {limit}", limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in body_stream(request):
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"body is over the limit of {limit} bytes", limit)
        parts.append(chunk)
    return b"".join(parts)


def query_int(request: web.Request, key: str, default: int, maximum: int) -> int:
    """A non-negative decimal query parameter (ASCII digits only), capped at ``maximum``."""
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    if not ASCII_DIGITS.fullmatch(raw):
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID,
            f"{key} must be a non-negative integer, got {raw[:50]!r}",
        )
    # More digits than the cap has is over the cap; never convert a huge string
    # (nor one padded with zeros past Python's int-string limit).
    digits = raw.lstrip("0") or "0"
    if len(digits) > len(str(maximum)):
        return maximum
    return min(int(digits), maximum)


def page_params(request: web.Request, maximum: int) -> tuple[str | None, int]:
    """``last`` and ``n`` of a paginated listing; an ``n`` over the maximum is capped."""
    return request.query.get("last") or None, query_int(request, "n", maximum, maximum)


def next_link(path: str, limit: int, last: str, extra: dict[str, str] | None = None) -> str:
    query = urlencode({**(extra or {}), "n": str(limit), "last": last})
    return f'<{path}?{query}>; rel="next"'
