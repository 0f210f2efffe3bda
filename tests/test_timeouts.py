"""Clients that connect and then go slow: headers, idle connections, request bodies."""

from __future__ import annotations

import asyncio
import contextlib
import json

from tests.conftest import AppFactory, Reg, error_codes
from tests.test_send import read_response, read_to_end

ADMIN_PASSWORD = "admin-pw-for-tests"


async def open_raw(reg: Reg) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(reg.server.host, reg.server.port)


async def closed_by_server(reader: asyncio.StreamReader, seconds: float = 10.0) -> bytes:
    """What the server sent before closing; fails if it keeps the connection open."""
    async with asyncio.timeout(seconds):
        return await read_to_end(reader)


async def test_trickled_headers_are_cut_off(make_registry: AppFactory) -> None:
    reg = await make_registry(server={"header_read_timeout": 1.0})
    reader, writer = await open_raw(reg)

    async def trickle() -> None:
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(300):
                writer.write(b"X-Slow: a\r\n")
                await writer.drain()
                await asyncio.sleep(0.1)

    slowloris = asyncio.create_task(trickle())
    try:
        received = await closed_by_server(reader)
    finally:
        slowloris.cancel()
    # A reset may race the 408 when the client is still sending; either way it is closed.
    assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received[:100]
    assert (await reg.client.get("/v2/")).status == 200


async def test_partial_request_line_gets_408_and_close(make_registry: AppFactory) -> None:
    reg = await make_registry(server={"header_read_timeout": 1.0})
    reader, writer = await open_raw(reg)
    writer.write(b"GET /v2/ HT")
    received = await closed_by_server(reader)
    assert received.startswith(b"HTTP/1.1 408 "), received[:100]
    body = json.loads(received.partition(b"\r\n\r\n")[2])
    assert error_codes(body) == ["UNKNOWN"]
    writer.close()


async def test_pipelined_partial_request_after_a_complete_one(make_registry: AppFactory) -> None:
    reg = await make_registry(server={"header_read_timeout": 1.0})
    reader, writer = await open_raw(reg)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 200
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: reg")
    received = await closed_by_server(reader)
    assert received.startswith(b"HTTP/1.1 408 "), received[:100]
    writer.close()


async def test_headers_in_time_are_served_on_a_kept_alive_connection(
    make_registry: AppFactory,
) -> None:
    """The header clock starts at a request's first byte, not when the connection opened."""
    reg = await make_registry(server={"header_read_timeout": 1.5, "idle_timeout": 30.0})
    reader, writer = await open_raw(reg)
    for _ in range(2):
        await asyncio.sleep(1.7)  # idle before the request: not header time
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n")
        await asyncio.sleep(0.2)
        writer.write(b"\r\n")
        status, _, _ = await read_response(reader)
        assert status == 200
    writer.close()


async def test_idle_connections_are_closed(make_registry: AppFactory) -> None:
    reg = await make_registry(server={"idle_timeout": 1.0})
    silent_reader, silent_writer = await open_raw(reg)  # never sends a byte
    reader, writer = await open_raw(reg)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 200
    assert await closed_by_server(reader) == b""  # kept alive, then idle
    assert await closed_by_server(silent_reader) == b""
    writer.close()
    silent_writer.close()


async def stalled_body_status(reg: Reg, head: str, partial: bytes) -> bytes:
    reader, writer = await open_raw(reg)
    writer.write(head.encode() + b"Host: registry\r\nContent-Length: 200\r\n\r\n" + partial)
    async with asyncio.timeout(10):
        status_line = await reader.readline()
    writer.close()
    return status_line


async def test_stalled_management_body_gets_408(make_registry: AppFactory) -> None:
    reg = await make_registry(server={"body_read_timeout": 0.5})
    status_line = await stalled_body_status(
        reg,
        "PUT /api/v1/namespaces/team/quota HTTP/1.1\r\nContent-Type: application/json\r\n",
        b'{"quota_bytes": ',
    )
    assert b" 408 " in status_line, status_line


async def test_stalled_token_form_gets_408(make_registry: AppFactory) -> None:
    reg = await make_registry(
        server={"body_read_timeout": 0.5},
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD},
    )
    status_line = await stalled_body_status(
        reg,
        "POST /token HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        b"grant_type=password&username=adm",
    )
    assert b" 408 " in status_line, status_line


async def test_token_form_still_works(make_registry: AppFactory) -> None:
    reg = await make_registry(auth={"enabled": True, "admin_password": ADMIN_PASSWORD})
    form = {
        "grant_type": "password",
        "username": "admin",
        "password": ADMIN_PASSWORD,
        "service": "aioreg",
        "scope": "repository:team/app:pull",
    }
    resp = await reg.client.post("/token", data=form)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["access_token"]
    resp = await reg.client.post("/token", data={**form, "password": "wrong"})
    assert resp.status == 401
