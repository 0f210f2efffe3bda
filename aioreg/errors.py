"""Registry errors as the OCI distribution-spec names them.

Domain code raises these; the HTTP layer (``aioreg.api.errors``) turns the code
into a status and the spec's JSON body. Nothing here knows about HTTP.
"""

from __future__ import annotations

import enum
import errno
import sqlite3
from typing import Any


class ErrorCode(enum.StrEnum):
    BLOB_UNKNOWN = "BLOB_UNKNOWN"
    BLOB_UPLOAD_INVALID = "BLOB_UPLOAD_INVALID"
    BLOB_UPLOAD_UNKNOWN = "BLOB_UPLOAD_UNKNOWN"
    DIGEST_INVALID = "DIGEST_INVALID"
    MANIFEST_BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    MANIFEST_UNKNOWN = "MANIFEST_UNKNOWN"
    NAME_INVALID = "NAME_INVALID"
    NAME_UNKNOWN = "NAME_UNKNOWN"
    SIZE_INVALID = "SIZE_INVALID"
    TAG_INVALID = "TAG_INVALID"
    UNAUTHORIZED = "UNAUTHORIZED"
    DENIED = "DENIED"
    UNSUPPORTED = "UNSUPPORTED"
    TOOMANYREQUESTS = "TOOMANYREQUESTS"
    PAGINATION_NUMBER_INVALID = "PAGINATION_NUMBER_INVALID"
    UNAVAILABLE = "UNAVAILABLE"
    UNKNOWN = "UNKNOWN"
    BAD_REQUEST = "BAD_REQUEST"  # /api/v1 only: a parameter or body it cannot take


class RegistryError(Exception):
    """A failure the client can act on, carrying the spec's error code."""

    def __init__(self, code: ErrorCode, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


class RangeError(RegistryError):
    """A chunk arrived out of order; ``offset`` is where the upload really stands."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(ErrorCode.BLOB_UPLOAD_INVALID, message, {"offset": offset})
        self.offset = offset


class TooLargeError(RegistryError):
    """A body is over a configured limit."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(ErrorCode.SIZE_INVALID, message, {"limit": limit})
        self.limit = limit


class StorageFullError(RegistryError):
    """The disk under the data directory (or the index) has no room left."""

    def __init__(self, what: str) -> None:
        super().__init__(
            ErrorCode.UNKNOWN,
            f"registry storage is full ({what}); nothing was stored, retry once space is freed",
            {"reason": "ENOSPC"},
        )


class UnavailableError(RegistryError):
    """A transient condition (index busy, too much load): the client should retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message, {"retry_after": retry_after})
        self.retry_after = retry_after


class SessionElsewhere(UnavailableError):
    """Another worker process (``server.workers`` > 1) holds this upload session's hash state.

    The API layer forwards the request to ``owner`` (an incarnation token, None for
    a session no worker holds), or adopts the session when the owner is gone; 503
    only if neither can be done right now.
    """

    def __init__(self, upload_id: str, owner: str | None) -> None:
        super().__init__(f"upload {upload_id} is held by worker {owner}; retry shortly")
        self.upload_id = upload_id
        self.owner = owner


class TooManyRequestsError(RegistryError):
    """A client went over its request rate or the upload concurrency cap."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(ErrorCode.TOOMANYREQUESTS, message, {"retry_after": retry_after})
        self.retry_after = retry_after


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return "disk is full" in str(exc) or "disk I/O error" in str(exc)
    return False


class RequestTimeoutError(RegistryError):
    """The client stopped sending its request body."""

    def __init__(self, message: str, timeout: float) -> None:
        super().__init__(ErrorCode.UNKNOWN, message, {"timeout": timeout})


class QuotaExceededError(RegistryError):
    """A push would take a namespace past its storage quota."""

    def __init__(self, namespace: str, quota: int, used: int, adding: int) -> None:
        super().__init__(
            ErrorCode.DENIED,
            f"namespace {namespace} is over its storage quota: {used} of {quota} bytes used, "
            f"this blob needs {adding} more",
            {"namespace": namespace, "quota": quota, "used": used, "needed": adding},
        )
