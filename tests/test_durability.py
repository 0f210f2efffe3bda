"""The index under another process's write lock, its durability settings, failed commits,
and the modes of the files that hold password hashes and keys."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from aioreg.auth.accounts import Accounts, TokenScope
from aioreg.index.cache import CHECK_INTERVAL
from tests.conftest import AppFactory, Reg, digest_of
from tests.process import Server, free_port, start

HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class WriteLockHolder:
    """Another process holding the index's write lock until told to let go.

    Build it off the event loop (``await WriteLockHolder.start(db)``): while it waits
    for the lock, the in-process server must be free to finish a transaction it is in.
    """

    @classmethod
    async def start(cls, db: Path) -> WriteLockHolder:
        return await asyncio.to_thread(cls, db)

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def holding(self) -> bool:
        return self.proc.poll() is None

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        assert self.proc.wait(10) == 0


async def _poll(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("auth", [False, True], ids=["anonymous", "access-token"])
async def test_reads_answer_while_another_process_holds_the_write_lock(
    make_registry: AppFactory, tmp_path: Path, auth: bool
) -> None:
    # A long busy timeout: a read queued behind the blocked writer would wait for all of it.
    storage = {"index_busy_timeout": 60.0}
    reg = await make_registry(tmp_path / "data", storage=storage)
    digest, _ = await reg.push_image("app", "v1")
    layer = digest_of(b"layer-x" * 100)
    headers: dict[str, str] = {}
    if auth:
        # Pulls with a personal access token, which records when it was last used.
        reg = await make_registry(
            tmp_path / "data", storage=storage, auth={"enabled": True, "admin_password": "pw"}
        )
        accounts = Accounts(reg.registry.index)
        await accounts.add_user("alice", "alice-pw")
        await accounts.create_namespace("app", "alice")
        pat = await accounts.create_token(
            "alice", "ci", [TokenScope("app", ["pull", "push"])], None
        )
        secret = base64.b64encode(f"ci:{pat.value}".encode()).decode()
        headers = {"Authorization": f"Basic {secret}"}
    holder = await WriteLockHolder.start(reg.data_dir / "index.db")
    try:
        # A write (a new upload session) now waits for the lock inside the server.
        upload = asyncio.ensure_future(reg.client.post("/v2/app/blobs/uploads/", headers=headers))
        index = reg.registry.index
        await _poll(lambda: index.db._write_lock.locked(), "the server's writer to queue")
        # Reads across several cache checks, pulls included (which queue pull bookkeeping).
        started = time.monotonic()
        rounds = 0
        while rounds < 3 or time.monotonic() - started < 3 * CHECK_INTERVAL:
            rounds += 1
            for method, path in (
                ("GET", "/v2/app/manifests/v1"),
                ("HEAD", "/v2/app/manifests/v1"),
                ("GET", f"/v2/app/manifests/{digest}"),
                ("HEAD", f"/v2/app/blobs/{layer}"),
            ):
                resp = await asyncio.wait_for(reg.client.request(method, path, headers=headers), 30)
                assert resp.status == 200, (method, path, resp.status)
                await resp.read()
            # Every read completed while the other process still held the lock.
            assert holder.holding() and not upload.done()
    finally:
        holder.release()
    resp = await asyncio.wait_for(upload, 60)
    assert resp.status == 202


async def test_shutdown_while_another_process_holds_the_lock_keeps_pull_records(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    """SIGTERM while ``aioreg gc`` holds the lock: the batched pull bookkeeping, cancelled
    mid-BEGIN, neither leaves a transaction open nor loses what it was writing."""
    reg = await make_registry(tmp_path / "data", storage={"index_busy_timeout": 60.0})
    await reg.push_image("app", "v1")
    holder = await WriteLockHolder.start(reg.data_dir / "index.db")
    try:
        resp = await reg.client.get("/v2/app/manifests/v1")
        assert resp.status == 200
        index = reg.registry.index
        await _poll(lambda: index.db._write_lock.locked(), "pull bookkeeping to wait for the lock")
        flusher = index._flusher._task
        assert flusher is not None
        stopping = asyncio.ensure_future(reg.server.stop())
        await _poll(lambda: flusher.cancelling() or flusher.done(), "shutdown to cancel it")
    finally:
        holder.release()
    await asyncio.wait_for(stopping, 60)
    with sqlite3.connect(reg.data_dir / "index.db") as conn:
        (pulled_at,) = conn.execute(
            "SELECT last_pull_at FROM repositories WHERE name = 'app'"
        ).fetchone()
        (pulls,) = conn.execute("SELECT count(*) FROM events WHERE kind = 'pull'").fetchone()
    assert pulled_at is not None and pulls == 1


async def test_index_commits_with_synchronous_full(reg: Reg) -> None:
    index = reg.registry.index
    assert index.db._writer is not None
    async with index.db._writer.execute("PRAGMA synchronous") as cursor:
        row = await cursor.fetchone()
    assert row is not None and row[0] == 2  # FULL: a commit is on disk when it returns


async def test_a_failed_commit_is_rolled_back_and_the_next_write_works(reg: Reg) -> None:
    """A COMMIT refused by SQLite (a deferred foreign key check) leaves no open transaction."""
    index = reg.registry.index
    with pytest.raises(sqlite3.IntegrityError):
        async with index.db.transaction() as db:
            await db.execute("PRAGMA defer_foreign_keys = ON")
            await db.execute("INSERT INTO repositories(name, created_at) VALUES ('half/done', 0)")
            # No blob row: the deferred check fails at COMMIT, not here.
            await db.execute(
                "INSERT INTO repository_blobs(repository_id, digest, linked_at) "
                "SELECT id, 'sha256:' || hex(zeroblob(32)), 0 FROM repositories "
                "WHERE name = 'half/done'"
            )
    assert index.db._writer is not None and not index.db._writer.in_transaction
    await reg.push_image("after", "v1")  # the next write works
    resp = await reg.client.get("/v2/after/manifests/v1")
    assert resp.status == 200
    with sqlite3.connect(reg.data_dir / "index.db") as other:
        names = {r[0] for r in other.execute("SELECT name FROM repositories")}
    assert "after" in names and "half/done" not in names
    resp = await reg.client.get("/v2/half/done/tags/list")
    assert resp.status == 404


def test_data_dir_is_private(tmp_path: Path, servers: list[Server]) -> None:
    """index.db holds password hashes and auth/ the signing key: nobody else may read them."""
    data = tmp_path / "d"
    port = free_port()
    start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(data), "--auth"])
    url = f"http://127.0.0.1:{port}"

    async def push() -> None:
        async with aiohttp.ClientSession(url) as session:
            resp = await session.get("/v2/")
            assert resp.status == 401

    asyncio.run(push())
    for path in (data, data / "auth", data / "blobs", data / "uploads"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for suffix in ("", "-wal", "-shm"):
        path = data / f"index.db{suffix}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(data / "auth" / "token-signing-key.pem").st_mode) == 0o600
