"""The one place warnings become ``Warning`` headers (distribution-spec, "Warnings").

The spec: a registry MAY send informational warnings in ``Warning`` headers
(RFC 7234 section 5.5), each with warn-code 299, warn-agent ``-`` and no
warn-date, and MUST NOT send more than 4096 bytes of warning data from all
headers combined. Every header line is counted whole (name, value, CRLF), so
the cap holds however "warning data" is read. A warning that does not fit is
cut at a character boundary (with an ellipsis) when enough room is left to say
something, else dropped.
"""

from __future__ import annotations

from aiohttp import web

from aioreg.api.errors import Handler
from aioreg.domain.warnings import collecting

WARNING_BYTES_MAX = 4096
HEADER = "Warning"
PREFIX = '299 - "'
SUFFIX = '"'
ELLIPSIS = "..."
# Overhead of one header line besides its text: "Warning: " + prefix + suffix + CRLF.
LINE_OVERHEAD = len(HEADER) + 2 + len(PREFIX) + len(SUFFIX) + 2
MIN_TEXT_BYTES = 32  # less room than this: drop the warning rather than say a stub

WARNINGS = web.RequestKey("warnings", list[str])


def _clean(message: str) -> str:
    """One line of text: control characters (CR, LF, NUL, DEL...) become spaces."""
    text = "".join(" " if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c for c in message)
    return " ".join(text.split())


def _escaped(char: str) -> str:
    """A character inside an RFC 9110 quoted-string: ``"`` and ``\\`` as quoted-pairs."""
    return "\\" + char if char in '"\\' else char


def _quoted_text(message: str, room: int) -> str | None:
    """The message as quoted-string content in at most ``room`` UTF-8 bytes; cut at a
    character boundary with an ellipsis when longer, None when nothing fits."""
    text = _clean(message)
    if not text:
        return None
    pieces = [_escaped(c) for c in text]
    full = "".join(pieces)
    if len(full.encode()) <= room:
        return full
    if room < MIN_TEXT_BYTES:
        return None
    kept: list[str] = []
    used = len(ELLIPSIS)
    for piece in pieces:
        size = len(piece.encode())
        if used + size > room:
            break
        kept.append(piece)
        used += size
    return "".join(kept).rstrip() + ELLIPSIS


def header_values(messages: list[str]) -> list[str]:
    """``Warning`` header values for these messages, in order, within the byte cap."""
    values: list[str] = []
    budget = WARNING_BYTES_MAX
    for message in messages:
        text = _quoted_text(message, budget - LINE_OVERHEAD)
        if text is None:
            continue
        value = f"{PREFIX}{text}{SUFFIX}"
        budget -= len(HEADER) + 2 + len(value.encode()) + 2
        values.append(value)
    return values


@web.middleware
async def warnings_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Collect what the request's handling warns about; ``add_warning_headers`` renders it."""
    with collecting() as collected:
        request[WARNINGS] = collected
        return await handler(request)


async def add_warning_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, streamed ones included (this runs as headers are sent)."""
    for value in header_values(request.get(WARNINGS) or []):
        response.headers.add(HEADER, value)
