"""Proxy namespaces behave like hosted ones where the issue says so: access control on the
routed namespace, management writes refused, HEAD without a download, listings from upstream,
and revalidation times that survive a restart. Real aioreg upstreams on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
from aiohttp import web

from aioreg.auth.accounts import Accounts
from aioreg.domain.reference import Digest
from tests.conftest import (
    EMPTY_JSON,
    OCI_INDEX,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    artifact_manifest,
    digest_of,
    error_codes,
)
from tests.test_auth import ADMIN_PASSWORD, basic
from tests.test_management import api
from tests.test_proxy import get_bytes, proxy_entry, push_multiarch, upstream_blob_gets


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait until an access-log line holds ``text`` (the upstream logs after it answered)."""
    for _ in range(500):
        if any(text in r.getMessage() for r in caplog.records if r.name == "aioreg.access"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no access-log line with {text!r}")


async def auth_proxy(make_registry: AppFactory, path: Path, upstream: Reg) -> Reg:
    """A proxy with auth on: ``hub`` (the proxy namespace) private to alice, and a public
    hosted ``library`` namespace owned by bob, whose name is what ``?ns=`` URLs carry."""
    proxy = await make_registry(
        path,
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD},
        proxy=[proxy_entry(upstream)],
    )
    accounts = Accounts(proxy.registry.index)
    await accounts.add_user("alice", "alice-pw")
    await accounts.add_user("bob", "bob-pw")
    await accounts.create_namespace("hub", "alice")
    await accounts.create_namespace("library", "bob", "public")
    return proxy


async def test_ns_pulls_are_authorised_on_the_routed_proxy_namespace(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, _ = await push_multiarch(upstream, "library/alpine", "3.20")
    proxy = await auth_proxy(make_registry, tmp_path / "px", upstream)
    host = f"127.0.0.1:{upstream.server.port}"
    path = f"/v2/library/alpine/manifests/3.20?ns={host}"
    status, body, _ = await get_bytes(proxy, path, headers=basic("alice", "alice-pw"))
    assert (status, body) == (200, index)
    # bob may pull the hosted library/* but not the proxy namespace the request goes to.
    async with proxy.client.get(path, headers=basic("bob", "bob-pw")) as resp:
        assert resp.status == 403
        assert error_codes(await resp.json()) == ["DENIED"]
    async with proxy.client.get(path) as resp:
        assert resp.status == 401
        assert 'scope="repository:hub/library/alpine:pull"' in resp.headers["WWW-Authenticate"]
    # A token for the routed repository is what lets a client through.
    params = {"service": "aioreg", "scope": "repository:hub/library/alpine:pull"}
    async with proxy.client.get("/token", params=params, headers=basic("alice", "alice-pw")) as r:
        token = (await r.json())["token"]
    status, body, _ = await get_bytes(proxy, path, headers={"Authorization": f"Bearer {token}"})
    assert (status, body) == (200, index)


async def test_management_writes_to_a_proxy_namespace_are_405_but_purges_work(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    """Copies into a proxy namespace and deprecations are refused like /v2 writes; deleting
    cached artifacts or repositories purges the cache (as Harbor allows), and the next pull
    fetches them again."""
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    await proxy.push_image("team/app", "v1")
    assert (await get_bytes(proxy, "/v2/hub/alpine/manifests/3.20"))[0] == 200
    copy = {"source": "team/app", "reference": "v1", "tag": "v1"}
    message = {"message": "old"}
    for method, path, kwargs in [
        ("POST", "/repositories/hub/alpine/-/copy", {"json": copy}),
        ("PUT", "/repositories/hub/alpine/-/deprecation", {"json": message}),
        ("DELETE", "/repositories/hub/alpine/-/deprecation", {}),
        ("PUT", "/repositories/hub/alpine/-/tags/3.20/deprecation", {"json": message}),
        ("DELETE", "/repositories/hub/alpine/-/tags/3.20/deprecation", {}),
    ]:
        assert error_codes(await api(proxy, method, path, 405, **kwargs)) == ["UNSUPPORTED"]
    # Copying out of the cache into a hosted namespace is a hosted write.
    out = {"source": "hub/alpine", "reference": "3.20", "tag": "pinned"}
    await api(proxy, "POST", "/repositories/team/alpine/-/copy", 201, json=out)
    # Purging: the artifact, then the whole repository; pulls fetch them again.
    child = json.loads(index)["manifests"][0]["digest"]
    assert (await get_bytes(proxy, f"/v2/hub/alpine/manifests/{child}"))[0] == 200
    await api(proxy, "DELETE", f"/repositories/hub/alpine/-/artifacts/{child}")
    assert await proxy.registry.index.manifests.by_digest("hub/alpine", child) is None
    status, body, _ = await get_bytes(proxy, f"/v2/hub/alpine/manifests/{child}")
    assert (status, body) == (200, children[0])
    await api(proxy, "DELETE", "/repositories/hub/alpine")
    assert await proxy.registry.index.manifests.by_tag("hub/alpine", "3.20") is None
    status, body, _ = await get_bytes(proxy, "/v2/hub/alpine/manifests/3.20")
    assert (status, body) == (200, index)


async def test_head_of_an_uncached_blob_asks_upstream_without_downloading(
    make_registry: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioreg.access")
    upstream = await make_registry(tmp_path / "up", server={"access_log": True})
    blob = os.urandom(200_000)
    digest = await upstream.push_blob("library/h", blob)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    async with proxy.client.head(f"/v2/hub/h/blobs/{digest}") as resp:
        assert resp.status == 200
        assert resp.content_length == len(blob)
        assert resp.headers["Docker-Content-Digest"] == digest
    await logged(caplog, f"HEAD /v2/library/h/blobs/{digest}")
    assert upstream_blob_gets(caplog, "library/h", digest) == []
    assert not proxy.registry.store.exists(Digest.parse(digest))
    async with proxy.client.head(f"/v2/hub/h/blobs/{digest_of(b'nowhere')}") as resp:
        assert resp.status == 404
    # A GET then fills the cache, and HEADs are answered from it.
    status, body, _ = await get_bytes(proxy, f"/v2/hub/h/blobs/{digest}")
    assert (status, body) == (200, blob)
    await logged(caplog, f"GET /v2/library/h/blobs/{digest}")
    assert len(upstream_blob_gets(caplog, "library/h", digest)) == 1
    await upstream.server.stop()
    async with proxy.client.head(f"/v2/hub/h/blobs/{digest}") as resp:
        assert resp.status == 200 and resp.content_length == len(blob)


async def test_tags_and_referrers_of_a_proxy_namespace_come_from_upstream(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    for tag in ("edge", "latest"):
        await upstream.push_manifest("library/alpine", tag, index, OCI_INDEX)
    await upstream.push_blob("library/alpine", EMPTY_JSON)
    child = (OCI_MANIFEST, digest_of(children[0]), len(children[0]))
    signature = artifact_manifest("application/vnd.example.sig", child)
    await upstream.push_manifest("library/alpine", digest_of(signature), signature)
    entries = [proxy_entry(upstream), proxy_entry(upstream, namespace="strict", serve_stale=False)]
    proxy = await make_registry(tmp_path / "px", proxy=entries)
    assert (await get_bytes(proxy, "/v2/hub/alpine/manifests/3.20"))[0] == 200
    assert (await get_bytes(proxy, "/v2/strict/alpine/manifests/3.20"))[0] == 200
    # Every upstream tag, a page at a time (the proxy holds only 3.20).
    async with proxy.client.get("/v2/hub/alpine/tags/list") as resp:
        assert resp.status == 200
        assert await resp.json() == {"name": "hub/alpine", "tags": ["3.20", "edge", "latest"]}
    async with proxy.client.get("/v2/hub/alpine/tags/list?n=2") as resp:
        assert (await resp.json())["tags"] == ["3.20", "edge"]
        link = resp.headers["Link"]
    assert link.startswith("</v2/hub/alpine/tags/list?") and "last=edge" in link
    async with proxy.client.get("/v2/hub/alpine/tags/list?n=2&last=edge") as resp:
        assert (await resp.json())["tags"] == ["latest"]
        assert "Link" not in resp.headers
    host = f"127.0.0.1:{upstream.server.port}"
    async with proxy.client.get(f"/v2/library/alpine/tags/list?n=1&ns={host}") as resp:
        assert await resp.json() == {"name": "library/alpine", "tags": ["3.20"]}
        assert f"ns={host}" in resp.headers["Link"].replace("%3A", ":")
    async with proxy.client.get("/v2/hub/nothere/tags/list") as resp:
        assert resp.status == 404
        assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]
    # Referrers of a manifest the proxy never fetched a referrer of.
    async with proxy.client.get(f"/v2/hub/alpine/referrers/{child[1]}") as resp:
        assert resp.status == 200
        found = (await resp.json())["manifests"]
    assert [(m["digest"], m["artifactType"]) for m in found] == [
        (digest_of(signature), "application/vnd.example.sig")
    ]
    # The upstream down: the cached tags (serve_stale), or a clear error without it.
    await upstream.server.stop()
    async with proxy.client.get("/v2/hub/alpine/tags/list") as resp:
        assert resp.status == 200 and "Warning" in resp.headers
        assert (await resp.json())["tags"] == ["3.20"]
    for uncached in ("/v2/strict/alpine/tags/list", "/v2/hub/other/tags/list"):
        async with proxy.client.get(uncached) as resp:
            assert resp.status == 503
            assert error_codes(await resp.json()) == ["UNAVAILABLE"]
    async with proxy.client.get(f"/v2/hub/alpine/referrers/{child[1]}") as resp:
        assert resp.status == 200 and (await resp.json())["manifests"] == []


async def test_tag_revalidation_times_survive_a_restart(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    """A tag checked upstream moments ago is not rechecked because the proxy restarted:
    with the upstream gone, a restarted proxy serves it as fresh (no stale Warning)."""
    upstream = await make_registry(tmp_path / "up")
    index, _ = await push_multiarch(upstream, "library/alpine", "3.20")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    assert (await get_bytes(proxy, "/v2/hub/alpine/manifests/3.20"))[0] == 200
    await proxy.server.stop()
    await upstream.server.stop()
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    status, body, headers = await get_bytes(proxy, "/v2/hub/alpine/manifests/3.20")
    assert (status, body) == (200, index)
    assert "Warning" not in headers
    # Past the interval it is rechecked: the upstream being down now shows.
    short = proxy_entry(upstream, revalidate_interval=0)
    await proxy.server.stop()
    proxy = await make_registry(tmp_path / "px", proxy=[short])
    status, body, headers = await get_bytes(proxy, "/v2/hub/alpine/manifests/3.20")
    assert (status, body) == (200, index)
    assert "Warning" in headers


async def test_head_and_get_of_an_upstream_manifest_honour_if_none_match(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, _ = await push_multiarch(upstream, "library/alpine", "3.20")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    etag = {"If-None-Match": f'"{digest_of(index)}"'}
    # The first request of all is a HEAD: the manifest comes from upstream for it.
    for method in ("HEAD", "GET", "HEAD"):
        async with proxy.client.request(
            method, "/v2/hub/alpine/manifests/3.20", headers=etag
        ) as resp:
            assert resp.status == 304, method
            assert resp.headers["Docker-Content-Digest"] == digest_of(index)
            assert await resp.read() == b""
    other = {"If-None-Match": f'"{digest_of(b"other")}"'}
    async with proxy.client.head("/v2/hub/alpine/manifests/3.20", headers=other) as resp:
        assert resp.status == 200 and resp.content_length == len(index)


async def test_names_outside_the_tag_grammar_are_refused_never_asked_or_listed(
    tmp_path: Path, make_registry: AppFactory
) -> None:
    """An upstream (a small aiohttp server standing for one) that lists tags no OCI registry
    may hold: they are left out of the listing, and a pull by one is refused without asking."""
    asked: list[str] = []

    async def tags(request: web.Request) -> web.Response:
        listed = ["1.0", "-bad", "a" * 129, "ok_2", "with space"]
        return web.json_response({"name": "library/x", "tags": listed})

    async def manifest(request: web.Request) -> web.Response:
        asked.append(request.match_info["reference"])
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/v2/{name:.+}/tags/list", tags)
    app.router.add_route("*", "/v2/{name:.+}/manifests/{reference}", manifest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        entry = {"namespace": "hub", "upstream": f"http://127.0.0.1:{port}"}
        proxy = await make_registry(tmp_path / "px", proxy=[entry])
        async with proxy.client.get("/v2/hub/x/tags/list") as resp:
            assert resp.status == 200
            assert (await resp.json())["tags"] == ["1.0", "ok_2"]
        for bad in ("-bad", "a" * 129, "with%20space"):
            async with proxy.client.get(f"/v2/hub/x/manifests/{bad}") as resp:
                assert resp.status == 404, bad
                body = await resp.json()
                assert error_codes(body) == ["MANIFEST_UNKNOWN"]
                assert "neither a valid tag" in body["errors"][0]["message"]
        assert asked == []
        assert await proxy.registry.index.repositories.id("hub/x") is None
    finally:
        await runner.cleanup()


async def test_a_blob_stored_only_for_another_namespace_is_not_served_unless_upstream_has_it(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    """Knowing a digest is no right to its bytes: a proxy links a blob stored for another
    namespace only once the upstream confirms it has that blob, so a private blob
    cannot be read (or its existence probed) through a proxy namespace."""
    upstream = await make_registry(tmp_path / "up")
    shared = b"shared layer " * 100
    await upstream.push_blob("library/app", shared)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    secret = b"private layer " * 100
    secret_digest = await proxy.push_blob("private/app", secret)
    shared_digest = await proxy.push_blob("private/app", shared)
    for method in ("HEAD", "GET"):
        async with proxy.client.request(method, f"/v2/hub/app/blobs/{secret_digest}") as resp:
            assert resp.status == 404, method
            if method == "GET":
                assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert await proxy.registry.index.blobs.in_repository("hub/app", secret_digest) is None
    # A blob the upstream has is linked from the local store, not downloaded again.
    status, body, _ = await get_bytes(proxy, f"/v2/hub/app/blobs/{shared_digest}")
    assert (status, body) == (200, shared)
    assert await proxy.registry.index.blobs.in_repository("hub/app", shared_digest) is not None
