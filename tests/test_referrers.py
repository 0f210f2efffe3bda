"""OCI 1.1 referrers: the ``subject`` field, ``OCI-Subject`` and the referrers API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import ClientResponse

from tests.conftest import OCI_INDEX, OCI_MANIFEST, Reg, digest_of, error_codes

EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
SIGNATURE = "application/vnd.example.signature.v1"
SBOM = "application/vnd.example.sbom.v1+json"
CUSTOM_CONFIG = "application/vnd.example.config.v1+json"


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


def subject_of(body: bytes, media_type: str = OCI_MANIFEST) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest_of(body), "size": len(body)}


async def put(reg: Reg, name: str, reference: str, body: bytes, media_type: str) -> ClientResponse:
    return await reg.client.put(
        f"/v2/{name}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
    )


async def artifact(
    reg: Reg,
    name: str,
    subject: dict[str, object] | None,
    artifact_type: str | None = SIGNATURE,
    payload: bytes = b"payload",
    annotations: dict[str, str] | None = None,
    config_type: str = EMPTY,
    config_data: bytes = EMPTY_JSON,
) -> bytes:
    """An artifact manifest (blobs pushed to ``name``), not yet pushed itself."""
    config_digest = await reg.push_blob(name, config_data)
    layer_digest = await reg.push_blob(name, payload)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config_data)},
        "layers": [
            {"mediaType": "application/octet-stream", "digest": layer_digest, "size": len(payload)}
        ],
    }
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if subject is not None:
        doc["subject"] = subject
    if annotations is not None:
        doc["annotations"] = annotations
    return encode(doc)


async def push_referrer(reg: Reg, name: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
    resp = await put(reg, name, digest_of(body), body, media_type)
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"]


async def referrers(reg: Reg, name: str, digest: str, query: str = "") -> ClientResponse:
    resp = await reg.client.get(f"/v2/{name}/referrers/{digest}{query}")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].split(";")[0] == OCI_INDEX
    return resp


async def referrer_list(reg: Reg, name: str, digest: str, query: str = "") -> list[dict[str, Any]]:
    resp = await referrers(reg, name, digest, query)
    index = await resp.json(content_type=None)
    assert index["schemaVersion"] == 2
    assert index.get("mediaType", OCI_INDEX) == OCI_INDEX
    return list(index["manifests"])


def by_type(artifact_type: str) -> str:
    return "?" + urlencode({"artifactType": artifact_type})


def by_digest(descriptors: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    result = {d["digest"]: d for d in descriptors}
    assert len(result) == len(descriptors), f"duplicate referrers: {descriptors}"
    return result


# -- OCI-Subject ----------------------------------------------------------


async def test_put_with_subject_answers_oci_subject(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    body = await artifact(reg, "r", subject_of(subject_body))
    resp = await put(reg, "r", digest_of(body), body, OCI_MANIFEST)
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == subject_digest
    # By tag too.
    other = await artifact(reg, "r", subject_of(subject_body), payload=b"tagged")
    resp = await put(reg, "r", "sig", other, OCI_MANIFEST)
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == subject_digest


async def test_put_without_subject_has_no_oci_subject(reg: Reg) -> None:
    resp = await put(reg, "r", "plain", await artifact(reg, "r", None), OCI_MANIFEST)
    assert resp.status == 201
    assert "OCI-Subject" not in resp.headers


async def test_subject_need_not_exist_yet(reg: Reg) -> None:
    future = encode({"not": "pushed yet"})
    body = await artifact(reg, "r", subject_of(future), annotations={"k": "v"})
    resp = await put(reg, "r", digest_of(body), body, OCI_MANIFEST)
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == digest_of(future)
    listed = await referrer_list(reg, "r", digest_of(future))
    assert [d["digest"] for d in listed] == [digest_of(body)]
    # The subject's own manifest is still unknown.
    resp = await reg.client.get(f"/v2/r/manifests/{digest_of(future)}")
    assert resp.status == 404


async def test_index_with_subject_answers_oci_subject(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    child_digest, child = await reg.push_image("r", None, seed="child")
    index = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child_digest, "size": len(child)}],
            "subject": subject_of(subject_body),
        }
    )
    resp = await put(reg, "r", digest_of(index), index, OCI_INDEX)
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == subject_digest


# -- the referrers list ----------------------------------------------------


async def test_referrers_lists_each_descriptor(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    subject = subject_of(subject_body)
    signature = await artifact(
        reg, "r", subject, SIGNATURE, b"sig", annotations={"org.example.signer": "alice"}
    )
    sbom = await artifact(reg, "r", subject, SBOM, b"sbom", annotations={"a": "1", "b": "2"})
    # No artifactType: the config's media type stands in for it.
    configured = await artifact(
        reg,
        "r",
        subject,
        None,
        b"custom",
        config_type=CUSTOM_CONFIG,
        config_data=b'{"custom": true}',
    )
    unrelated = await artifact(reg, "r", None, SIGNATURE, b"no subject")
    for body in (signature, sbom, configured, unrelated):
        await push_referrer(reg, "r", body)

    listed = by_digest(await referrer_list(reg, "r", subject_digest))
    assert set(listed) == {digest_of(signature), digest_of(sbom), digest_of(configured)}
    assert listed[digest_of(signature)] == {
        "mediaType": OCI_MANIFEST,
        "digest": digest_of(signature),
        "size": len(signature),
        "artifactType": SIGNATURE,
        "annotations": {"org.example.signer": "alice"},
    }
    assert listed[digest_of(sbom)] == {
        "mediaType": OCI_MANIFEST,
        "digest": digest_of(sbom),
        "size": len(sbom),
        "artifactType": SBOM,
        "annotations": {"a": "1", "b": "2"},
    }
    configured_entry = listed[digest_of(configured)]
    assert configured_entry["artifactType"] == CUSTOM_CONFIG
    assert configured_entry["size"] == len(configured)
    assert not configured_entry.get("annotations")


async def test_empty_config_without_artifact_type_reports_the_empty_type(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    body = await artifact(reg, "r", subject_of(subject_body), artifact_type=None)
    await push_referrer(reg, "r", body)
    [entry] = await referrer_list(reg, "r", subject_digest)
    assert entry["artifactType"] == EMPTY


async def test_index_referrer(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    child_digest, child = await reg.push_image("r", None, seed="child")
    children = [{"mediaType": OCI_MANIFEST, "digest": child_digest, "size": len(child)}]
    typed = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle",
            "manifests": children,
            "subject": subject_of(subject_body),
            "annotations": {"bundle": "yes"},
        }
    )
    untyped = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children,
            "subject": subject_of(subject_body),
        }
    )
    await push_referrer(reg, "r", typed, OCI_INDEX)
    await push_referrer(reg, "r", untyped, OCI_INDEX)
    listed = by_digest(await referrer_list(reg, "r", subject_digest))
    assert listed[digest_of(typed)] == {
        "mediaType": OCI_INDEX,
        "digest": digest_of(typed),
        "size": len(typed),
        "artifactType": "application/vnd.example.bundle",
        "annotations": {"bundle": "yes"},
    }
    assert listed[digest_of(untyped)] == {
        "mediaType": OCI_INDEX,
        "digest": digest_of(untyped),
        "size": len(untyped),
    }


async def test_artifact_type_filter(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    subject = subject_of(subject_body)
    sig1 = await artifact(reg, "r", subject, SIGNATURE, b"sig1")
    sig2 = await artifact(reg, "r", subject, SIGNATURE, b"sig2")
    sbom = await artifact(reg, "r", subject, SBOM, b"sbom")
    for body in (sig1, sig2, sbom):
        await push_referrer(reg, "r", body)

    resp = await referrers(reg, "r", subject_digest, by_type(SIGNATURE))
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    listed = (await resp.json(content_type=None))["manifests"]
    assert {d["digest"] for d in listed} == {digest_of(sig1), digest_of(sig2)}
    assert all(d["artifactType"] == SIGNATURE for d in listed)

    resp = await referrers(reg, "r", subject_digest, by_type(SBOM))
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    listed = (await resp.json(content_type=None))["manifests"]
    assert [d["digest"] for d in listed] == [digest_of(sbom)]

    resp = await referrers(reg, "r", subject_digest, by_type("application/vnd.none"))
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert (await resp.json(content_type=None))["manifests"] == []

    resp = await referrers(reg, "r", subject_digest)
    assert "OCI-Filters-Applied" not in resp.headers
    assert len((await resp.json(content_type=None))["manifests"]) == 3


async def test_filter_matches_the_config_type_standing_in(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    body = await artifact(
        reg,
        "r",
        subject_of(subject_body),
        None,
        config_type=CUSTOM_CONFIG,
        config_data=b'{"c": 1}',
    )
    await push_referrer(reg, "r", body)
    listed = await referrer_list(reg, "r", subject_digest, by_type(CUSTOM_CONFIG))
    assert [d["digest"] for d in listed] == [digest_of(body)]


async def test_unknown_subject_and_unknown_repository_are_empty(reg: Reg) -> None:
    await reg.push_image("r", "latest")
    unknown = digest_of(b"nobody refers to this")
    assert await referrer_list(reg, "r", unknown) == []
    assert await referrer_list(reg, "no/such/repo", unknown) == []
    # The subject exists but nothing refers to it.
    digest, _ = await reg.push_image("r", "other", seed="lonely")
    assert await referrer_list(reg, "r", digest) == []


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:abc",
        "sha256:" + "A" * 64,
        "md5:" + "0" * 32,
        "sha512:" + "0" * 64,
        "latest",
        "sha256:",
    ],
)
async def test_invalid_digest_is_digest_invalid(reg: Reg, digest: str) -> None:
    await reg.push_image("r", "latest")
    for name in ("r", "no/such/repo"):
        resp = await reg.client.get(f"/v2/{name}/referrers/{digest}")
        assert resp.status == 400, await resp.text()
        assert error_codes(await resp.json()) == ["DIGEST_INVALID"]


async def test_invalid_repository_name(reg: Reg) -> None:
    resp = await reg.client.get(f"/v2/Bad/referrers/{digest_of(b'x')}")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["NAME_INVALID"]


async def test_deleting_a_referrer_removes_it(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    keep = await artifact(reg, "r", subject_of(subject_body), payload=b"keep")
    drop = await artifact(reg, "r", subject_of(subject_body), payload=b"drop")
    await push_referrer(reg, "r", keep)
    await push_referrer(reg, "r", drop)
    assert len(await referrer_list(reg, "r", subject_digest)) == 2
    resp = await reg.client.delete(f"/v2/r/manifests/{digest_of(drop)}")
    assert resp.status == 202
    listed = await referrer_list(reg, "r", subject_digest)
    assert [d["digest"] for d in listed] == [digest_of(keep)]


async def test_untagging_a_referrer_keeps_it(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    body = await artifact(reg, "r", subject_of(subject_body))
    resp = await put(reg, "r", "sig-tag", body, OCI_MANIFEST)
    assert resp.status == 201
    resp = await reg.client.delete("/v2/r/manifests/sig-tag")
    assert resp.status == 202
    listed = await referrer_list(reg, "r", subject_digest)
    assert [d["digest"] for d in listed] == [digest_of(body)]


async def test_referrer_survives_deleting_its_subject(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    body = await artifact(reg, "r", subject_of(subject_body))
    await push_referrer(reg, "r", body)
    resp = await reg.client.delete(f"/v2/r/manifests/{subject_digest}")
    assert resp.status == 202
    resp = await reg.client.get(f"/v2/r/manifests/{digest_of(body)}")
    assert resp.status == 200
    listed = await referrer_list(reg, "r", subject_digest)
    assert [d["digest"] for d in listed] == [digest_of(body)]


async def test_referrers_are_per_repository(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("a", "latest")
    await reg.push_image("b", "latest")  # same subject bytes in b
    in_a = await artifact(reg, "a", subject_of(subject_body), payload=b"in a")
    in_b = await artifact(reg, "b", subject_of(subject_body), payload=b"in b")
    await push_referrer(reg, "a", in_a)
    await push_referrer(reg, "b", in_b)
    assert [d["digest"] for d in await referrer_list(reg, "a", subject_digest)] == [digest_of(in_a)]
    assert [d["digest"] for d in await referrer_list(reg, "b", subject_digest)] == [digest_of(in_b)]
    assert await referrer_list(reg, "c", subject_digest) == []


async def test_same_referrer_pushed_twice_is_listed_once(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    body = await artifact(reg, "r", subject_of(subject_body))
    await push_referrer(reg, "r", body)
    resp = await put(reg, "r", "again", body, OCI_MANIFEST)
    assert resp.status == 201
    listed = await referrer_list(reg, "r", subject_digest)
    assert [d["digest"] for d in listed] == [digest_of(body)]


async def test_referrer_with_missing_blob_is_not_listed(reg: Reg) -> None:
    subject_digest, subject_body = await reg.push_image("r", "latest")
    body = await artifact(reg, "elsewhere", subject_of(subject_body))
    resp = await put(reg, "r", digest_of(body), body, OCI_MANIFEST)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    assert await referrer_list(reg, "r", subject_digest) == []
