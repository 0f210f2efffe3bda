"""Small real container images, built in Python as OCI image layouts on disk.

Layers are gzip-compressed tars of real files (deterministic: mtime 0), the
config carries the uncompressed layers' diff_ids, and an index can hold one
image per platform, so skopeo and podman treat them as any other image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    manifest_digest: str
    manifest: bytes
    config: bytes
    layers: list[bytes]
    diff_ids: list[str]
    platform: dict[str, str] = field(default_factory=dict)


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.entries: list[dict[str, object]] = []

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return digest

    def image(self, seed: str, layer_count: int = 2, arch: str = "amd64") -> Image:
        layers, diff_ids = [], []
        for i in range(layer_count):
            raw = _tar({f"app/{seed}/file{i}.txt": f"{seed} layer {i}\n".encode() * (200 + i)})
            layers.append(gzip.compress(raw, mtime=0))
            diff_ids.append(sha256(raw))
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": ["/bin/true"], "Labels": {"seed": seed}},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created_by": f"aioreg test layer {i}"} for i in range(layer_count)],
            },
            indent=2,
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": self.put(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": self.put(layer), "size": len(layer)}
                    for layer in layers
                ],
            },
            indent=2,
        ).encode()
        digest = self.put(manifest)
        return Image(
            digest, manifest, config, layers, diff_ids, {"architecture": arch, "os": "linux"}
        )

    def tag(self, name: str, media_type: str, digest: str, size: int) -> None:
        self.entries.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": name},
            }
        )
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries})
        )

    def blob_hashes(self) -> dict[str, str]:
        """File name → sha256 of contents for every blob in the layout."""
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (self.root / "blobs" / "sha256").iterdir()
        }


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def single_image(root: Path, seed: str, tag: str = "latest") -> Image:
    layout = Layout(root)
    image = layout.image(seed)
    layout.tag(tag, OCI_MANIFEST, image.manifest_digest, len(image.manifest))
    return image


def multi_platform(root: Path, seed: str, tag: str = "latest") -> tuple[str, bytes, list[Image]]:
    """A two-platform OCI index (linux/amd64 and linux/arm64)."""
    layout = Layout(root)
    images = [layout.image(f"{seed}-{arch}", arch=arch) for arch in ("amd64", "arm64")]
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image.manifest_digest,
                    "size": len(image.manifest),
                    "platform": image.platform,
                }
                for image in images
            ],
        },
        indent=2,
    ).encode()
    digest = layout.put(index)
    layout.tag(tag, OCI_INDEX, digest, len(index))
    return digest, index, images
