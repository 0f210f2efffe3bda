"""Memory bounds: the read cache holds at most its byte budget, each manifest body once;
manifest PUTs in flight hold at most theirs."""

from __future__ import annotations

import gc
import json
import tracemalloc

from tests.conftest import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, AppFactory, Reg


async def _big_manifest(reg: Reg, name: str, pad: int, seed: int = 0) -> bytes:
    """A valid image manifest of about ``pad`` bytes (an annotation pads it)."""
    config = json.dumps({"os": "linux", "architecture": "amd64"}).encode()
    layer = b"layer" * 50
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": await reg.push_blob(name, config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": OCI_LAYER, "digest": await reg.push_blob(name, layer), "size": 250}
        ],
        "annotations": {"seed": str(seed), "pad": "p" * pad},
    }
    return json.dumps(body).encode()


async def test_read_cache_stays_within_its_byte_budget(make_registry: AppFactory) -> None:
    budget = 1 << 20
    reg = await make_registry(read_cache_bytes=budget)
    cache = reg.registry.index.cache
    digests = []
    for i in range(12):
        body = await _big_manifest(reg, "big", 300_000, seed=i)
        digests.append(await reg.push_manifest("big", f"t{i}", body))
    for _ in range(2):
        for i, digest in enumerate(digests):
            for ref in (f"t{i}", digest):
                resp = await reg.client.get(f"/v2/big/manifests/{ref}")
                assert resp.status == 200
                assert len(await resp.read()) > 300_000
                assert 0 < cache.bytes <= budget
    # The most recent manifests are served from the cache, the older ones evicted.
    assert cache.bytes > 2 * 300_000


async def test_a_manifest_body_is_cached_once_however_many_tags_name_it(
    make_registry: AppFactory,
) -> None:
    reg = await make_registry(read_cache_bytes=32 << 20)
    body = await _big_manifest(reg, "shared", 400_000)
    tags = [f"v{i}" for i in range(12)]
    for tag in tags:
        digest = await reg.push_manifest("shared", tag, body)
    await reg.client.get(f"/v2/shared/manifests/{digest}")  # warm up what is not a body
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for ref in (*tags, digest):
            resp = await reg.client.get(f"/v2/shared/manifests/{ref}")
            assert resp.status == 200
            assert await resp.read() == body
            del resp
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Thirteen cached lookups, one body: well under two copies of it.
    assert held < 2 * len(body), held
    assert reg.registry.index.cache.bytes < 2 * len(body)
