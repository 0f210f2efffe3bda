"""One upstream blob transfer into the cache, shared by every client asking for it meanwhile.

The fill task writes the upstream body into an upload temp file (``BlobWriter``:
hashed as it goes) and announces each step's new length; readers follow that
file with their own descriptor, so each gets the bytes as soon as they are on
disk and none holds more than one block in memory. The blob is placed and
indexed only after its digest verifies; any failure removes the temp file and
every reader ends with an error. Readers leaving never stop the fill.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from aioreg.domain.reference import Digest
from aioreg.errors import ErrorCode, RegistryError
from aioreg.proxy.upstream import Upstream, UpstreamError
from aioreg.storage import BlobStorage, UploadWriter, WrittenBlob
from aioreg.storage.writer import READ_BLOCK

log = logging.getLogger("aioreg.proxy")

Publish = Callable[[WrittenBlob, UploadWriter], Awaitable[None]]


class BlobFill:
    """The transfer of one digest; ``started`` once its size is known, ``finished`` at the end."""

    def __init__(self, digest: Digest, repository: str) -> None:
        self.digest = digest
        self.repository = repository  # upstream name
        self.size = 0
        self.progress = 0  # bytes on disk in the temp file
        self.error: BaseException | None = None
        self.succeeded = False
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self._changed = asyncio.Condition()
        self._fd: int | None = None
        self._final_path: str | None = None

    async def run(
        self,
        upstream: Upstream,
        store: BlobStorage,
        publish: Publish,
        buffer_bytes: int,
        max_bytes: int,
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
                if max_bytes and response.content_length > max_bytes:
                    raise RegistryError(
                        ErrorCode.SIZE_INVALID,
                        f"blob {self.digest} is {response.content_length} bytes, over this "
                        f"proxy's cap of {max_bytes}",
                    )
                self.size = response.content_length
                self.started.set()
                streaming = writer

                async def body() -> AsyncIterator[bytes]:
                    async for chunk in response.content.iter_any():
                        yield chunk
                        # The writer's offset moves once a batch is on disk.
                        await self._advance(streaming.offset)

                # One write over the whole body: the writer hashes and writes one batch
                # on a worker thread while the next is read from the upstream.
                await self._advance(await writer.write(body(), None, buffer_bytes))
            blob = await writer.commit(self.digest, self.size)
            await publish(blob, writer)
            self._final_path = str(store.path(self.digest))
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

    async def _beyond(self, offset: int) -> None:
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

    def follow(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes]:
        """The blob's bytes [start, end) as they arrive; raises if the fill fails midway."""
        return self._follow(start, self.size if end is None else end)

    async def _follow(self, start: int, end: int) -> AsyncGenerator[bytes]:
        # Opened at the first step, in the loop: the fill's descriptor (or, once it
        # succeeded, the placed file) is there, as nothing else runs in between.
        if self._fd is not None:
            fd = os.dup(self._fd)
        elif self.succeeded and self._final_path is not None:
            fd = os.open(self._final_path, os.O_RDONLY)
        else:
            raise self.failure()
        try:
            offset = start
            while offset < end:
                await self._beyond(offset)
                if self.finished.is_set() and not self.succeeded:
                    raise self.failure()
                limit = min(end, self.available())
                chunk = await asyncio.to_thread(
                    os.pread, fd, min(limit - offset, READ_BLOCK), offset
                )
                if not chunk:
                    raise self.failure()
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)
