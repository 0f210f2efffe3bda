"""Tar streams, plain or zstd (gzip too, when reading what other tools made).

Writing: ``TarWriter`` emits members itself (a header, the bytes copied through
one reused buffer, padding) so a blob file streams through at disk speed and is
never held in memory. Reading goes through ``tarfile`` in stream mode, which
understands every header dialect (PAX, GNU long names) other tools write.
Compression is detected from the first bytes, never from the file name.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import tarfile
from collections.abc import Callable, Coroutine, Iterator
from typing import IO, Any, Protocol, cast

import zstandard

BLOCK = 512
RECORD = 20 * BLOCK
COPY_BYTES = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


class Sink(Protocol):
    """Where an archive goes: a file, stdout, or an HTTP response (``SyncWriter``)."""

    def write(self, data: Any, /) -> Any: ...


class TarWriter:
    """Members appended to a writable binary stream, in order, in PAX format."""

    def __init__(self, out: Sink) -> None:
        self._out = out
        self._written = 0
        self._buffer = bytearray(COPY_BYTES)

    def _write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._written += len(data)

    def _header(self, name: str, size: int, kind: bytes = tarfile.REGTYPE) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.type = kind
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        info.mtime = 0  # the same content makes the same archive
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        if size % BLOCK:
            self._write(bytes(BLOCK - size % BLOCK))

    def directory(self, name: str) -> None:
        self._header(name.rstrip("/") + "/", 0, tarfile.DIRTYPE)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        self._write(data)
        self._pad(len(data))

    def add_file(self, name: str, path: os.PathLike[str] | str, size: int) -> None:
        """Stream a file of ``size`` bytes (it must have exactly that many) into the archive."""
        self._header(name, size)
        view = memoryview(self._buffer)
        with open(path, "rb", buffering=0) as f:
            remaining = size
            while remaining:
                n = f.readinto(view[: min(COPY_BYTES, remaining)])
                if not n:
                    raise OSError(f"{path} ended {remaining} bytes short of its size")
                self._write(view[:n])
                remaining -= n
            if f.read(1):
                raise OSError(f"{path} is longer than its recorded size {size}")
        self._pad(size)

    def close(self) -> None:
        """End of archive: two zero blocks, then padding to a whole record, as tar does."""
        self._write(bytes(2 * BLOCK))
        if self._written % RECORD:
            self._write(bytes(RECORD - self._written % RECORD))


@contextlib.contextmanager
def compressed(out: Sink, level: int | None, threads: int) -> Iterator[Sink]:
    """``out`` through a zstd frame (``level`` None: no compression).

    ``threads`` as ``zstd -T``: 0 uses every core, 1 compresses on the calling thread.
    """
    if level is None:
        yield out
        return
    workers = -1 if threads == 0 else (0 if threads == 1 else threads)
    compressor = zstandard.ZstdCompressor(level=level, threads=workers, write_checksum=True)
    writer = compressor.stream_writer(cast(IO[bytes], out), closefd=False, write_size=COPY_BYTES)
    yield writer
    writer.flush(zstandard.FLUSH_FRAME)
    writer.close()  # type: ignore[no-untyped-call]


def decompressed(source: IO[bytes]) -> IO[bytes]:
    """The tar inside ``source``: zstd, gzip or plain, told apart by their magic bytes."""
    head = _peek(source, 4)
    if head.startswith(ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=COPY_BYTES, read_across_frames=True, closefd=False
        )
        return io.BufferedReader(reader, COPY_BYTES)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[return-value]
    return source


def open_tar(stream: IO[bytes]) -> tarfile.TarFile:
    """Members one after another, never seeking (stdin and HTTP bodies cannot)."""
    return tarfile.open(fileobj=stream, mode="r|", bufsize=COPY_BYTES)


def _peek(source: IO[bytes], n: int) -> bytes:
    peek: Callable[[int], bytes] | None = getattr(source, "peek", None)
    if peek is None:
        raise TypeError("the import source must support peek (a buffered reader)")
    return peek(n)[:n]


class SyncReader(io.RawIOBase):
    """Blocking reads (on a worker thread) of an async byte source on the event loop."""

    def __init__(
        self, read: Callable[[int], Coroutine[Any, Any, bytes]], loop: asyncio.AbstractEventLoop
    ):
        self._read = read
        self._loop = loop

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        _off_loop(self._loop)
        view = memoryview(buffer).cast("B")
        data: bytes = asyncio.run_coroutine_threadsafe(self._read(len(view)), self._loop).result()
        view[: len(data)] = data
        return len(data)


class SyncWriter(io.RawIOBase):
    """Blocking writes (on a worker thread) to an async sink on the event loop."""

    def __init__(
        self, write: Callable[[bytes], Coroutine[Any, Any, None]], loop: asyncio.AbstractEventLoop
    ):
        self._write = write
        self._loop = loop
        self._broken = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        _off_loop(self._loop)
        if self._broken:
            raise BrokenPipeError("an earlier write to this stream failed")
        chunk = bytes(data)
        try:
            asyncio.run_coroutine_threadsafe(self._write(chunk), self._loop).result()
        except BaseException:
            self._broken = True
            raise
        return len(chunk)


def _off_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Waiting on the loop from its own thread would hang it (a buffered stream being
    flushed when it is garbage collected there, say): refuse instead."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    if running is loop:
        raise BlockingIOError("a sync bridge to the event loop was used on the loop's thread")
