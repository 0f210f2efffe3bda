"""What the domain needs from blob storage, as protocols.

``BlobStore`` (files under the data directory) is one implementation; another
backend (an object store, say) implements these instead of forking the domain.
Failures a client can act on are raised as ``aioreg.storage.errors`` types.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

from aioreg.domain.reference import Digest
from aioreg.storage.writer import READ_BLOCK, WrittenBlob


class UploadWriter(Protocol):
    """One upload's bytes on their way to becoming a blob."""

    @property
    def offset(self) -> int:
        """Bytes acknowledged to the client so far."""
        ...

    async def write(
        self, chunks: AsyncIterator[bytes], start: int | None = None, buffer_bytes: int = READ_BLOCK
    ) -> int:
        """Append a body at ``start`` (UploadOffsetMismatch elsewhere); all or nothing."""
        ...

    async def commit(self, expected: Digest, expected_size: int | None = None) -> WrittenBlob:
        """Verify (BlobInvalidDigest, BlobInvalidLength) and make the bytes durable."""
        ...

    async def place_early(self, digest: Digest) -> None:
        """Give the committed bytes their final name ahead of indexing them (when no
        refusal can follow); ``place`` then only checks they are still there."""
        ...

    def place(self, digest: Digest) -> None:
        """Give the committed bytes the blob's final name (blocking)."""
        ...

    async def cancel(self) -> None:
        """Drop the upload's bytes."""
        ...

    async def release(self) -> None:
        """Drop the temp copy once the placed blob is indexed."""
        ...


class BlobStorage(Protocol):
    """Blobs by digest, upload temp files, quarantine and GC's trash."""

    def open(self) -> None: ...

    # -- blobs
    def path(self, digest: Digest) -> Path:
        """Where a blob's bytes are read from (sendfile, scrub)."""
        ...

    def exists(self, digest: Digest) -> bool: ...

    def quarantine(self, digest: Digest) -> None: ...

    def is_young(self, path: Path, grace: float, now: float | None = None) -> bool: ...

    def walk(self) -> Iterator[tuple[Path, Digest | None]]: ...

    # -- uploads
    def create_writer(self, upload_id: str, algorithm: str = "sha256") -> UploadWriter: ...

    async def resume_writer(
        self, upload_id: str, committed_bytes: int, algorithm: str = "sha256"
    ) -> UploadWriter:
        """A writer for an upload another process (or an earlier run) began; UploadLost if
        its file holds fewer than ``committed_bytes``, FileNotFoundError if it is gone."""
        ...

    def upload_path(self, upload_id: str) -> Path: ...

    def upload_files(self) -> list[Path]: ...

    def remove_upload_file(
        self, path: Path, grace: float, now: float | None = None, *, remove: bool = True
    ) -> bool: ...

    # -- GC's trash
    def trash_run(self) -> Path: ...

    def trash(self, digest: Digest, run: Path) -> None: ...

    def trashed(self) -> list[tuple[Path, Digest]]: ...

    def has_trash(self) -> bool: ...

    def hold_sweeps(self) -> contextlib.AbstractContextManager[None]:
        """Keep GC sweeps (any process) from removing blob files while the block runs."""
        ...

    def sweep_guard(self) -> contextlib.AbstractContextManager[bool]:
        """True while a sweep may remove blob files; False if sweeps are held off."""
        ...

    def restore(self, trashed: Path, digest: Digest) -> None: ...

    def empty_trash(self, run: Path | None = None) -> None: ...
