"""What can go wrong storing bytes, as typed errors (Distribution's ``ErrBlobInvalidDigest``...).

Storage knows nothing of the distribution spec: callers above it decide what a
failure means to a client (``aioreg.domain.errors.registry_error`` maps these
to the spec's codes, in one place).
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every typed failure the blob store or a blob writer raises."""


class BlobInvalidDigest(StorageError):
    """The bytes written do not hash to the digest the client claimed."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"uploaded content has digest {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


class BlobInvalidLength(StorageError):
    """The bytes written are not as many as the client declared."""

    def __init__(self, declared: int, actual: int) -> None:
        super().__init__(f"upload has {actual} bytes, client declared {declared}")
        self.declared = declared
        self.actual = actual


class UploadOffsetMismatch(StorageError):
    """A chunk does not start where the upload stands (``offset`` bytes written so far)."""

    def __init__(self, start: int, offset: int) -> None:
        super().__init__(f"chunk starts at byte {start} but the upload has {offset} bytes")
        self.start = start
        self.offset = offset


class UploadLost(StorageError):
    """An upload's temp file holds fewer bytes than were acknowledged to the client."""

    def __init__(self, upload_id: str, acknowledged: int, found: int) -> None:
        super().__init__(f"upload {upload_id} lost data it had acknowledged")
        self.upload_id = upload_id
        self.acknowledged = acknowledged
        self.found = found
