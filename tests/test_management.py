"""The management API and lifecycle: listings, deletes, copies, usage, events, search, OpenAPI."""

from __future__ import annotations

import json
import os

from aioreg.api.management.routes import OPENAPI_DOCUMENT, PREFIX
from tests.conftest import (
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    artifact_manifest,
    digest_of,
    error_codes,
)


async def push(
    reg: Reg, repo: str, tag: str | None, layers: list[bytes], arch: str = "amd64"
) -> tuple[str, bytes, int]:
    """An image with the given layers; returns (digest, manifest, config+layers bytes)."""
    config = json.dumps({"architecture": arch, "os": "linux", "layers": len(layers)}).encode()
    descriptors = []
    for layer in layers:
        descriptors.append(
            {"mediaType": OCI_LAYER, "digest": await reg.push_blob(repo, layer), "size": len(layer)}
        )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": await reg.push_blob(repo, config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    digest = await reg.push_manifest(repo, tag or digest_of(manifest), manifest)
    return digest, manifest, len(config) + sum(len(layer) for layer in layers)


async def api(reg: Reg, method: str, path: str, status: int = 200, **kwargs: object) -> dict:
    resp = await reg.client.request(method, PREFIX + path, **kwargs)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_listings_with_counts_sizes_and_activity(reg: Reg) -> None:
    shared = os.urandom(5000)
    d1, m1, b1 = await push(reg, "team/app", "v1", [shared, b"a" * 100])
    d2, m2, b2 = await push(reg, "team/app", "v2", [shared, b"b" * 200])
    await push(reg, "team/tool", "latest", [b"c" * 300])
    await push(reg, "other/x", "1", [b"d" * 10])
    assert (await api(reg, "GET", "/namespaces"))["namespaces"] == ["other", "team"]
    page = await api(reg, "GET", "/namespaces/team/repositories?sort=size&order=desc")
    assert [r["name"] for r in page["repositories"]] == ["team/app", "team/tool"]
    app = page["repositories"][0]
    assert app["tag_count"] == 2 and app["artifact_count"] == 2
    config1 = json.dumps({"architecture": "amd64", "os": "linux", "layers": 2}).encode()
    distinct = len(shared) + 100 + 200 + len(config1) + len(m1) + len(m2)
    assert app["size"] == distinct
    assert app["last_push_at"] is not None and app["last_pull_at"] is None
    page = await api(reg, "GET", "/namespaces/team/repositories?limit=1")
    assert page["total"] == 2 and page["next_offset"] == 1 and len(page["repositories"]) == 1
    await reg.client.get("/v2/team/app/manifests/v1")
    detail = await api(reg, "GET", "/repositories/team/app")
    assert detail["last_pull_at"] is not None
    tags = {t["name"]: t for t in detail["tags"]}
    assert tags["v1"]["digest"] == d1 and tags["v1"]["size"] == len(m1) + b1
    assert tags["v1"]["last_pulled_at"] is not None and tags["v2"]["last_pulled_at"] is None
    artifacts = {a["digest"]: a for a in detail["artifacts"]}
    assert artifacts[d2]["tags"] == ["v2"] and artifacts[d2]["size"] == len(m2) + b2
    layers = await api(reg, "GET", f"/repositories/team/app/-/artifacts/{d1}/layers")
    assert [layer["size"] for layer in layers["layers"]] == [len(shared), 100]
    resp = await reg.client.get(PREFIX + "/repositories/nope/app")
    assert resp.status == 404 and error_codes(await resp.json()) == ["NAME_UNKNOWN"]


async def test_index_platforms_and_referrers_in_detail(reg: Reg) -> None:
    amd, amd_body, _ = await push(reg, "multi/app", None, [b"amd"], "amd64")
    arm, arm_body, _ = await push(reg, "multi/app", None, [b"arm"], "arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": amd,
                    "size": len(amd_body),
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": arm,
                    "size": len(arm_body),
                    "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                },
            ],
        }
    ).encode()
    index_digest = await reg.push_manifest("multi/app", "latest", index, OCI_INDEX)
    await reg.push_blob("multi/app", EMPTY_JSON)
    sbom = artifact_manifest("application/spdx+json", (OCI_INDEX, index_digest, len(index)))
    sbom_digest = await reg.push_manifest("multi/app", digest_of(sbom), sbom)
    detail = await api(reg, "GET", "/repositories/multi/app")
    artifacts = {a["digest"]: a for a in detail["artifacts"]}
    assert artifacts[index_digest]["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    assert artifacts[index_digest]["referrers"] == [sbom_digest]
    assert artifacts[index_digest]["size"] > artifacts[amd]["size"] + artifacts[arm]["size"]
    assert artifacts[sbom_digest]["artifact_type"] == "application/spdx+json"
    assert artifacts[sbom_digest]["subject"] == index_digest


async def test_deletes(reg: Reg) -> None:
    d1, _, _ = await push(reg, "team/app", "v1", [b"one"])
    d2, _, _ = await push(reg, "team/app", "v2", [b"two"])
    await reg.client.put(
        "/v2/team/app/manifests/also-v1",
        data=(await (await reg.client.get(f"/v2/team/app/manifests/{d1}")).read()),
        headers={"Content-Type": OCI_MANIFEST},
    )
    deleted = await api(reg, "DELETE", f"/repositories/team/app/-/artifacts/{d1}")
    assert sorted(deleted["deleted"]) == sorted([d1, "v1", "also-v1"])
    assert (await reg.client.get("/v2/team/app/manifests/v1")).status == 404
    await api(reg, "DELETE", f"/repositories/team/app/-/delete-request?digest={d2}")
    assert (await reg.client.get(f"/v2/team/app/manifests/{d2}")).status == 404
    await push(reg, "team/other", "x", [b"x"])
    await api(reg, "DELETE", "/repositories/team/other")
    assert (await reg.client.get("/v2/team/other/tags/list")).status == 404
    await push(reg, "gone/a", "1", [b"a"])
    await push(reg, "gone/b/c", "1", [b"b"])
    await push(reg, "gonebutnot/a", "1", [b"n"])
    deleted = await api(reg, "DELETE", "/namespaces/gone")
    assert deleted["deleted"] == ["gone/a", "gone/b/c"]
    assert (await reg.client.get("/v2/gonebutnot/a/tags/list")).status == 200
    events = await api(reg, "GET", "/events?limit=50")
    kinds = [(e["kind"], e["repository"]) for e in events["events"]]
    assert ("delete", "gone/a") in kinds and ("delete", "team/other") in kinds


async def test_copy_and_retag_move_no_bytes(reg: Reg) -> None:
    digest, manifest, _ = await push(reg, "src/app", "v1", [os.urandom(20_000)])
    files_before = sorted(p.name for p in (reg.data_dir / "blobs").rglob("*") if p.is_file())
    copied = await api(
        reg,
        "POST",
        "/repositories/dst/app/-/copy",
        201,
        json={"source": "src/app", "reference": "v1", "tag": "prod"},
    )
    assert copied["digest"] == digest
    await api(
        reg,
        "POST",
        "/repositories/src/app/-/copy",
        201,
        json={"source": "src/app", "reference": digest, "tag": "stable"},
    )
    assert (
        sorted(p.name for p in (reg.data_dir / "blobs").rglob("*") if p.is_file()) == files_before
    )
    resp = await reg.client.get("/v2/dst/app/manifests/prod")
    assert await resp.read() == manifest
    layer = json.loads(manifest)["layers"][0]["digest"]
    assert (await reg.client.get(f"/v2/dst/app/blobs/{layer}")).status == 200
    assert (await (await reg.client.get("/v2/src/app/tags/list")).json())["tags"] == [
        "stable",
        "v1",
    ]
    resp = await reg.client.post(
        PREFIX + "/repositories/dst/app/-/copy", json={"source": "src/app", "reference": "nope"}
    )
    assert resp.status == 404


async def test_usage_is_exact_through_pushes_deletes_and_gc(make_registry: AppFactory) -> None:
    reg = await make_registry(gc={"grace_period": 0})
    shared = os.urandom(10_000)
    own_a, own_b = os.urandom(1000), os.urandom(3000)
    _, ma, ba = await push(reg, "team/a", "v1", [shared, own_a])
    _, mb, bb = await push(reg, "team/b", "v1", [shared, own_b], arch="arm64")
    report = await api(reg, "GET", "/usage")
    repos = {u["name"]: u for u in report["repositories"]}
    assert repos["team/a"]["logical"] == len(ma) + ba
    assert repos["team/b"]["physical"] == len(mb) + bb
    (team,) = report["namespaces"]
    blobs_on_disk = sum(
        p.stat().st_size for p in (reg.data_dir / "blobs").rglob("*") if p.is_file()
    )
    assert team["logical"] == len(ma) + ba + len(mb) + bb
    assert team["physical"] == blobs_on_disk + len(ma) + len(mb)
    assert report["total"]["physical"] == blobs_on_disk + len(ma) + len(mb)
    # Shared bytes count once physically, once per artifact logically.
    assert team["logical"] - team["physical"] == len(shared)
    await api(reg, "DELETE", "/repositories/team/b")
    await api(reg, "POST", "/gc")
    blobs_on_disk = sum(
        p.stat().st_size for p in (reg.data_dir / "blobs").rglob("*") if p.is_file()
    )
    report = await api(reg, "GET", "/usage")
    assert report["total"]["physical"] == blobs_on_disk + len(ma)
    assert blobs_on_disk == ba
    assert report["namespaces"][0]["physical"] == len(ma) + ba


async def test_search(reg: Reg) -> None:
    digest, _, _ = await push(reg, "frontend/web", "release-1.2", [b"w"])
    await push(reg, "backend/api", "v1", [b"a"])
    hits = (await api(reg, "GET", "/search?q=front"))["results"]
    assert {"repository": "frontend/web", "tag": None, "digest": None} in hits
    hits = (await api(reg, "GET", "/search?q=release-1"))["results"]
    assert hits == [{"repository": "frontend/web", "tag": "release-1.2", "digest": digest}]
    hits = (await api(reg, "GET", f"/search?q={digest[7:20]}"))["results"]
    assert {"repository": "frontend/web", "tag": None, "digest": digest} in hits
    resp = await reg.client.get(PREFIX + "/search")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["BAD_REQUEST"]


async def test_openapi_document_matches_the_routes(reg: Reg) -> None:
    resp = await reg.client.get(PREFIX + "/openapi.json")
    document = await resp.json()
    assert document == json.loads(OPENAPI_DOCUMENT)
    assert document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    routed = set()
    for route in reg.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter", "")
        if path.startswith(PREFIX):
            routed.add((route.method, path))
    assert documented == routed
    schemas = document["components"]["schemas"]
    for ops in document["paths"].values():
        for op in ops.values():
            for response in op["responses"].values():
                for body in response["content"].values():  # JSON, or an archive's bytes
                    ref = body["schema"].get("$ref")
                    if ref:
                        assert ref.rsplit("/", 1)[1] in schemas
    assert set(schemas["RepositoryDetail"]["properties"]) >= {
        "tags",
        "artifacts",
        "size",
        "last_pull_at",
    }
