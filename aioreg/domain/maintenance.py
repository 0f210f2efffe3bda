"""Upkeep beside a running server: ``scrub`` re-verifies blob bytes, ``check`` reconciles
index and disk, ``recover_trash`` settles what a killed GC sweep left behind.

All of it works on the index and blob store directly, never through HTTP, and
is safe while a server (or several CLI runs) use the same data dir because it
follows GC's locking protocol: a blob file is moved or removed only while the
index's write lock is held and its row has been re-read under that lock, the
same lock an upload holds while it places a blob. Files younger than the grace
period are left alone, and so is every upload file a live writer holds
(``BlobStore.remove_upload_file``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import xxhash

from aioreg.domain.reference import Digest
from aioreg.index import BlobRow, Index
from aioreg.storage import BlobStore

READ_BLOCK = 4 << 20
LOCKED_BATCH = 200  # files settled per write transaction: pushes wait at most one batch
T = TypeVar("T")


def _batches(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i : i + LOCKED_BATCH] for i in range(0, len(items), LOCKED_BATCH)]


# -- trash ---------------------------------------------------------------------


@dataclass
class TrashReport:
    restored: list[str] = field(default_factory=list)  # rows survived: back in place
    discarded: list[str] = field(default_factory=list)  # rows gone: the sweep had committed


async def recover_trash(index: Index, store: BlobStore) -> TrashReport:
    """Settle every file a GC sweep left in ``trash/`` (it was killed, or is just finishing).

    Under the write lock no sweep is mid-transaction, so a trashed file whose
    row exists belongs to a sweep that rolled back and goes back in place; one
    without a row was swept for good and is deleted.
    """
    report = TrashReport()
    trashed = await asyncio.to_thread(store.trashed)
    for batch in _batches(trashed):
        async with index.blob_files() as files:
            rows = await files.rows([str(digest) for _, digest in batch])
            await asyncio.to_thread(_settle_trash, store, batch, rows, report)
    if await asyncio.to_thread(store.trash_dir.is_dir):
        async with index.blob_files():  # pruning run directories is safe only between sweeps
            await asyncio.to_thread(store.empty_trash)
    return report


def _settle_trash(
    store: BlobStore,
    batch: Sequence[tuple[Path, Digest]],
    rows: dict[str, bool],
    report: TrashReport,
) -> None:
    for path, digest in batch:
        if str(digest) in rows:
            store.restore(path, digest)
            report.restored.append(str(digest))
        else:
            path.unlink(missing_ok=True)
            report.discarded.append(str(digest))


async def _settle_missing(
    index: Index, store: BlobStore, digests: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Servable blobs found without a file: restore them from the trash, else quarantine.

    Re-read under the write lock: a concurrent sweep may have removed the row
    with the file, which leaves nothing to do.
    """
    restored: list[str] = []
    quarantined: list[str] = []
    for batch in _batches(digests):
        async with index.blob_files() as files:
            rows = await files.rows(batch)
            wanted = {d for d in batch if rows.get(d)}
            found, gone = await asyncio.to_thread(_untrash, store, wanted)
            restored += found
            for digest in gone:
                await files.quarantine(digest)
                quarantined.append(digest)
    return restored, quarantined


def _untrash(store: BlobStore, digests: set[str]) -> tuple[list[str], list[str]]:
    """Of blobs whose rows are servable: those found in the trash (put back), those not."""
    gone = {d for d in digests if not store.exists(Digest.parse(d))}
    found = []
    for path, digest in store.trashed():
        if str(digest) in gone:
            store.restore(path, digest)
            found.append(str(digest))
    return found, sorted(gone - set(found))


# -- scrub -----------------------------------------------------------------------


@dataclass
class ScrubReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # missing, found in a killed sweep's trash


def _verify(path: Path, blob: BlobRow, full: bool) -> tuple[bool, int]:
    """Whether the file holds exactly the blob's bytes, and which file (inode) was read."""
    digest = Digest.parse(blob.digest)
    if full or blob.xxh3_128 is None:
        hasher = hashlib.new(digest.algorithm)
        expected = digest.hex
    else:
        hasher = xxhash.xxh3_128()
        expected = blob.xxh3_128
    size = 0
    with open(path, "rb") as f:
        inode = os.fstat(f.fileno()).st_ino
        while block := f.read(READ_BLOCK):
            hasher.update(block)
            size += len(block)
    return size == blob.size and hasher.hexdigest() == expected, inode


async def _quarantine_corrupt(index: Index, store: BlobStore, digest: Digest, inode: int) -> bool:
    """Move a corrupt file to ``quarantine/`` and mark its row, unless either changed meanwhile."""
    async with index.blob_files() as files:
        if not (await files.rows([str(digest)])).get(str(digest)):
            return False  # swept or quarantined meanwhile

        def move() -> bool:
            try:
                if os.stat(store.path(digest)).st_ino != inode:
                    return False  # a different file now: swept and pushed again
            except FileNotFoundError:
                pass
            store.quarantine(digest)
            return True

        if not await asyncio.to_thread(move):
            return False
        await files.quarantine(str(digest))
    return True


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
    missing: list[str] = []
    async for blob in index.servable_blobs():
        digest = Digest.parse(blob.digest)
        path = store.path(digest)
        try:
            ok, inode = await loop.run_in_executor(None, _verify, path, blob, full)
        except FileNotFoundError:
            missing.append(blob.digest)
        else:
            if not ok and await _quarantine_corrupt(index, store, digest, inode):
                report.corrupt.append(blob.digest)
        report.checked += 1
        report.bytes += blob.size
        if on_blob is not None:
            on_blob(blob.size)
    report.restored, report.missing = await _settle_missing(index, store, missing)
    return report


# -- check -----------------------------------------------------------------------


@dataclass
class CheckReport:
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def check(
    index: Index, store: BlobStore, *, grace: float, repair: bool = True
) -> CheckReport:
    """Compare index and disk; with ``repair``, fix what loses no acknowledged data.

    - a file in ``trash/`` whose row survived (a sweep was killed): restored;
    - a blob row whose file is gone: quarantined (never served; re-push heals);
    - a blob file with no row: removed (no client was ever told it was stored);
    - an upload file with no session, or a session with no file: removed.

    Files younger than ``grace`` seconds and upload files a live writer holds
    are left alone whatever they look like.
    """
    report = CheckReport()
    if repair:
        trash = await recover_trash(index, store)
        report.actions += [
            f"blob {d}: restored from trash (a sweep was cut off)" for d in trash.restored
        ]
        report.actions += [f"trash {d}: swept blob, removed" for d in trash.discarded]
    else:
        known = await index.known_blob_digests()
        for path, digest in await asyncio.to_thread(store.trashed):
            fate = "restored" if str(digest) in known else "removed"
            report.actions.append(f"{path}: left by a sweep, would be {fate}")
    await _check_blobs(index, store, grace, repair, report)
    await _check_uploads(index, store, grace, repair, report)
    return report


async def _check_blobs(
    index: Index, store: BlobStore, grace: float, repair: bool, report: CheckReport
) -> None:
    page: list[str] = []
    missing: list[str] = []
    async for blob in index.servable_blobs():
        page.append(blob.digest)
        if len(page) >= LOCKED_BATCH:
            missing += await asyncio.to_thread(_without_file, store, page)
            page = []
    missing += await asyncio.to_thread(_without_file, store, page)
    if repair:
        restored, quarantined = await _settle_missing(index, store, missing)
        report.actions += [f"blob {d}: file missing, restored from trash" for d in restored]
        report.actions += [f"blob {d}: file missing, quarantined" for d in quarantined]
    else:
        report.actions += [f"blob {d}: file missing, would be quarantined" for d in missing]

    known = await index.known_blob_digests()
    orphans: list[tuple[Path, Digest]] = []
    for path, digest in await asyncio.to_thread(lambda: list(store.walk())):
        if digest is None:
            report.problems.append(f"{path}: not a blob name, left alone")
        elif str(digest) not in known and not store.is_young(path, grace):
            orphans.append((path, digest))
    if not repair:
        report.actions += [f"{path}: no index row, would be removed" for path, _ in orphans]
        return
    for batch in _batches(orphans):
        # Re-read under the write lock: a blob is placed and indexed in one transaction.
        async with index.blob_files() as files:
            rows = await files.rows([str(digest) for _, digest in batch])
            removed = await asyncio.to_thread(_remove_orphans, store, batch, rows, grace)
        report.actions += [f"{path}: no index row, removed" for path in removed]


def _remove_orphans(
    store: BlobStore, batch: Sequence[tuple[Path, Digest]], rows: dict[str, bool], grace: float
) -> list[Path]:
    removed = []
    for path, digest in batch:
        if str(digest) not in rows and not store.is_young(path, grace):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _without_file(store: BlobStore, digests: list[str]) -> list[str]:
    return [d for d in digests if not store.exists(Digest.parse(d))]


async def _check_uploads(
    index: Index, store: BlobStore, grace: float, repair: bool, report: CheckReport
) -> None:
    verb = "" if repair else "would be "
    sessions = {row.id: row for row in await index.uploads()}

    def strays() -> list[Path]:
        # A session created after the listing above has a writer holding its file.
        return [
            path
            for path in store.upload_files()
            if path.name not in sessions and store.remove_upload_file(path, grace, remove=repair)
        ]

    for path in await asyncio.to_thread(strays):
        report.actions.append(f"{path}: upload file without a session, {verb}removed")

    for upload_id, listed in sessions.items():
        path = store.upload_path(upload_id)
        size = await asyncio.to_thread(_size, path)
        if size is not None and size >= listed.committed_bytes:
            continue
        row = await index.upload(upload_id)
        if row is None or (size is not None and size >= row.committed_bytes):
            continue  # the session ended or moved on meanwhile
        if size is not None and not await asyncio.to_thread(
            store.remove_upload_file, path, grace, remove=repair
        ):
            continue  # held by a live writer, or too young to judge
        found = "missing" if size is None else f"{size} bytes"
        report.actions.append(
            f"upload {upload_id}: file {found}, index says {row.committed_bytes}; {verb}dropped"
        )
        if repair:
            await index.delete_upload(upload_id)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def open_parts(data_dir: Path) -> tuple[Index, BlobStore]:
    store = BlobStore(data_dir)
    store.open()
    return Index(data_dir / "index.db"), store


__all__ = [
    "CheckReport",
    "ScrubReport",
    "TrashReport",
    "check",
    "open_parts",
    "recover_trash",
    "scrub",
]
