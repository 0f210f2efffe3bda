"""The SQLite index: WAL mode, migrations, and last push/pull bookkeeping."""

from __future__ import annotations

import asyncio
import importlib.resources
import sqlite3
import time

from aioreg.index.migrations import MIGRATIONS, statements
from tests.conftest import AppFactory, Reg, digest_of


async def test_wal_mode_and_schema_version(reg: Reg) -> None:
    await reg.push_image("app", "v1")
    db = sqlite3.connect(reg.data_dir / "index.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        assert version == reg.registry.index.schema_version
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"repositories", "tags", "manifests", "blobs", "uploads"} <= tables
    finally:
        db.close()


def test_migrations_are_numbered_sql_files() -> None:
    """One ``NNNN_name.sql`` per schema version, and a trigger body's ``;`` does not split it."""
    files = sorted(
        entry.name
        for entry in importlib.resources.files("aioreg.index.migrations").iterdir()
        if entry.name.endswith(".sql")
    )
    assert [int(name[:4]) for name in files] == list(range(1, len(MIGRATIONS) + 1))
    triggers = [s for script in MIGRATIONS for s in statements(script) if "CREATE TRIGGER" in s]
    assert len(triggers) == 3
    assert all(t.endswith("END;") and t.count(";") > 1 for t in triggers)


async def test_migrations_run_once(make_registry: AppFactory, tmp_path) -> None:
    first = await make_registry(tmp_path / "d")
    await first.push_image("app", "v1")
    await first.client.close()
    second = await make_registry(tmp_path / "d")
    db = sqlite3.connect(tmp_path / "d" / "index.db")
    try:
        assert db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == (
            second.registry.index.schema_version
        )
    finally:
        db.close()
    assert (await second.client.get("/v2/app/manifests/v1")).status == 200


async def test_last_push_and_pull_times(reg: Reg) -> None:
    before = time.time()
    digest, _ = await reg.push_image("team/app", "v1")
    index = reg.registry.index
    pushed, pulled = await index.activity.pull_times("team/app")
    assert pushed is not None and pushed >= before
    assert pulled is None
    # HEAD is not a pull; GET is.
    assert (await reg.client.head("/v2/team/app/manifests/v1")).status == 200
    assert (await index.activity.pull_times("team/app"))[1] is None
    assert (await reg.client.get("/v2/team/app/manifests/v1")).status == 200
    _, pulled = await index.activity.pull_times("team/app")
    assert pulled is not None and pulled >= pushed
    db = sqlite3.connect(reg.data_dir / "index.db")
    try:
        tag_pull, tag_push = db.execute(
            "SELECT last_pull_at, pushed_at FROM tags WHERE name = 'v1'"
        ).fetchone()
        assert tag_pull == pulled
        assert tag_push == pushed
        manifest_pull = db.execute(
            "SELECT last_pull_at FROM manifests WHERE digest = ?", (digest,)
        ).fetchone()[0]
        assert manifest_pull == pulled
    finally:
        db.close()


async def test_cached_reads_follow_writes_from_this_and_other_processes(reg: Reg) -> None:
    digest, _ = await reg.push_image("team/app", "v1")
    assert (await reg.client.get("/v2/team/app/manifests/v1")).status == 200
    # This process: a delete is visible at once.
    assert (await reg.client.delete(f"/v2/team/app/manifests/{digest}")).status == 202
    assert (await reg.client.get("/v2/team/app/manifests/v1")).status == 404
    # Another process (the CLI) moves a tag: visible within the cache's check interval.
    digest2, body2 = await reg.push_image("team/app", "v2", seed="second")
    assert (await reg.client.get("/v2/team/app/manifests/v2")).status == 200
    db = sqlite3.connect(reg.data_dir / "index.db")
    try:
        db.execute("DELETE FROM tags WHERE name = 'v2'")
        db.commit()
    finally:
        db.close()
    deadline = time.monotonic() + 2
    while (await reg.client.get("/v2/team/app/manifests/v2")).status != 404:
        assert time.monotonic() < deadline, "an external write stayed invisible"
        await asyncio.sleep(0.05)
    assert (await reg.client.get(f"/v2/team/app/manifests/{digest2}")).status == 200
    assert digest2 == digest_of(body2)
