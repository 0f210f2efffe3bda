"""Online garbage collection, retention policies and quotas."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aioreg.api.management.handlers import MANAGEMENT_KEY
from aioreg.auth.accounts import Accounts
from aioreg.domain.periodic import PeriodicJob
from aioreg.domain.retention import RetentionPolicy
from aioreg.index import Index
from tests.conftest import (
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    artifact_manifest,
    digest_of,
    error_codes,
    image_manifest,
)
from tests.test_management import api, push


def blob_files(reg: Reg) -> set[str]:
    return {p.name for p in (reg.data_dir / "blobs").rglob("*") if p.is_file()}


async def test_gc_removes_only_unreferenced_blobs(make_registry: AppFactory) -> None:
    reg = await make_registry(gc={"grace_period": 0})
    kept_digest, kept_manifest, _ = await push(reg, "app", "v1", [b"kept layer"])
    gone_digest, _, gone_bytes = await push(reg, "app", "v2", [b"doomed layer"], arch="arm64")
    orphan = await reg.push_blob("app", b"never referenced")
    await reg.client.delete(f"/v2/app/manifests/{gone_digest}")
    before = blob_files(reg)
    dry = await api(reg, "POST", "/gc?dry_run=true")
    assert dry["dry_run"] and dry["blobs_removed"] == 3  # doomed layer, its config, orphan
    assert blob_files(reg) == before
    report = await api(reg, "POST", "/gc")
    assert report["blobs_removed"] == 3
    assert report["bytes_freed"] == gone_bytes + len(b"never referenced")
    assert orphan[7:] not in blob_files(reg)
    assert digest_of(b"doomed layer")[7:] not in blob_files(reg)
    resp = await reg.client.get("/v2/app/manifests/v1")
    body = await resp.read()
    assert body == kept_manifest
    for layer in json.loads(body)["layers"] + [json.loads(body)["config"]]:
        resp = await reg.client.get(f"/v2/app/blobs/{layer['digest']}")
        assert resp.status == 200
    assert kept_digest == digest_of(kept_manifest)
    assert (await api(reg, "POST", "/gc"))["blobs_removed"] == 0
    assert not (reg.data_dir / "trash").exists() or not list((reg.data_dir / "trash").iterdir())


async def test_gc_keeps_new_blobs_for_the_grace_period(make_registry: AppFactory) -> None:
    reg = await make_registry(gc={"grace_period": 3600})
    await reg.push_blob("app", b"just uploaded, manifest coming")
    report = await api(reg, "POST", "/gc")
    assert report["blobs_removed"] == 0


async def test_gc_untagged_manifests(make_registry: AppFactory) -> None:
    reg = await make_registry(gc={"grace_period": 0})
    untagged, _, _ = await push(reg, "app", None, [b"untagged layer"])
    tagged, tagged_body, _ = await push(reg, "app", "v1", [b"tagged layer"])
    await reg.push_blob("app", EMPTY_JSON)
    signature = artifact_manifest(
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        (OCI_MANIFEST, tagged, len(tagged_body)),
    )
    referrer = await reg.push_manifest("app", digest_of(signature), signature)
    report = await api(reg, "POST", "/gc")  # config says: keep untagged manifests
    assert report["manifests_removed"] == []
    report = await api(reg, "POST", "/gc?untagged=true")
    assert report["manifests_removed"] == [f"app@{untagged}"]
    assert (await reg.client.get(f"/v2/app/manifests/{untagged}")).status == 404
    assert (await reg.client.get(f"/v2/app/manifests/{referrer}")).status == 200
    assert (await reg.client.get(f"/v2/app/blobs/{digest_of(b'untagged layer')}")).status == 404


async def test_gc_racing_pushes_never_leaves_a_broken_image(make_registry: AppFactory) -> None:
    """Pushes and GC at once for bounded rounds; every tagged image then pulls byte for byte."""
    reg = await make_registry(gc={"grace_period": 0.5, "delete_untagged": True})
    management = reg.app[MANAGEMENT_KEY]
    rng = random.Random(7)
    pushed: dict[tuple[str, str], bytes] = {}
    refused = 0

    async def pusher(n: int) -> None:
        nonlocal refused
        for i in range(12):
            repo = f"race/r{n % 3}"
            layers = [rng.randbytes(rng.choice([10, 5000, 60_000])), b"shared base layer" * 100]
            config = json.dumps({"n": n, "i": i}).encode()
            digests = []
            for blob in (config, *layers):
                resp = await reg.client.post(
                    f"/v2/{repo}/blobs/uploads/?digest={digest_of(blob)}", data=blob
                )
                assert resp.status == 201
                digests.append(digest_of(blob))
            # Let sweeps slip in between blobs and manifest; now and then past the grace period.
            await asyncio.sleep(0.7 if rng.random() < 0.1 else rng.random() * 0.02)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": digests[0], "size": len(config)},
                    "layers": [
                        {"mediaType": OCI_LAYER, "digest": d, "size": len(b)}
                        for d, b in zip(digests[1:], layers, strict=True)
                    ],
                }
            ).encode()
            resp = await reg.client.put(
                f"/v2/{repo}/manifests/t{n}-{i}",
                data=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            if resp.status == 201:
                pushed[(repo, f"t{n}-{i}")] = manifest
            else:
                assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
                refused += 1
            if i % 4 == 3 and pushed:
                victim = rng.choice(sorted(pushed))
                if (
                    await reg.client.delete(f"/v2/{victim[0]}/manifests/{victim[1]}")
                ).status == 202:
                    del pushed[victim]

    freed = 0

    async def collector() -> int:
        nonlocal freed
        rounds = 0
        deadline = time.monotonic() + 60
        while not all(t.done() for t in pushers) and time.monotonic() < deadline:
            freed += (await management.gc.run()).blobs
            rounds += 1
            await asyncio.sleep(0.005)
        return rounds

    pushers = [asyncio.create_task(pusher(n)) for n in range(6)]
    rounds = await collector()
    await asyncio.gather(*pushers)
    await management.gc.run()
    assert rounds >= 5
    assert len(pushed) > 20
    assert freed > 0  # the sweeps really removed garbage while pushes went on
    for (repo, tag), manifest in pushed.items():
        resp = await reg.client.get(f"/v2/{repo}/manifests/{tag}")
        assert resp.status == 200, (repo, tag)
        assert await resp.read() == manifest
        body = json.loads(manifest)
        for descriptor in [body["config"], *body["layers"]]:
            resp = await reg.client.get(f"/v2/{repo}/blobs/{descriptor['digest']}")
            assert resp.status == 200, descriptor
            assert digest_of(await resp.read()) == descriptor["digest"]
    print(
        f"gc rounds: {rounds}, blobs freed: {freed}, images kept: {len(pushed)}, refused: {refused}"
    )


async def test_retention_preview_equals_apply(reg: Reg) -> None:
    management = reg.app[MANAGEMENT_KEY]
    for i in range(6):
        await push(reg, "team/app", f"build-{i}", [f"layer {i}".encode()])
        await asyncio.sleep(0.01)
    await push(reg, "team/app", "latest", [b"latest"])
    await push(reg, "team/app", "prod-1", [b"prod"])
    await push(reg, "team/app", "keepme", [b"excluded"])
    await push(reg, "team/other", "old", [b"old"])
    await management.retention.set_policy(
        "team",
        RetentionPolicy(
            keep_last=2,
            include=[r"build-.*", "keepme", "old"],
            exclude=["keepme"],
            protected=["latest", "prod-*"],
        ),
    )
    now = time.time()
    preview = await management.retention.preview(now)
    assert sorted((r.repository, r.tag) for r in preview) == [
        ("team/app", f"build-{i}") for i in range(4)
    ]
    applied = await management.retention.apply(now)
    assert applied == preview
    tags = (await (await reg.client.get("/v2/team/app/tags/list")).json())["tags"]
    assert tags == ["build-4", "build-5", "keepme", "latest", "prod-1"]
    assert (await (await reg.client.get("/v2/team/other/tags/list")).json())["tags"] == ["old"]
    events = await management.listings.events(100)
    assert sorted(e.reference for e in events if e.kind == "retention") == [
        f"build-{i}" for i in range(4)
    ]
    # Age and idleness: a policy measured a day in the future removes what was not pulled.
    await reg.client.get("/v2/team/app/manifests/build-5")
    await management.retention.set_policy(
        "team/app", RetentionPolicy(unpulled_days=0.5, protected=["latest", "prod-*", "keepme"])
    )
    later = time.time() + 86400
    preview = await management.retention.preview(later)
    assert [r.tag for r in preview] == ["build-4"] or sorted(r.tag for r in preview) == [
        "build-4",
        "build-5",
    ]
    assert all(r.reason.startswith("not pulled") for r in preview)
    assert await management.retention.apply(later) == preview
    await management.retention.set_policy(
        "team/other", RetentionPolicy(older_than_days=0.5, protected=[])
    )
    assert [(r.tag, r.reason) for r in await management.retention.preview(later)] == [
        ("old", "pushed more than 0.5 days ago")
    ]
    assert await management.retention.preview(time.time()) == []


async def test_quota_refuses_a_push_and_leaves_nothing(make_registry: AppFactory) -> None:
    reg = await make_registry()
    await Accounts(reg.registry.index).create_namespace("small", None)
    await api(reg, "PUT", "/namespaces/small/quota", json={"quota_bytes": 50_000})
    await reg.push_blob("small/app", os.urandom(30_000))
    shared = os.urandom(15_000)
    await reg.push_blob("small/app", shared)
    await reg.push_blob("small/other", shared)  # already counted: no extra bytes
    big = os.urandom(10_000)
    resp = await reg.client.post(f"/v2/small/app/blobs/uploads/?digest={digest_of(big)}", data=big)
    assert resp.status == 403
    error = (await resp.json())["errors"][0]
    assert error["code"] == "DENIED"
    assert (
        "quota" in error["message"] and "50000" in error["message"] and "45000" in error["message"]
    )
    assert list((reg.data_dir / "uploads").iterdir()) == []
    assert digest_of(big)[7:] not in blob_files(reg)
    assert await reg.registry.index.blobs.get(digest_of(big)) is None
    # Chunked: refused as the bytes arrive, the session ends, nothing stays.
    resp = await reg.client.post("/v2/small/app/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await reg.client.patch(location, data=big)
    assert resp.status == 403
    assert error_codes(await resp.json()) == ["DENIED"]
    assert list((reg.data_dir / "uploads").iterdir()) == []
    assert (await reg.client.get(location)).status == 404
    # Other namespaces are not limited; raising the quota lets the push through.
    await reg.push_blob("elsewhere/app", big)
    await api(reg, "PUT", "/namespaces/small/quota", json={"quota_bytes": None})
    await reg.push_blob("small/app", big)


def test_lifecycle_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def seed() -> None:
        from aioreg.api.server import RegistryServer
        from tests.conftest import HttpClient, make_config

        server = RegistryServer(make_config(data, {"listen": "127.0.0.1:0"}))
        await server.start()
        client = HttpClient(server)
        r = Reg(client, server)
        for tag in ("v1", "v2", "v3"):
            await push(r, "team/app", tag, [tag.encode() * 100])
        await r.push_blob("team/app", b"orphan")
        await Accounts(r.registry.index).create_namespace("team", None)
        await client.close()
        await server.stop()

    asyncio.run(seed())

    def aioreg(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "aioreg", *args, "--data", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    listing = aioreg("repo", "ls")
    assert "team/app" in listing and "    3" in listing
    assert "v2" in aioreg("repo", "show", "team/app")
    assert "team/app" in aioreg("usage")
    aioreg("retention", "set", "team", "--keep-last", "1", "--protect", "none-protected")
    preview = aioreg("retention", "preview")
    assert "would remove team/app:v1" in preview and "would remove team/app:v2" in preview
    applied = aioreg("retention", "apply")
    assert applied.replace("removed", "X") == preview.replace("would remove", "X").replace(
        "selected", "X"
    )
    assert "quota of team: 1.0 MiB" in aioreg("quota", "team", "1M")
    assert "would remove" in aioreg("gc", "--dry-run")
    aioreg("repo", "rm", "team/app")
    assert "team/app" not in aioreg("repo", "ls")


async def test_scheduled_gc_runs_and_logs(make_registry: AppFactory, tmp_path: Path) -> None:
    reg = await make_registry(gc={"grace_period": 0, "interval": 0.2})
    orphan = await reg.push_blob("app", b"orphan for the schedule")
    deadline = time.monotonic() + 5
    while (await reg.client.head(f"/v2/app/blobs/{orphan}")).status != 404:
        assert time.monotonic() < deadline, "the scheduled GC never ran"
        await asyncio.sleep(0.1)
    events = await reg.app[MANAGEMENT_KEY].listings.events(20)
    assert any(e.kind == "gc" and "1 blobs" in (e.detail or "") for e in events)


def trash_like_a_killed_sweep(reg: Reg, digest: str, run: str = "") -> Path:
    """What SIGKILL mid-sweep leaves: the file moved to the sweep's ``trash/<run>/`` (or, from
    versions before per-run directories, ``trash/``), its index row rolled back."""
    source = reg.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
    target = reg.data_dir / "trash" / run / digest.replace(":", "-")
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    return target


async def agree_and_serve(reg: Reg, repo: str, digest: str, data: bytes) -> None:
    """HEAD and GET give the same answer, and it is the blob's exact bytes."""
    head = await reg.client.head(f"/v2/{repo}/blobs/{digest}")
    resp = await reg.client.get(f"/v2/{repo}/blobs/{digest}")
    assert (head.status, resp.status) == (200, 200), f"HEAD {head.status}, GET {resp.status}"
    assert await resp.read() == data


async def test_start_up_recovers_the_trash_of_a_killed_sweep(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "d"
    reg = await make_registry(data_dir)
    layer = os.urandom(20_000)
    await push(reg, "app", "v1", [layer])
    orphan = b"acknowledged, not yet referenced"
    orphan_digest = await reg.push_blob("app", orphan)
    swept = await reg.push_blob("app", b"swept for good before the kill")
    await reg.client.close()
    await reg.server.stop()
    trash_like_a_killed_sweep(reg, digest_of(layer), run="0123456789abcdef0123456789abcdef")
    trash_like_a_killed_sweep(reg, orphan_digest)
    # A sweep that committed and died before emptying the trash: its row is gone.
    committed = trash_like_a_killed_sweep(reg, swept)
    index = Index(data_dir / "index.db")
    await index.open()
    await index.db._writer.execute("DELETE FROM repository_blobs WHERE digest = ?", (swept,))  # type: ignore[union-attr]
    await index.db._writer.execute("DELETE FROM blobs WHERE digest = ?", (swept,))  # type: ignore[union-attr]
    await index.close()

    reg = await make_registry(data_dir)
    await agree_and_serve(reg, "app", digest_of(layer), layer)
    await agree_and_serve(reg, "app", orphan_digest, orphan)
    assert (await reg.client.get("/v2/app/manifests/v1")).status == 200
    config = b'{"os": "linux"}'
    await reg.push_blob("app", config)
    body = image_manifest(config, [orphan])
    await reg.push_manifest("app", "v2", body)
    assert await (await reg.client.get("/v2/app/manifests/v2")).read() == body
    assert not committed.exists()
    assert swept[7:] not in blob_files(reg), "a swept blob came back as an unindexed file"
    assert (await reg.client.head(f"/v2/app/blobs/{swept}")).status == 404
    assert list((data_dir / "trash").iterdir()) == [], "start-up left the trash unsettled"


async def test_check_restores_a_crashed_sweeps_trash_instead_of_quarantining(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "d"
    reg = await make_registry(data_dir)
    blob = os.urandom(10_000)
    digest = await reg.push_blob("app", blob)
    trash_like_a_killed_sweep(reg, digest)  # a CLI ``aioreg gc`` was killed mid-sweep
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aioreg", "check", "--data", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"{digest}: restored from trash" in result.stdout, result.stdout
    await agree_and_serve(reg, "app", digest, blob)


async def test_gc_and_janitor_survive_an_upload_file_vanishing_mid_walk(
    make_registry: AppFactory,
) -> None:
    """A name listed in ``uploads/`` that is gone by the time it is examined (here a dangling
    symlink, the same race made permanent) must not fail GC after it committed, nor kill
    the upload janitor."""
    reg = await make_registry(storage={"upload_session_ttl": 2}, gc={"grace_period": 0})
    (reg.data_dir / "uploads" / "vanished").symlink_to(reg.data_dir / "nowhere")
    orphan = await reg.push_blob("app", b"collected")
    report = await api(reg, "POST", "/gc")
    assert report["blobs_removed"] == 1
    assert (await reg.client.head(f"/v2/app/blobs/{orphan}")).status == 404
    resp = await reg.client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    deadline = time.monotonic() + 15
    # The janitor runs every second; the idle session expires after 2.
    while (await reg.client.get(location)).status != 404:
        assert time.monotonic() < deadline, "the upload janitor stopped running"
        await asyncio.sleep(0.1)


async def test_periodic_job_logs_a_failed_run_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def flaky() -> int:
        runs.append(len(runs))
        if len(runs) == 1:
            raise OSError("first run fails")
        return len(runs)

    job = PeriodicJob("flaky", 0.01, flaky)
    job.start()
    deadline = time.monotonic() + 5
    while len(runs) < 3:
        assert time.monotonic() < deadline, "the job stopped after a failed run"
        await asyncio.sleep(0.01)
    await job.stop()
    stopped_at = len(runs)
    assert "flaky failed" in caplog.text and "first run fails" in caplog.text
    await asyncio.sleep(0.05)
    assert len(runs) == stopped_at, "the job ran after stop()"
