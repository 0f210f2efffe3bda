"""Export and import: OCI image layouts (tar, tar.zst, directories) out of and into registries,
checked with skopeo, over the CLI next to a running server and over /api/v1."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from aioreg.auth.accounts import Accounts
from tests.conftest import (
    EMPTY_JSON,
    AppFactory,
    Reg,
    artifact_manifest,
    digest_of,
    image_manifest,
)
from tests.images import OCI_INDEX, OCI_MANIFEST, Image, Layout, multi_platform
from tests.test_auth import ADMIN_PASSWORD, basic

SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM_TYPE = "application/spdx+json"
TIMEOUT = 120


async def aioreg(
    data: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The CLI as a separate process next to the test's server (the loop keeps serving)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aioreg", *args, "--data", str(data)],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
    )


async def run(*args: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def need_skopeo() -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (.ci/run installs it)")


async def push_image(reg: Reg, name: str, image: Image) -> None:
    for blob in (image.config, *image.layers):
        await reg.push_blob(name, blob)
    await reg.push_manifest(name, image.manifest_digest, image.manifest)


async def push_signed_index(reg: Reg, name: str, tag: str, root: Path) -> dict[str, bytes]:
    """A two-platform index tagged ``tag`` with a signature and an SBOM referring to it;
    returns every manifest pushed, by digest."""
    digest, index, images = multi_platform(root, name.replace("/", "-"))
    for image in images:
        await push_image(reg, name, image)
    await reg.push_manifest(name, tag, index, OCI_INDEX)
    subject = (OCI_INDEX, digest, len(index))
    await reg.push_blob(name, EMPTY_JSON)
    signature = artifact_manifest(SIGNATURE_TYPE, subject)
    sbom_doc = json.dumps({"spdxVersion": "SPDX-2.3", "name": name}).encode()
    await reg.push_blob(name, sbom_doc)
    sbom = artifact_manifest(
        SBOM_TYPE,
        subject,
        layers=[{"mediaType": SBOM_TYPE, "digest": digest_of(sbom_doc), "size": len(sbom_doc)}],
    )
    manifests = {digest: index, **{i.manifest_digest: i.manifest for i in images}}
    for body in (signature, sbom):
        manifests[await reg.push_manifest(name, digest_of(body), body)] = body
    return manifests


def members(archive: Path) -> list[str]:
    data = archive.read_bytes()
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def archive_index(archive: Path) -> dict[str, object]:
    data = archive.read_bytes()
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile("index.json")
        assert f is not None
        return json.loads(f.read())


# -- export -------------------------------------------------------------------------


async def test_export_writes_each_blob_once_with_referrers_and_tags(
    reg: Reg, tmp_path: Path
) -> None:
    manifests = await push_signed_index(reg, "team/app", "1.0", tmp_path / "src")
    # Other repositories sharing blobs: the archive still holds each blob once.
    await push_signed_index(reg, "team/copy", "1.0", tmp_path / "src")
    layout = Layout(tmp_path / "other")
    image = layout.image("other")
    await push_image(reg, "team/other", image)
    await reg.push_manifest("team/other", "v1", image.manifest)
    archive = tmp_path / "team.tar.zst"
    result = await aioreg(reg.data_dir, "export", "team", "-o", str(archive))
    assert result.returncode == 0, result.stderr
    names = members(archive)
    assert names[:2] == ["oci-layout", "index.json"]
    blobs = [n for n in names if n.startswith("blobs/sha256/") and len(n) > 20]
    assert len(blobs) == len(set(blobs))
    for digest in manifests:
        assert f"blobs/sha256/{digest.split(':')[1]}" in blobs
    index = archive_index(archive)
    entries = {
        (
            m["annotations"]["io.aioreg.repository"],
            m["annotations"].get("org.opencontainers.image.ref.name"),
            m["digest"],
        )
        for m in index["manifests"]  # type: ignore[union-attr]
    }
    index_digest = next(d for d, b in manifests.items() if b'"manifests"' in b)
    assert ("team/app", "1.0", index_digest) in entries
    assert ("team/other", "v1", image.manifest_digest) in entries
    referrers = {d for d, b in manifests.items() if b'"subject"' in b}
    assert {(r, d) for r, _, d in entries if d in referrers} == {("team/app", d) for d in referrers}


async def test_skopeo_reads_an_uncompressed_export(reg: Reg, tmp_path: Path) -> None:
    need_skopeo()
    manifests = await push_signed_index(reg, "team/app", "1.0", tmp_path / "src")
    archive = tmp_path / "app.tar"
    result = await aioreg(
        reg.data_dir, "export", "team/app:1.0", "--no-compress", "-o", str(archive)
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "copied"
    await run("skopeo", "copy", "--all", f"oci-archive:{archive}:1.0", f"oci:{out}:1.0")
    copied = {p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
    for digest, body in manifests.items():
        if b'"subject"' not in body:  # skopeo copies the image, not its referrers
            assert copied[digest.split(":")[1]] == body
    for path in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(copied[path.name]).hexdigest() == path.name


async def test_export_of_an_unknown_tag_fails_and_writes_nothing(reg: Reg, tmp_path: Path) -> None:
    await push_signed_index(reg, "team/app", "1.0", tmp_path / "src")
    archive = tmp_path / "none.tar.zst"
    result = await aioreg(reg.data_dir, "export", "team/app:2.0", "-o", str(archive))
    assert result.returncode == 1
    assert b"team/app:2.0" in result.stderr
    assert not archive.exists() and list(tmp_path.glob(".none*")) == []


# -- import ---------------------------------------------------------------------------


async def export(reg: Reg, path: Path, *selectors: str, compress: bool = True) -> Path:
    flags = [] if compress else ["--no-compress"]
    result = await aioreg(reg.data_dir, "export", *selectors, *flags, "-o", str(path))
    assert result.returncode == 0, result.stderr
    return path


async def manifest_bytes(reg: Reg, name: str, reference: str) -> bytes:
    resp = await reg.client.get(
        f"/v2/{name}/manifests/{reference}",
        headers={"Accept": f"{OCI_INDEX},application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status == 200, await resp.text()
    return bytes(await resp.read())


async def assert_nothing_visible(reg: Reg) -> None:
    resp = await reg.client.get("/v2/_catalog")
    assert (await resp.json())["repositories"] == []
    assert list((reg.data_dir / "uploads").iterdir()) == []
    assert not (reg.data_dir / "blobs" / "sha256").exists() or not any(
        (reg.data_dir / "blobs" / "sha256").rglob("*")
    )


async def test_round_trip_keeps_every_digest_and_skopeo_copies_it_byte_for_byte(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    need_skopeo()
    source = await make_registry(tmp_path / "a")
    manifests = await push_signed_index(source, "team/app", "1.0", tmp_path / "src")
    archive = await export(source, tmp_path / "all.tar.zst")
    target = await make_registry(tmp_path / "b")
    result = await aioreg(target.data_dir, "import", str(archive))
    assert result.returncode == 0, result.stderr
    assert b"tag team/app:1.0 -> sha256:" in result.stdout
    for digest, body in manifests.items():
        assert await manifest_bytes(target, "team/app", digest) == body
    index_digest = next(d for d, b in manifests.items() if b'"manifests"' in b)
    assert await manifest_bytes(target, "team/app", "1.0") == manifests[index_digest]
    resp = await target.client.get(f"/v2/team/app/referrers/{index_digest}")
    types = sorted(m["artifactType"] for m in (await resp.json())["manifests"])
    assert types == sorted([SBOM_TYPE, SIGNATURE_TYPE])
    out = tmp_path / "copied"
    await run(
        "skopeo",
        "copy",
        "--all",
        "--src-tls-verify=false",
        f"docker://{target.server.host}:{target.server.port}/team/app:1.0",
        f"oci:{out}",
    )
    copied = {p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
    for path in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        assert copied[path.name] == path.read_bytes()
    # Again: everything is there already; nothing new, nothing written.
    again = await aioreg(target.data_dir, "import", str(archive))
    assert again.returncode == 0, again.stderr
    assert b"0 new manifests" in again.stdout and b"blobs: 0 new" in again.stdout


async def test_a_layout_skopeo_wrote_imports(make_registry: AppFactory, tmp_path: Path) -> None:
    need_skopeo()
    source = await make_registry(tmp_path / "a")
    manifests = await push_signed_index(source, "team/app", "1.0", tmp_path / "src")
    index_digest = next(d for d, b in manifests.items() if b'"manifests"' in b)
    host = f"{source.server.host}:{source.server.port}"
    layout, archive = tmp_path / "layout", tmp_path / "skopeo.tar"
    for dest in (f"oci:{layout}:1.0", f"oci-archive:{archive}:1.0"):
        await run(
            "skopeo",
            "copy",
            "--all",
            "--src-tls-verify=false",
            f"docker://{host}/team/app:1.0",
            dest,
        )
    target = await make_registry(tmp_path / "b")
    refused = await aioreg(target.data_dir, "import", str(layout))
    assert refused.returncode == 1 and b"--repository" in refused.stderr
    for source_path, name in ((layout, "moved/app"), (archive, "moved/tarred")):
        result = await aioreg(target.data_dir, "import", str(source_path), "--repository", name)
        assert result.returncode == 0, result.stderr
        assert await manifest_bytes(target, name, "1.0") == manifests[index_digest]
        for digest, body in manifests.items():
            if b'"subject"' not in body:
                assert await manifest_bytes(target, name, digest) == body


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
async def test_a_damaged_archive_names_the_blob_and_stores_nothing(
    make_registry: AppFactory, tmp_path: Path, damage: str
) -> None:
    source = await make_registry(tmp_path / "a")
    layout = Layout(tmp_path / "src")
    image = layout.image("big", layer_count=1)
    # Incompressible, so the layer's bytes stand in the tar as they are.
    layer = random.Random(7).randbytes(1 << 20)
    body = image_manifest(image.config, [layer])
    await source.push_blob("team/app", image.config)
    await source.push_blob("team/app", layer)
    await source.push_manifest("team/app", "1.0", body)
    archive = await export(source, tmp_path / "a.tar", compress=damage == "truncated")
    data = bytearray(archive.read_bytes())
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    else:
        data[data.find(layer) + 1000] ^= 0xFF
    archive.write_bytes(bytes(data))
    target = await make_registry(tmp_path / "b")
    result = await aioreg(target.data_dir, "import", str(archive))
    assert result.returncode == 1
    error = result.stderr.decode()
    assert digest_of(layer) in error, error
    assert ("corrupt" if damage == "corrupted" else "truncated") in error, error
    assert "Traceback" not in error
    await assert_nothing_visible(target)


async def one_layer_image(reg: Reg, name: str, seed: int, size: int = 1 << 20) -> bytes:
    """An incompressible layer (its bytes stand in a plain tar as they are) in an image
    tagged 1.0; returns the layer."""
    layer = random.Random(seed).randbytes(size)
    config = b'{"architecture":"amd64","os":"linux"}'
    await reg.push_blob(name, config)
    await reg.push_blob(name, layer)
    await reg.push_manifest(name, "1.0", image_manifest(config, [layer]))
    return layer


async def blob_bytes(reg: Reg, name: str, digest: str) -> bytes:
    resp = await reg.client.get(f"/v2/{name}/blobs/{digest}")
    assert resp.status == 200, await resp.text()
    return bytes(await resp.read())


async def test_a_blob_already_stored_is_skipped_not_hashed_unless_verify(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    source = await make_registry(tmp_path / "a")
    layer = await one_layer_image(source, "team/app", 11)
    archive = await export(source, tmp_path / "a.tar", compress=False)
    data = bytearray(archive.read_bytes())
    data[data.find(layer) + 1000] ^= 0xFF  # the archive's copy of a blob the target has
    archive.write_bytes(bytes(data))
    target = await make_registry(tmp_path / "b")
    await target.push_blob("other/repo", layer)
    verified = await aioreg(target.data_dir, "import", str(archive), "--verify")
    assert verified.returncode == 1
    assert digest_of(layer) in verified.stderr.decode() and b"corrupt" in verified.stderr
    resp = await target.client.get("/v2/team/app/tags/list")
    assert resp.status == 404
    # Without --verify the archive's copy is skipped: the registry's own is linked.
    result = await aioreg(target.data_dir, "import", str(archive))
    assert result.returncode == 0, result.stderr
    assert b"blobs: 1 new" in result.stdout and b"1 already stored" in result.stdout
    assert await blob_bytes(target, "team/app", digest_of(layer)) == layer
    # Cut inside that skipped blob (skipped by seeking): still a truncated archive.
    archive.write_bytes(bytes(data[: data.find(layer) + len(layer) // 2]))
    third = await make_registry(tmp_path / "c")
    await third.push_blob("other/repo", layer)
    cut = await aioreg(third.data_dir, "import", str(archive))
    assert cut.returncode == 1 and b"truncated" in cut.stderr, cut.stderr
    resp = await third.client.get("/v2/team/app/tags/list")
    assert resp.status == 404


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
async def test_tars_other_tools_write_import(
    make_registry: AppFactory, tmp_path: Path, tar_format: int
) -> None:
    """GNU long names, PAX headers, links, directories and files no layout has, around
    the layout's own (gzip layers: their bytes, read in blocks, must come out whole)."""
    layout = Layout(tmp_path / "src")
    image = layout.image("tools", layer_count=2)
    layout.tag("1.0", OCI_MANIFEST, image.manifest_digest, len(image.manifest))
    (tmp_path / "src" / ("notes-" + "n" * 150 + ".txt")).write_bytes(b"x" * 700)
    (tmp_path / "src" / "link").symlink_to("index.json")
    archive = tmp_path / "other.tar"
    with tarfile.open(archive, "w", format=tar_format) as tar:
        tar.add(layout.root, ".")
    target = await make_registry(tmp_path / "b")
    result = await aioreg(target.data_dir, "import", str(archive), "--repository", "x/y")
    assert result.returncode == 0, result.stderr
    assert await manifest_bytes(target, "x/y", "1.0") == image.manifest
    for blob in (image.config, *image.layers):
        assert await blob_bytes(target, "x/y", digest_of(blob)) == blob


async def test_gc_running_during_an_import_loses_nothing_it_makes_visible(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    """Server GC over HTTP and ``aioreg gc`` (grace 0, untagged too) sweep back to back
    while an import stores 40 images, each untagged until the import's last step."""
    layout = Layout(tmp_path / "src")
    images = [layout.image(f"gc{i}", layer_count=1) for i in range(40)]
    for i, image in enumerate(images):
        layout.tag(f"v{i}", OCI_MANIFEST, image.manifest_digest, len(image.manifest))
    target = await make_registry(tmp_path / "b", gc={"grace_period": 0, "delete_untagged": True})
    # Garbage the import will need: stored, referenced by nothing, so sweepable at once.
    await target.push_blob("other/repo", images[0].layers[0])
    done = asyncio.Event()
    sweeps = {"http": 0, "cli": 0}

    async def http_gc() -> None:
        while not done.is_set():
            resp = await target.client.post("/api/v1/gc?untagged=true")
            assert resp.status == 200, await resp.text()
            sweeps["http"] += 1

    async def cli_gc() -> None:
        env = {**os.environ, "AIOREG_GC_GRACE_PERIOD": "0"}
        command = [sys.executable, "-m", "aioreg", "gc", "--untagged"]
        while not done.is_set():
            result = await asyncio.to_thread(
                subprocess.run,
                [*command, "--data", str(target.data_dir)],
                env=env,
                capture_output=True,
                timeout=TIMEOUT,
            )
            assert result.returncode == 0, result.stderr
            sweeps["cli"] += 1

    async def importing() -> subprocess.CompletedProcess[bytes]:
        try:
            return await aioreg(target.data_dir, "import", str(layout.root), "--repository", "a/b")
        finally:
            done.set()

    result, *_ = await asyncio.gather(importing(), http_gc(), cli_gc())
    assert result.returncode == 0, result.stderr
    assert sweeps["http"] > 1 and sweeps["cli"] >= 1
    for i, image in enumerate(images):
        assert await manifest_bytes(target, "a/b", f"v{i}") == image.manifest
        for blob in (image.config, *image.layers):
            assert await blob_bytes(target, "a/b", digest_of(blob)) == blob


async def test_an_immutable_tag_is_not_overwritten_and_is_reported(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    source = await make_registry(tmp_path / "a")
    await source.push_image("team/app", "v1", seed="new")
    await source.push_image("team/app", "latest", seed="new")
    archive = await export(source, tmp_path / "a.tar.zst")
    target = await make_registry(tmp_path / "b")
    await Accounts(target.registry.index).create_namespace("team", None)
    await Accounts(target.registry.index).configure("team", None, None, {"immutable_tags": ["v*"]})
    old, _ = await target.push_image("team/app", "v1", seed="old")
    result = await aioreg(target.data_dir, "import", str(archive))
    assert result.returncode == 1, result.stdout
    out = result.stdout.decode()
    assert "tag team/app:v1: REFUSED" in out and old in out, out
    resp = await target.client.head("/v2/team/app/manifests/v1")
    assert resp.headers["Docker-Content-Digest"] == old
    resp = await target.client.head("/v2/team/app/manifests/latest")
    assert resp.status == 200  # the rest of the import went in


async def test_dry_run_lists_what_would_be_stored_and_stores_nothing(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    source = await make_registry(tmp_path / "a")
    manifests = await push_signed_index(source, "team/app", "1.0", tmp_path / "src")
    archive = await export(source, tmp_path / "a.tar.zst")
    target = await make_registry(tmp_path / "b")
    result = await aioreg(target.data_dir, "import", "--dry-run", str(archive))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "tag team/app:1.0 -> sha256:" in out and "would be set" in out
    for digest in manifests:
        assert f"manifest team/app@{digest}: would be stored" in out
    await assert_nothing_visible(target)


async def test_import_from_stdin(make_registry: AppFactory, tmp_path: Path) -> None:
    source = await make_registry(tmp_path / "a")
    _, body = await source.push_image("team/app", "1.0")
    exported = await aioreg(source.data_dir, "export", "team/app", "-o", "-")
    assert exported.returncode == 0, exported.stderr
    target = await make_registry(tmp_path / "b")
    result = await aioreg(target.data_dir, "import", "-", stdin=exported.stdout)
    assert result.returncode == 0, result.stderr
    assert await manifest_bytes(target, "team/app", "1.0") == body
    # A plain tar into a pipe (the kernel copies blob files into it) is the same file.
    piped = await aioreg(source.data_dir, "export", "team/app", "--no-compress", "-o", "-")
    assert piped.returncode == 0, piped.stderr
    written = await export(source, tmp_path / "a.tar", "team/app", compress=False)
    assert piped.stdout == written.read_bytes()
    result = await aioreg(tmp_path / "c", "import", "-", stdin=piped.stdout)
    assert result.returncode == 0, result.stderr


# -- /api/v1 --------------------------------------------------------------------------


async def test_api_export_streams_and_api_import_stores_it(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    source = await make_registry(tmp_path / "a")
    manifests = await push_signed_index(source, "team/app", "1.0", tmp_path / "src")
    resp = await source.client.get("/api/v1/export?ref=team/app:1.0")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/zstd"
    archive = await resp.read()
    target = await make_registry(tmp_path / "b")
    resp = await target.client.post("/api/v1/import?dry_run=true", data=archive)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["dry_run"] is True
    await assert_nothing_visible(target)
    resp = await target.client.post("/api/v1/import", data=archive)
    assert resp.status == 200, await resp.text()
    summary = await resp.json()
    assert summary["ok"] is True and summary["tags_refused"] == []
    assert sorted(summary["manifests_new"]) == sorted(f"team/app@{d}" for d in manifests)
    for digest, body in manifests.items():
        assert await manifest_bytes(target, "team/app", digest) == body
    # Plain tar too, and a reference that does not exist is an error before any byte.
    resp = await source.client.get("/api/v1/export?ref=team/app:1.0&compress=none")
    assert resp.headers["Content-Type"] == "application/x-tar"
    assert (await resp.read())[257:262] == b"ustar"
    resp = await source.client.get("/api/v1/export?ref=team/app:nope")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_api_import_of_a_corrupt_archive_is_an_error_naming_the_blob(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    source = await make_registry(tmp_path / "a")
    layer = random.Random(3).randbytes(1 << 19)
    config = b'{"architecture":"amd64","os":"linux"}'
    await source.push_blob("team/app", config)
    await source.push_blob("team/app", layer)
    await source.push_manifest("team/app", "1.0", image_manifest(config, [layer]))
    resp = await source.client.get("/api/v1/export?compress=none")
    data = bytearray(await resp.read())
    data[data.find(layer) + 10] ^= 0x01
    target = await make_registry(tmp_path / "b")
    resp = await target.client.post("/api/v1/import", data=bytes(data))
    assert resp.status == 400
    error = (await resp.json())["errors"][0]
    assert error["code"] == "DIGEST_INVALID" and digest_of(layer) in error["message"]
    await assert_nothing_visible(target)


@pytest.mark.parametrize("bound", ["import_max_bytes", "free_space"])
async def test_api_import_is_bounded_by_its_limit_and_the_free_space(
    make_registry: AppFactory, tmp_path: Path, bound: str
) -> None:
    """A compression bomb: 3 KiB of zstd declaring 64 MiB of zeros (the blob's digest
    right, so only the bound stops it)."""
    layer = bytes(64 << 20)
    config = b'{"architecture":"amd64","os":"linux"}'
    layout = Layout(tmp_path / "src")
    layout.put(config), layout.put(layer)
    body = image_manifest(config, [layer])
    layout.tag("1.0", OCI_MANIFEST, layout.put(body), len(body))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(layout.root, ".")
    bomb = zstandard.ZstdCompressor(level=19).compress(buf.getvalue())
    assert len(bomb) < 64 << 10
    if bound == "import_max_bytes":
        limits: dict[str, object] = {"sections": {"transfer": {"import_max_bytes": 32 << 20}}}
        code, status = "SIZE_INVALID", 413
    else:  # free space, as if the disk held no more than the reserve /readyz keeps
        limits = {"sections": {"health": {"min_free_bytes": 1 << 62}}}
        code, status = "UNKNOWN", 507
    target = await make_registry(tmp_path / "b", **limits)
    resp = await target.client.post("/api/v1/import?repository=team/app", data=bomb)
    assert resp.status == status, await resp.text()
    error = (await resp.json())["errors"][0]
    assert error["code"] == code and digest_of(layer) in error["message"], error
    await assert_nothing_visible(target)
    resp = await target.client.get("/v2/")
    assert resp.status == 200


async def test_openapi_describes_export_and_import_bodies_as_archives(reg: Reg) -> None:
    resp = await reg.client.get("/api/v1/openapi.json")
    paths = (await resp.json())["paths"]
    export = paths["/api/v1/export"]["get"]["responses"]["200"]["content"]
    assert sorted(export) == ["application/x-tar", "application/zstd"]
    assert all(c["schema"] == {"type": "string", "format": "binary"} for c in export.values())
    importing = paths["/api/v1/import"]["post"]
    assert {"application/x-tar", "application/zstd", "application/gzip"} <= set(
        importing["requestBody"]["content"]
    )
    assert list(importing["responses"]["200"]["content"]) == ["application/json"]
    assert "verify" in [p["name"] for p in importing["parameters"]]


async def test_api_export_and_import_are_for_admins(make_registry: AppFactory) -> None:
    reg = await make_registry(auth={"enabled": True, "admin_password": ADMIN_PASSWORD})
    await Accounts(reg.registry.index).add_user("alice", "alice-pw")
    alice = basic("alice", "alice-pw")
    for headers, status in (({}, 401), (alice, 403)):
        resp = await reg.client.get("/api/v1/export", headers=headers)
        assert resp.status == status
        resp = await reg.client.post("/api/v1/import", headers=headers, data=b"x" * 1024)
        assert resp.status == status
    resp = await reg.client.get(
        "/api/v1/export?compress=none", headers=basic("admin", ADMIN_PASSWORD)
    )
    assert resp.status == 200
    assert b"index.json" in await resp.read()


async def test_a_gzip_compressed_tar_imports(make_registry: AppFactory, tmp_path: Path) -> None:
    source = await make_registry(tmp_path / "a")
    _, body = await source.push_image("team/app", "1.0")
    plain = await export(source, tmp_path / "a.tar", compress=False)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gzip.compress(plain.read_bytes()))
    target = await make_registry(tmp_path / "b")
    result = await aioreg(target.data_dir, "import", str(archive))
    assert result.returncode == 0, result.stderr
    assert await manifest_bytes(target, "team/app", "1.0") == body


async def test_more_new_blobs_than_open_files_allow_is_refused_cleanly(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    source = await make_registry(tmp_path / "a")
    layers = [f"layer {i}".encode() * 50 for i in range(80)]
    config = b'{"architecture":"amd64","os":"linux"}'
    for blob in (config, *layers):
        await source.push_blob("team/app", blob)
    await source.push_manifest("team/app", "1.0", image_manifest(config, layers))
    archive = await export(source, tmp_path / "a.tar.zst")
    target = await make_registry(tmp_path / "b")

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aioreg", "import", str(archive), "--data", str(target.data_dir)],
        capture_output=True,
        timeout=TIMEOUT,
        preexec_fn=limited,
    )
    assert result.returncode == 1, result.stderr
    assert b"open-file limit is 64" in result.stderr, result.stderr
    await assert_nothing_visible(target)


async def test_a_client_leaving_an_api_export_midway_leaves_the_server_serving(
    reg: Reg, tmp_path: Path
) -> None:
    layer = random.Random(5).randbytes(16 << 20)
    config = b'{"architecture":"amd64","os":"linux"}'
    await reg.push_blob("team/app", config)
    await reg.push_blob("team/app", layer)
    await reg.push_manifest("team/app", "1.0", image_manifest(config, [layer]))
    for _ in range(3):
        resp = await reg.client.get("/api/v1/export?compress=none")
        assert resp.status == 200
        assert len(await resp.content.read(65536)) > 0
        resp.close()  # gone with most of the archive unsent
    resp = await reg.client.get("/api/v1/export?ref=team/app:1.0&compress=none")
    data = await resp.read()
    assert data.count(layer) == 1
    resp = await reg.client.get("/v2/")
    assert resp.status == 200
