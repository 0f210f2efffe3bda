"""Tar streams, plain or zstd (gzip too, when reading what other tools made).

Writing: ``TarWriter`` emits members itself (a header, the bytes copied through
one reused buffer, padding) so a blob file streams through at disk speed and is
never held in memory. Reading (``TarReader``) parses headers with ``tarfile``, which
understands every header dialect (PAX, GNU long names) other tools write, and reads
members' bytes itself, in large blocks.
Compression is detected from the first bytes, never from the file name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
    """Members appended to a writable binary stream, in order, in PAX format.

    ``fd``: the descriptor ``out`` writes to, when the archive is not compressed; blob
    files are then copied by the kernel (``copy_file_range``, ``sendfile``), never
    through this process's memory.
    """

    def __init__(self, out: Sink, fd: int | None = None) -> None:
        self._out = out
        self._fd = fd
        # The kernel calls to try, best first; one that cannot serve ``fd`` is dropped.
        self._copies: list[Callable[[int, int, int], int]] = [os.copy_file_range, _sendfile]
        self._written = 0
        self._buffer: bytearray | None = None

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
        with open(path, "rb", buffering=0) as f:
            remaining = size
            if self._fd is not None and remaining:
                flush: Callable[[], object] | None = getattr(self._out, "flush", None)
                if flush is not None:
                    flush()  # the header, before bytes written around the buffer
                copied = _kernel_copy(f.fileno(), self._fd, remaining, self._copies)
                if copied is None:
                    self._fd = None  # this descriptor cannot: copy through memory
                else:
                    remaining -= copied
                    self._written += copied
                    if remaining:
                        raise OSError(f"{path} ended {remaining} bytes short of its size")
            if self._buffer is None:
                self._buffer = bytearray(COPY_BYTES)
            view = memoryview(self._buffer)
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


def _kernel_copy(
    source: int, target: int, size: int, calls: list[Callable[[int, int, int], int]]
) -> int | None:
    """Up to ``size`` bytes from ``source``'s position to ``target``'s, both moved on, by
    the kernel (``copy_file_range`` cannot write to a pipe, ``sendfile`` can); fewer only
    when ``source`` ends early. None when none of ``calls`` can (nothing was copied);
    those that could not are removed from ``calls``."""
    copied = 0
    while calls:
        call = calls[0]
        try:
            while copied < size:
                n = call(source, target, min(size - copied, 1 << 30))
                if not n:
                    return copied
                copied += n
            return copied
        except OSError as exc:
            if copied or exc.errno not in _CANNOT_COPY:
                raise
            calls.pop(0)
    return None


def _sendfile(source: int, target: int, count: int) -> int:
    return os.sendfile(target, source, None, count)


# What copy_file_range and sendfile answer for descriptors they do not handle (a pipe,
# a terminal, another filesystem on older kernels).
_CANNOT_COPY = frozenset({errno.EINVAL, errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


def output_fd(out: Sink) -> int | None:
    """The descriptor ``out`` writes to, if it has one."""
    fileno: Callable[[], int] | None = getattr(out, "fileno", None)
    if fileno is None:
        return None
    try:
        return fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


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
    """The tar inside ``source``: zstd, gzip or plain, told apart by their magic bytes.

    Not buffered again: the tar reader asks for whole blocks, which zstd decompresses
    straight into the bytes it returns.
    """
    head = _peek(source, 4)
    if head.startswith(ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=COPY_BYTES, read_across_frames=True, closefd=False
        )
        return cast(IO[bytes], reader)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[return-value]
    return source


# Zero blocks, or nothing, where a header would be (not in typeshed, public in tarfile).
_END_OF_ARCHIVE: tuple[type[Exception], ...] = (
    getattr(tarfile, "EOFHeaderError"),  # noqa: B009
    getattr(tarfile, "EmptyHeaderError"),  # noqa: B009
)


class _Headers:
    """What ``tarfile.TarInfo.fromtarfile`` reads a header through (a TarFile's fields)."""

    def __init__(self, reader: TarReader) -> None:
        self.fileobj = reader
        self.encoding = "utf-8"
        self.errors = "surrogateescape"
        self.offset = 0
        self.pax_headers: dict[str, str] = {}


class TarReader:
    """Members of a tar stream one after another, never seeking backwards (stdin and HTTP
    bodies cannot).

    Headers go through ``tarfile.TarInfo.fromtarfile``, which knows every dialect (PAX,
    GNU long names); a member's bytes are read from the stream directly, in blocks as
    large as asked, with none of ``tarfile``'s stream-mode copies, and skipped by seeking
    when the stream is a plain file.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._position = 0
        self._remaining = 0  # of the current member's bytes
        self._padding = 0  # after them, to the next block
        self._headers = _Headers(self)
        self._scratch: bytearray | None = None
        # Only a plain tar in a file skips by seeking (a decompressor "seeks" by reading).
        self._seekable = isinstance(stream, io.BufferedReader | io.FileIO) and stream.seekable()

    # What ``fromtarfile`` calls on ``fileobj``.
    def read(self, size: int) -> bytes:
        data = _read_exactly(self._stream, size)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def next(self) -> tarfile.TarInfo | None:
        """The next member's header (its bytes follow); None at the end of the archive."""
        self._discard(self._remaining + self._padding)
        self._remaining = self._padding = 0
        try:
            member = tarfile.TarInfo.fromtarfile(cast(tarfile.TarFile, self._headers))
        except _END_OF_ARCHIVE:
            return None
        if member.issparse():
            raise tarfile.ReadError(f"{member.name} is a sparse file, which no layout holds")
        if member.isreg() or member.type not in tarfile.SUPPORTED_TYPES:
            self._remaining = member.size
            self._padding = -member.size % BLOCK
        return member

    def read_member(self, size: int) -> bytes:
        """Up to ``size`` bytes more of the current member; b"" once it is all read."""
        n = min(size, self._remaining)
        if not n:
            return b""
        data = self.read(n)
        if len(data) < n:
            raise EOFError(f"the archive ends {self._remaining - len(data)} bytes into a member")
        self._remaining -= n
        return data

    def skip_member(self) -> None:
        """The rest of the current member, unread."""
        self._discard(self._remaining)
        self._remaining = 0

    def _discard(self, n: int) -> None:
        if not n:
            return
        if self._seekable:
            end = self._stream.seek(n, os.SEEK_CUR)
            self._position += n
            if end > os.fstat(self._stream.fileno()).st_size:
                raise EOFError("the archive ends inside a member")
            return
        if self._scratch is None:
            self._scratch = bytearray(COPY_BYTES)
        view = memoryview(self._scratch)
        while n:
            got = self._stream.readinto(view[: min(n, COPY_BYTES)])  # type: ignore[attr-defined]
            if not got:
                raise EOFError("the archive ends inside a member")
            n -= got
            self._position += got


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the stream (decompressors return short
    reads at frame ends)."""
    data = stream.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size and (more := stream.read(size - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


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
