"""Every failure leaves as the distribution-spec's error JSON with its status."""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from aioreg.errors import (
    ErrorCode,
    RangeError,
    RegistryError,
    RequestTimeoutError,
    StorageFullError,
    TooLargeError,
    TooManyRequestsError,
    UnavailableError,
    is_disk_full,
)

log = logging.getLogger("aioreg.api")

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}

STATUS: dict[ErrorCode, int] = {
    ErrorCode.BLOB_UNKNOWN: 404,
    ErrorCode.BLOB_UPLOAD_INVALID: 400,
    ErrorCode.BLOB_UPLOAD_UNKNOWN: 404,
    ErrorCode.DIGEST_INVALID: 400,
    ErrorCode.MANIFEST_BLOB_UNKNOWN: 400,
    ErrorCode.MANIFEST_INVALID: 400,
    ErrorCode.MANIFEST_UNKNOWN: 404,
    ErrorCode.NAME_INVALID: 400,
    ErrorCode.NAME_UNKNOWN: 404,
    ErrorCode.SIZE_INVALID: 400,
    ErrorCode.TAG_INVALID: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.DENIED: 403,
    ErrorCode.UNSUPPORTED: 405,
    ErrorCode.TOOMANYREQUESTS: 429,
    ErrorCode.PAGINATION_NUMBER_INVALID: 400,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNKNOWN: 500,
    ErrorCode.BAD_REQUEST: 400,
}

# aiohttp's own refusals (no route, wrong method, body too big) in spec terms.
HTTP_CODES: dict[int, ErrorCode] = {
    404: ErrorCode.NAME_UNKNOWN,
    405: ErrorCode.UNSUPPORTED,
    413: ErrorCode.SIZE_INVALID,
}


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    detail: object = None


class ErrorBody(msgspec.Struct):
    errors: list[ErrorDetail]


def error_response(
    code: ErrorCode, message: str, detail: object = None, status: int | None = None
) -> web.Response:
    body = msgspec.json.encode(ErrorBody([ErrorDetail(code.value, message, detail)]))
    return web.Response(
        status=status or STATUS[code],
        body=body,
        content_type="application/json",
    )


# Errors whose status is not the one their code usually has.
STATUS_BY_KIND: tuple[tuple[type[RegistryError], int], ...] = (
    (RangeError, 416),
    (TooLargeError, 413),
    (StorageFullError, 507),
    (UnavailableError, 503),
    (TooManyRequestsError, 429),
    (RequestTimeoutError, 408),
)


def error_status(exc: RegistryError) -> int:
    """The HTTP status a typed error answers with."""
    return next((s for kind, s in STATUS_BY_KIND if isinstance(exc, kind)), STATUS[exc.code])


def registry_error_response(exc: RegistryError) -> web.Response:
    response = error_response(exc.code, exc.message, exc.detail, error_status(exc))
    if isinstance(exc, RequestTimeoutError):
        response.force_close()
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except RegistryError as exc:
        return registry_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, ErrorCode.UNKNOWN if exc.status >= 500 else None)
        if code is None:
            code = ErrorCode.UNSUPPORTED
        message = exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path[:200]}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path[:200]}"
        response = error_response(code, message, status=exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception as exc:
        translated = _translate(exc)
        if translated is not None:
            log.warning("%s %s: %s", request.method, request.path[:200], exc)
            return registry_error_response(translated)
        log.exception("unhandled error on %s %s", request.method, request.path[:200])
        return error_response(ErrorCode.UNKNOWN, "internal server error", status=500)
    return response


def _translate(exc: Exception) -> RegistryError | None:
    """Environment failures the client should hear about plainly, not as a bare 500."""
    if is_disk_full(exc):
        return StorageFullError(str(exc))
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return UnavailableError("the index is busy; retry shortly", retry_after=1.0)
    return None
