"""``aioreg serve --workers 2``: a supervisor and two worker processes on one port and index."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from aioreg.index import Index
from tests.conftest import OCI_MANIFEST, Reg, digest_of, image_manifest
from tests.process import Server, free_port, start

WORKER = "X-Aioreg-Worker"
QUIET = {"AIOREG_SERVER_ACCESS_LOG": "false"}


def start_workers(
    servers: list[Server], data: Path, env: dict[str, str] | None = None
) -> tuple[Server, str]:
    port = free_port()
    server = start(
        servers,
        ["--workers", "2", "--listen", f"127.0.0.1:{port}", "--data", str(data)],
        {**QUIET, **(env or {})},
    )
    return server, f"http://127.0.0.1:{port}"


def worker_pids(server: Server) -> dict[str, int]:
    """The newest pid of each worker, from the log."""
    return {n: int(p) for n, p in re.findall(r"worker (\d) \(pid (\d+)", server.output)}


def running(pid: int) -> bool:
    """Alive and not a zombie (nobody may reap an orphan in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def pinned(base: str, worker: str) -> aiohttp.ClientSession:
    """A session whose one kept-alive connection the given worker accepted."""
    for _ in range(200):
        session = aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=1))
        resp = await session.get("/v2/")
        await resp.read()
        if resp.headers[WORKER] == worker:
            return session
        await session.close()
    raise AssertionError(f"no connection reached worker {worker}")


def fresh(base: str) -> aiohttp.ClientSession:
    """A session opening a new connection per request: the kernel picks the worker each time."""
    return aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(force_close=True))


async def push_blob(http: aiohttp.ClientSession, name: str, blob: bytes) -> None:
    resp = await http.post(f"/v2/{name}/blobs/uploads/?digest={digest_of(blob)}", data=blob)
    assert resp.status == 201, await resp.text()


async def test_both_workers_answer_fresh_connections(servers: list[Server], tmp_path: Path) -> None:
    server, base = start_workers(servers, tmp_path / "d")
    assert "listening on" in server.output and "2 workers" in server.output
    seen: set[str] = set()
    async with fresh(base) as http:
        for _ in range(200):
            resp = await http.get("/v2/")
            assert resp.status == 200
            seen.add(resp.headers[WORKER])
            if len(seen) == 2:
                break
    assert seen == {"0", "1"}
    assert len(worker_pids(server)) == 2
    assert server.stop() == 0


async def test_a_tag_pushed_on_one_worker_is_pulled_from_the_other_at_once(
    servers: list[Server], tmp_path: Path
) -> None:
    _, base = start_workers(servers, tmp_path / "d")
    one, other = await pinned(base, "0"), await pinned(base, "1")
    try:
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        await push_blob(one, "team/app", config)
        for round in range(6):
            layer = os.urandom(1000) + bytes([round])
            await push_blob(one, "team/app", layer)
            manifest = image_manifest(config, [layer])
            resp = await one.put(
                "/v2/team/app/manifests/v1",
                data=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert resp.status == 201, await resp.text()
            # The other worker cached the previous v1 a moment ago; it must not serve it now.
            resp = await other.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert resp.headers[WORKER] == "1"
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest_of(manifest)
            assert await resp.read() == manifest
    finally:
        await one.close()
        await other.close()


async def test_sigterm_drains_every_worker_and_exits_0(
    servers: list[Server], tmp_path: Path
) -> None:
    server, base = start_workers(servers, tmp_path / "d")
    blob = os.urandom(200_000)
    sent = [asyncio.Event(), asyncio.Event()]
    go_on = asyncio.Event()

    async def body(n: int) -> AsyncIterator[bytes]:
        yield blob[:100_000]
        sent[n].set()
        await go_on.wait()
        yield blob[100_000:]

    sessions = [await pinned(base, "0"), await pinned(base, "1")]
    try:
        pushes = [
            asyncio.create_task(
                http.post(
                    f"/v2/drain{n}/blobs/uploads/?digest={digest_of(blob)}",
                    data=body(n),
                    headers={"Content-Length": str(len(blob))},
                )
            )
            for n, http in enumerate(sessions)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in sent)), 10)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while server.output.count("shutting down") < 2:
            assert time.monotonic() < deadline, server.output
            await asyncio.sleep(0.05)
        go_on.set()
        for push in pushes:
            resp = await push
            assert resp.status == 201, await resp.text()
    finally:
        for http in sessions:
            await http.close()
    assert await asyncio.to_thread(server.proc.wait, 20) == 0
    assert server.output.count("stopped") == 2


async def test_scheduled_gc_runs_in_one_worker_only(servers: list[Server], tmp_path: Path) -> None:
    server, _ = start_workers(servers, tmp_path / "d", {"AIOREG_GC_INTERVAL": "0.2"})
    deadline = time.monotonic() + 15
    while len(runs := re.findall(r"\[(w\d)\]: scheduled gc:", server.output)) < 6:
        assert time.monotonic() < deadline, server.output
        await asyncio.sleep(0.1)
    assert set(runs) == {"w0"}


CHUNK = 64 * 1024


async def start_upload(http: aiohttp.ClientSession, name: str) -> tuple[str, str]:
    """A new session's location and the worker that opened (and so holds) it."""
    resp = await http.post(f"/v2/{name}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    return resp.headers["Location"], resp.headers[WORKER]


async def send_chunk(
    http: aiohttp.ClientSession, location: str, data: bytes, start: int
) -> tuple[str, str]:
    resp = await http.patch(
        location,
        data=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        },
    )
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == f"0-{start + len(data) - 1}"
    return resp.headers["Location"], resp.headers[WORKER]


async def test_chunks_landing_on_the_other_worker_reach_the_owner_without_rehash(
    servers: list[Server], tmp_path: Path
) -> None:
    server, base = start_workers(servers, tmp_path / "d")
    sent = bytearray()
    landed: list[str] = []
    async with fresh(base) as http:
        location, owner = await start_upload(http, "team/chunked")
        # Each request on a new connection: keep going until several landed elsewhere.
        while sum(w != owner for w in landed) < 3:
            assert len(landed) < 200, landed
            chunk = os.urandom(CHUNK)
            location, worker = await send_chunk(http, location, chunk, len(sent))
            sent += chunk
            landed.append(worker)
        resp = await http.get(location)
        assert resp.status == 204
        assert resp.headers["Range"] == f"0-{len(sent) - 1}"
        digest = digest_of(bytes(sent))
        resp = await http.put(f"{location}?digest={digest}")
        assert resp.status == 201, await resp.text()
        assert resp.headers["Docker-Content-Digest"] == digest
        resp = await http.get(f"/v2/team/chunked/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == bytes(sent)
    # Only the owner ever hashed: no worker rebuilt the session from disk.
    assert "re-hashed" not in server.output
    assert "adopted" not in server.output


async def test_a_killed_owner_is_restarted_and_its_upload_adopted_once(
    servers: list[Server], tmp_path: Path
) -> None:
    # Small write batches: the owner writes a chunk's bytes as they arrive.
    data = tmp_path / "d"
    server, base = start_workers(servers, data, {"AIOREG_STORAGE_WRITE_BUFFER_BYTES": "4096"})
    on_owner, on_other = await pinned(base, "0"), await pinned(base, "1")
    sent = bytearray()
    try:
        location, owner = await start_upload(on_owner, "team/adopted")
        assert owner == "0"
        async with fresh(base) as http:
            for _ in range(3):
                chunk = os.urandom(CHUNK)
                location, _ = await send_chunk(http, location, chunk, len(sent))
                sent += chunk
        acknowledged = len(sent)

        # A chunk forwarded by worker 1 is under way when its owner is killed.
        half_sent, go_on = asyncio.Event(), asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield os.urandom(CHUNK // 2)
            half_sent.set()
            await go_on.wait()
            yield os.urandom(CHUNK // 2)

        patch = asyncio.create_task(
            on_other.patch(
                location,
                data=body(),
                headers={
                    "Content-Range": f"{len(sent)}-{len(sent) + CHUNK - 1}",
                    "Content-Length": str(CHUNK),
                },
            )
        )
        await asyncio.wait_for(half_sent.wait(), 10)
        # Killed once it is writing that chunk (its file grows past the acknowledged bytes).
        upload_file = data / "uploads" / location.rsplit("/", 1)[1]
        deadline = time.monotonic() + 10
        while upload_file.stat().st_size <= acknowledged:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        killed = worker_pids(server)["0"]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while worker_pids(server)["0"] == killed:
            assert time.monotonic() < deadline, server.output
            await asyncio.sleep(0.05)
        go_on.set()
        resp = await patch
        assert resp.status == 503, await resp.text()
        assert resp.headers[WORKER] == "1"
    finally:
        await on_owner.close()
        await on_other.close()

    async with fresh(base) as http:
        # The session stands at the last acknowledged byte, wherever this lands.
        resp = await http.get(location)
        assert resp.status == 204, await resp.text()
        assert resp.headers["Range"] == f"0-{acknowledged - 1}"
        for _ in range(4):
            chunk = os.urandom(CHUNK)
            location, _ = await send_chunk(http, location, chunk, len(sent))
            sent += chunk
        digest = digest_of(bytes(sent))
        resp = await http.put(f"{location}?digest={digest}")
        assert resp.status == 201, await resp.text()
        resp = await http.get(f"/v2/team/adopted/blobs/{digest}")
        assert await resp.read() == bytes(sent)
    output = server.output
    assert "died (signal 9); restarting it" in output
    # One worker adopted the session and re-hashed what was acknowledged, once.
    assert output.count("adopted upload") == 1, output
    assert output.count(f"re-hashed {acknowledged} acknowledged bytes") == 1, output
    assert output.count("re-hashed") == 1, output
    assert server.stop() == 0


async def test_workers_drain_and_end_when_their_supervisor_is_killed(
    servers: list[Server], tmp_path: Path
) -> None:
    server, _ = start_workers(servers, tmp_path / "d")
    pids = worker_pids(server).values()
    server.proc.kill()
    deadline = time.monotonic() + 20
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, server.output
        await asyncio.sleep(0.05)
    assert server.output.count("stopped") == 2


async def test_an_older_pull_batch_flushed_last_keeps_the_newest_pull_time(reg: Reg) -> None:
    """Each worker batches the pulls it served; their flushes may land in any order."""
    await reg.push_image("team/app", "v1")
    path = reg.data_dir / "index.db"
    first, second = Index(path), Index(path)
    await first.open()
    await second.open()
    try:
        manifest = await first.manifests.by_tag("team/app", "v1")
        assert manifest is not None
        second.activity.note_pull(manifest, "v1")  # the older pull
        await asyncio.sleep(0.01)  # apart on the clock
        boundary = time.time()
        first.activity.note_pull(manifest, "v1")
        await first.activity.flush()
        await second.activity.flush()  # flushed last
    finally:
        await first.close()
        await second.close()
    db = sqlite3.connect(path)
    try:
        (tag_pull,) = db.execute("SELECT last_pull_at FROM tags WHERE name = 'v1'").fetchone()
        (manifest_pull,) = db.execute("SELECT last_pull_at FROM manifests").fetchone()
    finally:
        db.close()
    assert tag_pull >= boundary and manifest_pull >= boundary
