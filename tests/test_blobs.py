"""Blob fetch, byte ranges, existence checks and deletion."""

from __future__ import annotations

import hashlib
import os

from tests.conftest import Reg, digest_of, error_codes


async def test_get_and_head_headers(reg: Reg) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = await reg.push_blob("team/app", data)
    resp = await reg.client.head(f"/v2/team/app/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["ETag"] == f'"{digest}"'
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == b""
    resp = await reg.client.get(f"/v2/team/app/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Content-Type"] == "application/octet-stream"
    body = await resp.read()
    assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]


async def test_range_reads_return_exactly_those_bytes(reg: Reg) -> None:
    data = os.urandom(1_000_003)
    digest = await reg.push_blob("r", data)
    url = f"/v2/r/blobs/{digest}"
    for header, start, end in [
        ("bytes=0-0", 0, 1),
        ("bytes=10-19", 10, 20),
        ("bytes=999000-", 999000, len(data)),
        ("bytes=-100", len(data) - 100, len(data)),
        ("bytes=5-99999999", 5, len(data)),
    ]:
        resp = await reg.client.get(url, headers={"Range": header})
        assert resp.status == 206, header
        assert await resp.read() == data[start:end], header
        assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
        assert resp.headers["Content-Length"] == str(end - start)


async def test_unsatisfiable_range_is_416(reg: Reg) -> None:
    digest = await reg.push_blob("r", b"0123456789")
    resp = await reg.client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=10-20"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */10"


async def test_conditional_get_by_etag(reg: Reg) -> None:
    digest = await reg.push_blob("r", b"cache me")
    resp = await reg.client.get(f"/v2/r/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert resp.status == 304


async def test_unknown_blob_and_invalid_digests(reg: Reg) -> None:
    await reg.push_blob("r", b"something")
    missing = digest_of(b"never pushed")
    resp = await reg.client.get(f"/v2/r/blobs/{missing}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["BLOB_UNKNOWN"]
    resp = await reg.client.head(f"/v2/r/blobs/{missing}")
    assert resp.status == 404
    for bad in ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64, "nocolon"]:
        resp = await reg.client.get(f"/v2/r/blobs/{bad}")
        assert resp.status == 400, bad
        assert error_codes(await resp.json()) == ["DIGEST_INVALID"], bad


async def test_blob_is_visible_only_in_repositories_that_link_it(reg: Reg) -> None:
    digest = await reg.push_blob("one", b"private to one")
    assert (await reg.client.head(f"/v2/one/blobs/{digest}")).status == 200
    assert (await reg.client.head(f"/v2/two/blobs/{digest}")).status == 404


async def test_delete_blob_unlinks_it_from_the_repository(reg: Reg) -> None:
    digest = await reg.push_blob("a", b"shared bytes")
    await reg.push_blob("b", b"shared bytes")
    resp = await reg.client.delete(f"/v2/a/blobs/{digest}")
    assert resp.status == 202
    assert (await reg.client.head(f"/v2/a/blobs/{digest}")).status == 404
    assert (await reg.client.get(f"/v2/b/blobs/{digest}")).status == 200
    resp = await reg.client.delete(f"/v2/a/blobs/{digest}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["BLOB_UNKNOWN"]


async def test_blob_stored_once_across_repositories(reg: Reg) -> None:
    data = os.urandom(4096)
    digest = await reg.push_blob("x/one", data)
    await reg.push_blob("x/two", data)
    await reg.push_blob("y/three", data)
    files = [p for p in (reg.data_dir / "blobs").rglob("*") if p.is_file()]
    assert [f.name for f in files] == [digest.split(":")[1]]
    assert files[0].read_bytes() == data


async def test_sha512_blobs(reg: Reg) -> None:
    data = b"hashed the long way"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    resp = await reg.client.post(f"/v2/r/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201, await resp.text()
    resp = await reg.client.get(f"/v2/r/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["Docker-Content-Digest"] == digest


async def test_invalid_repository_names(reg: Reg) -> None:
    digest = digest_of(b"x")
    for name in ["Upper", "a//b", "-lead", "trail-", "a/", "x" * 256, "a..b", "a/b/C"]:
        resp = await reg.client.head(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 400, name
        resp = await reg.client.get(f"/v2/{name}/blobs/{digest}")
        assert error_codes(await resp.json()) == ["NAME_INVALID"], name


async def test_multi_level_names(reg: Reg) -> None:
    for name in ["frontend/web", "team/app/api", "a.b/c__d/e-f/g--h", "x" * 250]:
        digest = await reg.push_blob(name, name.encode())
        resp = await reg.client.get(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 200, name
        assert await resp.read() == name.encode()
