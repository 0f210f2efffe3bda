"""Optional features of the distribution-spec's next release: tag parameters on a push
by digest (end-7b, ``OCI-Tag``) and ``digest-algorithm`` on an upload start (end-4c)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from aioreg.api.management.routes import PREFIX
from aioreg.auth.accounts import Accounts
from aioreg.domain.reference import Digest
from aioreg.storage import BlobStore
from tests.conftest import (
    OCI_MANIFEST,
    AppFactory,
    Reg,
    digest_of,
    error_codes,
    image_manifest,
)


async def image(reg: Reg, name: str, seed: str, algorithm: str = "sha256") -> tuple[bytes, str]:
    """Push a config and a layer; return an OCI manifest for them and its digest
    under ``algorithm`` (the manifest itself is not pushed)."""
    config = json.dumps({"os": "linux", "architecture": "amd64", "seed": seed}).encode()
    layer = f"layer-{seed}".encode() * 50
    for blob in (config, layer):
        await reg.push_blob(name, blob)
    body = image_manifest(config, [layer])
    return body, f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


async def put_with_tags(reg: Reg, name: str, digest: str, body: bytes, tags: list[str]) -> object:
    query = "&".join(f"tag={t}" for t in tags)
    return await reg.client.put(
        f"/v2/{name}/manifests/{digest}?{query}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )


async def tag_list(reg: Reg, name: str) -> list[str]:
    resp = await reg.client.get(f"/v2/{name}/tags/list")
    if resp.status == 404:
        return []
    assert resp.status == 200, await resp.text()
    return list((await resp.json())["tags"] or [])


# -- tag parameters ----------------------------------------------------------------


async def test_push_by_digest_with_eleven_tags(reg: Reg) -> None:
    body, digest = await image(reg, "team/app", "a")
    tags = [f"v{i}" for i in range(11)] + ["latest", "v3"]  # a repeated tag is one tag
    resp = await put_with_tags(reg, "team/app", digest, body, tags)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    expected = [f"v{i}" for i in range(11)] + ["latest"]
    assert resp.headers.getall("OCI-Tag") == expected
    assert sorted(await tag_list(reg, "team/app")) == sorted(expected)
    for tag in expected:
        got = await reg.client.get(f"/v2/team/app/manifests/{tag}")
        assert got.headers["Docker-Content-Digest"] == digest
    # One push event per tag, as pushes by tag would have made.
    resp = await reg.client.get(PREFIX + "/events?limit=100")
    events = (await resp.json())["events"]
    pushed = sorted(e["reference"] for e in events if e["kind"] == "push")
    assert pushed == sorted(expected)


async def test_tag_parameter_refused_whole_by_an_immutable_tag(reg: Reg) -> None:
    await Accounts(reg.registry.index).create_namespace("team", None)
    await Accounts(reg.registry.index).configure("team", None, None, {"immutable_tags": ["v*"]})
    first, first_digest = await image(reg, "team/app", "a")
    assert (await put_with_tags(reg, "team/app", first_digest, first, ["v1"])).status == 201

    second, second_digest = await image(reg, "team/app", "b")
    resp = await put_with_tags(reg, "team/app", second_digest, second, ["new", "latest", "v1"])
    assert resp.status == 403, await resp.text()
    payload = await resp.json()
    assert error_codes(payload) == ["DENIED"]
    assert "team/app:v1" in payload["errors"][0]["message"]
    assert "OCI-Tag" not in resp.headers
    # Nothing stored: not the manifest, not the tags before the refused one.
    assert (await reg.client.get(f"/v2/team/app/manifests/{second_digest}")).status == 404
    assert await tag_list(reg, "team/app") == ["v1"]
    got = await reg.client.get("/v2/team/app/manifests/v1")
    assert got.headers["Docker-Content-Digest"] == first_digest

    # Overwrite off: moving any tag refuses the push whole too.
    await Accounts(reg.registry.index).configure(
        "team", None, None, {"allow_tag_overwrite": False, "immutable_tags": []}
    )
    resp = await put_with_tags(reg, "team/app", first_digest, first, ["latest"])
    assert resp.status == 201
    resp = await put_with_tags(reg, "team/app", second_digest, second, ["other", "latest"])
    assert resp.status == 403
    assert (await reg.client.get(f"/v2/team/app/manifests/{second_digest}")).status == 404
    assert sorted(await tag_list(reg, "team/app")) == ["latest", "v1"]


async def test_invalid_tag_parameter_stores_nothing(reg: Reg) -> None:
    body, digest = await image(reg, "team/app", "a")
    resp = await put_with_tags(reg, "team/app", digest, body, ["ok", "-bad"])
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["TAG_INVALID"]
    assert (await reg.client.get(f"/v2/team/app/manifests/{digest}")).status == 404
    assert await tag_list(reg, "team/app") == []


async def test_tag_parameter_on_a_push_by_tag_is_refused(reg: Reg) -> None:
    body, digest = await image(reg, "team/app", "a")
    resp = await put_with_tags(reg, "team/app", "main", body, ["other"])
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["TAG_INVALID"]
    assert (await reg.client.get(f"/v2/team/app/manifests/{digest}")).status == 404


async def test_sha512_manifest_gets_tags_by_parameter(reg: Reg) -> None:
    body, digest = await image(reg, "team/app", "a", "sha512")
    resp = await put_with_tags(reg, "team/app", digest, body, ["latest", "v1"])
    assert resp.status == 201, await resp.text()
    assert resp.headers.getall("OCI-Tag") == ["latest", "v1"]
    got = await reg.client.get("/v2/team/app/manifests/v1")
    assert got.status == 200
    assert got.headers["Docker-Content-Digest"] == digest
    assert await got.read() == body


async def test_too_long_uri_is_414_with_error_json(make_registry: AppFactory) -> None:
    reg = await make_registry(server={"client_max_header_bytes": 4096})
    body, digest = await image(reg, "team/app", "a")
    tags = [f"t{i:03d}-" + "x" * 100 for i in range(40)]  # over 4096 bytes of URI
    resp = await put_with_tags(reg, "team/app", digest, body, tags)
    assert resp.status == 414
    payload = await resp.json()
    assert error_codes(payload) == ["UNSUPPORTED"]
    assert payload["errors"][0]["detail"] == {"limit": 4096}
    # Within the limit the same push works, on a fresh connection.
    resp = await put_with_tags(reg, "team/app", digest, body, tags[:25])
    assert resp.status == 201, await resp.text()
    assert len(resp.headers.getall("OCI-Tag")) == 25
    # A header over the limit is 431, also with the error JSON.
    resp = await reg.client.get("/v2/", headers={"X-Long": "y" * 5000})
    assert resp.status == 431
    assert error_codes(await resp.json()) == ["UNSUPPORTED"]


# -- digest-algorithm on an upload start ---------------------------------------------


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


async def start_upload(reg: Reg, name: str, query: str = "") -> str:
    resp = await reg.client.post(f"/v2/{name}/blobs/uploads/{query}")
    assert resp.status == 202, await resp.text()
    return str(resp.headers["Location"])


async def patch(reg: Reg, location: str, data: bytes, start: int) -> str:
    resp = await reg.client.patch(
        location,
        data=data,
        headers={"Content-Range": f"{start}-{start + len(data) - 1}"},
    )
    assert resp.status == 202, await resp.text()
    return str(resp.headers["Location"])


async def test_sha512_session_survives_a_restart(make_registry: AppFactory) -> None:
    first = await make_registry()
    data_dir = first.data_dir
    part1, part2 = b"a" * 70_000, b"b" * 30_000
    finished = await start_upload(first, "team/app", "?digest-algorithm=sha512")
    finished = await patch(first, finished, part1, 0)
    mismatched = await start_upload(first, "team/app", "?digest-algorithm=sha512")
    mismatched = await patch(first, mismatched, part1, 0)
    await first.server.stop()

    # The second server resumes both sessions from the index and the temp files alone.
    second = await make_registry(data_dir)
    finished = await patch(second, finished, part2, len(part1))
    resp = await second.client.put(f"{finished}?digest={sha512(part1 + part2)}")
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == sha512(part1 + part2)
    got = await second.client.get(f"/v2/team/app/blobs/{sha512(part1 + part2)}")
    assert got.status == 200
    assert await got.read() == part1 + part2

    # It still knows the other session's algorithm: a sha256 digest cannot close it.
    resp = await second.client.put(f"{mismatched}?digest={digest_of(part1)}")
    assert resp.status == 400
    payload = await resp.json()
    assert error_codes(payload) == ["DIGEST_INVALID"]
    assert "digest-algorithm=sha512" in payload["errors"][0]["message"]
    assert (await second.client.get(f"/v2/team/app/blobs/{digest_of(part1)}")).status == 404


async def test_unsupported_digest_algorithm_is_400(reg: Reg) -> None:
    for algorithm in ("md5", "sha384", "SHA256", ""):
        resp = await reg.client.post(f"/v2/team/app/blobs/uploads/?digest-algorithm={algorithm}")
        assert resp.status == 400, (algorithm, await resp.text())
        payload = await resp.json()
        assert error_codes(payload) == ["DIGEST_INVALID"]
        assert payload["errors"][0]["detail"] == {"supported": ["sha256", "sha512"]}
    # Nothing was opened.
    assert await reg.registry.index.uploads.all() == []


async def test_session_without_algorithm_still_takes_a_sha512_digest(reg: Reg) -> None:
    data = b"c" * 50_000
    location = await start_upload(reg, "team/app")
    location = await patch(reg, location, data[:20_000], 0)
    resp = await reg.client.put(f"{location}?digest={sha512(data)}", data=data[20_000:])
    assert resp.status == 201, await resp.text()
    # And a monolithic sha512 push.
    other = b"d" * 10_000
    resp = await reg.client.post(f"/v2/team/app/blobs/uploads/?digest={sha512(other)}", data=other)
    assert resp.status == 201, await resp.text()
    got = await reg.client.get(f"/v2/team/app/blobs/{sha512(other)}")
    assert await got.read() == other


async def test_writer_hashes_its_algorithm_while_streaming(tmp_path: Path) -> None:
    """The commit checks the digest of what streamed in, not a second read of the file:
    bytes changed on disk after the writes do not enter the check."""
    store = BlobStore(tmp_path / "d")
    store.open()
    data = b"e" * 300_000
    writer = store.create_writer("a" * 32, "sha512")

    async def body() -> AsyncIterator[bytes]:
        yield data

    await writer.write(body())
    writer.path.write_bytes(b"x" * len(data))
    blob = await writer.commit(Digest.parse(sha512(data)))
    assert blob.digest == sha512(data)
    await writer.cancel()
