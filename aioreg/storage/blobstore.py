"""Content-addressed blob files: ``blobs/<algorithm>/<first two hex>/<hex>``.

A blob is stored once, whatever number of repositories link it. Files reach
their final name only complete and fsynced (see ``BlobWriter.commit``), so a
file under a final name always holds exactly its digest's bytes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from aioreg.errors import RegistryError
from aioreg.reference import Digest


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.uploads_dir = root / "uploads"

    def open(self) -> None:
        # The data dir also holds the index (password hashes) and the signing key.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (self.blobs_dir, self.uploads_dir):
            directory.mkdir(mode=0o700, exist_ok=True)

    def path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.algorithm / digest.hex[:2] / digest.hex

    def upload_path(self, upload_id: str) -> Path:
        return self.uploads_dir / upload_id

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def quarantine(self, digest: Digest) -> None:
        """Move a corrupt blob out of the served tree, keeping it for inspection."""
        target = self.root / "quarantine" / f"{digest.algorithm}-{digest.hex}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path(digest), target)

    def walk(self) -> Iterator[tuple[Path, Digest | None]]:
        """Every file under ``blobs/`` with the digest its name claims (None if not a digest)."""
        for path in sorted(self.blobs_dir.rglob("*")):
            if not path.is_file():
                continue
            algorithm = path.parent.parent.name
            try:
                digest = Digest.parse(f"{algorithm}:{path.name}")
            except RegistryError:
                yield path, None
                continue
            yield path, (digest if self.path(digest) == path else None)

    def place(self, temp: Path, digest: Digest) -> None:
        """Give a complete, fsynced temp file its final name, keeping any copy already there.

        The temp file stays until the caller has indexed the blob: a crash in
        between leaves the upload resumable and, at worst, an unindexed copy
        under the final name that ``check`` removes.
        """
        final = self.path(digest)
        _make_durable_dirs(final.parent)
        # FileExistsError: stored already, by an earlier or concurrent upload of the same bytes.
        with contextlib.suppress(FileExistsError):
            os.link(temp, final)
        _fsync_dir(final.parent)


def _make_durable_dirs(directory: Path) -> None:
    """``mkdir -p`` whose new directories survive power loss: each is fsynced in its parent.

    Otherwise a blob's file could be on disk, its index row committed, and the
    directory entry leading to it lost.
    """
    if directory.is_dir():
        return
    _make_durable_dirs(directory.parent)
    with contextlib.suppress(FileExistsError):  # a concurrent upload made it first
        directory.mkdir(mode=0o700)
    _fsync_dir(directory.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
