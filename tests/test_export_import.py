"""Export and import: OCI image layouts (tar, tar.zst, directories) out of and into registries,
checked with skopeo, over the CLI next to a running server and over /api/v1."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from tests.conftest import EMPTY_JSON, Reg, artifact_manifest, digest_of
from tests.images import OCI_INDEX, Image, Layout, multi_platform

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
