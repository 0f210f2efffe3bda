"""``X-Request-Id``: accepted from the client or generated, returned, and logged."""

from __future__ import annotations

from aiohttp import web

from aioreg import logcontext
from aioreg.api.errors import Handler

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("request_id", str)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = logcontext.new_request_id(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID] = rid
    token = logcontext.request_id.set(rid)
    upload = logcontext.upload_id.set(
        logcontext.sane_upload_id(request.match_info.get("upload_id"))
    )
    try:
        return await handler(request)
    finally:
        logcontext.upload_id.reset(upload)
        logcontext.request_id.reset(token)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """On prepare, so streamed bodies (blob GETs) carry it as well as plain responses."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid
