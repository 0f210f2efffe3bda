"""``check``: reconcile index and disk, beside a running server.

(``aioreg.domain.scrub`` re-verifies blob bytes; ``aioreg.domain.trash`` settles
what a killed GC sweep left behind.)

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aioreg.domain.reference import Digest
from aioreg.domain.trash import LOCKED_BATCH, batches, recover_trash, settle_missing
from aioreg.index import Index
from aioreg.index.protocols import IndexProtocol
from aioreg.storage import BlobStorage, BlobStore


@dataclass
class CheckReport:
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def check(
    index: IndexProtocol, store: BlobStorage, *, grace: float, repair: bool = True
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
        known = await index.blobs.known_digests()
        for path, digest in await asyncio.to_thread(store.trashed):
            fate = "restored" if str(digest) in known else "removed"
            report.actions.append(f"{path}: left by a sweep, would be {fate}")
    await _check_blobs(index, store, grace, repair, report)
    await _check_uploads(index, store, grace, repair, report)
    return report


async def _check_blobs(
    index: IndexProtocol, store: BlobStorage, grace: float, repair: bool, report: CheckReport
) -> None:
    page: list[str] = []
    missing: list[str] = []
    async for blob in index.blobs.servable():
        page.append(blob.digest)
        if len(page) >= LOCKED_BATCH:
            missing += await asyncio.to_thread(_without_file, store, page)
            page = []
    missing += await asyncio.to_thread(_without_file, store, page)
    if repair:
        restored, quarantined = await settle_missing(index, store, missing)
        report.actions += [f"blob {d}: file missing, restored from trash" for d in restored]
        report.actions += [f"blob {d}: file missing, quarantined" for d in quarantined]
    else:
        report.actions += [f"blob {d}: file missing, would be quarantined" for d in missing]

    known = await index.blobs.known_digests()
    orphans: list[tuple[Path, Digest]] = []
    for path, digest in await asyncio.to_thread(lambda: list(store.walk())):
        if digest is None:
            report.problems.append(f"{path}: not a blob name, left alone")
        elif str(digest) not in known and not store.is_young(path, grace):
            orphans.append((path, digest))
    if not repair:
        report.actions += [f"{path}: no index row, would be removed" for path, _ in orphans]
        return
    for batch in batches(orphans):
        # Re-read under the write lock: a blob is placed and indexed in one transaction.
        async with index.blobs.files() as files:
            rows = await files.rows([str(digest) for _, digest in batch])
            removed = await asyncio.to_thread(_remove_orphans, store, batch, rows, grace)
        report.actions += [f"{path}: no index row, removed" for path in removed]


def _remove_orphans(
    store: BlobStorage, batch: Sequence[tuple[Path, Digest]], rows: dict[str, bool], grace: float
) -> list[Path]:
    removed = []
    for path, digest in batch:
        if str(digest) not in rows and not store.is_young(path, grace):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _without_file(store: BlobStorage, digests: list[str]) -> list[str]:
    return [d for d in digests if not store.exists(Digest.parse(d))]


async def _check_uploads(
    index: IndexProtocol, store: BlobStorage, grace: float, repair: bool, report: CheckReport
) -> None:
    verb = "" if repair else "would be "
    sessions = {row.id: row for row in await index.uploads.all()}

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
        row = await index.uploads.get(upload_id)
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
            await index.uploads.delete(upload_id)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def open_parts(data_dir: Path) -> tuple[Index, BlobStore]:
    """A data directory's index and blob store, for upkeep run from the CLI."""
    store = BlobStore(data_dir)
    store.open()
    return Index(data_dir / "index.db"), store
