"""Namespace quotas: one check at link time for every path a blob takes into a namespace,
and a limit on bytes while they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

from aioreg.auth.accounts import Accounts
from aioreg.index.migrations import MIGRATIONS, statements
from tests.conftest import AppFactory, Reg, digest_of, error_codes
from tests.test_management import api, push
from tests.test_uploads import raw_send


async def _quota(reg: Reg, namespace: str, quota_bytes: int | None) -> None:
    with contextlib.suppress(Exception):
        await Accounts(reg.registry.index).create_namespace(namespace, None)
    await api(reg, "PUT", f"/namespaces/{namespace}/quota", json={"quota_bytes": quota_bytes})


async def _refused(resp: object) -> None:
    assert resp.status == 403, await resp.text()  # type: ignore[attr-defined]
    error = (await resp.json())["errors"][0]  # type: ignore[attr-defined]
    assert error["code"] == "DENIED"
    assert "quota" in error["message"]


async def test_mounts_count_against_the_quota(reg: Reg) -> None:
    await _quota(reg, "small", 1000)
    big = os.urandom(5000)
    digest = await reg.push_blob("big/app", big)
    await _refused(
        await reg.client.post(f"/v2/small/app/blobs/uploads/?mount={digest}&from=big/app")
    )
    await _refused(await reg.client.post(f"/v2/small/app/blobs/uploads/?mount={digest}"))
    assert (await reg.client.head(f"/v2/small/app/blobs/{digest}")).status == 404
    # Within the quota a mount goes through, and mounting it again costs nothing.
    await _quota(reg, "small", 5000)
    resp = await reg.client.post(f"/v2/small/app/blobs/uploads/?mount={digest}&from=big/app")
    assert resp.status == 201
    resp = await reg.client.post(f"/v2/small/other/blobs/uploads/?mount={digest}&from=big/app")
    assert resp.status == 201
    assert await reg.registry.index.usage.namespace("small") == 5000


async def test_server_side_copy_counts_against_the_quota(reg: Reg) -> None:
    await _quota(reg, "small", 1000)
    await push(reg, "big/app", "v1", [os.urandom(5000)])
    resp = await reg.client.post(
        "/api/v1/repositories/small/app/-/copy",
        json={"source": "big/app", "reference": "v1", "tag": "v1"},
    )
    await _refused(resp)
    assert (await reg.client.get("/v2/small/app/manifests/v1")).status == 404
    assert await reg.registry.index.usage.namespace("small") == 0
    await _quota(reg, "small", None)
    resp = await reg.client.post(
        "/api/v1/repositories/small/app/-/copy",
        json={"source": "big/app", "reference": "v1", "tag": "v1"},
    )
    assert resp.status == 201, await resp.text()


async def test_a_blob_stored_in_a_look_alike_namespace_is_not_free(reg: Reg) -> None:
    """``a_b`` must not count blobs of ``axb/...`` as its own (``_`` is a LIKE wildcard)."""
    await _quota(reg, "a_b", 1000)
    big = os.urandom(5000)
    await reg.push_blob("axb/app", big)
    resp = await reg.client.post(f"/v2/a_b/app/blobs/uploads/?digest={digest_of(big)}", data=big)
    await _refused(resp)
    assert (await reg.client.head(f"/v2/a_b/app/blobs/{digest_of(big)}")).status == 404


async def test_a_streamed_body_over_the_quota_is_refused_as_it_arrives(reg: Reg) -> None:
    await _quota(reg, "tiny", 4096)
    resp = await reg.client.post("/v2/tiny/app/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await reg.client.patch(location, data=b"a" * 1000, headers={"Content-Range": "0-999"})
    assert resp.status == 202
    # A chunked body that would go on for gigabytes: refused after its first bytes.
    chunk = b"b" * 65536
    reader, writer = await raw_send(
        reg,
        f"PATCH {location} HTTP/1.1\nHost: t\nTransfer-Encoding: chunked\n"
        "Content-Type: application/octet-stream\n",
        b"%x\r\n%s\r\n" % (len(chunk), chunk),
    )
    try:
        status_line = await asyncio.wait_for(reader.readline(), 20)
        assert status_line.split()[1] == b"403", status_line
    finally:
        writer.transport.abort()
    # The refusal ends the session: nothing of it stays on disk.
    resp = await reg.client.get(location)
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["BLOB_UPLOAD_UNKNOWN"]
    assert list((reg.data_dir / "uploads").iterdir()) == []
    # A closing PUT carrying too much is refused the same way.
    resp = await reg.client.post("/v2/tiny/app/blobs/uploads/")
    location = resp.headers["Location"]
    big = os.urandom(3 * 1024 * 1024)
    await _refused(await reg.client.put(f"{location}?digest={digest_of(big)}", data=big))
    assert list((reg.data_dir / "uploads").iterdir()) == []
    # What fits still goes through.
    small = os.urandom(4096)
    resp = await reg.client.post(
        f"/v2/tiny/app/blobs/uploads/?digest={digest_of(small)}", data=small
    )
    assert resp.status == 201


def _scanned_usage(reg: Reg, namespace: str) -> int:
    """Distinct blob bytes linked anywhere in the namespace, counted from scratch."""
    with contextlib.closing(sqlite3.connect(reg.data_dir / "index.db")) as db:
        row = db.execute(
            "SELECT coalesce(sum(size), 0) FROM blobs WHERE digest IN (SELECT rb.digest FROM "
            "repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
            "WHERE r.name = ? OR substr(r.name, 1, length(?) + 1) = ? || '/')",
            (namespace, namespace, namespace),
        ).fetchone()
    return int(row[0])


async def test_usage_counter_follows_every_link_and_unlink(make_registry: AppFactory) -> None:
    reg = await make_registry(gc={"grace_period": 0})

    async def agrees() -> None:
        for namespace in ("team", "other"):
            counted = await reg.registry.index.usage.namespace(namespace)
            assert counted == _scanned_usage(reg, namespace), namespace

    shared = os.urandom(3000)
    await push(reg, "team/a", "v1", [shared, os.urandom(1000)])
    await push(reg, "team/b", "v1", [shared, os.urandom(2000)], arch="arm64")
    await agrees()
    orphan = await reg.push_blob("team/a", os.urandom(700))
    await reg.push_blob("team/b", os.urandom(700))
    await reg.client.post(f"/v2/other/x/blobs/uploads/?mount={orphan}&from=team/a")
    await reg.client.post(f"/v2/team/c/blobs/uploads/?mount={orphan}&from=team/a")
    await api(
        reg,
        "POST",
        "/repositories/other/y/-/copy",
        status=201,
        json={"source": "team/a", "reference": "v1"},
    )
    await agrees()
    assert (await reg.client.delete(f"/v2/team/a/blobs/{orphan}")).status == 202
    await agrees()
    await api(reg, "DELETE", "/repositories/team/b")
    await agrees()
    await api(reg, "DELETE", "/repositories/other/x")
    await api(reg, "POST", "/gc")
    await agrees()
    assert await reg.registry.index.usage.namespace("nobody") == 0


async def test_an_upgraded_index_counts_the_links_it_already_has(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    data = tmp_path / "old"
    data.mkdir()
    shared, own = os.urandom(100), os.urandom(50)
    common = digest_of(shared)
    with contextlib.closing(sqlite3.connect(data / "index.db", isolation_level=None)) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER)")
        for version, script in enumerate(MIGRATIONS[:4], start=1):
            for statement in statements(script):
                db.execute(statement)
            db.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
        db.executemany(
            "INSERT INTO repositories(id, name, created_at) VALUES (?, ?, 0)",
            [(1, "team/a"), (2, "team/b"), (3, "other")],
        )
        db.executemany(
            "INSERT INTO blobs(digest, size, created_at) VALUES (?, ?, 0)",
            [(common, 100), (digest_of(own), 50)],
        )
        db.executemany(
            "INSERT INTO repository_blobs(repository_id, digest, linked_at) VALUES (?, ?, 0)",
            [(1, common), (2, common), (2, digest_of(own)), (3, common)],
        )
        db.execute("INSERT INTO namespaces(name, created_at, quota_bytes) VALUES ('team', 0, 200)")
    reg = await make_registry(data)
    assert await reg.registry.index.usage.namespace("team") == 150
    assert await reg.registry.index.usage.namespace("other") == 100
    big = os.urandom(51)
    resp = await reg.client.post(f"/v2/team/c/blobs/uploads/?digest={digest_of(big)}", data=big)
    await _refused(resp)
    await reg.push_blob("team/c", big[:50])
