"""Upload sessions: monolithic, chunked, resumable, cancelled, mounted, concurrent."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aioreg.api.app import IN_FLIGHT_KEY
from aioreg.api.management.handlers import MANAGEMENT_KEY
from aioreg.auth.accounts import Accounts
from aioreg.domain.reference import Digest
from tests.conftest import AppFactory, Reg, digest_of, error_codes


async def _start(reg: Reg, name: str) -> str:
    resp = await reg.client.post(f"/v2/{name}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    return resp.headers["Location"]


def _upload_files(reg: Reg) -> list[str]:
    return sorted(p.name for p in (reg.data_dir / "uploads").iterdir())


async def _blob(reg: Reg, name: str, digest: str) -> bytes:
    resp = await reg.client.get(f"/v2/{name}/blobs/{digest}")
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def test_post_starts_a_session(reg: Reg) -> None:
    resp = await reg.client.post("/v2/app/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    assert location.startswith("/v2/app/blobs/uploads/")
    assert resp.headers["Range"] == "0-0"
    assert int(resp.headers["OCI-Chunk-Min-Length"]) > 0
    assert resp.headers["Docker-Upload-UUID"] in location


async def test_monolithic_post(reg: Reg) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = digest_of(data)
    resp = await reg.client.post(f"/v2/app/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/app/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await _blob(reg, "app", digest) == data
    assert _upload_files(reg) == []


async def test_post_then_put(reg: Reg) -> None:
    data = b"post then put"
    location = await _start(reg, "app")
    digest = digest_of(data)
    resp = await reg.client.put(f"{location}?digest={digest}", data=data)
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/app/blobs/{digest}"
    assert await _blob(reg, "app", digest) == data


async def test_chunked_upload_with_content_range(reg: Reg) -> None:
    data = os.urandom(100_000)
    chunks = [data[:30_000], data[30_000:70_000], data[70_000:]]
    location = await _start(reg, "chunky")
    offset = 0
    for chunk in chunks:
        resp = await reg.client.patch(
            location,
            data=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            },
        )
        assert resp.status == 202, await resp.text()
        offset += len(chunk)
        assert resp.headers["Range"] == f"0-{offset - 1}"
        location = resp.headers["Location"]
    resp = await reg.client.put(f"{location}?digest={digest_of(data)}")
    assert resp.status == 201
    assert await _blob(reg, "chunky", digest_of(data)) == data


async def test_streamed_patch_without_content_range(reg: Reg) -> None:
    data = os.urandom(50_000)
    location = await _start(reg, "stream")

    async def body():  # chunked transfer encoding, as docker sends it
        for i in range(0, len(data), 7_000):
            yield data[i : i + 7_000]

    resp = await reg.client.patch(location, data=body())
    assert resp.status == 202
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    resp = await reg.client.put(f"{resp.headers['Location']}?digest={digest_of(data)}")
    assert resp.status == 201
    assert await _blob(reg, "stream", digest_of(data)) == data


async def test_final_chunk_in_put(reg: Reg) -> None:
    data = b"a" * 1000 + b"b" * 500
    location = await _start(reg, "app")
    resp = await reg.client.patch(location, data=data[:1000], headers={"Content-Range": "0-999"})
    assert resp.status == 202
    resp = await reg.client.put(
        f"{location}?digest={digest_of(data)}",
        data=data[1000:],
        headers={"Content-Range": "1000-1499", "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, await resp.text()
    assert await _blob(reg, "app", digest_of(data)) == data


async def test_out_of_order_and_overlapping_chunks_are_416(reg: Reg) -> None:
    location = await _start(reg, "app")
    resp = await reg.client.patch(location, data=b"x" * 10, headers={"Content-Range": "0-9"})
    assert resp.status == 202
    for bad in ["20-29", "5-14", "0-9"]:
        resp = await reg.client.patch(location, data=b"y" * 10, headers={"Content-Range": bad})
        assert resp.status == 416, bad
        assert resp.headers["Range"] == "0-9"
        assert resp.headers["Location"] == location
        assert error_codes(await resp.json()) == ["BLOB_UPLOAD_INVALID"]
    # The session survives: the right next chunk is accepted.
    resp = await reg.client.patch(location, data=b"z" * 5, headers={"Content-Range": "10-14"})
    assert resp.status == 202
    assert resp.headers["Range"] == "0-14"


async def test_content_range_disagreeing_with_length_is_rejected(reg: Reg) -> None:
    location = await _start(reg, "app")
    resp = await reg.client.patch(location, data=b"x" * 10, headers={"Content-Range": "0-4"})
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["BLOB_UPLOAD_INVALID"]
    resp = await reg.client.patch(location, data=b"x", headers={"Content-Range": "garbage"})
    assert resp.status == 400


async def test_get_upload_status_for_resume(reg: Reg) -> None:
    location = await _start(reg, "app")
    resp = await reg.client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-0"
    await reg.client.patch(location, data=b"q" * 123, headers={"Content-Range": "0-122"})
    resp = await reg.client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-122"
    assert resp.headers["Location"] == location


async def test_interrupted_patch_rolls_back_to_last_acknowledged_byte(reg: Reg) -> None:
    location = await _start(reg, "app")
    await reg.client.patch(location, data=b"A" * 100, headers={"Content-Range": "0-99"})

    async def dying_body():
        yield b"B" * 5000
        raise ConnectionError("client vanished")

    with contextlib.suppress(Exception):
        await reg.client.patch(location, data=dying_body())
    # The status request takes its turn on the session after the aborted PATCH.
    resp = await reg.client.get(location)
    assert resp.headers["Range"] == "0-99"
    data = b"A" * 100 + b"C" * 50
    resp = await reg.client.put(
        f"{location}?digest={digest_of(data)}", data=b"C" * 50, headers={"Content-Range": "100-149"}
    )
    assert resp.status == 201, await resp.text()
    assert await _blob(reg, "app", digest_of(data)) == data


async def test_a_patch_cut_after_several_pipelined_batches_rolls_back_file_and_hashes(
    reg: Reg,
) -> None:
    """The writer has batches in flight (written and hashed on separate threads) when the
    body breaks: the file and both running hashes go back to the acknowledged byte."""
    location = await _start(reg, "app")
    first = os.urandom(3 << 20)
    resp = await reg.client.patch(
        location, data=first, headers={"Content-Range": f"0-{len(first) - 1}"}
    )
    assert resp.status == 202, await resp.text()

    async def dying_body():
        for _ in range(24):  # 6 MiB: several 1 MiB batches written and hashed before the cut
            yield os.urandom(256 << 10)
        raise ConnectionError("client vanished")

    with contextlib.suppress(Exception):
        await reg.client.patch(location, data=dying_body())
    resp = await reg.client.get(location)
    assert resp.headers["Range"] == f"0-{len(first) - 1}"
    last = os.urandom(1 << 20)
    data = first + last
    resp = await reg.client.put(
        f"{location}?digest={digest_of(data)}",
        data=last,
        headers={"Content-Range": f"{len(first)}-{len(data) - 1}"},
    )
    assert resp.status == 201, await resp.text()
    assert await _blob(reg, "app", digest_of(data)) == data


async def test_delete_cancels_the_session(reg: Reg) -> None:
    location = await _start(reg, "app")
    await reg.client.patch(location, data=b"doomed", headers={"Content-Range": "0-5"})
    assert len(_upload_files(reg)) == 1
    resp = await reg.client.delete(location)
    assert resp.status == 204
    assert _upload_files(reg) == []
    resp = await reg.client.get(location)
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["BLOB_UPLOAD_UNKNOWN"]
    resp = await reg.client.put(f"{location}?digest={digest_of(b'doomed')}")
    assert resp.status == 404


async def test_digest_mismatch_removes_temp_file_and_indexes_nothing(reg: Reg) -> None:
    data = b"the real bytes"
    wrong = digest_of(b"other bytes")
    resp = await reg.client.post(f"/v2/app/blobs/uploads/?digest={wrong}", data=data)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]
    assert _upload_files(reg) == []
    assert not any(p.is_file() for p in (reg.data_dir / "blobs").rglob("*"))
    assert await reg.registry.index.blobs.get(wrong) is None
    assert await reg.registry.index.blobs.get(digest_of(data)) is None
    # Chunked: the mismatch ends the session too.
    location = await _start(reg, "app")
    await reg.client.patch(location, data=data, headers={"Content-Range": f"0-{len(data) - 1}"})
    resp = await reg.client.put(f"{location}?digest={wrong}")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]
    assert _upload_files(reg) == []
    assert (await reg.client.get(location)).status == 404


async def test_put_without_digest_or_with_bad_digest(reg: Reg) -> None:
    location = await _start(reg, "app")
    resp = await reg.client.put(location, data=b"x")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]
    resp = await reg.client.put(f"{location}?digest=sha256:nothex", data=b"x")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]


async def test_session_belongs_to_its_repository(reg: Reg) -> None:
    location = await _start(reg, "mine")
    upload_id = location.rsplit("/", 1)[1]
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        url = f"/v2/theirs/blobs/uploads/{upload_id}?digest={digest_of(b'')}"
        resp = await reg.client.request(method, url)
        assert resp.status == 404, method
        assert error_codes(await resp.json()) == ["BLOB_UPLOAD_UNKNOWN"]
    assert (await reg.client.get(location)).status == 204
    resp = await reg.client.get("/v2/mine/blobs/uploads/../../../../etc")
    assert resp.status in (400, 404)


async def test_cross_repository_mount(reg: Reg) -> None:
    data = os.urandom(10_000)
    digest = await reg.push_blob("source/repo", data)
    resp = await reg.client.post(f"/v2/target/repo/blobs/uploads/?mount={digest}&from=source/repo")
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/target/repo/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await _blob(reg, "target/repo", digest) == data


async def test_mount_falls_back_to_an_upload_session(reg: Reg) -> None:
    digest = await reg.push_blob("source", b"abc")
    missing = digest_of(b"not stored anywhere")
    resp = await reg.client.post(f"/v2/target/blobs/uploads/?mount={missing}&from=source")
    assert resp.status == 202
    assert "/v2/target/blobs/uploads/" in resp.headers["Location"]
    # Right digest, wrong source repository: also a plain session.
    resp = await reg.client.post(f"/v2/target/blobs/uploads/?mount={digest}&from=elsewhere")
    assert resp.status == 202


async def test_automatic_mount_without_from(reg: Reg) -> None:
    digest = await reg.push_blob("source", b"known bytes")
    resp = await reg.client.post(f"/v2/target/blobs/uploads/?mount={digest}")
    assert resp.status == 201
    assert await _blob(reg, "target", digest) == b"known bytes"


async def test_concurrent_pushes_of_the_same_blob(reg: Reg) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = digest_of(data)

    async def push(name: str) -> int:
        location = await _start(reg, name)
        resp = await reg.client.patch(location, data=data)
        resp = await reg.client.put(f"{resp.headers['Location']}?digest={digest}")
        return resp.status

    statuses = await asyncio.gather(*(push(f"repo{i}") for i in range(6)), push("repo0"))
    assert statuses == [201] * 7
    files = [p for p in (reg.data_dir / "blobs").rglob("*") if p.is_file()]
    assert len(files) == 1
    for i in range(6):
        assert await _blob(reg, f"repo{i}", digest) == data
    assert _upload_files(reg) == []


async def test_restart_keeps_open_upload_sessions(make_registry: AppFactory, tmp_path) -> None:
    data_dir = tmp_path / "persist"
    first = await make_registry(data_dir)
    data = os.urandom(200_000)
    location = await _start(first, "app")
    resp = await first.client.patch(location, data=data[:120_000])
    assert resp.status == 202
    await first.client.close()
    second = await make_registry(data_dir)
    resp = await second.client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-119999"
    resp = await second.client.patch(
        location, data=data[120_000:], headers={"Content-Range": f"120000-{len(data) - 1}"}
    )
    assert resp.status == 202
    resp = await second.client.put(f"{location}?digest={digest_of(data)}")
    assert resp.status == 201, await resp.text()
    assert await _blob(second, "app", digest_of(data)) == data


async def test_empty_blob(reg: Reg) -> None:
    digest = digest_of(b"")
    resp = await reg.client.post(f"/v2/app/blobs/uploads/?digest={digest}", data=b"")
    assert resp.status == 201
    resp = await reg.client.get(f"/v2/app/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == b""


async def test_idle_sessions_expire_and_orphan_temp_files_go(reg: Reg) -> None:
    location = await _start(reg, "app")
    await reg.client.patch(location, data=b"stale", headers={"Content-Range": "0-4"})
    fresh = await _start(reg, "app")
    orphan = reg.data_dir / "uploads" / "orphan-from-a-crash"
    orphan.write_bytes(b"junk")
    os.utime(orphan, (0, 0))
    row = await reg.registry.index.uploads.get(location.rsplit("/", 1)[1])
    assert row is not None
    ttl = reg.registry.config.storage.upload_session_ttl
    # Pretend the clock moved past the first session's TTL but not the second's.
    fresh_row = await reg.registry.index.uploads.get(fresh.rsplit("/", 1)[1])
    assert fresh_row is not None
    await reg.registry.index.uploads.set_offset(fresh_row.id, 0, row.updated_at + ttl)
    assert await reg.registry.uploads.expire(now=row.updated_at + ttl + 1) == 1
    assert (await reg.client.get(location)).status == 404
    assert (await reg.client.get(fresh)).status == 204
    assert _upload_files(reg) == [fresh_row.id]


# -- regressions: interrupted PUT, mounts racing GC, session caps, bad ranges --


async def raw_send(reg: Reg, head: str, body: bytes = b"") -> tuple[Any, Any]:
    """Open a socket to the server and send a request head and (part of) a body as given."""
    reader, writer = await asyncio.open_connection(reg.server.host, reg.server.port)
    writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    await writer.drain()
    return reader, writer


async def poll(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_interrupted_final_put_rolls_back_to_the_acknowledged_offset(
    make_registry: AppFactory, chunked: bool
) -> None:
    reg = await make_registry(storage={"write_buffer_bytes": 65536})
    data = os.urandom(100 + 1_000_000)
    location = await _start(reg, "app")
    upload_file = reg.data_dir / "uploads" / location.rsplit("/", 1)[1]
    resp = await reg.client.patch(location, data=data[:100], headers={"Content-Range": "0-99"})
    assert resp.status == 202
    head = f"PUT {location}?digest={digest_of(data)} HTTP/1.1\nHost: t\n"
    part = data[100:600_000]
    if chunked:
        head += "Transfer-Encoding: chunked\n"
        part = b"%x\r\n%s\r\n" % (len(part), part) + b"%x\r\n" % 400_000 + data[600_000:700_000]
    else:
        head += f"Content-Length: {len(data) - 100}\nContent-Range: 100-{len(data) - 1}\n"
    _, writer = await raw_send(reg, head + "Content-Type: application/octet-stream\n", part)
    await poll(lambda: upload_file.stat().st_size > 100, "the closing PUT's bytes arrive")
    writer.transport.abort()  # cut off mid-body
    in_flight = reg.app[IN_FLIGHT_KEY]
    await poll(lambda: in_flight.count == 0, "the server is done with the PUT")
    resp = await reg.client.get(location)
    assert resp.status == 204, await resp.text()
    assert resp.headers["Range"] == "0-99"
    assert upload_file.stat().st_size == 100
    resp = await reg.client.put(
        f"{location}?digest={digest_of(data)}",
        data=data[100:],
        headers={"Content-Range": f"100-{len(data) - 1}"},
    )
    assert resp.status == 201, await resp.text()
    assert await _blob(reg, "app", digest_of(data)) == data
    assert _upload_files(reg) == []


def _backdate(index_db: Path, seconds: float) -> None:
    """Age every blob and link, as if pushed ``seconds`` ago (past the GC grace period)."""
    with contextlib.closing(sqlite3.connect(index_db, timeout=10)) as db, db:
        db.execute("UPDATE blobs SET created_at = created_at - ?", (seconds,))
        db.execute("UPDATE repository_blobs SET linked_at = linked_at - ?", (seconds,))


async def test_mount_racing_gc_links_only_a_blob_still_stored(make_registry: AppFactory) -> None:
    reg = await make_registry(gc={"grace_period": 600})
    management = reg.app[MANAGEMENT_KEY]

    async def sweep_after(turns: int) -> None:
        for _ in range(turns):  # lets the mount get further before the sweep starts
            await asyncio.sleep(0)
        await management.gc.run()

    for i in range(40):
        data = f"raced blob {i}".encode() * 40
        digest = await reg.push_blob("src", data)
        _backdate(reg.data_dir / "index.db", 3600)  # garbage to the next sweep
        mount = reg.client.post(f"/v2/dst/blobs/uploads/?mount={digest}&from=src")
        resp, _ = await asyncio.gather(mount, sweep_after(i % 20 * 2))
        if resp.status == 201:
            # Mounted before the sweep: the fresh link keeps the blob.
            assert await _blob(reg, "dst", digest) == data
        else:
            assert resp.status == 202, await resp.text()
            assert (await reg.client.head(f"/v2/dst/blobs/{digest}")).status == 404
        for known in await reg.registry.index.blobs.known_digests():
            assert reg.registry.store.exists(Digest.parse(known)), f"{known} is indexed, not stored"


async def test_open_sessions_are_capped_per_client_and_registry_wide(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    reg = await make_registry(max_upload_sessions_per_client=3, max_upload_sessions=100)
    locations = [await _start(reg, f"app{i}") for i in range(3)]
    resp = await reg.client.post("/v2/app/blobs/uploads/")
    assert resp.status == 429
    assert error_codes(await resp.json()) == ["TOOMANYREQUESTS"]
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(_upload_files(reg)) == 3
    # A finished or cancelled session frees its place.
    assert (await reg.client.delete(locations[0])).status == 204
    resp = await reg.client.put(f"{locations[1]}?digest={digest_of(b'x')}", data=b"x")
    assert resp.status == 201
    await _start(reg, "app")
    await _start(reg, "app")
    assert (await reg.client.post("/v2/app/blobs/uploads/")).status == 429
    # A monolithic push needs no session and is not refused.
    await reg.push_blob("app", b"whole")

    small = await make_registry(tmp_path / "small", max_upload_sessions=2)
    for _ in range(2):
        await _start(small, "app")
    resp = await small.client.post("/v2/other/blobs/uploads/")
    assert resp.status == 429
    assert error_codes(await resp.json()) == ["TOOMANYREQUESTS"]
    assert "Retry-After" in resp.headers


async def test_content_range_with_huge_numbers_is_400_not_500(reg: Reg) -> None:
    location = await _start(reg, "app")
    huge = "9" * 5000
    for header in (f"0-{huge}", f"{huge}-{huge}", f"bytes={huge}-1/*", f"0-0/{huge}"):
        resp = await reg.client.patch(location, data=b"x", headers={"Content-Range": header})
        assert resp.status in (400, 416), header
        assert error_codes(await resp.json()) == ["BLOB_UPLOAD_INVALID"]
        resp = await reg.client.put(
            f"{location}?digest={digest_of(b'x')}", data=b"x", headers={"Content-Range": header}
        )
        assert resp.status in (400, 416), header
        assert error_codes(await resp.json()) == ["BLOB_UPLOAD_INVALID"]
    assert (await reg.client.get(location)).headers["Range"] == "0-0"
    resp = await reg.client.put(f"{location}?digest={digest_of(b'x')}", data=b"x")
    assert resp.status == 201


async def test_the_session_cap_counts_each_user_apart(make_registry: AppFactory) -> None:
    reg = await make_registry(
        auth={"enabled": True, "admin_password": "admin-secret-pw"},
        max_upload_sessions_per_client=2,
    )
    accounts = Accounts(reg.registry.index)
    for user in ("alice", "bob"):
        await accounts.add_user(user, f"{user}-pw")
        await accounts.create_namespace(user, user)

    def as_user(user: str) -> dict[str, str]:
        secret = base64.b64encode(f"{user}:{user}-pw".encode()).decode()
        return {"Authorization": f"Basic {secret}"}

    for _ in range(2):
        resp = await reg.client.post("/v2/alice/app/blobs/uploads/", headers=as_user("alice"))
        assert resp.status == 202, await resp.text()
    resp = await reg.client.post("/v2/alice/app/blobs/uploads/", headers=as_user("alice"))
    assert resp.status == 429
    assert "Retry-After" in resp.headers
    # Same address, another user: a cap of its own.
    resp = await reg.client.post("/v2/bob/app/blobs/uploads/", headers=as_user("bob"))
    assert resp.status == 202, await resp.text()
