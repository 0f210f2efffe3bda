"""Crash safety: SIGKILL ``aioreg serve`` mid-traffic, restart, and prove nothing acknowledged was lost.

Each round drives concurrent monolithic and chunked pushes, manifest puts, tag
deletes and online garbage collection against a real server process, kills it with SIGKILL at a random
moment, restarts it on the same data dir and checks:

- every blob and manifest acknowledged with 201 pulls back byte for byte;
- every file under a final blob name hashes to that name;
- no index row points at a missing file (``check`` finds nothing to quarantine);
- an interrupted chunked upload reports a ``Range`` the client can resume from
  (what it acknowledged, or that plus the chunk in flight) or is cleanly unknown,
  and resuming from it completes the blob.

Rounds: ``AIOREG_CRASH_ROUNDS`` (CI runs a short version; ``make reliability``
runs 50). Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from aioreg.domain.check import check
from aioreg.index import Index
from aioreg.storage import BlobStore
from tests.conftest import OCI_MANIFEST, digest_of, image_manifest
from tests.process import Server, free_port, start

ROUNDS = int(os.environ.get("AIOREG_CRASH_ROUNDS", "6"))
CLIENTS = 6
GRACE = 2.0  # the server's GC grace period in this test
ENV = {"AIOREG_SERVER_ACCESS_LOG": "false", "AIOREG_GC_GRACE_PERIOD": str(GRACE)}
MAX_ROUND_SECONDS = 2.0


@dataclass
class Upload:
    """A chunked upload the client had going when the server died."""

    repo: str
    location: str
    data: bytes
    acked: int
    in_flight: int = 0


@dataclass
class Ledger:
    """What the server acknowledged, and what was still in the air when it died."""

    blobs: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    acked_at: dict[str, float] = field(default_factory=dict)  # when each blob was acknowledged
    referenced: dict[str, str] = field(default_factory=dict)  # blob digest -> a repository using it
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    deleted_tags: set[tuple[str, str]] = field(default_factory=set)
    deleting_tags: set[tuple[str, str]] = field(default_factory=set)
    uploads: list[Upload] = field(default_factory=list)
    acknowledged: int = 0
    gc_runs: int = 0
    gc_blobs: int = 0


def random_blob(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([1, 100, 10_000, 300_000, 1_500_000]))


async def push_monolithic(
    http: aiohttp.ClientSession, ledger: Ledger, repo: str, data: bytes
) -> str:
    digest = digest_of(data)
    resp = await http.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201, await resp.text()
    ledger.blobs[digest] = (repo, data)
    ledger.acked_at[digest] = time.time()
    ledger.acknowledged += 1
    return digest


async def push_chunked(
    http: aiohttp.ClientSession, ledger: Ledger, repo: str, data: bytes, rng: random.Random
) -> str:
    resp = await http.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202
    upload = Upload(repo, resp.headers["Location"], data, 0)
    ledger.uploads.append(upload)
    step = max(1, len(data) // rng.randint(2, 5))
    while upload.acked < len(data):
        chunk = data[upload.acked : upload.acked + step]
        upload.in_flight = len(chunk)
        resp = await http.patch(
            upload.location,
            data=chunk,
            headers={"Content-Range": f"{upload.acked}-{upload.acked + len(chunk) - 1}"},
        )
        assert resp.status == 202, await resp.text()
        upload.acked += len(chunk)
        upload.in_flight = 0
        upload.location = resp.headers["Location"]
    digest = digest_of(data)
    resp = await http.put(f"{upload.location}?digest={digest}")
    assert resp.status == 201, await resp.text()
    ledger.uploads.remove(upload)
    ledger.blobs[digest] = (repo, data)
    ledger.acked_at[digest] = time.time()
    ledger.acknowledged += 1
    return digest


async def push_image(
    http: aiohttp.ClientSession, ledger: Ledger, repo: str, tag: str, rng: random.Random
) -> None:
    config = json.dumps({"os": "linux", "architecture": "amd64", "tag": tag}).encode()
    layer = random_blob(rng)
    config_digest = await push_monolithic(http, ledger, repo, config)
    layer_digest = await push_chunked(http, ledger, repo, layer, rng)
    manifest = image_manifest(config, [layer])
    resp = await http.put(
        f"/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    if resp.status == 400:
        # GC may take the blobs if the manifest comes after the grace period: a clean refusal.
        assert "MANIFEST_BLOB_UNKNOWN" in await resp.text()
        return
    assert resp.status == 201, await resp.text()
    ledger.manifests[(repo, tag)] = manifest
    ledger.referenced[config_digest] = ledger.referenced[layer_digest] = repo
    ledger.acknowledged += 1


async def delete_a_tag(http: aiohttp.ClientSession, ledger: Ledger, rng: random.Random) -> None:
    live = [key for key in ledger.manifests if key not in ledger.deleted_tags]
    if not live:
        return
    repo, tag = key = rng.choice(sorted(live))
    ledger.deleting_tags.add(key)
    resp = await http.delete(f"/v2/{repo}/manifests/{tag}")
    assert resp.status == 202, await resp.text()
    ledger.deleting_tags.discard(key)
    ledger.deleted_tags.add(key)
    ledger.acknowledged += 1


async def client_loop(base: str, ledger: Ledger, seed: int, round_no: int) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession(base) as http:
        for n in range(50):
            action = rng.random()
            repo = f"crash/repo{rng.randint(0, 2)}"
            if action < 0.35:
                await push_monolithic(http, ledger, repo, random_blob(rng))
            elif action < 0.6:
                await push_chunked(http, ledger, repo, random_blob(rng), rng)
            elif action < 0.9:
                await push_image(http, ledger, repo, f"r{round_no}-c{seed}-{n}", rng)
            elif action < 0.97:
                await delete_a_tag(http, ledger, rng)
            else:
                resp = await http.post("/api/v1/gc")
                assert resp.status == 200, await resp.text()
                ledger.gc_runs += 1
                ledger.gc_blobs += (await resp.json())["blobs_removed"]


async def run_until_killed(
    server: Server, base: str, ledger: Ledger, rng: random.Random, round_no: int
) -> None:
    tasks = [
        asyncio.create_task(client_loop(base, ledger, rng.randrange(1 << 30), round_no))
        for _ in range(CLIENTS)
    ]
    await asyncio.sleep(rng.uniform(0.1, MAX_ROUND_SECONDS))
    server.proc.kill()
    await asyncio.to_thread(server.proc.wait)
    # Requests cut off by the kill fail on the client side; that is expected.
    await asyncio.gather(*tasks, return_exceptions=True)


async def verify(base: str, data_dir: Path, ledger: Ledger) -> None:
    async with aiohttp.ClientSession(base) as http:
        now = time.time()
        for digest, (repo, data) in ledger.blobs.items():
            resp = await http.get(f"/v2/{repo}/blobs/{digest}")
            collectable = digest not in ledger.referenced and ledger.acked_at[digest] < now - GRACE
            if resp.status == 404 and collectable:
                continue  # no manifest used it within the grace period: GC may take it
            assert resp.status == 200, f"acknowledged blob {digest} lost: {resp.status}"
            assert await resp.read() == data, f"acknowledged blob {digest} has wrong bytes"
        for (repo, tag), manifest in ledger.manifests.items():
            resp = await http.get(f"/v2/{repo}/manifests/{tag}")
            if (repo, tag) in ledger.deleted_tags:
                assert resp.status == 404, f"deleted tag {repo}:{tag} came back"
            elif (repo, tag) in ledger.deleting_tags:
                assert resp.status in (200, 404)
            else:
                assert resp.status == 200, f"acknowledged manifest {repo}:{tag} lost"
                assert await resp.read() == manifest
            resp = await http.get(f"/v2/{repo}/manifests/{digest_of(manifest)}")
            assert resp.status == 200, f"manifest {digest_of(manifest)} lost"
        for upload in list(ledger.uploads):
            await resume_or_forget(http, upload, ledger)
    store = BlobStore(data_dir)
    for path, digest in store.walk():
        assert digest is not None, f"stray file {path}"
        data = path.read_bytes()
        assert hashlib.new(digest.algorithm, data).hexdigest() == digest.hex, f"{path} is corrupt"
    index = Index(data_dir / "index.db")
    await index.open()
    try:
        report = await check(index, store, grace=GRACE, repair=False)
    finally:
        await index.close()
    missing = [a for a in report.actions if "file missing" in a]
    assert missing == [], missing


async def resume_or_forget(http: aiohttp.ClientSession, upload: Upload, ledger: Ledger) -> None:
    resp = await http.get(upload.location)
    if resp.status == 404:
        ledger.uploads.remove(upload)  # cleanly unknown: the client starts over
        return
    assert resp.status == 204, resp.status
    end = int(resp.headers["Range"].split("-")[1])
    # "0-0" means no bytes or one byte (the protocol cannot tell); try the
    # smaller and let a 416 name the real offset, as a resuming client would.
    allowed = {upload.acked, upload.acked + upload.in_flight}
    ambiguous = sorted(allowed & {0, 1})
    offset = end + 1 if end > 0 or not ambiguous else ambiguous[0]
    location = resp.headers["Location"]
    digest = digest_of(upload.data)
    for _ in range(2):
        assert offset in allowed, f"upload resumed at {offset}, client had {upload.acked} acked"
        rest = upload.data[offset:]
        resp = await http.put(
            f"{location}?digest={digest}",
            data=rest,
            headers={"Content-Range": f"{offset}-{offset + len(rest) - 1}"} if rest else {},
        )
        if resp.status != 416:
            break
        offset = (await resp.json())["errors"][0]["detail"]["offset"]
    assert resp.status == 201, await resp.text()
    ledger.uploads.remove(upload)
    ledger.blobs[digest] = (upload.repo, upload.data)
    ledger.acked_at[digest] = time.time()


def crash_seed() -> int:
    """The run's random seed, printed so a failure can be replayed with ``AIOREG_CRASH_SEED``."""
    seed = int(os.environ.get("AIOREG_CRASH_SEED") or time.time_ns() % (1 << 63))
    print(f"crash harness seed {seed} (replay: AIOREG_CRASH_SEED={seed})", flush=True)
    return seed


def test_crash_seed_is_printed_and_replays(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AIOREG_CRASH_SEED", raising=False)
    seed = crash_seed()
    assert f"AIOREG_CRASH_SEED={seed}" in capsys.readouterr().out
    monkeypatch.setenv("AIOREG_CRASH_SEED", str(seed))
    assert crash_seed() == seed
    assert f"AIOREG_CRASH_SEED={seed}" in capsys.readouterr().out


async def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = crash_seed()
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    ledger = Ledger()
    servers: list[Server] = []
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--listen", f"127.0.0.1:{port}", "--data", str(data_dir)]
    try:
        for round_no in range(ROUNDS):
            server = start(servers, args, ENV)
            await run_until_killed(server, base, ledger, rng, round_no)
            server = start(servers, args, ENV)
            await verify(base, data_dir, ledger)
            server.proc.kill()
            server.proc.wait()
    finally:
        for server in servers:
            server.stop()
            server.log_path.unlink(missing_ok=True)
    assert ledger.acknowledged > ROUNDS, "the workload never got going"
    print(
        f"seed {seed}: crash rounds survived: {ROUNDS}, acknowledged operations verified: "
        f"{ledger.acknowledged}, GC runs: {ledger.gc_runs} ({ledger.gc_blobs} blobs freed)"
    )
