"""Manifest push, fetch, existence checks and deletion, by tag and by digest."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import pytest
from aiohttp import ClientResponse

from tests.conftest import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    digest_of,
    error_codes,
)
from tests.process import Server, free_port
from tests.process import start as start_server

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


async def put(reg: Reg, name: str, reference: str, body: bytes, media_type: str) -> ClientResponse:
    return await reg.client.put(
        f"/v2/{name}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
    )


async def descriptor(reg: Reg, name: str, data: bytes, media_type: str) -> dict[str, object]:
    digest = await reg.push_blob(name, data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


async def oci_image(reg: Reg, name: str, seed: str = "x") -> bytes:
    config = await descriptor(reg, name, encode({"os": "linux", "seed": seed}), OCI_CONFIG)
    layer = await descriptor(reg, name, f"layer {seed}".encode() * 50, OCI_LAYER)
    return encode(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    )


async def docker_image(reg: Reg, name: str, seed: str = "x") -> bytes:
    config = await descriptor(reg, name, encode({"os": "linux", "docker": seed}), DOCKER_CONFIG)
    layer = await descriptor(reg, name, f"docker layer {seed}".encode() * 50, DOCKER_LAYER)
    return encode(
        {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config, "layers": [layer]}
    )


def platform_entry(body: bytes, media_type: str, arch: str) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": digest_of(body),
        "size": len(body),
        "platform": {"architecture": arch, "os": "linux"},
    }


# Each builder pushes what its manifest references and returns (body, media type).
Builder = Callable[[Reg, str], Awaitable[tuple[bytes, str]]]


async def build_docker(reg: Reg, name: str) -> tuple[bytes, str]:
    return await docker_image(reg, name), DOCKER_MANIFEST


async def build_docker_list(reg: Reg, name: str) -> tuple[bytes, str]:
    entries = []
    for arch in ("amd64", "arm64"):
        child = await docker_image(reg, name, arch)
        await reg.push_manifest(name, digest_of(child), child, DOCKER_MANIFEST)
        entries.append(platform_entry(child, DOCKER_MANIFEST, arch))
    return encode({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries}), DOCKER_LIST


async def build_oci(reg: Reg, name: str) -> tuple[bytes, str]:
    return await oci_image(reg, name), OCI_MANIFEST


async def build_oci_index(reg: Reg, name: str) -> tuple[bytes, str]:
    entries = []
    for arch in ("amd64", "arm64", "s390x"):
        child = await oci_image(reg, name, arch)
        await reg.push_manifest(name, digest_of(child), child, OCI_MANIFEST)
        entries.append(platform_entry(child, OCI_MANIFEST, arch))
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    return body, OCI_INDEX


async def build_artifact_empty_config(reg: Reg, name: str) -> tuple[bytes, str]:
    config = await descriptor(reg, name, EMPTY_JSON, EMPTY)
    config["data"] = "e30="
    layer = await descriptor(reg, name, b"an SBOM, say", "application/spdx+json")
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": config,
            "layers": [layer],
        }
    )
    return body, OCI_MANIFEST


async def build_artifact_custom_config(reg: Reg, name: str) -> tuple[bytes, str]:
    config = await descriptor(
        reg, name, b'{"kind": "helm-ish"}', "application/vnd.example.config+json"
    )
    layer = await descriptor(reg, name, b"chart bytes" * 20, "application/vnd.example.chart.tar")
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.chart",
            "config": config,
            "layers": [layer],
        }
    )
    return body, OCI_MANIFEST


BUILDERS: dict[str, Builder] = {
    "docker-schema2": build_docker,
    "docker-manifest-list": build_docker_list,
    "oci-manifest": build_oci,
    "oci-index": build_oci_index,
    "oci-artifact-empty-config": build_artifact_empty_config,
    "oci-artifact-custom-config": build_artifact_custom_config,
}


async def assert_served(reg: Reg, name: str, reference: str, body: bytes, media_type: str) -> None:
    """GET returns exactly ``body``; HEAD the same headers with no body."""
    url = f"/v2/{name}/manifests/{reference}"
    resp = await reg.client.get(url)
    assert resp.status == 200, await resp.text()
    assert await resp.read() == body
    assert resp.headers["Content-Type"] == media_type
    assert resp.headers["Docker-Content-Digest"] == digest_of(body)
    assert resp.headers["Content-Length"] == str(len(body))
    resp = await reg.client.head(url)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == media_type
    assert resp.headers["Docker-Content-Digest"] == digest_of(body)
    assert resp.headers["Content-Length"] == str(len(body))
    assert await resp.read() == b""


async def assert_not_stored(reg: Reg, name: str, *references: str) -> None:
    for reference in references:
        resp = await reg.client.get(f"/v2/{name}/manifests/{reference}")
        assert resp.status == 404, f"{reference} should not have been stored"
        assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]


def location_path(resp: ClientResponse) -> str:
    return urlparse(resp.headers["Location"]).path


# -- push and fetch ------------------------------------------------------


@pytest.mark.parametrize("kind", list(BUILDERS))
async def test_each_format_pushes_by_tag_and_is_served(reg: Reg, kind: str) -> None:
    name = "team/app"
    body, media_type = await BUILDERS[kind](reg, name)
    digest = digest_of(body)
    resp = await put(reg, name, "v1", body, media_type)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    assert location_path(resp) == f"/v2/{name}/manifests/{digest}"
    await assert_served(reg, name, "v1", body, media_type)
    await assert_served(reg, name, digest, body, media_type)


@pytest.mark.parametrize("kind", list(BUILDERS))
async def test_each_format_pushes_by_digest(reg: Reg, kind: str) -> None:
    name = "by/digest"
    body, media_type = await BUILDERS[kind](reg, name)
    digest = digest_of(body)
    resp = await put(reg, name, digest, body, media_type)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    assert location_path(resp) == f"/v2/{name}/manifests/{digest}"
    await assert_served(reg, name, digest, body, media_type)
    resp = await reg.client.get(f"/v2/{name}/tags/list")
    assert (await resp.json())["tags"] == []


async def test_pushing_the_same_manifest_again_is_idempotent(reg: Reg) -> None:
    body = await oci_image(reg, "r")
    first = await reg.push_manifest("r", "a", body)
    second = await reg.push_manifest("r", "a", body)
    third = await reg.push_manifest("r", first, body)
    assert first == second == third == digest_of(body)
    await assert_served(reg, "r", "a", body, OCI_MANIFEST)


async def test_manifest_is_stored_byte_for_byte(reg: Reg) -> None:
    config = await descriptor(reg, "odd", encode({"os": "linux"}), OCI_CONFIG)
    layer = await descriptor(reg, "odd", b"odd layer" * 10, OCI_LAYER)
    ld, lt, ls = layer["digest"], layer["mediaType"], layer["size"]
    cd, ct, cs = config["digest"], config["mediaType"], config["size"]
    body = (
        f'\n  {{  "layers" :[ {{"size":{ls} ,"digest":"{ld}",  "mediaType":"{lt}"}}\t],\r\n'
        '"annotations": {"z": "\\u00e9t\\u00e9", "a": "été", "m": "\\/slash"},\n'
        '"x-extension-field" : [1, 2.50, true, null],\n'
        f'    "config":{{"mediaType":"{ct}","size":{cs},"digest":"{cd}"}},'
        f'"mediaType" :   "{OCI_MANIFEST}",  "schemaVersion":2\n}}\n\n'
    )
    raw = body.encode()
    assert json.loads(raw)["schemaVersion"] == 2
    assert encode(json.loads(raw)) != raw  # re-encoding would change the bytes
    digest = await reg.push_manifest("odd", "weird", raw)
    assert digest == digest_of(raw)
    await assert_served(reg, "odd", "weird", raw, OCI_MANIFEST)
    await assert_served(reg, "odd", digest, raw, OCI_MANIFEST)


async def test_content_type_parameters_are_ignored(reg: Reg) -> None:
    body = await oci_image(reg, "r")
    digest = await reg.push_manifest("r", "t", body, f"{OCI_MANIFEST}; charset=utf-8")
    assert digest == digest_of(body)
    await assert_served(reg, "r", "t", body, OCI_MANIFEST)


@pytest.mark.parametrize(
    ("body_type", "content_type"),
    [
        (OCI_MANIFEST, DOCKER_MANIFEST),
        (OCI_MANIFEST, OCI_INDEX),
        (DOCKER_MANIFEST, OCI_MANIFEST),
        (OCI_INDEX, OCI_MANIFEST),
        (OCI_INDEX, DOCKER_LIST),
        (DOCKER_LIST, OCI_INDEX),
    ],
)
async def test_content_type_must_match_the_body_media_type(
    reg: Reg, body_type: str, content_type: str
) -> None:
    if body_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        config = await descriptor(reg, "r", encode({"os": "linux"}), OCI_CONFIG)
        doc: dict[str, object] = {"schemaVersion": 2, "mediaType": body_type, "config": config}
        doc["layers"] = []
    else:
        child = await oci_image(reg, "r")
        await reg.push_manifest("r", digest_of(child), child)
        doc = {
            "schemaVersion": 2,
            "mediaType": body_type,
            "manifests": [platform_entry(child, OCI_MANIFEST, "amd64")],
        }
    body = encode(doc)
    resp = await put(reg, "r", "mismatch", body, content_type)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]
    await assert_not_stored(reg, "r", "mismatch", digest_of(body))


async def test_body_without_media_type_takes_the_oci_content_type(reg: Reg) -> None:
    image = json.loads(await oci_image(reg, "r"))
    del image["mediaType"]
    body = encode(image)
    digest = await reg.push_manifest("r", "plain", body, OCI_MANIFEST)
    await assert_served(reg, "r", "plain", body, OCI_MANIFEST)
    index = encode({"schemaVersion": 2, "manifests": [platform_entry(body, OCI_MANIFEST, "amd64")]})
    assert digest == digest_of(body)
    await reg.push_manifest("r", "plain-index", index, OCI_INDEX)
    await assert_served(reg, "r", "plain-index", index, OCI_INDEX)


def members(*pairs: str) -> bytes:
    """A JSON object written member by member, so keys may repeat or bytes be raw."""
    return ("{" + ", ".join(pairs) + "}").encode()


SCHEMA_2 = '"schemaVersion": 2'
OCI_TYPE = f'"mediaType": "{OCI_MANIFEST}"'
EMPTY_CONFIG = (
    f'"config": {encode({"mediaType": EMPTY, "digest": digest_of(EMPTY_JSON), "size": 2}).decode()}'
)
NO_LAYERS = '"layers": []'

INVALID_BODIES: dict[str, tuple[bytes, str]] = {
    # Clients disagree on which of two equal keys counts (last wins here and in Go).
    "duplicate-media-type": (
        members(SCHEMA_2, f'"mediaType": "{OCI_INDEX}"', OCI_TYPE, EMPTY_CONFIG, NO_LAYERS),
        OCI_MANIFEST,
    ),
    "duplicate-layers": (
        members(SCHEMA_2, OCI_TYPE, EMPTY_CONFIG, NO_LAYERS, NO_LAYERS),
        OCI_MANIFEST,
    ),
    "duplicate-annotation": (
        members(SCHEMA_2, OCI_TYPE, EMPTY_CONFIG, NO_LAYERS, '"annotations": {"a": "1", "a": "2"}'),
        OCI_MANIFEST,
    ),
    "duplicate-descriptor-size": (
        members(
            SCHEMA_2,
            OCI_TYPE,
            EMPTY_CONFIG[:-1] + ', "size": 3}',
            NO_LAYERS,
        ),
        OCI_MANIFEST,
    ),
    # Go's encoding/json matches field names case-insensitively: a client reads these.
    "case-variant-layers": (
        members(SCHEMA_2, OCI_TYPE, EMPTY_CONFIG, NO_LAYERS, f'"LAYERS": [{EMPTY_CONFIG[10:]}]'),
        OCI_MANIFEST,
    ),
    "case-variant-only": (
        members(SCHEMA_2, OCI_TYPE, EMPTY_CONFIG, f'"Layers": [{EMPTY_CONFIG[10:]}]'),
        OCI_MANIFEST,
    ),
    "case-variant-descriptor-key": (
        members(SCHEMA_2, OCI_TYPE, EMPTY_CONFIG[:-1] + ', "Digest": "x"}', NO_LAYERS),
        OCI_MANIFEST,
    ),
    "case-variant-media-type": (
        members(SCHEMA_2, OCI_TYPE, f'"MediaType": "{OCI_INDEX}"', EMPTY_CONFIG, NO_LAYERS),
        OCI_MANIFEST,
    ),
    "invalid-utf8-annotation": (
        members(SCHEMA_2, OCI_TYPE, EMPTY_CONFIG, NO_LAYERS)[:-1]
        + b', "annotations": {"a": "\xff\xfe"}}',
        OCI_MANIFEST,
    ),
    "invalid-utf8-key": (
        members(SCHEMA_2, OCI_TYPE, EMPTY_CONFIG, NO_LAYERS)[:-1]
        + b', "annotations": {"\xc3": "v"}}',
        OCI_MANIFEST,
    ),
    "utf16": (
        members(SCHEMA_2, OCI_TYPE, EMPTY_CONFIG, NO_LAYERS).decode().encode("utf-16"),
        OCI_MANIFEST,
    ),
    "not-json": (b"{this is not json", OCI_MANIFEST),
    "empty": (b"", OCI_MANIFEST),
    "json-array": (b"[1, 2, 3]", OCI_MANIFEST),
    "json-string": (b'"manifest"', OCI_MANIFEST),
    "truncated": (b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode(), OCI_MANIFEST),
    "schema-version-3": (
        encode({"schemaVersion": 3, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}),
        OCI_MANIFEST,
    ),
    "schema-version-missing": (
        encode({"mediaType": OCI_MANIFEST, "config": {}, "layers": []}),
        OCI_MANIFEST,
    ),
    "schema-version-string": (
        encode({"schemaVersion": "2", "mediaType": OCI_MANIFEST, "layers": []}),
        OCI_MANIFEST,
    ),
    "missing-config": (
        encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}),
        OCI_MANIFEST,
    ),
    "docker-missing-config": (
        encode({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": []}),
        DOCKER_MANIFEST,
    ),
    "config-not-an-object": (
        encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": "x", "layers": []}),
        OCI_MANIFEST,
    ),
    "config-bad-digest": (
        encode(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": "sha256:abc", "size": 2},
                "layers": [],
            }
        ),
        OCI_MANIFEST,
    ),
    "layer-negative-size": (
        encode(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": EMPTY, "digest": digest_of(EMPTY_JSON), "size": 2},
                "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(b"l"), "size": -1}],
            }
        ),
        OCI_MANIFEST,
    ),
    "index-missing-manifests": (encode({"schemaVersion": 2, "mediaType": OCI_INDEX}), OCI_INDEX),
    "unknown-media-type": (
        encode({"schemaVersion": 2, "mediaType": "application/vnd.example+json"}),
        "application/vnd.example+json",
    ),
    "no-media-type-anywhere": (
        encode({"schemaVersion": 2, "config": {}, "layers": []}),
        "application/json",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_BODIES))
async def test_invalid_manifests_are_manifest_invalid(reg: Reg, case: str) -> None:
    await reg.push_blob("r", EMPTY_JSON)  # the repository exists
    body, content_type = INVALID_BODIES[case]
    resp = await put(reg, "r", "bad", body, content_type)
    assert resp.status == 400, await resp.text()
    assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]
    await assert_not_stored(reg, "r", "bad", digest_of(body))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            encode(
                {
                    "schemaVersion": 1,
                    "name": "r",
                    "tag": "old",
                    "architecture": "amd64",
                    "fsLayers": [{"blobSum": digest_of(b"l")}],
                    "history": [{"v1Compatibility": "{}"}],
                }
            ),
            SCHEMA1,
        ),
        (
            encode(
                {
                    "schemaVersion": 1,
                    "mediaType": SCHEMA1_SIGNED,
                    "name": "r",
                    "tag": "old",
                    "fsLayers": [],
                    "signatures": [{"header": {}, "signature": "x", "protected": "y"}],
                }
            ),
            SCHEMA1_SIGNED,
        ),
        (encode({"schemaVersion": 1, "name": "r", "tag": "old", "fsLayers": []}), OCI_MANIFEST),
    ],
    ids=["unsigned", "signed", "schema1-under-oci-content-type"],
)
async def test_docker_schema1_is_rejected(reg: Reg, body: bytes, content_type: str) -> None:
    resp = await put(reg, "r", "old", body, content_type)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]
    resp = await reg.client.get("/v2/r/manifests/old")
    assert resp.status == 404


# -- references must exist ------------------------------------------------


async def test_missing_layer_is_manifest_blob_unknown_and_nothing_is_stored(reg: Reg) -> None:
    config = await descriptor(reg, "r", encode({"os": "linux"}), OCI_CONFIG)
    missing = b"never uploaded"
    layer = {"mediaType": OCI_LAYER, "digest": digest_of(missing), "size": len(missing)}
    body = encode(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    )
    resp = await put(reg, "r", "broken", body, OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    await assert_not_stored(reg, "r", "broken", digest_of(body))
    resp = await reg.client.get("/v2/r/tags/list")
    assert (await resp.json())["tags"] == []


async def test_missing_config_blob_is_manifest_blob_unknown(reg: Reg) -> None:
    layer = await descriptor(reg, "r", b"layer", OCI_LAYER)
    config = {"mediaType": OCI_CONFIG, "digest": digest_of(b"{ }"), "size": 3}
    body = encode(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    )
    resp = await put(reg, "r", digest_of(body), body, OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    await assert_not_stored(reg, "r", digest_of(body))


async def test_blob_in_another_repository_does_not_count(reg: Reg) -> None:
    body = await oci_image(reg, "other/repo")  # every blob lives in other/repo only
    await reg.push_blob("mine", b"something else, so the repository exists")
    resp = await put(reg, "mine", "latest", body, OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    await assert_not_stored(reg, "mine", "latest", digest_of(body))
    # The same manifest is fine where its blobs are.
    await reg.push_manifest("other/repo", "latest", body)


async def test_missing_blob_in_unknown_repository_creates_nothing(reg: Reg) -> None:
    body = await oci_image(reg, "source")
    resp = await put(reg, "fresh/repo", "latest", body, OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    resp = await reg.client.get(f"/v2/fresh/repo/manifests/{digest_of(body)}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
async def test_index_with_missing_child_is_manifest_blob_unknown(reg: Reg, media_type: str) -> None:
    child_type = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
    present = await oci_image(reg, "r", "present")
    await reg.push_manifest("r", digest_of(present), present)
    absent = await oci_image(reg, "r", "absent")  # blobs pushed, manifest never
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                platform_entry(present, child_type, "amd64"),
                platform_entry(absent, child_type, "arm64"),
            ],
        }
    )
    resp = await put(reg, "r", "multi", body, media_type)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    await assert_not_stored(reg, "r", "multi", digest_of(body))


async def test_index_child_in_another_repository_does_not_count(reg: Reg) -> None:
    child = await oci_image(reg, "elsewhere")
    await reg.push_manifest("elsewhere", digest_of(child), child)
    await reg.push_blob("r", EMPTY_JSON)
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [platform_entry(child, OCI_MANIFEST, "amd64")],
        }
    )
    resp = await put(reg, "r", "multi", body, OCI_INDEX)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    await assert_not_stored(reg, "r", "multi", digest_of(body))


async def test_foreign_layers_need_not_exist(reg: Reg) -> None:
    config = await descriptor(reg, "win", encode({"os": "windows"}), DOCKER_CONFIG)
    local = await descriptor(reg, "win", b"local layer" * 30, DOCKER_LAYER)
    foreign = {
        "mediaType": DOCKER_FOREIGN_LAYER,
        "digest": digest_of(b"windows base layer, not here"),
        "size": 123456789,
        "urls": ["https://mcr.example.com/v2/windows/blobs/base"],
    }
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": config,
            "layers": [foreign, local],
        }
    )
    digest = await reg.push_manifest("win", "ltsc", body, DOCKER_MANIFEST)
    assert digest == digest_of(body)
    await assert_served(reg, "win", "ltsc", body, DOCKER_MANIFEST)


# -- digests and sizes ---------------------------------------------------


async def test_put_by_digest_must_match_the_body(reg: Reg) -> None:
    body = await oci_image(reg, "r")
    wrong = digest_of(body + b" ")
    resp = await put(reg, "r", wrong, body, OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]
    await assert_not_stored(reg, "r", wrong, digest_of(body))


async def test_sha512_reference(reg: Reg) -> None:
    body = await oci_image(reg, "r")
    digest = "sha512:" + hashlib.sha512(body).hexdigest()
    resp = await put(reg, "r", digest, body, OCI_MANIFEST)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    assert location_path(resp) == f"/v2/r/manifests/{digest}"
    for method in ("GET", "HEAD"):
        resp = await reg.client.request(method, f"/v2/r/manifests/{digest}")
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        assert resp.headers["Content-Length"] == str(len(body))
        assert await resp.read() == (body if method == "GET" else b"")
    # A sha512 that does not match is refused like a sha256 one.
    wrong = "sha512:" + hashlib.sha512(body + b"\n").hexdigest()
    resp = await put(reg, "r", wrong, body, OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]


async def test_manifest_over_the_limit_is_413_and_not_stored(make_registry: AppFactory) -> None:
    reg = await make_registry(manifest_max_bytes=1024)
    image = json.loads(await oci_image(reg, "r"))
    image["annotations"] = {"padding": "p" * 2000}
    body = encode(image)
    assert len(body) > 1024
    resp = await put(reg, "r", "big", body, OCI_MANIFEST)
    assert resp.status == 413
    await assert_not_stored(reg, "r", "big", digest_of(body))
    resp = await put(reg, "r", digest_of(body), body, OCI_MANIFEST)
    assert resp.status == 413
    await assert_not_stored(reg, "r", digest_of(body))

    # Without a Content-Length the limit still holds.
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    resp = await reg.client.put(
        "/v2/r/manifests/big", data=chunks(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 413
    await assert_not_stored(reg, "r", "big")

    # Just under the limit is fine.
    image["annotations"] = {"padding": ""}
    small = encode(image)
    image["annotations"] = {"padding": "p" * (1024 - len(small))}
    exact = encode(image)
    assert len(exact) == 1024
    await reg.push_manifest("r", "exact", exact)
    await assert_served(reg, "r", "exact", exact, OCI_MANIFEST)


# -- tags ----------------------------------------------------------------


async def test_moving_a_tag(reg: Reg) -> None:
    old = await oci_image(reg, "r", "old")
    new = await oci_image(reg, "r", "new")
    old_digest = await reg.push_manifest("r", "latest", old)
    await assert_served(reg, "r", "latest", old, OCI_MANIFEST)
    new_digest = await reg.push_manifest("r", "latest", new)
    assert old_digest != new_digest
    await assert_served(reg, "r", "latest", new, OCI_MANIFEST)
    await assert_served(reg, "r", old_digest, old, OCI_MANIFEST)
    resp = await reg.client.get("/v2/r/tags/list")
    assert (await resp.json())["tags"] == ["latest"]


@pytest.mark.parametrize("tag", ["a" * 128, "_x", "V1.2.3-rc_4", "0", "UPPER"])
async def test_valid_tags(reg: Reg, tag: str) -> None:
    body = await oci_image(reg, "r")
    await reg.push_manifest("r", tag, body)
    await assert_served(reg, "r", tag, body, OCI_MANIFEST)


async def assert_refused_reference(
    reg: Reg, resp: ClientResponse, method: str, write_code: str
) -> None:
    """A reference that is neither a tag nor a digest: a manifest that cannot exist for GET
    (404 MANIFEST_UNKNOWN, the only error the spec lists there), a bad request for PUT/DELETE."""
    if method == "GET":
        assert resp.status == 404, await resp.text()
        assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]
    else:
        assert resp.status == 400, await resp.text()
        assert error_codes(await resp.json()) == [write_code]


@pytest.mark.parametrize("tag", ["-bad", ".bad", "a" * 129, "b@d", "tag+plus"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_invalid_tag(reg: Reg, tag: str, method: str) -> None:
    body = await oci_image(reg, "r")
    await reg.push_manifest("r", "ok", body)
    resp = await reg.client.request(
        method,
        f"/v2/r/manifests/{tag}",
        data=body if method == "PUT" else None,
        headers={"Content-Type": OCI_MANIFEST} if method == "PUT" else None,
    )
    await assert_refused_reference(reg, resp, method, "TAG_INVALID")
    resp = await reg.client.head(f"/v2/r/manifests/{tag}")
    assert resp.status == 404
    resp = await reg.client.get("/v2/r/tags/list")
    assert (await resp.json())["tags"] == ["ok"]


@pytest.mark.parametrize(
    "reference",
    [
        "sha256:abc",
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "md5:" + hashlib.md5(b"x").hexdigest(),
        "sha1:" + hashlib.sha1(b"x").hexdigest(),
        "sha256:" + hashlib.sha256(b"x").hexdigest().upper(),
        "SHA256:" + hashlib.sha256(b"x").hexdigest(),
        "sha512:" + "0" * 64,
        "sha256:" + "g" * 64,
        "sha256:",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_invalid_digest_reference(reg: Reg, reference: str, method: str) -> None:
    body = await oci_image(reg, "r")
    await reg.push_manifest("r", "ok", body)
    resp = await reg.client.request(
        method,
        f"/v2/r/manifests/{reference}",
        data=body if method == "PUT" else None,
        headers={"Content-Type": OCI_MANIFEST} if method == "PUT" else None,
    )
    await assert_refused_reference(reg, resp, method, "DIGEST_INVALID")
    resp = await reg.client.head(f"/v2/r/manifests/{reference}")
    assert resp.status == 404
    # In a repository that does not exist the answer is the same as for a valid reference.
    resp = await reg.client.get(f"/v2/nothere/manifests/{reference}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]


# -- unknown things -------------------------------------------------------


async def test_unknown_repository_is_name_unknown(reg: Reg) -> None:
    for reference in ("latest", digest_of(b"nothing")):
        resp = await reg.client.get(f"/v2/no/such/repo/manifests/{reference}")
        assert resp.status == 404
        assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]
        resp = await reg.client.head(f"/v2/no/such/repo/manifests/{reference}")
        assert resp.status == 404
        assert await resp.read() == b""


async def test_unknown_manifest_in_known_repository_is_manifest_unknown(reg: Reg) -> None:
    await reg.push_image("r", "latest")
    for reference in ("nope", digest_of(b"nothing"), "sha512:" + hashlib.sha512(b"").hexdigest()):
        resp = await reg.client.get(f"/v2/r/manifests/{reference}")
        assert resp.status == 404
        assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]
        resp = await reg.client.head(f"/v2/r/manifests/{reference}")
        assert resp.status == 404


async def test_invalid_repository_name(reg: Reg) -> None:
    for name in ("Upper/case", "a/-lead", "trailing-/x", "a__b__/c"):
        resp = await reg.client.get(f"/v2/{name}/manifests/latest")
        assert resp.status == 400, name
        assert error_codes(await resp.json()) == ["NAME_INVALID"], name


async def test_manifest_is_per_repository(reg: Reg) -> None:
    digest, _ = await reg.push_image("one", "latest")
    await reg.push_blob("two", b"exists")
    resp = await reg.client.get(f"/v2/two/manifests/{digest}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]


# -- deletion --------------------------------------------------------------


async def test_delete_by_digest_removes_the_manifest_and_its_tags(reg: Reg) -> None:
    digest, body = await reg.push_image("r", "v1")
    await reg.push_manifest("r", "v1-alias", body)
    keep, _ = await reg.push_image("r", "other", seed="keep")
    resp = await reg.client.delete(f"/v2/r/manifests/{digest}")
    assert resp.status == 202
    for reference in (digest, "v1", "v1-alias"):
        resp = await reg.client.get(f"/v2/r/manifests/{reference}")
        assert resp.status == 404, reference
        assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]
        resp = await reg.client.head(f"/v2/r/manifests/{reference}")
        assert resp.status == 404, reference
    resp = await reg.client.get("/v2/r/tags/list")
    assert (await resp.json())["tags"] == ["other"]
    resp = await reg.client.get(f"/v2/r/manifests/{keep}")
    assert resp.status == 200
    # Deleting again finds nothing.
    resp = await reg.client.delete(f"/v2/r/manifests/{digest}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]


async def test_delete_by_tag_keeps_the_manifest(reg: Reg) -> None:
    digest, body = await reg.push_image("r", "v1")
    await reg.push_manifest("r", "v1-alias", body)
    resp = await reg.client.delete("/v2/r/manifests/v1")
    assert resp.status == 202
    resp = await reg.client.get("/v2/r/manifests/v1")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]
    await assert_served(reg, "r", digest, body, OCI_MANIFEST)
    await assert_served(reg, "r", "v1-alias", body, OCI_MANIFEST)
    resp = await reg.client.get("/v2/r/tags/list")
    assert (await resp.json())["tags"] == ["v1-alias"]


async def test_delete_unknown_is_manifest_unknown(reg: Reg) -> None:
    await reg.push_image("r", "latest")
    for reference in ("nope", digest_of(b"nothing")):
        resp = await reg.client.delete(f"/v2/r/manifests/{reference}")
        assert resp.status == 404, reference
        assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]


async def test_delete_in_one_repository_leaves_another(reg: Reg) -> None:
    body = await oci_image(reg, "a")
    await oci_image(reg, "b")  # same blobs, same manifest bytes
    await reg.push_manifest("a", "t", body)
    await reg.push_manifest("b", "t", body)
    resp = await reg.client.delete(f"/v2/a/manifests/{digest_of(body)}")
    assert resp.status == 202
    await assert_not_stored(reg, "a", "t", digest_of(body))
    await assert_served(reg, "b", "t", body, OCI_MANIFEST)


async def test_deleted_manifest_can_be_pushed_again(reg: Reg) -> None:
    digest, body = await reg.push_image("r", "v1")
    resp = await reg.client.delete(f"/v2/r/manifests/{digest}")
    assert resp.status == 202
    assert await reg.push_manifest("r", "v1", body) == digest
    await assert_served(reg, "r", "v1", body, OCI_MANIFEST)


async def test_documents_that_are_both_image_and_index_are_refused(reg: Reg) -> None:
    """An image manifest with 'manifests', or an index with 'config'/'layers', is ambiguous."""
    image = json.loads(await oci_image(reg, "app"))
    for body, media_type in [
        ({**image, "manifests": []}, OCI_MANIFEST),
        ({**image, "mediaType": OCI_INDEX, "manifests": []}, OCI_INDEX),
        ({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []}, OCI_INDEX),
    ]:
        resp = await put(reg, "app", "mixed", encode(body), media_type)
        assert resp.status == 400, body
        assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]
    await assert_not_stored(reg, "app", "mixed")


async def test_descriptor_sizes_beyond_int64_are_refused(reg: Reg) -> None:
    image = json.loads(await oci_image(reg, "app"))
    image["layers"][0]["size"] = 10**30
    resp = await put(reg, "app", "huge", encode(image), OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]


async def test_field_names_inside_maps_and_unknown_fields_are_still_accepted(reg: Reg) -> None:
    """Case checks apply to the manifest's own fields, not to annotation keys or extensions."""
    await reg.push_blob("r", EMPTY_JSON)
    body = members(
        SCHEMA_2,
        OCI_TYPE,
        EMPTY_CONFIG,
        NO_LAYERS,
        '"annotations": {"LAYERS": "x", "Size": "1", "layers": "y"}',
        '"x-vendor": {"a": 1, "A": 2}',
    )
    await reg.push_manifest("r", "ok", body)
    await assert_served(reg, "r", "ok", body, OCI_MANIFEST)


@pytest.mark.parametrize("where", ["config", "layer"])
@pytest.mark.parametrize("delta", [1, -1])
async def test_descriptor_size_must_match_the_stored_blob(reg: Reg, where: str, delta: int) -> None:
    image = json.loads(await oci_image(reg, "r"))
    target = image["config"] if where == "config" else image["layers"][0]
    target["size"] += delta
    body = encode(image)
    resp = await put(reg, "r", "wrong-size", body, OCI_MANIFEST)
    assert resp.status == 400, await resp.text()
    payload = await resp.json()
    assert error_codes(payload) == ["MANIFEST_INVALID"]
    assert target["digest"] in payload["errors"][0]["message"]
    await assert_not_stored(reg, "r", "wrong-size", digest_of(body))


async def test_index_child_size_must_match_the_stored_manifest(reg: Reg) -> None:
    child = await oci_image(reg, "r")
    await reg.push_manifest("r", digest_of(child), child)
    entry = platform_entry(child, OCI_MANIFEST, "amd64")
    entry["size"] = len(child) + 7
    body = encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    resp = await put(reg, "r", "multi", body, OCI_INDEX)
    assert resp.status == 400, await resp.text()
    assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]
    await assert_not_stored(reg, "r", "multi", digest_of(body))


async def test_one_digest_with_two_sizes_is_refused(reg: Reg) -> None:
    image = json.loads(await oci_image(reg, "r"))
    image["layers"].append({**image["layers"][0], "size": image["layers"][0]["size"] + 1})
    resp = await put(reg, "r", "twice", encode(image), OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]


# -- blob deletion and the manifests that need the blob -------------------------


async def test_deleting_a_blob_a_manifest_references_is_refused(reg: Reg) -> None:
    digest, body = await reg.push_image("r", "v1")
    image = json.loads(body)
    await reg.push_blob("other", b"layer-x" * 100)  # the same bytes, linked elsewhere
    for blob in (image["layers"][0]["digest"], image["config"]["digest"]):
        resp = await reg.client.delete(f"/v2/r/blobs/{blob}")
        assert resp.status == 405, await resp.text()
        payload = await resp.json()
        assert error_codes(payload) == ["UNSUPPORTED"]
        assert digest in payload["errors"][0]["message"]
        assert payload["errors"][0]["detail"]["manifests"] == [digest]
        assert (await reg.client.get(f"/v2/r/blobs/{blob}")).status == 200
    await assert_served(reg, "r", "v1", body, OCI_MANIFEST)
    # A blob no manifest here references goes; once the manifest is gone, so may its blobs.
    loose = await reg.push_blob("r", b"not in any manifest")
    assert (await reg.client.delete(f"/v2/r/blobs/{loose}")).status == 202
    assert (await reg.client.delete(f"/v2/r/manifests/{digest}")).status == 202
    layer = image["layers"][0]["digest"]
    assert (await reg.client.delete(f"/v2/r/blobs/{layer}")).status == 202
    assert (await reg.client.get(f"/v2/other/blobs/{layer}")).status == 200


async def test_empty_bodies_are_answered_not_spun_on(servers: list[Server], tmp_path: Path) -> None:
    """A request with no body at all (aiohttp's empty stream reader) ends the body at once:
    a manifest PUT, a monolithic blob POST and a PATCH each get their answer, and the
    server goes on serving. (A separate process: a server spinning on the loop would
    otherwise stop this test's own clock too.)"""
    port = free_port()
    start_server(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")])
    digest = digest_of(b"")
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
        async with client.post("/v2/app/blobs/uploads/") as upload:
            location = upload.headers["Location"]
        for method, path in (
            ("PUT", "/v2/app/manifests/v1"),
            ("POST", f"/v2/app/blobs/uploads/?digest={digest}"),
            ("PATCH", location),
        ):
            async with asyncio.timeout(10):
                async with client.request(
                    method, path, data=b"", headers={"Content-Type": OCI_MANIFEST}
                ) as resp:
                    assert resp.status < 500, (method, resp.status)
        async with asyncio.timeout(10), client.get("/v2/") as resp:
            assert resp.status == 200
