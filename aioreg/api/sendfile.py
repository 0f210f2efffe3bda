"""Zero-copy body transfer from a file to a client socket.

asyncio's own ``loop.sendfile`` is native on the default loop but uvloop does
not implement it, so on uvloop the kernel's ``sendfile(2)`` runs on a worker
thread, waiting for the non-blocking socket to become writable between calls.
The transport's buffer is drained first and nothing else writes to the socket
meanwhile, so bytes never interleave.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

STALL_SECONDS = 60.0
# Threads that mostly wait in the kernel (sendfile, select) for slow readers:
# their own pool, large enough that many concurrent pulls never queue behind
# each other or behind upload hashing on the default executor.
_SENDERS = ThreadPoolExecutor(max_workers=128, thread_name_prefix="aioreg-sendfile")


async def sendfile(transport: asyncio.Transport, file: BinaryIO, offset: int, count: int) -> bool:
    """Send ``count`` bytes at ``offset``; False when this transport cannot take sendfile."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sendfile(transport, file, offset, count, fallback=False)
        return True
    except NotImplementedError:
        pass
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None:
        return False
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0.001)
    await loop.run_in_executor(
        _SENDERS, _sendfile_blocking, sock.fileno(), file.fileno(), offset, count
    )
    return True


def _sendfile_blocking(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    while count > 0:
        try:
            sent = os.sendfile(sock_fd, file_fd, offset, count)
        except BlockingIOError:
            _, writable, _ = select.select([], [sock_fd], [], STALL_SECONDS)
            if not writable:
                raise TimeoutError("client stopped reading") from None
            continue
        if sent == 0:
            raise ConnectionResetError("file shrank or socket closed during sendfile")
        offset += sent
        count -= sent
