"""One upstream blob transfer into the cache, shared by every client asking for it meanwhile.

The fill task writes the upstream body into an upload temp file (``BlobWriter``:
hashed as it goes) and announces each step's new length; readers follow that
file with their own descriptor, span by span of the bytes on disk (sent with
``sendfile``, never copied through the process), so each gets the bytes as
soon as they are there and none holds any of them in memory. The blob is placed and
indexed only after its digest verifies; any failure removes the temp file and
every reader ends with an error. Readers leaving never stop the fill.

Once the size is known the proxy decides whether the blob is cached at all
(``admit``: its size cap and quota); a blob that is not is streamed the same
way and its temp file dropped at the end, the readers' descriptors still open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import BinaryIO

from aioreg.domain.reference import Digest
from aioreg.errors import ErrorCode, RegistryError
from aioreg.proxy.upstream import Upstream, UpstreamError
from aioreg.storage import BlobStorage, UploadWriter, WrittenBlob

log = logging.getLogger("aioreg.proxy")

# Readers send the bytes in whole, aligned spans of this many (but the last). Measured on
# Linux 6.18/ext4: a reader splicing page-cache folios a few MiB behind the fill's writes
# made those writes' copies ~10x slower (half the proxy's CPU); 8 MiB behind they are not.
SPAN_BYTES = 8 << 20
# Index a verified blob; False when it could not be cached after all (a quota).
Publish = Callable[[WrittenBlob, UploadWriter], Awaitable[bool]]
# Whether a blob of this size is cached (True) or only streamed (False).
Admit = Callable[[int], Awaitable[bool]]


class BlobFill:
    """The transfer of one digest; ``started`` once its size is known, ``finished`` at the end."""

    def __init__(self, digest: Digest, repository: str, namespace: str) -> None:
        self.digest = digest
        self.repository = repository  # upstream name
        self.namespace = namespace  # the local proxy namespace it fills
        self.size = 0
        self.progress = 0  # bytes on disk in the temp file
        self.error: BaseException | None = None
        self.succeeded = False
        self.caching = False  # admitted into the cache (decided once the size is known)
        self.cached = False  # verified and indexed
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self._changed = asyncio.Condition()
        self._fd: int | None = None
        self._final_path: str | None = None

    async def run(
        self,
        upstream: Upstream,
        store: BlobStorage,
        admit: Admit,
        publish: Publish,
        buffer_bytes: int,
    ) -> None:
        """The whole transfer; its outcome is ``succeeded``/``error`` (only cancellation raises)."""
        writer: UploadWriter | None = None
        try:
            upload_id = uuid.uuid4().hex
            writer = store.create_writer(upload_id, self.digest.algorithm)
            self._fd = os.open(store.upload_path(upload_id), os.O_RDONLY)
            async with upstream.request("GET", self.repository, f"blobs/{self.digest}") as response:
                if response.content_length is None:
                    raise RegistryError(
                        ErrorCode.UNAVAILABLE, "upstream sent the blob without a length"
                    )
                self.size = response.content_length
                self.caching = await admit(self.size)
                self.started.set()
                streaming = writer

                async def body() -> AsyncIterator[bytes]:
                    # One received buffer at a time: ``iter_any`` would join what is buffered.
                    async for chunk, _ in response.content.iter_chunks():
                        if chunk:
                            yield chunk
                            # The writer's offset moves once a batch is on disk.
                            await self._advance(streaming.offset)

                # One write over the whole body: the writer hashes and writes one batch
                # on a worker thread while the next is read from the upstream.
                await self._advance(await writer.write(body(), None, buffer_bytes))
            blob = await writer.commit(self.digest, self.size)
            if self.caching and await publish(blob, writer):
                self._final_path = str(store.path(self.digest))
                self.cached = True
            else:  # streamed only: the readers hold their own descriptors of the file
                await writer.cancel()
            self.succeeded = True
        except BaseException as exc:
            self.error = exc
            if writer is not None:
                await writer.cancel()
            if not isinstance(exc, Exception):
                raise
            log.warning("proxy fill of %s failed: %r", self.digest, exc)
        finally:
            self.started.set()
            self.finished.set()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            async with self._changed:
                self._changed.notify_all()

    async def _advance(self, on_disk: int) -> None:
        """Tell the readers when more of the blob is on disk."""
        if on_disk > self.progress:
            self.progress = on_disk
            async with self._changed:
                self._changed.notify_all()

    def available(self) -> int:
        """Bytes a reader may send: all once verified, else all but the last one.

        Holding the last byte back until the digest verifies makes a corrupt
        transfer end short for every reader (an error), never complete and wrong.
        """
        return self.size if self.succeeded else min(self.progress, self.size - 1)

    async def beyond(self, offset: int) -> None:
        """Wait until more than ``offset`` bytes may be sent, or the fill is over."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.available() > offset or self.finished.is_set()
            )

    def failure(self) -> RegistryError:
        """What a client is told when the fill failed."""
        exc = self.error
        if isinstance(exc, UpstreamError):
            if exc.not_found:
                return RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {self.digest} is not upstream")
            return exc.error
        if isinstance(exc, RegistryError):
            return exc
        return RegistryError(
            ErrorCode.UNAVAILABLE, f"fetching blob {self.digest} from upstream failed"
        )

    def reader(self) -> FillReader:
        """A reader of the blob, with its own descriptor of the file from now on.

        Called with no await since the fill was found running, so the temp file
        is still open; once the fill is over, only a cached blob can be read.
        """
        if self._fd is not None:
            return FillReader(self, os.dup(self._fd))
        if self.cached and self._final_path is not None:
            try:
                return FillReader(self, os.open(self._final_path, os.O_RDONLY))
            except OSError:
                pass  # evicted and collected meanwhile
        if self.finished.is_set() and not self.succeeded:
            raise self.failure()
        raise RegistryError(
            ErrorCode.UNAVAILABLE, f"the transfer of blob {self.digest} ended; pull it again"
        )


class FillReader:
    """One client's view of a fill: the spans of the file it may send, as they arrive."""

    def __init__(self, fill: BlobFill, fd: int) -> None:
        self.fill = fill
        self._fd: int | None = fd

    def file(self) -> BinaryIO:
        """The reader's descriptor as a file (for ``sendfile``); closing it leaves the fd."""
        assert self._fd is not None, "closed"
        return open(self._fd, "rb", buffering=0, closefd=False)

    async def spans(self, start: int, end: int) -> AsyncGenerator[tuple[int, int]]:
        """(offset, length) spans of the blob's bytes [start, end) as they reach the file;
        raises if the fill fails midway."""
        fill = self.fill
        offset = start
        while offset < end:
            await fill.beyond(min(end, offset + SPAN_BYTES) - 1)
            if fill.finished.is_set() and not fill.succeeded:
                raise fill.failure()
            limit = min(end, fill.available())
            if limit < end and limit - limit % SPAN_BYTES > offset:
                limit -= limit % SPAN_BYTES
            if limit <= offset:
                raise fill.failure()
            yield offset, limit - offset
            offset = limit

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
