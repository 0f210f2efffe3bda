"""Limits that keep one client from hurting the others: rate, upload cap, stalls, big input."""

from __future__ import annotations

import asyncio
import json
import time

from tests.conftest import OCI_MANIFEST, AppFactory, digest_of, error_codes


async def test_rate_limit_answers_429_with_retry_after(make_registry: AppFactory) -> None:
    reg = await make_registry(requests_per_second=2, request_burst=3)
    statuses = [(await reg.client.get("/v2/")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    resp = await reg.client.get("/v2/")
    assert resp.status == 429
    assert error_codes(await resp.json()) == ["TOOMANYREQUESTS"]
    assert int(resp.headers["Retry-After"]) >= 1
    await asyncio.sleep(0.6)  # one token back at 2/s
    assert (await reg.client.get("/v2/")).status == 200


async def test_concurrent_upload_cap(make_registry: AppFactory) -> None:
    reg = await make_registry(max_concurrent_uploads=1)
    resp = await reg.client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    release = asyncio.Event()

    async def slow_body():
        yield b"a" * 1000
        await release.wait()
        yield b"b" * 1000

    patch = asyncio.create_task(reg.client.patch(location, data=slow_body()))
    await asyncio.sleep(0.2)
    resp = await reg.client.post("/v2/other/blobs/uploads/")
    assert resp.status == 429
    assert error_codes(await resp.json()) == ["TOOMANYREQUESTS"]
    assert "Retry-After" in resp.headers
    assert (await reg.client.get("/v2/")).status == 200  # pulls are not uploads
    release.set()
    assert (await patch).status == 202
    assert (await reg.client.post("/v2/other/blobs/uploads/")).status == 202


async def test_stalled_body_is_abandoned_and_rolled_back(make_registry: AppFactory) -> None:
    reg = await make_registry(server={"body_read_timeout": 0.5})
    resp = await reg.client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    await reg.client.patch(location, data=b"x" * 10, headers={"Content-Range": "0-9"})

    async def stalling_body():
        yield b"y" * 100
        await asyncio.sleep(5)
        yield b"never"

    started = time.monotonic()
    resp = await reg.client.patch(location, data=stalling_body())
    assert resp.status == 408
    assert time.monotonic() - started < 4
    resp = await reg.client.get(location)
    assert resp.headers["Range"] == "0-9"


async def test_short_body_against_content_length_times_out(make_registry: AppFactory) -> None:
    reg = await make_registry(server={"body_read_timeout": 0.5})
    host, port = reg.client.server.host, reg.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    data = b"only ten b"
    writer.write(
        f"POST /v2/app/blobs/uploads/?digest={digest_of(b'x' * 100)} HTTP/1.1\r\n"
        f"Host: {host}\r\nContent-Length: 100\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert b" 408 " in status_line
    writer.close()
    assert list((reg.data_dir / "uploads").iterdir()) == []


async def test_huge_headers_are_refused(make_registry: AppFactory) -> None:
    reg = await make_registry()
    resp = await reg.client.get("/v2/", headers={"X-Big": "a" * 100_000})
    assert resp.status in (400, 431)
    assert (await reg.client.get("/v2/")).status == 200


async def test_deeply_nested_manifest_is_rejected(make_registry: AppFactory) -> None:
    reg = await make_registry()
    body = b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "x": '
    body += b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = await reg.client.put(
        "/v2/app/manifests/deep", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]
    resp = await reg.client.put(
        "/v2/app/manifests/big",
        data=json.dumps({"schemaVersion": 2, "pad": "x" * 5_000_000}).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 413
