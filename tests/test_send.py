"""Blob downloads on the wire: whose socket the bytes go to, slow readers, ranges, pipelining."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from unittest.mock import ANY

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import EMPTY_JSON, OCI_MANIFEST, AppFactory, Reg, digest_of, image_manifest
from tests.process import Server, free_port, start

HEADERS_END = b"\r\n\r\n"


async def connect(
    reg: Reg, rcvbuf: int | None = None, limit: int = 1 << 16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client connection; a small ``rcvbuf`` and ``limit`` make a reader that stalls fast."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (reg.server.host, reg.server.port))
    return await asyncio.open_connection(sock=sock, limit=limit)


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: registry", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    head = await reader.readuntil(HEADERS_END)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Whatever arrives until the server closes (a reset ends it too)."""
    parts: list[bytes] = []
    try:
        while chunk := await reader.read(1 << 16):
            parts.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(parts)


def server_handler(reg: Reg, client: asyncio.StreamWriter) -> web.RequestHandler:
    """aiohttp's protocol object serving this client's connection."""
    here = client.get_extra_info("sockname")
    runner_server = reg.server.runner.server
    assert runner_server is not None
    for handler in runner_server.connections:
        if handler.transport is not None and handler.transport.get_extra_info("peername") == here:
            return handler
    raise AssertionError("no server connection for this client")


async def until(predicate: object, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_half_closed_puller_never_gets_its_bytes_sent_to_another_client(
    make_registry: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    reg = await make_registry()
    data = os.urandom(8 << 20)
    digest = await reg.push_blob("app", data)
    loop = asyncio.get_running_loop()
    for _ in range(3):
        puller, puller_writer = await connect(reg, rcvbuf=4096, limit=4096)
        puller_writer.write(get(f"/v2/app/blobs/{digest}"))
        await puller.readuntil(HEADERS_END)
        seen = await puller.readexactly(1 << 16)
        assert seen == data[: 1 << 16]
        handler = server_handler(reg, puller_writer)
        # Made now, so the next connection the server accepts gets the lowest free fd:
        # the one the half-closed puller's connection is about to give back.
        other = socket.socket()
        other.setblocking(False)
        puller_writer.write_eof()
        await until(lambda handler=handler: handler.transport is None)
        await loop.sock_connect(other, (reg.server.host, reg.server.port))
        reader, writer = await asyncio.open_connection(sock=other)
        writer.write(get("/v2/", "Connection: close"))
        rest = await read_to_end(puller)  # the puller reads on after its half-close
        assert rest == data[len(seen) : len(seen) + len(rest)], "puller got foreign bytes"
        received = await read_to_end(reader)
        assert received.startswith(b"HTTP/1.1 200 "), received[:100]
        head, _, body = received.partition(HEADERS_END)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if b"content-length" in line.lower()
        )
        assert len(body) == length, "another client's bytes arrived on this connection"
        writer.close()
        puller_writer.close()
    assert errors_logged(caplog) == []


async def test_stalled_readers_do_not_hold_up_other_downloads(make_registry: AppFactory) -> None:
    reg = await make_registry()
    data = os.urandom(16 << 20)
    digest = await reg.push_blob("app", data)
    stalled: list[asyncio.StreamWriter] = []
    try:
        readers = []
        for _ in range(200):  # more than the 128 sender threads there used to be
            reader, writer = await connect(reg, rcvbuf=4096, limit=4096)
            writer.write(get(f"/v2/app/blobs/{digest}"))
            stalled.append(writer)
            readers.append(reader)
        for reader in readers:
            async with asyncio.timeout(30):
                await reader.readuntil(HEADERS_END)
        # Every one of them now has a download open and reads no further.
        async with asyncio.timeout(20):
            resp = await reg.client.get(f"/v2/app/blobs/{digest}")
            assert resp.status == 200
            assert await resp.read() == data
    finally:
        for writer in stalled:
            writer.transport.abort()


async def test_reader_that_stops_is_cut_off_after_send_timeout(
    make_registry: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    reg = await make_registry(server={"send_timeout": 0.5})
    data = os.urandom(16 << 20)
    digest = await reg.push_blob("app", data)
    reader, writer = await connect(reg, rcvbuf=4096, limit=4096)
    writer.write(get(f"/v2/app/blobs/{digest}"))
    await reader.readuntil(HEADERS_END)
    handler = server_handler(reg, writer)
    await until(lambda: handler.transport is None)  # and the client read nothing more
    received = await read_to_end(reader)
    assert 0 < len(received) < len(data)
    assert received == data[: len(received)]
    assert errors_logged(caplog) == []
    writer.close()
    resp = await reg.client.get(f"/v2/app/blobs/{digest}")
    assert await resp.read() == data


async def test_download_on_a_descriptor_number_above_1024(reg: Reg) -> None:
    """select() cannot watch descriptors past FD_SETSIZE; the send must not depend on it."""
    data = os.urandom(16 << 20)
    digest = await reg.push_blob("app", data)
    placeholder = os.open(os.devnull, os.O_RDONLY)
    filler = [os.dup(placeholder) for _ in range(1100)]
    try:
        reader, writer = await connect(reg, rcvbuf=4096)  # socket buffer full: sends must wait
        assert server_handler(reg, writer).transport.get_extra_info("socket").fileno() > 1024
        writer.write(get(f"/v2/app/blobs/{digest}"))
        assert await read_response(reader) == (200, ANY, data)
        writer.close()
    finally:
        for fd in [*filler, placeholder]:
            os.close(fd)


async def test_pipelined_requests_around_sendfile_stay_in_order(reg: Reg) -> None:
    data = os.urandom(3 << 20)
    digest = await reg.push_blob("app", data)
    manifest = image_manifest(EMPTY_JSON, [data], annotations={"pad": "x" * (2 << 20)})
    await reg.push_blob("app", EMPTY_JSON)
    await reg.push_manifest("app", "big", manifest)
    url = f"/v2/app/blobs/{digest}"
    # A small receive buffer keeps the socket full: the big manifest's tail is still in
    # the transport's buffer when the blob after it starts, and must go out first.
    reader, writer = await connect(reg, rcvbuf=4096, limit=8192)
    writer.write(
        get("/v2/app/manifests/big", f"Accept: {OCI_MANIFEST}")
        + get(url)
        + get(url, "Range: bytes=100-199999")
        + get("/v2/")
        + get(url, "Range: bytes=-5")
    )
    assert await read_response(reader) == (200, ANY, manifest)
    assert await read_response(reader) == (200, ANY, data)
    assert await read_response(reader) == (206, ANY, data[100:200000])
    assert (await read_response(reader))[0] == 200
    assert await read_response(reader) == (206, ANY, data[-5:])
    writer.close()


@pytest.mark.parametrize(
    ("header", "status", "span"),
    [
        ("bytes=" + "9" * 5000 + "-", 416, None),
        ("bytes=0-" + "9" * 5000, 206, (0, 10)),
        ("bytes=-" + "9" * 5000, 206, (0, 10)),
        ("bytes=" + "0" * 4999 + "2-" + "0" * 4999 + "4", 206, (2, 5)),
        ("bytes=" + "1" * 5000 + "-" + "2" * 5000, 416, None),
        ("bytes=\u0663-\u0665", 200, (0, 10)),  # Arabic-Indic digits: not a range we know
    ],
    ids=["huge-start", "huge-end", "huge-suffix", "zero-padded", "huge-both", "arabic-digits"],
)
async def test_range_with_huge_or_odd_numbers_is_answered(
    reg: Reg, header: str, status: int, span: tuple[int, int] | None
) -> None:
    data = b"0123456789"
    digest = await reg.push_blob("r", data)
    resp = await reg.client.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
    assert resp.status == status
    if span is None:
        assert resp.headers["Content-Range"] == "bytes */10"
    else:
        assert await resp.read() == data[span[0] : span[1]]


def thread_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


async def test_concurrent_pulls_of_cached_blobs_take_no_sender_thread(tmp_path: Path) -> None:
    """32 pullers of blobs in the page cache are all served in turns on the loop:
    no thread per send step, so nobody queues behind another client's step."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except OSError:
        pytest.skip("this file system cannot say whether a page is cached (RWF_NOWAIT)")
    finally:
        os.close(fd)
    servers: list[Server] = []
    port = free_port()
    server = start(
        servers,
        ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")],
        {"AIOREG_SERVER_ACCESS_LOG": "false"},
    )
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            blobs = [os.urandom((2 << 20) + i) for i in range(4)]
            for blob in blobs:
                resp = await http.post(
                    f"/v2/app/blobs/uploads/?digest={digest_of(blob)}", data=blob
                )
                assert resp.status == 201, await resp.text()

            async def pull(i: int) -> None:
                blob = blobs[i % len(blobs)]
                async with http.get(f"/v2/app/blobs/{digest_of(blob)}") as resp:
                    assert resp.status == 200
                    assert await resp.read() == blob

            await pull(0)  # every lookup path warmed up: whatever threads it starts, it has
            threads = thread_count(server.proc.pid)
            await asyncio.gather(*(pull(i) for i in range(32)))
            assert thread_count(server.proc.pid) == threads
    finally:
        for s in servers:
            s.stop()


async def test_blob_not_in_the_page_cache_is_sent_whole_from_disk(reg: Reg) -> None:
    data = os.urandom(6 << 20)
    digest = await reg.push_blob("app", data)
    path = (await reg.registry.blob("app", digest)).path
    for headers, expected in [({}, data), ({"Range": "bytes=1000-4000000"}, data[1000:4000001])]:
        fd = os.open(path, os.O_RDONLY)
        try:  # clean pages (the push synced them) leave the cache at once
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        resp = await reg.client.get(f"/v2/app/blobs/{digest}", headers=headers)
        assert resp.status in (200, 206)
        assert await resp.read() == expected
