"""What a proxy namespace's cache holds: its size cap (least recently pulled content goes
first), quotas, usage, last-pull times and retention, as for hosted content.

Real aioreg upstreams on loopback; the proxy's state is read back over /api/v1,
the CLI, and its index and blob store on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from aioreg.auth.accounts import Accounts
from aioreg.domain.management import Management
from aioreg.domain.reference import Digest
from aioreg.units import format_size
from tests.conftest import AppFactory, Reg, digest_of
from tests.test_management import api
from tests.test_proxy import cached, get_bytes, proxy_entry, push_platform

LAYER = 100_000


async def push_image(upstream: Reg, tag: str, seed: str, size: int = LAYER) -> bytes:
    """``library/app:<tag>``: a config and one layer of ``size`` bytes; its manifest."""
    manifest = await push_platform(upstream, "library/app", seed, size)
    await upstream.push_manifest("library/app", tag, manifest)
    return manifest


def blobs_of(manifest: bytes) -> list[str]:
    parsed = json.loads(manifest)
    return [d["digest"] for d in [parsed["config"], *parsed["layers"]]]


async def pull_image(proxy: Reg, tag: str, manifest: bytes) -> None:
    """Pull ``hub/app:<tag>`` and its blobs through the proxy, byte for byte, until cached."""
    status, body, _ = await get_bytes(proxy, f"/v2/hub/app/manifests/{tag}")
    assert (status, body) == (200, manifest)
    for digest in blobs_of(manifest):
        status, body, _ = await get_bytes(proxy, f"/v2/hub/app/blobs/{digest}")
        assert status == 200 and digest_of(body) == digest
        await cached(proxy, "hub/app", digest)


async def physical(proxy: Reg, namespace: str = "hub") -> int:
    report = await api(proxy, "GET", f"/usage?namespace={namespace}")
    return int(report["namespaces"][0]["physical"]) if report["namespaces"] else 0


async def gc(proxy: Reg) -> None:
    await api(proxy, "POST", "/gc")


def stored(proxy: Reg, digest: str) -> bool:
    return proxy.registry.store.exists(Digest.parse(digest))


async def test_filling_past_the_cap_evicts_the_least_recently_pulled_image(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    images = {tag: await push_image(upstream, tag, tag) for tag in ("a", "b", "c")}
    cap = 2 * LAYER + 20_000  # two images and their configs and manifests, not three
    proxy = await make_registry(
        tmp_path / "px", proxy=[proxy_entry(upstream, max_bytes=cap)], gc={"grace_period": 0}
    )
    await pull_image(proxy, "a", images["a"])
    await pull_image(proxy, "b", images["b"])
    await pull_image(proxy, "a", images["a"])  # a is now the more recently pulled
    assert await physical(proxy) <= cap
    await pull_image(proxy, "c", images["c"])
    manifests = proxy.registry.index.manifests
    assert await manifests.by_tag("hub/app", "b") is None  # least recently pulled: gone
    assert await manifests.by_tag("hub/app", "a") is not None
    assert await manifests.by_tag("hub/app", "c") is not None
    assert await physical(proxy) <= cap
    await gc(proxy)
    assert await physical(proxy) <= cap
    assert not any(stored(proxy, d) for d in blobs_of(images["b"]))
    assert all(stored(proxy, d) for d in blobs_of(images["a"]) + blobs_of(images["c"]))
    # What stayed is served with the upstream gone; the eviction is in the activity log.
    await upstream.server.stop()
    await pull_image(proxy, "a", images["a"])
    await pull_image(proxy, "c", images["c"])
    events = await api(proxy, "GET", "/events?repository=hub/app")
    evictions = [e for e in events["events"] if e["actor"] == "proxy-cache"]
    assert [e["digest"] for e in evictions] == [digest_of(images["b"])]


async def test_a_blob_bigger_than_the_cap_streams_and_is_not_cached(
    make_registry: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await make_registry(tmp_path / "up")
    blob = os.urandom(3 * LAYER)
    digest = await upstream.push_blob("library/big", blob)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream, max_bytes=LAYER)])
    caplog.set_level(logging.WARNING, logger="aioreg.proxy")

    async def pull(headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        status, body, _ = await get_bytes(proxy, f"/v2/hub/big/blobs/{digest}", headers=headers)
        return status, body

    assert await asyncio.gather(pull(), pull()) == [(200, blob), (200, blob)]
    assert await pull() == (200, blob)
    assert await pull({"Range": "bytes=1000-1999"}) == (206, blob[1000:2000])
    async with proxy.client.head(f"/v2/hub/big/blobs/{digest}") as resp:
        assert resp.status == 200 and resp.content_length == len(blob)
    uploads = proxy.data_dir / "uploads"
    deadline = time.monotonic() + 10
    while any(uploads.iterdir()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the last transfer drops its temp file after its readers
    assert not any(uploads.iterdir())
    assert not stored(proxy, digest)
    assert await proxy.registry.index.blobs.get(digest) is None
    assert await physical(proxy) == 0
    warnings = [r for r in caplog.records if "over proxy hub's cap" in r.getMessage()]
    assert len(warnings) == 1


async def test_usage_counts_proxy_filled_blobs_over_api_and_cli(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    manifest = await push_image(upstream, "1", "usage")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    await pull_image(proxy, "1", manifest)
    sizes = [d["size"] for d in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]]
    report = await api(proxy, "GET", "/usage?namespace=hub")
    [repository] = report["repositories"]
    assert repository["name"] == "hub/app"
    assert repository["physical"] == sum(sizes) + len(manifest)
    assert repository["logical"] == sum(sizes) + len(manifest)
    assert report["namespaces"][0]["physical"] == sum(sizes) + len(manifest)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioreg",
        "usage",
        "hub",
        "--data",
        str(proxy.data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    line = next(x for x in out.decode().splitlines() if "hub/app" in x)
    assert format_size(sum(sizes) + len(manifest)) in line


async def test_a_quota_on_the_proxy_namespace_streams_without_caching(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    """Past its namespace's quota a pull still gets every byte; nothing more is cached."""
    upstream = await make_registry(tmp_path / "up")
    small = await push_image(upstream, "small", "s", 1000)
    big = await push_image(upstream, "big", "b", 5 * LAYER)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    await Accounts(proxy.registry.index).create_namespace("hub", None)
    await api(proxy, "PUT", "/namespaces/hub/quota", json={"quota_bytes": LAYER})
    await pull_image(proxy, "small", small)  # fits: cached
    assert all(stored(proxy, d) for d in blobs_of(small))
    layer = json.loads(big)["layers"][0]["digest"]
    status, body, _ = await get_bytes(proxy, "/v2/hub/app/manifests/big")
    assert (status, body) == (200, big)
    for _ in range(2):
        status, body, _ = await get_bytes(proxy, f"/v2/hub/app/blobs/{layer}")
        assert status == 200 and digest_of(body) == layer
    assert not stored(proxy, layer)
    assert await proxy.registry.index.blobs.get(layer) is None
    assert await proxy.registry.index.usage.namespace("hub") <= LAYER


async def test_pulls_served_from_the_cache_update_last_pull_times(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    manifest = await push_image(upstream, "1", "pulled", 1000)
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    await pull_image(proxy, "1", manifest)
    activity = proxy.registry.index.activity
    _, first = await activity.pull_times("hub/app")
    assert first is not None
    await upstream.server.stop()  # what follows can only come from the cache
    await pull_image(proxy, "1", manifest)
    _, second = await activity.pull_times("hub/app")
    assert second is not None and second > first
    [tag] = await proxy.registry.index.listings.tag_infos("hub/app")
    assert tag.last_pull_at == second


async def test_retention_by_last_pull_expires_cached_content_and_gc_frees_it(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    old = await push_image(upstream, "old", "old", 2000)
    kept = await push_image(upstream, "latest", "kept", 2000)
    proxy = await make_registry(
        tmp_path / "px",
        proxy=[proxy_entry(upstream)],
        gc={"grace_period": 0, "delete_untagged": True},
    )
    await pull_image(proxy, "old", old)
    await pull_image(proxy, "latest", kept)
    await api(proxy, "PUT", "/retention/policies/hub", json={"unpulled_days": 1})
    retention = Management(proxy.registry).retention
    removed = await retention.apply(time.time() + 2 * 86400)  # two days without a pull
    assert [(r.repository, r.tag) for r in removed] == [("hub/app", "old")]
    await gc(proxy)
    assert not any(stored(proxy, d) for d in blobs_of(old))
    assert all(stored(proxy, d) for d in blobs_of(kept))  # "latest" is protected
    sizes = [d["size"] for d in [json.loads(kept)["config"], *json.loads(kept)["layers"]]]
    assert await physical(proxy) == sum(sizes) + len(kept)


async def test_concurrent_fills_never_take_the_cache_over_its_cap(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    """Two images whose layers each fit the cap but not together, their layers pulled at
    once: both clients get every byte, and one layer stays cached. Which one depends on
    timing: a transfer in progress is never evicted (the other layer is then streamed
    uncached); one already over may be, as the least recently pulled."""
    upstream = await make_registry(tmp_path / "up")
    images = [await push_image(upstream, tag, tag, 60_000) for tag in ("x", "y")]
    proxy = await make_registry(
        tmp_path / "px",
        proxy=[proxy_entry(upstream, max_bytes=100_000)],
        gc={"grace_period": 0},
    )
    for tag, manifest in zip(("x", "y"), images, strict=True):
        status, body, _ = await get_bytes(proxy, f"/v2/hub/app/manifests/{tag}")
        assert (status, body) == (200, manifest)
    layers = [json.loads(m)["layers"][0]["digest"] for m in images]

    async def pull(digest: str) -> str:
        status, body, _ = await get_bytes(proxy, f"/v2/hub/app/blobs/{digest}")
        assert status == 200
        return digest_of(body)

    assert await asyncio.gather(*(pull(d) for d in layers)) == layers
    uploads = proxy.data_dir / "uploads"
    deadline = time.monotonic() + 10
    while any(uploads.iterdir()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # transfers end after their last byte went out
    assert await physical(proxy) <= 100_000
    await gc(proxy)
    assert sorted(stored(proxy, d) for d in layers) == [False, True]
    assert await physical(proxy) <= 100_000
