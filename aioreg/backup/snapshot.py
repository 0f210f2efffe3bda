"""Taking a backup of a data directory while a server uses it.

Order matters. First sweeps are held off (``BlobStore.hold_sweeps``: it waits
for a GC sweep in progress, in any process, to commit, and keeps later ones from
removing files), then files a killed sweep left in ``trash/`` go back, then the
index is copied with SQLite's online backup API. Every blob that copy serves had
its file placed before the commit that made it visible, and nothing removes it
until the hold ends, so each is still there to take. Pushes go on meanwhile; what
they add after the copy is simply not in this backup.

A directory backup is written to ``TARGET.partial`` and renamed at the end, an
archive likewise: a path named as the target is always a complete backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aioreg import __version__
from aioreg.backup.archive import DEFAULT_LEVEL, ArchiveWriter
from aioreg.backup.errors import BackupError
from aioreg.backup.files import blob_path, copy_file, sync_dirs, take_blob
from aioreg.backup.manifest import (
    EXTRA_FILES,
    INDEX_NAME,
    MANIFEST_NAME,
    BackupManifest,
    BaseRef,
    BlobEntry,
    Counts,
    encode,
    now_iso,
    write_manifest,
)
from aioreg.backup.source import BackupSource
from aioreg.domain.check import open_parts
from aioreg.domain.reference import Digest
from aioreg.domain.trash import recover_trash
from aioreg.index.snapshot import SnapshotFile
from aioreg.storage import BlobStore
from aioreg.storage.blobstore import fsync_dir


@dataclass
class Plan:
    """What one backup takes: its manifest so far and the blobs whose files it must hold."""

    manifest: BackupManifest
    take: list[tuple[str, int]] = field(default_factory=list)


async def take_backup(
    data_dir: Path,
    target: Path,
    *,
    since: Path | None = None,
    zstd: bool = False,
    level: int = DEFAULT_LEVEL,
    on_plan: Callable[[int, int], None] | None = None,
    on_blob: Callable[[int], None] | None = None,
) -> BackupManifest:
    """Back ``data_dir`` up to the new path ``target`` (a directory, or with ``zstd`` one
    archive); with ``since``, only blobs that backup (and its chain) lacks.

    ``on_plan(blobs, bytes)`` is told what will be taken, ``on_blob(size)`` each blob taken.
    """
    if target.exists():
        raise BackupError(f"{target} exists: each backup goes to a new path")
    previous = BackupSource(since) if since is not None else None
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)  # a killed backup's leftovers
    work.mkdir(mode=0o700, parents=True)
    try:
        index, store = open_parts(data_dir)
        await index.open()
        try:
            with contextlib.ExitStack() as hold:
                await asyncio.to_thread(hold.enter_context, store.hold_sweeps())
                await recover_trash(index, store)
                await index.db.online_backup(work / INDEX_NAME)
                plan = await asyncio.to_thread(_plan, work, data_dir, previous)
                if on_plan is not None:
                    on_plan(len(plan.take), sum(size for _, size in plan.take))
                if zstd:
                    await _write_archive(plan, store, work, target, level, on_blob)
                else:
                    await _write_directory(plan, store, work, target, on_blob)
        finally:
            await index.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return plan.manifest


def _plan(work: Path, data_dir: Path, previous: BackupSource | None) -> Plan:
    snapshot = SnapshotFile(work / INDEX_NAME)
    snapshot.forget_uploads()
    counts = snapshot.counts()
    manifest = BackupManifest(
        id=uuid.uuid4().hex,
        created=now_iso(),
        aioreg_version=__version__,
        schema_version=snapshot.schema_version(),
        counts=Counts(
            counts.repositories, counts.tags, counts.manifests, counts.blobs, counts.bytes
        ),
        files=[name for name in EXTRA_FILES if (data_dir / name).is_file()],
    )
    held: dict[str, str] = {}
    if previous is not None:
        where = previous.path.resolve()  # through a "latest" symlink: the backup itself
        manifest.base = BaseRef(previous.manifest.id, where.name, str(where))
        held = {b.digest: b.backup for b in previous.manifest.blobs}
    plan = Plan(manifest)
    for digest, size in snapshot.servable_blobs():
        if digest in held:
            manifest.blobs.append(BlobEntry(digest, size, held[digest]))
        else:
            plan.take.append((digest, size))
    return plan


def _taken(plan: Plan, digest: str, size: int, linked: bool = False) -> None:
    manifest = plan.manifest
    manifest.blobs.append(BlobEntry(digest, size, manifest.id))
    manifest.taken_blobs += 1
    manifest.taken_bytes += size
    manifest.linked_blobs += linked


def _finish_snapshot(plan: Plan, work: Path) -> None:
    """Blobs the backup could not take are quarantined in its index (as ``scrub`` would)."""
    manifest = plan.manifest
    manifest.blobs.sort(key=lambda b: b.digest)
    if manifest.missing:
        SnapshotFile(work / INDEX_NAME).quarantine(manifest.missing)


async def _write_directory(
    plan: Plan,
    store: BlobStore,
    work: Path,
    target: Path,
    on_blob: Callable[[int], None] | None,
) -> None:
    data_dir = store.root
    for name in plan.manifest.files:
        with open(data_dir / name, "rb") as f:
            await asyncio.to_thread(copy_file, f, work / name)
    for digest, size in plan.take:
        parsed = Digest.parse(digest)
        how = await asyncio.to_thread(
            take_blob, store.path(parsed), blob_path(work, parsed), parsed, size
        )
        if how is None:
            plan.manifest.missing.append(digest)
        else:
            _taken(plan, digest, size, linked=how == "linked")
        if on_blob is not None:
            on_blob(size)

    def finish() -> None:
        _finish_snapshot(plan, work)
        write_manifest(work, plan.manifest)
        sync_dirs(work)
        os.rename(work, target)
        fsync_dir(target.parent)

    await asyncio.to_thread(finish)


async def _write_archive(
    plan: Plan,
    store: BlobStore,
    work: Path,
    target: Path,
    level: int,
    on_blob: Callable[[int], None] | None,
) -> None:
    """The archive holds the manifest first, so which blobs are missing is settled before
    any is written: a file there now stays (sweeps are held) and never changes."""

    def present(digest: str, size: int) -> bool:
        try:
            return os.stat(store.path(Digest.parse(digest))).st_size == size
        except FileNotFoundError:
            return False

    def prepare() -> list[tuple[str, int]]:
        taking = []
        for digest, size in plan.take:
            if present(digest, size):
                _taken(plan, digest, size)
                taking.append((digest, size))
            else:
                plan.manifest.missing.append(digest)
        _finish_snapshot(plan, work)
        return taking

    taking = await asyncio.to_thread(prepare)
    partial = work / "archive.tar.zst"
    writer = await asyncio.to_thread(ArchiveWriter, partial, level)
    try:
        await asyncio.to_thread(writer.add_bytes, MANIFEST_NAME, encode(plan.manifest))
        await asyncio.to_thread(writer.add_file, INDEX_NAME, work / INDEX_NAME)
        for name in plan.manifest.files:
            await asyncio.to_thread(writer.add_file, name, store.root / name)
        for digest, size in taking:
            parsed = Digest.parse(digest)
            name = str(blob_path(Path(), parsed))
            if not await asyncio.to_thread(writer.add_file, name, store.path(parsed), size):
                raise BackupError(f"blob {digest} changed on disk while it was backed up")
            if on_blob is not None:
                on_blob(size)
        await asyncio.to_thread(writer.close)
    except BaseException:
        writer.abort()
        raise
    os.rename(partial, target)
    await asyncio.to_thread(fsync_dir, target.parent)
