"""Blob files into a backup or a restored data directory: hard-linked, or copied and verified.

Blocking: run on a worker thread. A file reaches its final name only complete
and fsynced; the directories are fsynced once at the end (``sync_dirs``).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Literal, Protocol

from aioreg.domain.reference import Digest
from aioreg.storage.blobstore import fsync_dir
from aioreg.storage.writer import READ_BLOCK

# link(2) refusals that mean "copy instead": another filesystem, or one without hard links.
COPY_INSTEAD = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP}

Taken = Literal["linked", "copied"]


class Reader(Protocol):
    """Where bytes are copied from: an open file, or an archive member."""

    def read(self, size: int = -1, /) -> bytes: ...


def blob_path(root: Path, digest: Digest) -> Path:
    """Where a blob lives under a backup or data directory (the ``BlobStore`` layout)."""
    return root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex


def take_blob(source: Path, target: Path, digest: Digest, size: int) -> Taken | None:
    """Put the blob file ``source`` at ``target``: a hard link if the filesystem allows,
    else a copy whose digest is verified. None if the file is gone or not the blob's
    bytes (a link is checked by size: its bytes are the served file's own)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if os.stat(source).st_size != size:
            return None
        os.link(source, target)
        return "linked"
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in COPY_INSTEAD:
            raise
    try:
        with open(source, "rb") as f:
            return "copied" if copy_verified(f, target, digest, size) else None
    except FileNotFoundError:
        return None


def copy_verified(reader: Reader, target: Path, digest: Digest, size: int) -> bool:
    """Copy ``reader`` to ``target`` if its bytes are exactly the blob's (digest and size);
    False, with nothing left at ``target``, if they are not."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.partial")
    hasher = hashlib.new(digest.algorithm)
    written = 0
    try:
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            while block := reader.read(READ_BLOCK):
                hasher.update(block)
                out.write(block)
                written += len(block)
                if written > size:
                    break
            out.flush()
            os.fsync(out.fileno())
        if written != size or hasher.hexdigest() != digest.hex:
            return False
        os.replace(temp, target)
        return True
    finally:
        temp.unlink(missing_ok=True)


def copy_file(reader: Reader, target: Path) -> None:
    """A plain file (the index snapshot, the signing key), copied durably, for this user alone."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as out:
        while block := reader.read(READ_BLOCK):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


def sync_dirs(root: Path) -> None:
    """fsync every directory under ``root`` and ``root`` itself, so the names survive power loss."""
    for parent, _, _ in os.walk(root, topdown=False):
        fsync_dir(Path(parent))
