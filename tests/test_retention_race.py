"""Retention removes a tag only while it still points at the digest it selected; the
activity and audit logs keep a bounded history."""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from aioreg.api.auth import AUTH_KEY
from aioreg.api.management.handlers import MANAGEMENT_KEY
from aioreg.api.server import RegistryServer
from aioreg.config import load_config
from aioreg.domain.retention import Removal, RetentionPolicy
from tests.conftest import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    AppFactory,
    HttpClient,
    Reg,
    digest_of,
)
from tests.process import Server, free_port, start


async def test_retention_keeps_a_tag_pushed_again_since_the_preview(
    make_registry: AppFactory, servers: list[Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    reg = await make_registry(data)
    old_digest, _ = await reg.push_image("app", "old", seed="a")
    await reg.push_image("app", "new", seed="b")
    # The body that re-pushes "old", its blobs already in the repository.
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": "c"}).encode()
    layer = b"layer-c" * 100
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": await reg.push_blob("app", config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": OCI_LAYER, "digest": await reg.push_blob("app", layer), "size": 700}
        ],
    }
    body = json.dumps(manifest).encode()
    # A second server on the same data dir takes the push while retention runs here.
    port = free_port()
    start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(data)])

    def push_again(removal: Removal) -> None:
        assert (removal.tag, removal.digest) == ("old", old_digest)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/app/manifests/old",
            data=body,
            method="PUT",
            headers={"Content-Type": OCI_MANIFEST},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 201

    management = reg.app[MANAGEMENT_KEY]
    await management.retention.set_policy("app", RetentionPolicy(keep_last=1))
    removed = await management.retention.apply(on_removal=push_again)
    assert removed == []  # selected, then pushed again: not removed
    resp = await reg.client.get("/v2/app/manifests/old", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    assert await resp.read() == body
    resp = await reg.client.get("/v2/app/manifests/new", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    # Without the race the policy still applies: "new" is now beyond the one kept.
    removed = await management.retention.apply()
    assert [(r.tag, r.repository) for r in removed] == [("new", "app")]
    resp = await reg.client.get("/v2/app/manifests/new", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 404


@contextlib.asynccontextmanager
async def serving(data: Path, **sections: dict[str, object]) -> AsyncIterator[Reg]:
    """A server built as ``aioreg serve`` builds it, with config sections make_registry lacks."""
    overrides: dict[str, dict[str, object]] = {
        "storage": {"data_dir": str(data)},
        "server": {"listen": "127.0.0.1:0", "access_log": False},
        **sections,
    }
    server = RegistryServer(load_config(None, environ={}, overrides=overrides))
    await server.start()
    reg = Reg(HttpClient(server), server)
    try:
        yield reg
    finally:
        await reg.client.close()
        await server.stop()


def _history(db: Path, table: str) -> tuple[int, float]:
    with sqlite3.connect(db) as conn:
        count, oldest = conn.execute(f"SELECT count(*), min(at) FROM {table}").fetchone()
    return count, oldest


async def test_events_and_audit_keep_a_bounded_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    password = "pw-0123456789"
    async with serving(
        data,
        auth={"enabled": True, "admin_password": password},
        events={"max_age_days": 30, "max_rows": 5},
    ) as reg:
        index = reg.registry.index
        auth = reg.app[AUTH_KEY]
        db = data / "index.db"
        admin = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
        # Two entries in each log from long ago, written by another process.
        old = time.time() - 40 * 86400
        with sqlite3.connect(db) as conn:
            for _ in range(2):
                conn.execute(
                    "INSERT INTO events(at, kind, repository) VALUES (?, 'push', 'ancient')",
                    (old,),
                )
                conn.execute(
                    "INSERT INTO audit(at, actor, action, resource, allowed) "
                    "VALUES (?, 'x', 'push', 'ancient', 0)",
                    (old,),
                )

        async def activity(count: int) -> None:
            for i in range(count):
                resp = await reg.client.put(
                    f"/v2/lib/app/manifests/t{i}",
                    data=manifest_body,
                    headers={"Content-Type": OCI_MANIFEST, "Authorization": admin},
                )
                assert resp.status == 201, await resp.text()
                resp = await reg.client.post("/v2/lib/app/blobs/uploads/")  # denied: audited
                assert resp.status == 401
            await index.activity.flush()
            await auth.flush_audit()

        config = b'{"os": "linux"}'
        resp = await reg.client.post(
            f"/v2/lib/app/blobs/uploads/?digest={digest_of(config)}",
            data=config,
            headers={"Authorization": admin},
        )
        assert resp.status == 201
        manifest_body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": 15},
                "layers": [],
            }
        ).encode()
        await activity(2)  # within the row limit: only age removes anything
        for table in ("events", "audit"):
            count, oldest = _history(db, table)
            assert oldest > old, table
            assert 2 <= count <= 5, table
        await activity(10)
        for table in ("events", "audit"):
            count, _ = _history(db, table)
            assert count == 5, table
        events = await reg.client.get(
            "/api/v1/events?limit=100",
            headers={"Authorization": admin},
        )
        assert events.status == 200
        assert len((await events.json())["events"]) == 5
