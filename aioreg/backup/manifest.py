"""``backup.json``: what a backup took, and where a restore finds each blob.

``blobs`` lists every blob the index snapshot serves, each with the id of the
backup whose files hold it: this one's own id, or (incremental) an ancestor's
along the ``base`` chain. ``missing`` lists blobs the snapshot serves whose
file could not be taken (gone or corrupt on disk): a restore quarantines them,
as ``scrub`` would have.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import msgspec

from aioreg.backup.errors import BackupError

FORMAT = 1
MANIFEST_NAME = "backup.json"
INDEX_NAME = "index.db"
BLOBS_DIR = "blobs"
# Files of the data directory a restored registry needs besides index and blobs.
EXTRA_FILES = ("auth/token-signing-key.pem",)
MAX_MANIFEST_BYTES = 1 << 30


class BlobEntry(msgspec.Struct):
    digest: str
    size: int
    backup: str  # id of the backup holding the file: this one, or an ancestor


class BaseRef(msgspec.Struct):
    """The backup an incremental one builds on."""

    id: str
    name: str  # its file name: a restore looks next to this backup first
    path: str  # its absolute path when this backup was taken


class Counts(msgspec.Struct):
    repositories: int
    tags: int
    manifests: int
    blobs: int
    bytes: int


class BackupManifest(msgspec.Struct, kw_only=True):
    format: int = FORMAT
    id: str
    created: str  # ISO 8601, UTC
    aioreg_version: str
    schema_version: int
    base: BaseRef | None = None
    counts: Counts  # of the snapshot
    taken_blobs: int = 0  # blob files in this backup (the rest are in its base chain)
    taken_bytes: int = 0
    linked_blobs: int = 0  # of those, hard links to the data directory's files
    files: list[str] = msgspec.field(default_factory=list)  # EXTRA_FILES present
    blobs: list[BlobEntry] = msgspec.field(default_factory=list)
    missing: list[str] = msgspec.field(default_factory=list)

    def own_blobs(self) -> list[BlobEntry]:
        return [b for b in self.blobs if b.backup == self.id]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def encode(manifest: BackupManifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=1)


def decode(data: bytes, where: Path) -> BackupManifest:
    try:
        manifest = msgspec.json.decode(data, type=BackupManifest)
    except msgspec.DecodeError as exc:
        raise BackupError(f"{where}: not an aioreg backup manifest ({exc})") from None
    if manifest.format != FORMAT:
        raise BackupError(f"{where}: backup format {manifest.format} is not {FORMAT}")
    return manifest


def write_manifest(directory: Path, manifest: BackupManifest) -> None:
    """Write ``backup.json`` durably (the directory is fsynced by the caller's rename)."""
    path = directory / MANIFEST_NAME
    with open(path, "wb") as f:
        f.write(encode(manifest))
        f.flush()
        os.fsync(f.fileno())
