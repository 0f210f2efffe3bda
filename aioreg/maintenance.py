"""Offline-safe upkeep: ``scrub`` re-verifies blob bytes, ``check`` reconciles index and disk.

Both work on the index and blob store directly, never through HTTP, and are
safe while the server runs: they only act on rows through index transactions,
and leave alone any upload file young enough to belong to a live request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from aioreg.index import BlobRow, Index
from aioreg.reference import Digest
from aioreg.storage import BlobStore

READ_BLOCK = 4 << 20
UPLOAD_GRACE_SECONDS = 60.0


@dataclass
class ScrubReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _verify(path: Path, blob: BlobRow, full: bool) -> bool:
    """True when the file still holds exactly the blob's bytes."""
    digest = Digest.parse(blob.digest)
    if full or blob.xxh3_128 is None:
        hasher = hashlib.new(digest.algorithm)
        expected = digest.hex
    else:
        hasher = xxhash.xxh3_128()
        expected = blob.xxh3_128
    size = 0
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            hasher.update(block)
            size += len(block)
    return size == blob.size and hasher.hexdigest() == expected


async def scrub(
    index: Index,
    store: BlobStore,
    *,
    full: bool = False,
    on_blob: Callable[[int], None] | None = None,
) -> ScrubReport:
    """Verify every servable blob; quarantine the ones whose bytes are wrong or gone.

    Fast mode compares the xxh3-128 recorded at upload; ``full`` recomputes the
    digest itself. A quarantined file moves to ``quarantine/`` so it is never
    served, and a fresh upload of the same digest heals the blob.
    """
    report = ScrubReport()
    loop = asyncio.get_running_loop()
    async for blob in index.servable_blobs():
        digest = Digest.parse(blob.digest)
        path = store.path(digest)
        try:
            ok = await loop.run_in_executor(None, _verify, path, blob, full)
        except FileNotFoundError:
            report.missing.append(blob.digest)
            await index.quarantine_blob(blob.digest)
        else:
            if not ok:
                report.corrupt.append(blob.digest)
                await loop.run_in_executor(None, store.quarantine, digest)
                await index.quarantine_blob(blob.digest)
        report.checked += 1
        report.bytes += blob.size
        if on_blob is not None:
            on_blob(blob.size)
    return report


@dataclass
class CheckReport:
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def check(index: Index, store: BlobStore, *, repair: bool = True) -> CheckReport:
    """Compare index and disk; with ``repair``, fix what loses no acknowledged data.

    - a blob row whose file is gone: quarantined (never served; re-push heals);
    - a blob file with no row: removed (no client was ever told it was stored);
    - an upload file with no session, or a session with no file: removed.
    """
    report = CheckReport()
    verb = "" if repair else "would be "

    known = await index.known_blob_digests()
    async for blob in index.servable_blobs():
        if not store.path(Digest.parse(blob.digest)).is_file():
            report.actions.append(f"blob {blob.digest}: file missing, {verb}quarantined")
            if repair:
                await index.quarantine_blob(blob.digest)

    for path, digest in store.walk():
        if digest is None:
            report.problems.append(f"{path}: not a blob name, left alone")
        elif str(digest) not in known:
            report.actions.append(f"{path}: no index row, {verb}removed")
            if repair:
                path.unlink(missing_ok=True)

    sessions = {row.id: row for row in await index.uploads()}
    cutoff = time.time() - UPLOAD_GRACE_SECONDS
    for path in sorted(store.uploads_dir.iterdir()):
        if path.name not in sessions and path.stat().st_mtime < cutoff:
            report.actions.append(f"{path}: upload file without a session, {verb}removed")
            if repair:
                path.unlink(missing_ok=True)
    for upload_id, row in sessions.items():
        path = store.upload_path(upload_id)
        size = path.stat().st_size if path.exists() else None
        if size is None or size < row.committed_bytes:
            found = "missing" if size is None else f"{size} bytes"
            report.actions.append(
                f"upload {upload_id}: file {found}, index says {row.committed_bytes}; {verb}dropped"
            )
            if repair:
                await index.delete_upload(upload_id)
                path.unlink(missing_ok=True)
    return report


def open_parts(data_dir: Path) -> tuple[Index, BlobStore]:
    store = BlobStore(data_dir)
    store.open()
    return Index(data_dir / "index.db"), store


__all__ = ["CheckReport", "ScrubReport", "check", "open_parts", "scrub"]
