"""Pull-through proxy namespaces: an aioreg upstream on loopback, a proxying aioreg in front.

The upstream is a second real registry (another data dir); failures are real
ones too: the upstream stopped, rate limiting (its own limiter), and a raw TCP
server that sends half a blob and hangs up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from aioreg.config import ConfigError, load_config
from aioreg.domain.reference import Digest
from tests.conftest import (
    OCI_INDEX,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    digest_of,
    error_codes,
    image_manifest,
)
from tests.images import Image, multi_platform
from tests.test_clients import files_by_hash

PASSWORD = "upstream-secret-1"


def proxy_entry(upstream: Reg, **options: object) -> dict[str, object]:
    return {
        "namespace": "hub",
        "upstream": upstream.server.url,
        "upstream_prefix": "library",
        **options,
    }


async def push_platform(reg: Reg, name: str, seed: str, layer_size: int = 3000) -> bytes:
    """One image of a platform (config + a layer of ``layer_size`` bytes); its manifest."""
    config = json.dumps({"architecture": seed, "os": "linux"}).encode()
    layer = (seed.encode() * layer_size)[:layer_size]
    await reg.push_blob(name, config)
    await reg.push_blob(name, layer)
    # Unusual formatting: any re-encoding on the way would change the digest.
    manifest = json.dumps(json.loads(image_manifest(config, [layer])), indent=3).encode()
    await reg.push_manifest(name, digest_of(manifest), manifest)
    return manifest


async def push_multiarch(reg: Reg, name: str, tag: str) -> tuple[bytes, list[bytes]]:
    children = [await push_platform(reg, name, arch) for arch in ("amd64", "arm64")]
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest_of(child),
                    "size": len(child),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for child, arch in zip(children, ("amd64", "arm64"), strict=True)
            ],
        }
    ).encode()
    await reg.push_manifest(name, tag, index, OCI_INDEX)
    return index, children


async def get_bytes(reg: Reg, path: str, **kwargs: object) -> tuple[int, bytes, dict[str, str]]:
    async with reg.client.get(path, **kwargs) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def pull_all(proxy: Reg, name: str, tag: str, index: bytes, children: list[bytes]) -> None:
    """Pull index, children and every blob through ``proxy``; each byte for byte."""
    status, body, headers = await get_bytes(proxy, f"/v2/{name}/manifests/{tag}")
    assert (status, body) == (200, index)
    assert headers["Docker-Content-Digest"] == digest_of(index)
    for child in children:
        status, body, _ = await get_bytes(proxy, f"/v2/{name}/manifests/{digest_of(child)}")
        assert (status, body) == (200, child)
        parsed = json.loads(child)
        for descriptor in [parsed["config"], *parsed["layers"]]:
            status, body, _ = await get_bytes(proxy, f"/v2/{name}/blobs/{descriptor['digest']}")
            assert status == 200
            assert digest_of(body) == descriptor["digest"]


async def cached(proxy: Reg, name: str, digest: str) -> None:
    """Wait until the blob is committed in the proxy: it is verified after its last byte went out."""
    for _ in range(500):
        if await proxy.registry.index.blobs.in_repository(name, digest) is not None:
            break
        await asyncio.sleep(0.02)
    assert proxy.registry.store.exists(Digest.parse(digest))


def test_proxy_config_is_validated() -> None:
    good = {"namespace": "hub", "upstream": "https://registry-1.docker.io"}
    config = load_config(None, environ={}, overrides={"proxy": [good]})
    assert config.proxy[0].revalidate_interval == 300.0
    assert config.proxy[0].serve_stale is True
    assert config.proxy[0].upstream_host == "registry-1.docker.io"
    secret = {**good, "password": "hunter2"}
    assert "hunter2" not in repr(load_config(None, environ={}, overrides={"proxy": [secret]}))
    for bad in [
        {**good, "namespace": "Hub/x"},
        {**good, "upstream": "ftp://x"},
        {**good, "upstream": "https://me:secret@registry-1.docker.io"},
        {**good, "revalidate_interval": -1},
        {**good, "password": "a", "password_env": "B"},
        {"namespace": "hub"},
    ]:
        with pytest.raises(ConfigError):
            load_config(None, environ={}, overrides={"proxy": [bad]})
    with pytest.raises(ConfigError, match="twice"):
        load_config(None, environ={}, overrides={"proxy": [good, good]})


async def test_pull_through_is_byte_for_byte_and_served_from_cache(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    async with proxy.client.get("/v2/hub/alpine/manifests/nope") as resp:
        assert resp.status == 404
        assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]
    layer = json.loads(children[0])["layers"][0]["digest"]
    async with proxy.client.head("/v2/hub/alpine/manifests/3.20") as resp:
        assert resp.headers["Docker-Content-Digest"] == digest_of(index)
    # Stored in the proxy's own index, as any content: later pulls need no upstream.
    await upstream.server.stop()
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    status, body, _ = await get_bytes(
        proxy, f"/v2/hub/alpine/blobs/{layer}", headers={"Range": "bytes=10-19"}
    )
    assert status == 206 and len(body) == 10
    assert proxy.registry.store.exists(Digest.parse(layer))


async def test_bearer_token_upstream_and_containerd_ns_form(
    make_registry: AppFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upstream with token auth: the proxy follows the challenge to its realm."""
    caplog.set_level(logging.INFO, logger="aioreg.access")
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    await upstream.server.stop()
    upstream = await make_registry(
        tmp_path / "up",
        auth={"enabled": True, "admin_password": PASSWORD, "allow_basic": False},
        server={"access_log": True},
    )
    async with upstream.client.get("/v2/library/alpine/manifests/3.20") as resp:
        assert resp.status == 401  # anonymous pulls are refused upstream
    monkeypatch.setenv("PROXY_TEST_PASSWORD", PASSWORD)
    entry = proxy_entry(upstream, username="admin", password_env="PROXY_TEST_PASSWORD")
    proxy = await make_registry(tmp_path / "px", proxy=[entry])
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    # containerd's mirror form: the upstream host in ?ns= picks the proxy.
    host = f"127.0.0.1:{upstream.server.port}"
    status, body, headers = await get_bytes(proxy, f"/v2/library/alpine/manifests/3.20?ns={host}")
    assert (status, body) == (200, index)
    assert headers["OCI-Namespace"] == host
    layer = json.loads(children[1])["layers"][0]["digest"]
    status, body, _ = await get_bytes(proxy, f"/v2/library/alpine/blobs/{layer}?ns={host}")
    assert status == 200 and digest_of(body) == layer
    # Without ?ns= the same path is a hosted repository, which does not exist here.
    status, _, _ = await get_bytes(proxy, "/v2/library/alpine/manifests/3.20")
    assert status == 404
    # One token for the repository's pull scope, reused by every request.
    tokens = [
        r for r in caplog.records if r.name == "aioreg.access" and "/token?" in r.getMessage()
    ]
    assert len(tokens) == 1


async def test_concurrent_pulls_of_an_uncached_blob_go_upstream_once(
    make_registry: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await make_registry(tmp_path / "up", server={"access_log": True})
    blob = os.urandom(64 << 20)  # the size: 16 x 64 MiB to the clients, 64 MiB upstream
    digest = await upstream.push_blob("library/big", blob)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    caplog.set_level(logging.INFO, logger="aioreg.access")

    async def pull() -> bytes:
        async with proxy.client.get(f"/v2/hub/big/blobs/{digest}") as resp:
            assert resp.status == 200
            return await resp.read()

    bodies = await asyncio.gather(*(pull() for _ in range(16)))
    assert all(body == blob for body in bodies)
    upstream_gets = upstream_blob_gets(caplog, "library/big", digest)
    assert len(upstream_gets) == 1
    # Cached and indexed: HEAD and Range from the proxy alone.
    await cached(proxy, "hub/big", digest)
    await upstream.server.stop()
    async with proxy.client.head(f"/v2/hub/big/blobs/{digest}") as resp:
        assert resp.status == 200 and resp.content_length == len(blob)
    status, body, _ = await get_bytes(
        proxy, f"/v2/hub/big/blobs/{digest}", headers={"Range": "bytes=100-199"}
    )
    assert (status, body) == (206, blob[100:200])


async def test_range_and_head_of_an_uncached_blob(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    blob = os.urandom(300_000)
    digest = await upstream.push_blob("library/r", blob)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    status, body, _ = await get_bytes(
        proxy, f"/v2/hub/r/blobs/{digest}", headers={"Range": "bytes=1000-"}
    )
    assert (status, body) == (206, blob[1000:])
    other = await upstream.push_blob("library/r", blob[::-1])
    async with proxy.client.head(f"/v2/hub/r/blobs/{other}") as resp:
        assert resp.status == 200 and resp.content_length == len(blob)
    status, _, _ = await get_bytes(proxy, f"/v2/hub/r/blobs/{digest_of(b'nowhere')}")
    assert status == 404


async def test_upstream_down_serves_cached_tags_and_503_otherwise(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    await push_multiarch(upstream, "library/alpine", "edge")
    # Revalidate on every pull, so each one asks the upstream first. A second proxy of
    # the same upstream beside it, told not to serve stale content.
    entry = proxy_entry(upstream, revalidate_interval=0)
    strict = proxy_entry(upstream, namespace="strict", revalidate_interval=0, serve_stale=False)
    proxy = await make_registry(tmp_path / "px", proxy=[entry, strict])
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    await pull_all(proxy, "strict/alpine", "3.20", index, children)
    await upstream.server.stop()
    async with proxy.client.get("/v2/strict/alpine/manifests/3.20") as resp:
        assert resp.status == 503
        assert error_codes(await resp.json()) == ["UNAVAILABLE"]
    async with proxy.client.get("/v2/hub/alpine/manifests/3.20") as resp:
        assert resp.status == 200 and await resp.read() == index
        assert "served from cache" in resp.headers.get("Warning", "")
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    async with proxy.client.get("/v2/hub/alpine/manifests/edge") as resp:
        assert resp.status == 503
        assert error_codes(await resp.json()) == ["UNAVAILABLE"]
    async with proxy.client.get(f"/v2/hub/alpine/blobs/{digest_of(b'uncached')}") as resp:
        assert resp.status == 503
        assert error_codes(await resp.json()) == ["UNAVAILABLE"]


async def test_upstream_rate_limiting_serves_cached_copy(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    await push_multiarch(upstream, "library/alpine", "edge")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    # The same upstream data, now allowing one request and then 429 for ~17 minutes.
    await upstream.server.stop()
    upstream = await make_registry(tmp_path / "up", requests_per_second=0.001, request_burst=1)
    async with upstream.client.get("/v2/") as resp:
        assert resp.status == 200  # the burst's one request
    await proxy.server.stop()
    entry = proxy_entry(upstream, revalidate_interval=0)
    proxy = await make_registry(tmp_path / "px", proxy=[entry])
    async with proxy.client.get("/v2/hub/alpine/manifests/3.20") as resp:
        assert resp.status == 200 and await resp.read() == index
        assert "served from cache" in resp.headers.get("Warning", "")
    async with proxy.client.get("/v2/hub/alpine/manifests/edge") as resp:
        assert resp.status == 429
        assert error_codes(await resp.json()) == ["TOOMANYREQUESTS"]
        assert int(resp.headers["Retry-After"]) > 100  # the upstream's, passed on


async def half_blob_server(blob: bytes) -> asyncio.Server:
    """A real HTTP/1.1 server on loopback that sends a blob's headers, half its bytes, then hangs up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {len(blob)}\r\nDocker-Content-Digest: {digest_of(blob)}\r\n\r\n".encode()
            + blob[: len(blob) // 2]
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_upstream_killed_mid_blob_leaves_nothing_cached(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    blob = os.urandom(3 << 20)
    digest = digest_of(blob)
    broken = await half_blob_server(blob)
    port = broken.sockets[0].getsockname()[1]
    entry = {"namespace": "hub", "upstream": f"http://127.0.0.1:{port}"}
    proxy = await make_registry(tmp_path / "px", proxy=[entry])
    with pytest.raises(aiohttp.ClientPayloadError):
        async with proxy.client.get(f"/v2/hub/x/blobs/{digest}") as resp:
            assert resp.status == 200
            await resp.read()
    broken.close()
    await broken.wait_closed()
    uploads = proxy.data_dir / "uploads"
    for _ in range(200):  # the fill's clean-up runs after the client saw the end
        if not any(uploads.iterdir()):
            break
        await asyncio.sleep(0.02)
    assert not any(uploads.iterdir())
    assert not proxy.registry.store.exists(Digest.parse(digest))
    assert await proxy.registry.index.blobs.get(digest) is None
    # The real upstream back: the next pull fills the cache.
    await proxy.server.stop()
    upstream = await make_registry(tmp_path / "up")
    await upstream.push_blob("library/x", blob)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    status, body, _ = await get_bytes(proxy, f"/v2/hub/x/blobs/{digest}")
    assert status == 200 and body == blob
    await cached(proxy, "hub/x", digest)


async def test_writes_to_a_proxy_namespace_are_405(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    data = b"blob"
    manifest = b'{"schemaVersion": 2}'
    for method, path, kwargs in [
        ("POST", "/v2/hub/alpine/blobs/uploads/", {}),
        ("POST", f"/v2/hub/alpine/blobs/uploads/?digest={digest_of(data)}", {"data": data}),
        ("PUT", "/v2/hub/alpine/manifests/latest", {"data": manifest}),
        ("DELETE", "/v2/hub/alpine/manifests/latest", {}),
        ("DELETE", f"/v2/hub/alpine/blobs/{digest_of(data)}", {}),
        ("PATCH", f"/v2/hub/alpine/blobs/uploads/{'0' * 32}", {"data": data}),
    ]:
        async with proxy.client.request(method, path, **kwargs) as resp:
            assert resp.status == 405, (method, path)
            assert error_codes(await resp.json()) == ["UNSUPPORTED"]
    # Hosted namespaces beside it still take pushes.
    await proxy.push_image("team/app", "v1")


async def _multiarch_upstream(
    make_registry: AppFactory, tmp_path: Path
) -> tuple[Reg, str, bytes, list[Image]]:
    """An upstream aioreg holding a two-platform image (real layers) as library/multi:1.0."""
    digest, index, images = multi_platform(tmp_path / "src", "multi")
    upstream = await make_registry(tmp_path / "up")
    manifests = {image.manifest_digest for image in images} | {digest}
    for path in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        if f"sha256:{path.name}" not in manifests:
            await upstream.push_blob("library/multi", path.read_bytes())
    for image in images:
        await upstream.push_manifest("library/multi", image.manifest_digest, image.manifest)
    await upstream.push_manifest("library/multi", "1.0", index, OCI_INDEX)
    return upstream, digest, index, images


async def _run(*args: str) -> str:
    """A client command, without blocking the loop the in-process servers run on."""
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_skopeo_copies_a_multiarch_image_through_the_proxy(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (.ci/run installs it)")
    upstream, digest, _, _ = await _multiarch_upstream(make_registry, tmp_path)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    ref = f"docker://127.0.0.1:{proxy.server.port}/hub/multi:1.0"
    await _run(
        "skopeo", "copy", "--all", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'back'}:1.0"
    )
    assert files_by_hash(tmp_path / "back") == files_by_hash(tmp_path / "src")
    back_index = json.loads((tmp_path / "back" / "index.json").read_text())
    assert back_index["manifests"][0]["digest"] == digest


async def test_podman_pulls_a_multiarch_image_through_the_proxy(
    make_registry: AppFactory, tmp_path: Path, podman: list[str]
) -> None:
    upstream, digest, _, images = await _multiarch_upstream(make_registry, tmp_path)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    ref = f"127.0.0.1:{proxy.server.port}/hub/multi:1.0"
    await _run(*podman, "pull", "--tls-verify=false", "--arch", "amd64", ref)
    inspected = json.loads(await _run(*podman, "image", "inspect", ref))[0]
    amd64 = next(image for image in images if image.platform.get("architecture") == "amd64")
    # The image podman stored is the upstream's amd64 image: same config, same layers.
    assert "sha256:" + inspected["Id"] == digest_of(amd64.config)
    assert inspected["RootFS"]["Layers"] == amd64.diff_ids
    assert any(d.endswith(digest) for d in inspected["RepoDigests"]), inspected["RepoDigests"]


async def test_tags_revalidate_after_the_interval_and_gc_keeps_cached_content(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    first, first_children = await push_multiarch(upstream, "library/app", "stable")
    fresh = await make_registry(tmp_path / "px1", proxy=[proxy_entry(upstream)])
    eager = await make_registry(
        tmp_path / "px2",
        proxy=[proxy_entry(upstream, revalidate_interval=0)],
        gc={"grace_period": 0},
    )
    for proxy in (fresh, eager):
        await pull_all(proxy, "hub/app", "stable", first, first_children)
    # The tag moves upstream to an image with other platforms' bytes.
    children = [await push_platform(upstream, "library/app", s, 5000) for s in ("mips", "s390x")]
    moved = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": digest_of(c), "size": len(c)}
                for c in children
            ],
        }
    ).encode()
    await upstream.push_manifest("library/app", "stable", moved, OCI_INDEX)
    status, body, _ = await get_bytes(fresh, "/v2/hub/app/manifests/stable")
    assert (status, body) == (200, first)  # within the interval: the cached tag
    await pull_all(eager, "hub/app", "stable", moved, children)
    # GC on the proxy (no grace) keeps what the cached manifests reference.
    async with eager.client.post("/api/v1/gc") as resp:
        assert resp.status == 200, await resp.text()
    await upstream.server.stop()
    await pull_all(eager, "hub/app", f"{digest_of(moved)}", moved, children)
    for child in first_children:
        layer = json.loads(child)["layers"][0]["digest"]
        status, body, _ = await get_bytes(eager, f"/v2/hub/app/blobs/{layer}")
        assert status == 200 and digest_of(body) == layer


async def test_a_client_leaving_mid_blob_does_not_stop_the_fill(
    make_registry: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await make_registry(tmp_path / "up", server={"access_log": True})
    blob = os.urandom(6 << 20)
    digest = await upstream.push_blob("library/big", blob)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    caplog.set_level(logging.INFO, logger="aioreg.access")
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{proxy.server.url}/v2/hub/big/blobs/{digest}")
        assert resp.status == 200
        await resp.content.readexactly(1000)
        resp.close()  # drops the connection mid-body
    await cached(proxy, "hub/big", digest)
    status, body, _ = await get_bytes(proxy, f"/v2/hub/big/blobs/{digest}")
    assert status == 200 and body == blob
    assert len(upstream_blob_gets(caplog, "library/big", digest)) == 1


async def test_staggered_pulls_of_small_blobs_go_upstream_once(
    make_registry: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A transfer may end while a later puller is still looking in the cache: that puller
    finds the cached blob, it does not fetch it again."""
    upstream = await make_registry(tmp_path / "up", server={"access_log": True})
    blobs = [os.urandom(2000 + i) for i in range(8)]
    digests = [await upstream.push_blob("library/small", blob) for blob in blobs]
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    caplog.set_level(logging.INFO, logger="aioreg.access")

    async def pull(digest: str, delay: float) -> bytes:
        await asyncio.sleep(delay)
        async with proxy.client.get(f"/v2/hub/small/blobs/{digest}") as resp:
            assert resp.status == 200
            return await resp.read()

    for blob, digest in zip(blobs, digests, strict=True):
        bodies = await asyncio.gather(*(pull(digest, (i % 8) * 0.001) for i in range(32)))
        assert all(body == blob for body in bodies)
    assert [len(upstream_blob_gets(caplog, "library/small", d)) for d in digests] == [1] * 8


def upstream_blob_gets(caplog: pytest.LogCaptureFixture, repository: str, digest: str) -> list[str]:
    """The upstream's access-log lines of GETs of one blob."""
    wanted = f"GET /v2/{repository}/blobs/{digest}"
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "aioreg.access" and wanted in r.getMessage()
    ]


async def test_basic_auth_upstream_with_password_file(
    tmp_path: Path, make_registry: AppFactory
) -> None:
    """An upstream asking for Basic (a small aiohttp server standing for one) gets the
    credentials from the password file, and only after its challenge."""
    blob = os.urandom(70_000)
    expected = aiohttp.encode_basic_auth("puller", PASSWORD)
    seen: list[str | None] = []

    async def blob_handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="up"'})
        return web.Response(body=blob, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        secret = tmp_path / "secret"
        secret.write_text(PASSWORD + "\n")
        entry = {
            "namespace": "hub",
            "upstream": f"http://127.0.0.1:{port}",
            "username": "puller",
            "password_file": str(secret),
        }
        proxy = await make_registry(tmp_path / "px", proxy=[entry])
        status, body, _ = await get_bytes(proxy, f"/v2/hub/a/blobs/{digest_of(blob)}")
        assert status == 200 and body == blob
        # Wrong bytes for a digest: the body ends short of its last byte, nothing is cached.
        with pytest.raises(aiohttp.ClientPayloadError):
            await get_bytes(proxy, f"/v2/hub/b/blobs/{digest_of(blob[1:])}")
        assert not proxy.registry.store.exists(Digest.parse(digest_of(blob[1:])))
        assert seen == [None, expected, expected]
    finally:
        await runner.cleanup()
