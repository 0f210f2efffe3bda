"""Storage's typed errors in the spec's terms: the one place they get an OCI code.

The blob store and writer raise ``aioreg.storage.errors`` types and know
nothing of the distribution spec; the domain turns them into ``RegistryError``
here, and ``aioreg.api.errors`` turns those into statuses and JSON bodies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aioreg.errors import ErrorCode, RangeError, RegistryError
from aioreg.storage.errors import (
    BlobInvalidDigest,
    BlobInvalidLength,
    StorageError,
    UploadLost,
    UploadOffsetMismatch,
)


def registry_error(exc: StorageError) -> RegistryError:
    """The client-facing error for a storage failure (code, message and detail)."""
    message = str(exc)
    if isinstance(exc, BlobInvalidDigest):
        detail = {"expected": exc.expected, "actual": exc.actual}
        return RegistryError(ErrorCode.DIGEST_INVALID, message, detail)
    if isinstance(exc, BlobInvalidLength):
        return RegistryError(ErrorCode.SIZE_INVALID, message)
    if isinstance(exc, UploadOffsetMismatch):
        # 416 with the upload's real offset (see ``aioreg.api.errors.STATUS_BY_KIND``).
        return RangeError(message, exc.offset)
    if isinstance(exc, UploadLost):
        return RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, message)
    return RegistryError(ErrorCode.UNKNOWN, message)


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Re-raise any storage failure inside the block as its ``RegistryError``."""
    try:
        yield
    except StorageError as exc:
        raise registry_error(exc) from exc
