"""One blob upload's lifecycle: write → commit (verify, fsync) → place → release, or cancel.

Bytes stream from the client to a temporary file under ``uploads/`` on the
same filesystem as the blobs, while the upload's digest algorithm (sha256
unless the client named another) and xxh3-128 run over them. File
writes and hashing happen on a worker thread (hashlib and xxhash release the
GIL) so they overlap with the event loop reading the next bytes off the socket.
Nothing holds more than one buffer of a blob in memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import os
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from aioreg.domain.reference import Digest
from aioreg.storage.errors import (
    BlobInvalidDigest,
    BlobInvalidLength,
    UploadLost,
    UploadOffsetMismatch,
)

if TYPE_CHECKING:
    from aioreg.storage.blobstore import BlobStore

READ_BLOCK = 1 << 20
# Batches of one body in flight at once: one being written, one hashed, one read off the socket.
PIPELINE_DEPTH = 3
# With more bodies than this arriving at once the threads are busy anyway: each keeps one
# batch of a quarter the size in flight, so memory stays at half a buffer per upload
# (peak RSS with 32 pushers).
DEEP_PIPELINES = 4
_writing = 0  # bodies being written now, in this process
# A write waits until what it wrote this far back is on disk: dirty pages never pile up,
# and the fsync at the end finds little left to flush.
WRITEBACK_LAG = 32 << 20
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
# Bulk bytes have their own threads, apart from the default executor's metadata work (index,
# renames, directory fsyncs): file writes, which may wait on the disk, and hashing (CPU bound,
# hashlib and xxhash release the GIL), so neither queues behind the other.
_WRITE_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aioreg-write")
_HASH_POOL = ThreadPoolExecutor(
    max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="aioreg-hash"
)


@dataclass(frozen=True, slots=True)
class WrittenBlob:
    """A verified, fsynced blob a writer holds, ready to be placed and indexed."""

    digest: str
    size: int
    xxh3: str


class BlobWriter:
    """Temp file plus running hashes; ``offset`` counts bytes acknowledged to the client."""

    def __init__(
        self,
        store: BlobStore,
        upload_id: str,
        executor: Executor | None = None,
        algorithm: str = "sha256",
    ) -> None:
        self.store = store
        self.upload_id = upload_id
        self.path = store.upload_path(upload_id)
        self.offset = 0
        self.algorithm = algorithm
        self._io: Executor = executor or _WRITE_POOL
        self._hasher: Executor = executor or _HASH_POOL
        self._hash: Any = hashlib.new(algorithm)
        self._xxh3: Any = xxhash.xxh3_128()
        self._placed: Digest | None = None
        # Held from create/resume to release/cancel: removers skip a file whose lock is taken.
        self._owner_fd: int | None = None

    # -- opening ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: BlobStore,
        upload_id: str,
        executor: Executor | None = None,
        algorithm: str = "sha256",
    ) -> BlobWriter:
        writer = cls(store, upload_id, executor, algorithm)
        fd = os.open(writer.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        writer._owner_fd = store.own_upload(writer.path, fd)
        return writer

    @classmethod
    async def resume(
        cls,
        store: BlobStore,
        upload_id: str,
        committed_bytes: int,
        executor: Executor | None = None,
        algorithm: str = "sha256",
    ) -> BlobWriter:
        """Rebuild a writer after a restart: drop unacknowledged bytes, rehash the rest
        with the session's algorithm."""
        writer = cls(store, upload_id, executor, algorithm)
        loop = asyncio.get_running_loop()
        writer._owner_fd = await loop.run_in_executor(writer._io, store.own_upload, writer.path)
        try:
            await loop.run_in_executor(writer._hasher, writer._rehash, committed_bytes)
        except BaseException:
            writer._disown()
            raise
        return writer

    def _rehash(self, committed_bytes: int) -> None:
        with open(self.path, "r+b") as f:
            stat = os.fstat(f.fileno())
            if stat.st_size < committed_bytes:
                raise UploadLost(self.upload_id, committed_bytes, stat.st_size)
            if stat.st_nlink > 1:
                # Also under a blob's final name (indexing it failed after ``place``):
                # truncating would cut that file too, so keep the prefix in a new file.
                _replace_with_prefix(f, self.path, committed_bytes)
            else:
                f.truncate(committed_bytes)
        with open(self.path, "rb") as f:
            while block := f.read(READ_BLOCK):
                self._hash.update(block)
                self._xxh3.update(block)
        self.offset = committed_bytes

    # -- write -----------------------------------------------------------

    async def write(
        self,
        chunks: AsyncIterator[bytes],
        start: int | None = None,
        buffer_bytes: int = READ_BLOCK,
    ) -> int:
        """Append a request body; on any failure roll the file and hashes back to before it.

        ``start`` is the first byte's offset the client claims (from
        Content-Range); it must be where the upload stands. The body goes in
        batches of ``buffer_bytes``, up to ``PIPELINE_DEPTH`` of them in flight:
        each is written (``pwritev``) on one thread while the previous ones are
        hashed on another, and the loop reads on. ``offset`` moves once a batch
        is both in the file and hashed, in order.
        """
        if start is not None and start != self.offset:
            raise UploadOffsetMismatch(start, self.offset)
        loop = asyncio.get_running_loop()
        before = (self.offset, self._hash.copy(), self._xxh3.copy())
        fd = await loop.run_in_executor(self._io, os.open, self.path, os.O_WRONLY)
        inflight: deque[asyncio.Task[int]] = deque()
        position = self.offset
        global _writing
        _writing += 1
        shallow = max(buffer_bytes // 4, 1 << 16)
        try:
            batch: list[bytes] = []
            batched = 0
            async for chunk in chunks:
                batch.append(chunk)
                batched += len(chunk)
                if batched >= (buffer_bytes if _writing <= DEEP_PIPELINES else shallow):
                    inflight.append(self._absorb(fd, batch, position, inflight))
                    position += batched
                    batch, batched = [], 0
                    if len(inflight) >= (PIPELINE_DEPTH if _writing <= DEEP_PIPELINES else 1):
                        self.offset += await asyncio.shield(inflight[0])
                        inflight.popleft()
            if batch:
                inflight.append(self._absorb(fd, batch, position, inflight))
            while inflight:
                self.offset += await asyncio.shield(inflight[0])
                inflight.popleft()
        except BaseException:
            # Let the workers finish with the file and the hashes before both are rolled back.
            await asyncio.gather(*inflight, return_exceptions=True)
            self.offset, self._hash, self._xxh3 = before
            await loop.run_in_executor(self._io, _truncate_close, fd, self.offset)
            raise
        finally:
            _writing -= 1
        await loop.run_in_executor(self._io, os.close, fd)
        return self.offset

    def _absorb(
        self, fd: int, batch: list[bytes], at: int, inflight: deque[asyncio.Task[int]]
    ) -> asyncio.Task[int]:
        """Write one batch at ``at`` and hash it after the batches before it (a task)."""
        previous = inflight[-1] if inflight else None
        return asyncio.ensure_future(self._absorb_batch(fd, batch, at, previous))

    async def _absorb_batch(
        self, fd: int, batch: list[bytes], at: int, previous: asyncio.Task[int] | None
    ) -> int:
        loop = asyncio.get_running_loop()
        written = loop.run_in_executor(self._io, _write_batch, fd, batch, at)
        try:
            if previous is not None:
                await previous  # hashes take the batches in order
            await loop.run_in_executor(self._hasher, self._hash_batch, batch)
        finally:
            size = await written
        return size

    def _hash_batch(self, batch: list[bytes]) -> None:
        for block in batch:
            self._hash.update(block)
        for block in batch:
            self._xxh3.update(block)

    # -- finish ----------------------------------------------------------

    async def commit(self, expected: Digest, expected_size: int | None = None) -> WrittenBlob:
        """Verify the bytes against the client's digest and fsync them.

        The temp file stays either way: the caller decides whether a failure ends
        the upload (``cancel``). On success ``place`` gives it its final name while
        the index records it, and ``release`` drops the temp name afterwards.
        """
        loop = asyncio.get_running_loop()
        if expected_size is not None and expected_size != self.offset:
            raise BlobInvalidLength(expected_size, self.offset)
        actual = await loop.run_in_executor(self._hasher, self._digest, expected.algorithm)
        if actual != expected:
            raise BlobInvalidDigest(str(expected), str(actual))
        await loop.run_in_executor(self._io, _fsync_file, self.path)
        return WrittenBlob(str(expected), self.offset, self._xxh3.hexdigest())

    def _digest(self, algorithm: str) -> Digest:
        if algorithm == self.algorithm:
            return Digest(algorithm, self._hash.hexdigest())
        # Closed with a digest in another algorithm than the session's (a client that did
        # not say ?digest-algorithm=): hash the finished file once rather than every upload
        # twice.
        hasher = hashlib.new(algorithm)
        with open(self.path, "rb") as f:
            while block := f.read(READ_BLOCK):
                hasher.update(block)
        return Digest(algorithm, hasher.hexdigest())

    async def place_early(self, digest: Digest) -> None:
        """Link the verified bytes under the blob's final name and fsync the directory
        now, before the index's write lock is taken, so concurrent uploads' directory
        fsyncs overlap instead of queueing behind that lock. ``place`` then only checks
        the file is still there (a GC sweep may have moved an older copy away meanwhile).
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self.store.place, self.path, digest)
        self._placed = digest

    def place(self, digest: Digest) -> None:
        """Hard-link the verified bytes under the blob's final name (blocking)."""
        if self._placed == digest and _same_file(self.path, self.store.path(digest)):
            return  # linked by ``place_early`` and its directory fsynced since
        self.store.place(self.path, digest)

    async def cancel(self) -> None:
        """Abandon the upload: its bytes are gone."""
        await self._remove_temp()

    async def release(self) -> None:
        """After the committed blob is indexed: the temp copy is no longer needed."""
        await self._remove_temp()

    async def _remove_temp(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._io, _unlink, self.path)
        finally:
            self._disown()

    def _disown(self) -> None:
        fd, self._owner_fd = getattr(self, "_owner_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        # A writer dropped without release or cancel (its session expired) lets go of its file.
        self._disown()


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return call


_SYNC_FILE_RANGE = _load_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WAIT_AFTER = 4


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range out now (Linux), not wait for it.

    The final fsync then finds most of a large blob already on disk instead of
    flushing it all at the end.
    """
    if _SYNC_FILE_RANGE is not None and length:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def wait_writeback(fd: int, offset: int, length: int) -> None:
    """Wait until a range started with ``start_writeback`` is on disk (Linux)."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
        _SYNC_FILE_RANGE(fd, offset, length, flags)


def _write_batch(fd: int, batch: list[bytes], at: int) -> int:
    """``pwritev`` the whole batch at ``at``, start its writeback, and wait for the
    writeback of the range ``WRITEBACK_LAG`` bytes behind it."""
    size = 0
    for first in range(0, len(batch), IOV_MAX):
        group = batch[first : first + IOV_MAX]
        length = sum(len(block) for block in group)
        done = os.pwritev(fd, group, at + size)
        if done < length:  # a short write: the rest, one buffer at a time
            rest = memoryview(b"".join(group))
            while done < length:
                done += os.pwrite(fd, rest[done:], at + size + done)
        size += length
    start_writeback(fd, at, size)
    behind = at - WRITEBACK_LAG
    if behind >= 0:
        wait_writeback(fd, behind, size)
    return size


def _replace_with_prefix(f: Any, path: Path, size: int) -> None:
    """Put a new file holding ``f``'s first ``size`` bytes at ``path``."""
    fresh = path.with_name(path.name + ".rollback")
    with open(fresh, "wb") as out:
        f.seek(0)
        remaining = size
        while remaining and (block := f.read(min(READ_BLOCK, remaining))):
            out.write(block)
            remaining -= len(block)
    os.replace(fresh, path)


def _truncate_close(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
