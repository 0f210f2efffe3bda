"""What a GC sweep leaves in ``trash/``, settled; and servable blobs found without a file.

A sweep moves blob files to ``trash/<run>/`` inside its index transaction and
empties the run after the commit. A killed sweep leaves files there:
``recover_trash`` puts back the ones whose rows survived (the sweep rolled
back) and deletes the rest. It runs at start-up, before every GC, and in
``check``. Files are moved only under the index's write lock (see
``aioreg.domain.check``'s docstring for the protocol).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aioreg.domain.reference import Digest
from aioreg.index.protocols import IndexProtocol
from aioreg.storage import BlobStorage

LOCKED_BATCH = 200  # files settled per write transaction: pushes wait at most one batch
T = TypeVar("T")


def batches(items: Sequence[T]) -> list[Sequence[T]]:
    """``items`` in runs of ``LOCKED_BATCH``, each settled under one hold of the write lock."""
    return [items[i : i + LOCKED_BATCH] for i in range(0, len(items), LOCKED_BATCH)]


@dataclass
class TrashReport:
    restored: list[str] = field(default_factory=list)  # rows survived: back in place
    discarded: list[str] = field(default_factory=list)  # rows gone: the sweep had committed


async def recover_trash(index: IndexProtocol, store: BlobStorage) -> TrashReport:
    """Settle every file a GC sweep left in ``trash/`` (it was killed, or is just finishing).

    Under the write lock no sweep is mid-transaction, so a trashed file whose
    row exists belongs to a sweep that rolled back and goes back in place; one
    without a row was swept for good and is deleted.
    """
    report = TrashReport()
    trashed = await asyncio.to_thread(store.trashed)
    for batch in batches(trashed):
        async with index.blobs.files() as files:
            rows = await files.rows([str(digest) for _, digest in batch])
            await asyncio.to_thread(_settle_trash, store, batch, rows, report)
    if await asyncio.to_thread(store.has_trash):
        async with index.blobs.files():  # pruning run directories is safe only between sweeps
            await asyncio.to_thread(store.empty_trash)
    return report


def _settle_trash(
    store: BlobStorage,
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


async def settle_missing(
    index: IndexProtocol, store: BlobStorage, digests: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Servable blobs found without a file: restore them from the trash, else quarantine.

    Re-read under the write lock: a concurrent sweep may have removed the row
    with the file, which leaves nothing to do.
    """
    restored: list[str] = []
    quarantined: list[str] = []
    for batch in batches(digests):
        async with index.blobs.files() as files:
            rows = await files.rows(batch)
            wanted = {d for d in batch if rows.get(d)}
            found, gone = await asyncio.to_thread(_untrash, store, wanted)
            restored += found
            for digest in gone:
                await files.quarantine(digest)
                quarantined.append(digest)
    return restored, quarantined


def _untrash(store: BlobStorage, digests: set[str]) -> tuple[list[str], list[str]]:
    """Of blobs whose rows are servable: those found in the trash (put back), those not."""
    gone = {d for d in digests if not store.exists(Digest.parse(d))}
    found = []
    for path, digest in store.trashed():
        if str(digest) in gone:
            store.restore(path, digest)
            found.append(str(digest))
    return found, sorted(gone - set(found))
