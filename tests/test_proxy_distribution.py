"""CNCF Distribution (Debian's ``docker-registry``) and an aioreg as two upstreams of one
aioreg proxy at the same time.

Distribution runs as the benchmark suite starts it (``benchmarks.servers.Distribution``:
filesystem storage in a temp dir, a temp config, loopback). Skipped when
``docker-registry`` is not installed, except in CI (``CI`` set), where it must be.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.client import Client, new_session, sha256_digest
from benchmarks.servers import Distribution, Running
from tests.conftest import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, AppFactory, Reg
from tests.test_proxy import cached

DOCKER_REGISTRY = shutil.which("docker-registry")

pytestmark = pytest.mark.skipif(
    DOCKER_REGISTRY is None and not os.environ.get("CI"),
    reason="docker-registry (CNCF Distribution) is not installed",
)

REPO = "app/web"  # the same name in both upstreams: the namespaces must not mix them


class Image:
    """What was pushed to one upstream: a two-platform index, its children and their blobs."""

    def __init__(self, seed: str) -> None:
        self.blobs: dict[str, bytes] = {}
        self.children: list[bytes] = []
        entries = []
        for arch in ("amd64", "arm64"):
            config = json.dumps({"architecture": arch, "os": "linux", "seed": seed}).encode()
            layer = os.urandom(300_000)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": self._blob(OCI_CONFIG, config),
                    "layers": [self._blob(OCI_LAYER, layer)],
                },
                indent=3,  # unusual formatting: any re-encoding would change the digest
            ).encode()
            self.children.append(manifest)
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256_digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                }
            )
        self.index = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, indent=1
        ).encode()

    def _blob(self, media_type: str, data: bytes) -> dict[str, object]:
        self.blobs[sha256_digest(data)] = data
        return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}

    async def push(self, url: str, tag: str) -> None:
        """Over HTTP, as a client would (POST + PUT where ``POST ?digest=`` does not finish)."""
        async with new_session() as session:
            client = Client(url, session)
            for digest, data in self.blobs.items():
                await client.push_monolithic(REPO, digest, len(data), data)
            for body, media_type, reference in (
                *((child, OCI_MANIFEST, sha256_digest(child)) for child in self.children),
                (self.index, OCI_INDEX, tag),
            ):
                async with session.put(
                    f"{url}/v2/{REPO}/manifests/{reference}",
                    data=body,
                    headers={"Content-Type": media_type},
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    assert resp.headers["Docker-Content-Digest"] == sha256_digest(body)


@pytest.fixture
async def distribution(tmp_path: Path) -> AsyncIterator[Running]:
    assert DOCKER_REGISTRY is not None, "CI must have docker-registry (see .ci/run)"
    server = await asyncio.to_thread(Distribution(DOCKER_REGISTRY).start, tmp_path)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def get(reg: Reg, path: str) -> tuple[int, bytes, str | None]:
    async with reg.client.get(path) as resp:
        return resp.status, await resp.read(), resp.headers.get("Docker-Content-Digest")


async def pull_all(proxy: Reg, namespace: str, tag: str, image: Image) -> None:
    """The index by tag, each child by digest and every blob, byte for byte, digests as pushed."""
    name = f"{namespace}/{REPO}"
    assert await get(proxy, f"/v2/{name}/manifests/{tag}") == (
        200,
        image.index,
        sha256_digest(image.index),
    )
    for child in image.children:
        digest = sha256_digest(child)
        assert await get(proxy, f"/v2/{name}/manifests/{digest}") == (200, child, digest)
    for digest, data in image.blobs.items():
        status, body, header = await get(proxy, f"/v2/{name}/blobs/{digest}")
        assert (status, len(body), header) == (200, len(data), digest)
        assert body == data


async def test_distribution_and_aioreg_upstreams_side_by_side(
    make_registry: AppFactory, distribution: Running, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    from_dist, from_aioreg = Image("distribution"), Image("aioreg")
    await from_dist.push(distribution.url, "v1")
    await from_aioreg.push(upstream.server.url, "v1")
    proxy = await make_registry(
        tmp_path / "px",
        proxy=[
            {"namespace": "dist", "upstream": distribution.url},
            {"namespace": "hub", "upstream": upstream.server.url},
        ],
    )
    await asyncio.gather(
        pull_all(proxy, "dist", "v1", from_dist), pull_all(proxy, "hub", "v1", from_aioreg)
    )
    # Cached: with Distribution gone, its content still comes byte for byte by digest
    # (blobs are committed once verified, just after their last byte went out).
    await asyncio.to_thread(distribution.stop)
    for digest in from_dist.blobs:
        await cached(proxy, f"dist/{REPO}", digest)
    for child in from_dist.children:
        digest = sha256_digest(child)
        assert await get(proxy, f"/v2/dist/{REPO}/manifests/{digest}") == (200, child, digest)
    for digest, data in from_dist.blobs.items():
        assert await get(proxy, f"/v2/dist/{REPO}/blobs/{digest}") == (200, data, digest)
