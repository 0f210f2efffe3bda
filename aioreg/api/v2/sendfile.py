"""A byte range of a file as a response body: zero-copy where the socket allows it.

uvloop has no ``loop.sendfile``, so the send is done here, like aiohttp's own
file response, waiting on the socket instead of polling.

- The send owns its file descriptors: it ``dup()``s the socket's and the
  file's and closes the copies when it ends (after any worker step still using
  them). A connection the loop closes meanwhile, a client half-closing for
  instance, can never have its descriptor number, reused by the next accepted
  connection, written to by this send.
- Anything the transport still buffers (the response head) is flushed first,
  through its own flow control, so raw bytes never overtake it; after the send
  the transport is the only writer again, so pipelined requests stay in order.
- ``sendfile(2)`` runs on the non-blocking socket in turns of at most
  ``LOOP_STEP_BYTES``. A turn whose bytes are in the page cache (a one-byte
  ``RWF_NOWAIT`` read at each end says so without waiting) runs on the loop
  itself: it only hands cached pages to the socket, costs no thread and no
  hop, and after it the send goes to the back of the loop's queue, so every
  client with room in its socket gets a turn in round robin. A turn whose bytes
  must come from disk runs on a worker (``WORKER_STEP_BYTES`` at most, so a
  cold file holds a thread only briefly).
- While a client reads slowly the send waits on one epoll set the loop
  watches: a reader that stops costs no thread, only a registration, until
  the socket has room again or ``send_timeout`` passes without progress.
- Where sendfile is not possible (TLS, no epoll), plain reads and
  ``response.write``, which waits on the transport's flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import struct
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar

from aiohttp import web

log = logging.getLogger("aioreg.api")

T = TypeVar("T")

FALLBACK_BLOCK = 1 << 20
# Most one turn on the loop hands to a socket before the next client's turn.
LOOP_STEP_BYTES = 512 << 10
# Most one worker step (bytes read from disk) sends before the loop looks again.
WORKER_STEP_BYTES = 1 << 20
# How often a send waiting for a client that reads nothing checks whether the
# connection has been closed under it (a half-closed client, say).
CLOSED_CHECK_SECONDS = 1.0
# Worker steps only read the file and fill a socket buffer; they never wait on a client.
_WORKERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aioreg-send")


async def send_file(
    request: web.Request,
    response: web.StreamResponse,
    file: BinaryIO,
    offset: int,
    count: int,
    stall_timeout: float,
) -> bool:
    """Send ``count`` bytes of ``file`` at ``offset`` as the body of a prepared ``response``.

    False when the client went away or took nothing for ``stall_timeout`` seconds;
    the connection is closed then, since the body is short of its length.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        return False
    owned = _Owned()
    sock_fd: int | None = None
    try:
        file_fd = owned.dup(file.fileno())
        sock: socket.socket | None = transport.get_extra_info("socket")
        readiness = _readiness()
        if sock is None or transport.get_extra_info("sslcontext") is not None or not readiness:
            await _stream(response, owned, file_fd, offset, count, stall_timeout)
            return True
        await _flush(transport, response, request, stall_timeout)
        if transport.is_closing():
            raise ConnectionResetError("client went away")
        # On the loop thread and not closing: the descriptor is still this connection's.
        sock_fd = owned.dup(sock.fileno())
        await _sendfile(transport, readiness, owned, sock_fd, file_fd, offset, count, stall_timeout)
        return True
    except (ConnectionError, TimeoutError) as exc:
        log.log(
            logging.INFO if isinstance(exc, TimeoutError) else logging.DEBUG,
            "%s %s: response cut short for %s: %s",
            request.method,
            request.path[:200],
            request.remote,
            exc or type(exc).__name__,
        )
        if sock_fd is not None:  # reset rather than linger with unsent bytes
            with contextlib.suppress(OSError):
                _socket_option(sock_fd, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return False
    finally:
        owned.close()


class _Owned:
    """Descriptors a send owns; closed only once no worker step still uses them."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self._step: asyncio.Future[Any] | None = None

    def dup(self, fd: int) -> int:
        copy = os.dup(fd)
        self.fds.append(copy)
        return copy

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on a worker; a cancelled send leaves it to finish first."""
        self._step = asyncio.get_running_loop().run_in_executor(_WORKERS, func, *args)
        return await asyncio.shield(self._step)

    def close(self) -> None:
        step = self._step
        if step is not None and not step.done():
            step.add_done_callback(self._close_after)
        else:
            self._close_all()

    def _close_after(self, step: asyncio.Future[Any]) -> None:
        if not step.cancelled():
            step.exception()  # retrieved: the send that wanted it is gone
        self._close_all()

    def _close_all(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


async def _flush(
    transport: asyncio.Transport,
    response: web.StreamResponse,
    request: web.Request,
    timeout: float,
) -> None:
    """Wait, on the transport's own flow control, until it has written all it buffers."""
    if not transport.get_write_buffer_size():
        return
    writer = await response.prepare(request)
    if writer is None:
        raise ConnectionResetError("response already finished")
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)  # paused until the buffer is empty
    try:
        async with asyncio.timeout(timeout):
            while transport.get_write_buffer_size():
                if transport.is_closing():
                    raise ConnectionResetError("client went away")
                await writer.drain()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


async def _sendfile(
    transport: asyncio.Transport,
    readiness: _Readiness,
    owned: _Owned,
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    stall_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stall_timeout
    while count > 0:
        if transport.is_closing():
            raise ConnectionResetError("client went away")
        turn = min(count, LOOP_STEP_BYTES)
        if _cached(file_fd, offset, turn):
            sent = _send_turn(sock_fd, file_fd, offset, turn)
        else:
            turn = min(count, WORKER_STEP_BYTES)
            sent = await owned.run(_send_step, sock_fd, file_fd, offset, turn)
        if sent:
            offset += sent
            count -= sent
            deadline = loop.time() + stall_timeout
            if sent == turn:  # the socket may take more: after the others' turns
                await asyncio.sleep(0)
                continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"client took no bytes for {stall_timeout:g}s")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(CLOSED_CHECK_SECONDS, remaining)):
                await readiness.writable(sock_fd)


def _cached(file_fd: int, offset: int, count: int) -> bool:
    """Whether both ends of the span are in the page cache (asked without waiting for disk).

    Readahead and a recent write bring in whole spans, so both ends stand for
    the middle; a page evicted in between costs the loop one short disk read.
    """
    if _NOWAIT is None:
        return False
    probe = bytearray(1)
    try:
        return bool(
            os.preadv(file_fd, [probe], offset, _NOWAIT)
            and os.preadv(file_fd, [probe], offset + count - 1, _NOWAIT)
        )
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: the file system cannot say
        return False


_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _send_turn(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """One ``sendfile(2)`` of cached pages on the loop; bytes sent, 0 when the socket is full."""
    try:
        n = os.sendfile(sock_fd, file_fd, offset, count)
    except BlockingIOError:
        return 0
    if n == 0:
        raise OSError(errno.EIO, "file ended before its recorded size")
    return n


def _send_step(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """On a worker: ``sendfile(2)`` of ``count`` bytes, or until the socket buffer is full."""
    sent = 0
    while sent < count:
        n = _send_turn(sock_fd, file_fd, offset + sent, count - sent)
        if n == 0:
            break
        sent += n
    return sent


async def _stream(
    response: web.StreamResponse,
    owned: _Owned,
    file_fd: int,
    offset: int,
    count: int,
    stall_timeout: float,
) -> None:
    """Plain reads and writes, for transports that cannot sendfile (TLS)."""
    while count > 0:
        block = await owned.run(os.pread, file_fd, min(FALLBACK_BLOCK, count), offset)
        if not block:
            raise OSError(errno.EIO, "file ended before its recorded size")
        async with asyncio.timeout(stall_timeout):
            await response.write(block)
        offset += len(block)
        count -= len(block)


def _socket_option(fd: int, option: int, value: bytes) -> None:
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, option, value)


class _Readiness:
    """Waits until sockets can take more bytes, on one epoll set the loop reads.

    Our own set rather than ``loop.add_writer``: uvloop reports an error on a
    watched descriptor (a reset client) as a loop-level fatal error and drops
    the watch, where epoll just says the socket is ready and ``sendfile`` then
    raises the reset to the send.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        loop.add_reader(self._epoll.fileno(), self._wake)

    async def writable(self, fd: int) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiting[fd] = future
        self._epoll.register(fd, select.EPOLLOUT | select.EPOLLONESHOT)
        try:
            await future
        finally:
            del self._waiting[fd]
            self._epoll.unregister(fd)

    def _wake(self) -> None:
        for fd, _ in self._epoll.poll(0):
            future = self._waiting.get(fd)
            if future is not None and not future.done():
                future.set_result(None)


_READINESS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Readiness] = (
    weakref.WeakKeyDictionary()
)


def _readiness() -> _Readiness | None:
    """This loop's epoll set; None where there is no epoll (not Linux)."""
    if not hasattr(select, "epoll"):
        return None
    loop = asyncio.get_running_loop()
    readiness = _READINESS.get(loop)
    if readiness is None:
        readiness = _READINESS[loop] = _Readiness(loop)
    return readiness
