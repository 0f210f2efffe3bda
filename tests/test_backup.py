"""``aioreg backup`` / ``aioreg restore`` next to a real ``aioreg serve`` process taking pushes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import zstandard

from aioreg.backup.snapshot import take_backup
from tests.conftest import OCI_MANIFEST, digest_of, image_manifest
from tests.process import Server, free_port, start

PUSHERS = 8


@dataclass
class Image:
    repository: str
    tag: str
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioreg",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def serve(servers: list[Server], data: Path, env: dict[str, str] | None = None) -> str:
    port = free_port()
    start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(data)], env)
    return f"http://127.0.0.1:{port}"


async def push(session: aiohttp.ClientSession, repository: str, tag: str) -> Image:
    """Config and one layer of random bytes, then the manifest: acknowledged when this returns."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "id": os.urandom(8).hex()})
    layer = os.urandom(2048 + int.from_bytes(os.urandom(2), "big") % 8192)
    image = Image(repository, tag, image_manifest(config.encode(), [layer]))
    for data in (config.encode(), layer):
        digest = digest_of(data)
        async with session.post(
            f"/v2/{repository}/blobs/uploads/?digest={digest}", data=data
        ) as resp:
            assert resp.status == 201, await resp.text()
        image.blobs[digest] = data
    async with session.put(
        f"/v2/{repository}/manifests/{tag}",
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        assert resp.status == 201, await resp.text()
    return image


async def push_many(url: str, count: int, prefix: str) -> list[Image]:
    async with aiohttp.ClientSession(url) as session:
        return [await push(session, f"{prefix}/app{i % 3}", f"v{i}") for i in range(count)]


async def assert_pulls(url: str, images: list[Image]) -> None:
    """Every image's manifest and blobs, byte for byte."""
    async with aiohttp.ClientSession(url) as session:
        for image in images:
            async with session.get(
                f"/v2/{image.repository}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST}
            ) as resp:
                assert resp.status == 200, (image.repository, image.tag)
                assert await resp.read() == image.manifest
            for digest, data in image.blobs.items():
                async with session.get(f"/v2/{image.repository}/blobs/{digest}") as resp:
                    assert resp.status == 200, digest
                    assert await resp.read() == data


async def assert_every_tag_complete(url: str) -> int:
    """Nothing half-present: each tag's manifest is served and so is every blob it names,
    with the bytes of its digest. Returns how many tags there are."""
    tags = 0
    async with aiohttp.ClientSession(url) as session:
        async with session.get("/v2/_catalog?n=10000") as resp:
            repositories = (await resp.json())["repositories"]
        for repository in repositories:
            async with session.get(f"/v2/{repository}/tags/list?n=10000") as resp:
                names = (await resp.json())["tags"] or []
            for tag in names:
                async with session.get(
                    f"/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
                ) as resp:
                    assert resp.status == 200, (repository, tag)
                    body = json.loads(await resp.read())
                for descriptor in [body["config"], *body["layers"]]:
                    async with session.get(
                        f"/v2/{repository}/blobs/{descriptor['digest']}"
                    ) as resp:
                        assert resp.status == 200, (repository, tag, descriptor)
                        data = await resp.read()
                    assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
                tags += 1
    return tags


async def restore_and_check(
    servers: list[Server], backup: Path, target: Path, images: list[Image]
) -> None:
    """Restore ``backup`` into ``target``: scrub --full is clean, every image pulls."""
    code, out, err = await cli("restore", str(backup), "--data", str(target))
    assert code == 0, out + err
    code, out, err = await cli("scrub", "--full", "--data", str(target))
    assert code == 0, out + err
    assert " 0 corrupt, 0 missing" in out
    code, out, err = await cli("check", "--dry-run", "--data", str(target))
    assert (code, out) == (0, "index and disk agree\n"), out + err
    url = serve(servers, target)
    await assert_pulls(url, images)
    assert await assert_every_tag_complete(url) >= len(images)


def blob_files(backup: Path) -> list[Path]:
    return [p for p in (backup / "blobs").rglob("*") if p.is_file()]


async def test_backup_while_eight_clients_push_restores_every_acknowledged_image(
    servers: list[Server], tmp_path: Path
) -> None:
    url = serve(servers, tmp_path / "data")
    acknowledged: list[Image] = []
    stop = asyncio.Event()

    async def pusher(n: int) -> None:
        async with aiohttp.ClientSession(url) as session:
            i = 0
            while not stop.is_set():
                acknowledged.append(await push(session, f"team{n}/app", f"v{i}"))
                i += 1

    tasks = [asyncio.create_task(pusher(n)) for n in range(PUSHERS)]
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(acknowledged) < 2 * PUSHERS:
            assert asyncio.get_running_loop().time() < deadline, "pushes did not get going"
            await asyncio.sleep(0.05)
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
        before = list(acknowledged)
        code, out, err = await cli("backup", str(tmp_path / "b1"), "--data", str(tmp_path / "data"))
        assert code == 0, out + err
        during = len(acknowledged) - len(before)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert during > 0, "pushes went on while the backup ran"
    manifest = json.loads((tmp_path / "b1" / "backup.json").read_text())
    assert manifest["missing"] == []
    assert manifest["counts"]["tags"] >= len(before)
    assert len(blob_files(tmp_path / "b1")) == manifest["taken_blobs"] == len(manifest["blobs"])
    await restore_and_check(servers, tmp_path / "b1", tmp_path / "r1", before)


async def test_incremental_backup_takes_only_new_blobs(
    servers: list[Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    url = serve(servers, data)
    first = await push_many(url, 6, "inc")
    code, out, err = await cli("backup", str(tmp_path / "full"), "--data", str(data))
    assert code == 0, out + err
    second = await push_many(url, 4, "more")
    (tmp_path / "latest").symlink_to("full")  # as the README's cron example does
    code, out, err = await cli(
        "backup", str(tmp_path / "incr"), "--since", str(tmp_path / "latest"), "--data", str(data)
    )
    assert code == 0, out + err
    new_blobs = {d for image in second for d in image.blobs}
    taken = {f"sha256:{p.name}" for p in blob_files(tmp_path / "incr")}
    assert taken == new_blobs
    full = json.loads((tmp_path / "full" / "backup.json").read_text())
    incr = json.loads((tmp_path / "incr" / "backup.json").read_text())
    assert incr["base"]["id"] == full["id"]
    assert incr["base"]["name"] == "full"
    assert incr["taken_blobs"] == len(new_blobs)
    await restore_and_check(servers, tmp_path / "incr", tmp_path / "r", first + second)


async def test_restore_refuses_a_non_empty_data_dir(servers: list[Server], tmp_path: Path) -> None:
    data = tmp_path / "data"
    url = serve(servers, data)
    await push_many(url, 1, "x")
    code, out, err = await cli("backup", str(tmp_path / "b"), "--data", str(data))
    assert code == 0, out + err
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, out, err = await cli("restore", str(tmp_path / "b"), "--data", str(target))
    assert code == 1
    assert "is not empty: restore only into a new or empty data directory" in err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


async def test_backup_next_to_a_running_gc_loses_nothing(
    servers: list[Server], tmp_path: Path
) -> None:
    """Between the index snapshot and the copying of its blobs, every image it holds is
    deleted and ``aioreg gc`` (grace 0) runs: the backup still holds every blob."""
    data = tmp_path / "data"
    gc_env = {"AIOREG_GC_GRACE_PERIOD": "0"}
    url = serve(servers, data, gc_env)
    images = await push_many(url, 6, "gc")
    gc_output: list[str] = []

    def delete_and_collect(_: int) -> None:
        """Called (on the backup's loop) after its first blob: the rest are still to copy."""
        if gc_output:
            return
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _delete_all(url, images)).result()
            served = pool.submit(asyncio.run, _server_gc(url)).result()
            assert served["held_by_backup"] and served["blobs_removed"] == 0, served
            code, out, err = pool.submit(
                asyncio.run, cli("gc", "--data", str(data), env=gc_env)
            ).result()
        assert code == 0, out + err
        gc_output.append(out)

    manifest = await take_backup(data, tmp_path / "b", on_blob=delete_and_collect)
    assert manifest.missing == []
    assert "holds GC off: nothing removed" in gc_output[0]
    assert manifest.taken_blobs == len({d for image in images for d in image.blobs})
    # Once the backup is done, GC removes what it held off.
    code, out, err = await cli("gc", "--data", str(data), env=gc_env)
    assert code == 0 and f"removed {manifest.taken_blobs} blobs" in out, out + err
    await restore_and_check(servers, tmp_path / "b", tmp_path / "r", images)


async def _server_gc(url: str) -> dict[str, object]:
    """The server's own GC, as the scheduled one runs."""
    async with aiohttp.ClientSession(url) as session, session.post("/api/v1/gc") as resp:
        assert resp.status == 200, await resp.text()
        report: dict[str, object] = await resp.json()
        return report


async def _delete_all(url: str, images: list[Image]) -> None:
    async with aiohttp.ClientSession(url) as session:
        for image in images:
            async with session.delete(
                f"/v2/{image.repository}/manifests/{digest_of(image.manifest)}"
            ) as resp:
                assert resp.status == 202, await resp.text()


@pytest.mark.parametrize("incremental", [False, True])
async def test_zstd_archive_restores(
    servers: list[Server], tmp_path: Path, incremental: bool
) -> None:
    data = tmp_path / "data"
    url = serve(servers, data)
    images = await push_many(url, 4, "z")
    archive = tmp_path / "full.tar.zst"
    code, out, err = await cli("backup", str(archive), "--zstd", "--data", str(data))
    assert code == 0, out + err
    assert archive.is_file()
    assert archive.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # the zstd frame magic
    if incremental:
        images += await push_many(url, 3, "z2")
        archive = tmp_path / "incr.tar.zst"
        code, out, err = await cli(
            "backup",
            str(archive),
            "--zstd",
            "--since",
            str(tmp_path / "full.tar.zst"),
            "--data",
            str(data),
        )
        assert code == 0, out + err
        assert "took 6 blobs" in out
    await restore_and_check(servers, archive, tmp_path / "r", images)


async def test_restore_verifies_every_blob_and_quarantines_a_corrupt_one(
    servers: list[Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    url = serve(servers, data)
    good, bad = await push_many(url, 2, "v")
    code, out, err = await cli("backup", str(tmp_path / "b"), "--data", str(data))
    assert code == 0, out + err
    layer = next(
        d for d, blob in bad.blobs.items() if d != json.loads(bad.manifest)["config"]["digest"]
    )
    in_backup = tmp_path / "b" / "blobs" / "sha256" / layer[7:9] / layer[7:]
    in_backup.unlink()  # a hard link to the served file: replace it, leave the server's alone
    in_backup.write_bytes(bad.blobs[layer][:-1] + b"!")
    code, out, err = await cli("restore", str(tmp_path / "b"), "--data", str(tmp_path / "r"))
    assert code == 1, out + err
    assert f"corrupt in the backup, quarantined: {layer}" in out
    code, out, err = await cli("scrub", "--full", "--data", str(tmp_path / "r"))
    assert code == 0 and " 0 corrupt, 0 missing" in out, out + err
    restored = serve(servers, tmp_path / "r")
    await assert_pulls(restored, [good])
    async with (
        aiohttp.ClientSession(restored) as session,
        session.get(f"/v2/{bad.repository}/blobs/{layer}") as resp,
    ):
        assert resp.status == 404  # never served; a push of the same bytes heals it


async def test_backup_to_another_filesystem_copies_and_verifies(
    servers: list[Server], tmp_path: Path
) -> None:
    elsewhere = Path("/dev/shm")
    if not os.access(elsewhere, os.W_OK) or elsewhere.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second writable filesystem (/dev/shm) to copy to")
    data = tmp_path / "data"
    url = serve(servers, data)
    images = await push_many(url, 3, "fs")
    target = Path(tempfile.mkdtemp(prefix="aioreg-bk-", dir=elsewhere))
    try:
        code, out, err = await cli("backup", str(target / "b"), "--data", str(data))
        assert code == 0, out + err
        manifest = json.loads((target / "b" / "backup.json").read_text())
        assert manifest["linked_blobs"] == 0
        assert manifest["taken_blobs"] == len(blob_files(target / "b")) == 6
        await restore_and_check(servers, target / "b", tmp_path / "r", images)
    finally:
        shutil.rmtree(target)


async def test_restore_of_an_incremental_backup_needs_its_base(
    servers: list[Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    url = serve(servers, data)
    images = await push_many(url, 2, "chain")
    for name, since in (("full", []), ("incr", ["--since", str(tmp_path / "full")])):
        code, out, err = await cli("backup", str(tmp_path / name), *since, "--data", str(data))
        assert code == 0, out + err
    # Moved together, the chain is found next to the incremental backup.
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "full").rename(moved / "full")
    (tmp_path / "incr").rename(moved / "incr")
    await restore_and_check(servers, moved / "incr", tmp_path / "r", images)
    (moved / "full").rename(tmp_path / "gone")
    code, out, err = await cli("restore", str(moved / "incr"), "--data", str(tmp_path / "r2"))
    assert code == 1
    assert "its base backup full" in err and "is neither next to it nor at" in err
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())


async def test_an_archive_cut_at_a_member_boundary_is_damaged_not_restored(
    servers: list[Server], tmp_path: Path
) -> None:
    """A tar stream can end cleanly before any member: an archive whose blobs stop early
    (here: a complete zstd frame of the tar cut just before its third blob) is damaged,
    not a smaller backup with blobs quarantined."""
    data = tmp_path / "data"
    url = serve(servers, data)
    await push_many(url, 4, "t")
    archive = tmp_path / "a.tar.zst"
    code, out, err = await cli("backup", str(archive), "--zstd", "--data", str(data))
    assert code == 0, out + err
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive.read_bytes())).read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        blobs = [m for m in tar.getmembers() if m.name.startswith("blobs/")]
    assert len(blobs) > 3
    archive.write_bytes(zstandard.ZstdCompressor().compress(raw[: blobs[2].offset]))
    code, out, err = await cli("restore", str(archive), "--data", str(tmp_path / "r"))
    assert code == 1, out + err
    assert f"archive {archive} is damaged or truncated" in err
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []


async def test_restore_of_a_truncated_archive_fails_and_writes_nothing(
    servers: list[Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    url = serve(servers, data)
    await push_many(url, 4, "t")
    archive = tmp_path / "a.tar.zst"
    code, out, err = await cli("backup", str(archive), "--zstd", "--data", str(data))
    assert code == 0, out + err
    assert archive.stat().st_mode & 0o777 == 0o600  # it holds the index's password hashes
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) * 2 // 3])
    code, out, err = await cli("restore", str(archive), "--data", str(tmp_path / "r"))
    assert code == 1, out + err
    assert f"archive {archive} is damaged or truncated" in err
    assert "Traceback" not in err
    assert list((tmp_path / "r").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if "restoring" in p.name] == []
