"""Optional features of the distribution-spec's next release: tag parameters on a push
by digest (end-7b, ``OCI-Tag``) and ``digest-algorithm`` on an upload start (end-4c)."""

from __future__ import annotations

import hashlib
import json

from aioreg.api.management.routes import PREFIX
from aioreg.auth.accounts import Accounts
from tests.conftest import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    digest_of,
    error_codes,
)


async def image(reg: Reg, name: str, seed: str, algorithm: str = "sha256") -> tuple[bytes, str]:
    """Push a config and a layer; return an OCI manifest for them and its digest
    under ``algorithm`` (the manifest itself is not pushed)."""
    config = json.dumps({"os": "linux", "architecture": "amd64", "seed": seed}).encode()
    layer = f"layer-{seed}".encode() * 50
    for blob in (config, layer):
        await reg.push_blob(name, blob)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
        }
    ).encode()
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
