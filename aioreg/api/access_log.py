"""The JSON access log: one object per request, for ``[log] format = "json"``.

The plain format keeps aiohttp's access line (``server.ACCESS_LOG_FORMAT``);
this one carries the same facts as fields, plus what only the app knows: the
route template, the user and the repository.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from aioreg.api.auth import IDENTITY
from aioreg.api.metrics import route_of, sent_bytes
from aioreg.api.request_id import REQUEST_ID, REQUEST_ID_HEADER
from aioreg.logformat import ACCESS_FIELD

PATH_MAX = 500  # characters of the request path logged


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            fields = access_fields(request, response, time)
            self.logger.info(
                "%s %s %s",
                request.method,
                fields["path"],
                response.status,
                extra={ACCESS_FIELD: fields},
            )
        except Exception:
            self.logger.exception("cannot write the access log line")


def access_fields(
    request: BaseRequest, response: web.StreamResponse, duration: float
) -> dict[str, Any]:
    identity = request.get(IDENTITY)
    app_request = request if isinstance(request, web.Request) else None
    return {
        "request_id": request.get(REQUEST_ID) or response.headers.get(REQUEST_ID_HEADER),
        "remote": request.remote,
        "method": request.method,
        "route": route_of(app_request) if app_request is not None else None,
        "path": request.path[:PATH_MAX],
        "status": response.status,
        "bytes": sent_bytes(request, response),
        "bytes_received": request.content.total_bytes,
        "duration": round(duration, 6),
        "user": None if identity is None else identity.name or "<anonymous>",
        "repository": app_request.match_info.get("name") if app_request is not None else None,
        "user_agent": request.headers.get("User-Agent"),
    }
