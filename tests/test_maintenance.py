"""``aioreg scrub`` and ``aioreg check`` on real data dirs with real damage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import xxhash

from aioreg.domain.check import check
from aioreg.domain.reference import Digest
from aioreg.domain.scrub import scrub
from tests.conftest import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    digest_of,
    error_codes,
)
from tests.process import Server, free_port, start


def blob_path(reg: Reg, digest: str) -> Path:
    return reg.registry.store.path(Digest.parse(digest))


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


async def test_scrub_quarantines_corrupt_and_missing_blobs(reg: Reg) -> None:
    good = await reg.push_blob("app", os.urandom(50_000))
    bad = await reg.push_blob("app", os.urandom(50_000))
    gone = await reg.push_blob("app", os.urandom(1000))
    flip_a_byte(blob_path(reg, bad))  # same size: only a hash notices
    blob_path(reg, gone).unlink()
    seen: list[int] = []
    report = await scrub(reg.registry.index, reg.registry.store, on_blob=seen.append)
    assert report.checked == 3 == len(seen)
    assert report.corrupt == [bad]
    assert report.missing == [gone]
    assert (reg.data_dir / "quarantine" / bad.replace(":", "-")).exists()
    for digest in (bad, gone):
        resp = await reg.client.head(f"/v2/app/blobs/{digest}")
        assert resp.status == 404
        resp = await reg.client.get(f"/v2/app/blobs/{digest}")
        assert error_codes(await resp.json()) == ["BLOB_UNKNOWN"]
    assert (await reg.client.get(f"/v2/app/blobs/{good}")).status == 200
    # A second scrub finds nothing new: quarantined blobs are out of the walk.
    again = await scrub(reg.registry.index, reg.registry.store, full=True)
    assert again.checked == 1 and not again.corrupt and not again.missing


async def test_full_scrub_detects_what_fast_scrub_cannot_see(reg: Reg) -> None:
    digest = await reg.push_blob("app", b"original bytes")
    # Rewrite the recorded xxh3 as if the bytes had been stored wrong from the start.
    path = blob_path(reg, digest)
    path.write_bytes(b"tampered bytes")
    await reg.registry.index.db._writer.execute(  # type: ignore[union-attr]
        "UPDATE blobs SET xxh3_128 = ? WHERE digest = ?",
        (xxhash.xxh3_128(b"tampered bytes").hexdigest(), digest),
    )
    fast = await scrub(reg.registry.index, reg.registry.store)
    assert fast.corrupt == []
    full = await scrub(reg.registry.index, reg.registry.store, full=True)
    assert full.corrupt == [digest]


async def test_quarantined_blob_heals_on_re_push_and_blocks_manifests(reg: Reg) -> None:
    config = json.dumps({"os": "linux", "architecture": "amd64"}).encode()
    layer = os.urandom(20_000)
    config_digest = await reg.push_blob("app", config)
    layer_digest = await reg.push_blob("app", layer)
    flip_a_byte(blob_path(reg, layer_digest))
    await scrub(reg.registry.index, reg.registry.store)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    resp = await reg.client.put(
        "/v2/app/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    # Cross-repository mount must not resurrect it either.
    resp = await reg.client.post(f"/v2/other/blobs/uploads/?mount={layer_digest}&from=app")
    assert resp.status == 202
    await reg.push_blob("app", layer)
    resp = await reg.client.get(f"/v2/app/blobs/{layer_digest}")
    assert resp.status == 200
    assert await resp.read() == layer
    await reg.push_manifest("app", "v1", manifest)


async def test_check_repairs_what_is_safe(reg: Reg) -> None:
    kept = await reg.push_blob("app", b"kept")
    lost = await reg.push_blob("app", b"lost file")
    blob_path(reg, lost).unlink()
    orphan = digest_of(b"orphan on disk")
    orphan_path = blob_path(reg, orphan)
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(b"orphan on disk")
    stray_upload = reg.data_dir / "uploads" / ("0" * 32)
    stray_upload.write_bytes(b"half an upload")
    os.utime(stray_upload, (0, 0))
    resp = await reg.client.post("/v2/app/blobs/uploads/")
    session = resp.headers["Location"].rsplit("/", 1)[1]
    await reg.client.patch(
        resp.headers["Location"], data=b"12345", headers={"Content-Range": "0-4"}
    )
    (reg.data_dir / "uploads" / session).unlink()

    dry = await check(reg.registry.index, reg.registry.store, grace=0, repair=False)
    assert len(dry.actions) == 4, dry.actions
    assert orphan_path.exists() and stray_upload.exists()

    report = await check(reg.registry.index, reg.registry.store, grace=0)
    text = "\n".join(report.actions)
    assert f"blob {lost}: file missing, quarantined" in text
    assert f"{orphan_path}: no index row, removed" in text
    assert "upload file without a session, removed" in text
    assert f"upload {session}: file missing" in text
    assert not orphan_path.exists() and not stray_upload.exists()
    assert (await reg.client.get(resp.headers["Location"])).status == 404
    assert (await reg.client.head(f"/v2/app/blobs/{lost}")).status == 404
    assert (await reg.client.get(f"/v2/app/blobs/{kept}")).status == 200
    assert (await check(reg.registry.index, reg.registry.store, grace=0)).actions == []


async def test_cli_scrub_and_check(make_registry: AppFactory, tmp_path: Path) -> None:
    data = tmp_path / "cli"
    reg = await make_registry(data)
    digest = await reg.push_blob("app", os.urandom(10_000))
    await reg.push_blob("app", b"fine")
    await reg.client.close()

    def aioreg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aioreg", *args, "--data", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = aioreg("scrub")
    assert result.returncode == 0, result.stderr
    assert "checked 2 blobs" in result.stdout
    assert "scrub (xxh3)" in result.stderr
    flip_a_byte(data / "blobs" / "sha256" / digest[7:9] / digest[7:])
    result = aioreg("scrub", "--full")
    assert result.returncode == 1
    assert f"corrupt, quarantined: {digest}" in result.stdout
    result = aioreg("check")
    assert result.returncode == 0
    assert "index and disk agree" in result.stdout


async def test_check_next_to_a_serving_registry_loses_no_acknowledged_blob(
    tmp_path: Path, servers: list[Server]
) -> None:
    """``aioreg check`` (its own process, no grace period) runs again and again beside a
    real ``aioreg serve`` under push load; every blob answered 201 must pull back exact."""
    data = tmp_path / "d"
    port = free_port()
    start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(data)])
    acked: dict[str, bytes] = {}
    checks_done = asyncio.Event()

    async def pusher(http: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not checks_done.is_set() and n < 5000:
            blob = f"{worker}-{n}-".encode() + os.urandom(64)
            digest = digest_of(blob)
            resp = await http.post(f"/v2/load/blobs/uploads/?digest={digest}", data=blob)
            assert resp.status == 201, await resp.text()
            acked[digest] = blob
            n += 1

    async def checker() -> None:
        try:
            for _ in range(3):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "aioreg", "check", "--data", str(data),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, "AIOREG_GC_GRACE_PERIOD": "0"},
                )  # fmt: skip
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 0, out.decode()
        finally:
            checks_done.set()

    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        await asyncio.gather(checker(), *(pusher(http, w) for w in range(3)))
        assert len(acked) > 50, "the push load never got going"
        lost = []
        for digest, blob in acked.items():
            resp = await http.get(f"/v2/load/blobs/{digest}")
            if resp.status != 200 or await resp.read() != blob:
                lost.append(digest)
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged blobs lost"
