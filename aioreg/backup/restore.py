"""Restoring a backup into a new data directory.

Everything is written to a hidden sibling directory and renamed into place at the
end, so the data directory is either untouched (empty) or complete. Every blob's
bytes are verified against its digest on the way in; a blob the backup lacks or
holds corrupt is quarantined in the restored index (never served; a push of the
same bytes heals it) and reported, as ``scrub`` does on a live registry.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aioreg.backup.archive import damaged
from aioreg.backup.errors import BackupError
from aioreg.backup.files import blob_path, copy_file, copy_verified, sync_dirs
from aioreg.backup.manifest import EXTRA_FILES, INDEX_NAME, BlobEntry
from aioreg.backup.source import BackupSource
from aioreg.domain.reference import Digest
from aioreg.index.migrations import MIGRATIONS
from aioreg.index.snapshot import SnapshotFile
from aioreg.storage.blobstore import fsync_dir


@dataclass
class RestoreReport:
    backups: list[Path] = field(default_factory=list)  # the chain read, newest first
    blobs: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)  # in the backup, not the digest's bytes
    absent: list[str] = field(default_factory=list)  # named by the manifest, not in the backup
    missing: list[str] = field(default_factory=list)  # not taken when the backup was made


def refuse_unless_empty(data_dir: Path) -> None:
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(
            f"{data_dir} is not empty: restore only into a new or empty data directory"
        )


def restore(
    source_path: Path,
    data_dir: Path,
    *,
    on_plan: Callable[[int, int], None] | None = None,
    on_blob: Callable[[int], None] | None = None,
) -> RestoreReport:
    """Restore the backup at ``source_path`` (its base chain too) into ``data_dir``,
    which must be empty or not exist. Blocking."""
    refuse_unless_empty(data_dir)
    top = BackupSource(source_path)
    manifest = top.manifest
    if manifest.schema_version > len(MIGRATIONS):
        raise BackupError(
            f"{source_path} was made by aioreg {manifest.aioreg_version} (index schema "
            f"{manifest.schema_version}); this aioreg knows schema {len(MIGRATIONS)}: upgrade it"
        )
    chain = top.chain()
    holders = {b.manifest.id: b for b in chain}
    wanted: dict[str, dict[str, BlobEntry]] = {b.manifest.id: {} for b in chain}
    for entry in manifest.blobs:
        if entry.backup not in holders:
            raise BackupError(f"{source_path}: blob {entry.digest} is in no backup of its chain")
        wanted[entry.backup][str(blob_path(Path(), Digest.parse(entry.digest)))] = entry
    if on_plan is not None:
        on_plan(len(manifest.blobs), sum(b.size for b in manifest.blobs))
    report = RestoreReport(backups=[b.path for b in chain], missing=list(manifest.missing))
    work = data_dir.with_name(f".{data_dir.name}.restoring")
    shutil.rmtree(work, ignore_errors=True)  # a killed restore's leftovers
    work.mkdir(mode=0o700, parents=True)
    try:
        for backup in chain:
            _restore_files(backup, backup is top, wanted[backup.manifest.id], work, report, on_blob)
        index = SnapshotFile(work / INDEX_NAME)
        if not index.path.is_file():
            raise BackupError(f"{source_path} holds no {INDEX_NAME}")
        if (problem := index.integrity_problem()) is not None:
            raise BackupError(f"the index in {source_path} is damaged: {problem}")
        index.quarantine(report.corrupt + report.absent)
        sync_dirs(work)
        refuse_unless_empty(data_dir)
        if data_dir.exists():
            data_dir.rmdir()
        os.rename(work, data_dir)
        fsync_dir(data_dir.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _restore_files(
    backup: BackupSource,
    is_top: bool,
    blobs: dict[str, BlobEntry],
    work: Path,
    report: RestoreReport,
    on_blob: Callable[[int], None] | None,
) -> None:
    """One pass over one backup: its blobs the restore needs, and (the newest one only)
    the index and extra files."""
    # Only the extra files aioreg knows: a manifest names no other path to write.
    plain = {INDEX_NAME, *(set(backup.manifest.files) & set(EXTRA_FILES))} if is_top else set()
    done: set[str] = set()
    for name, reader in backup.files(set(blobs) | plain):
        if name in plain:
            copy_file(reader, work / name)
            done.add(name)
            continue
        entry = blobs[name]
        if copy_verified(reader, work / name, Digest.parse(entry.digest), entry.size):
            report.blobs += 1
            report.bytes += entry.size
        else:
            report.corrupt.append(entry.digest)
        done.add(name)
        if on_blob is not None:
            on_blob(entry.size)
    if backup.archive and (lost := sorted((set(blobs) | plain) - done)):
        # An archive holds every blob its manifest lists: one that ends early was cut
        # (a tar can end cleanly at any member boundary).
        raise damaged(backup.path, EOFError(f"it ends before {lost[0]}"))
    report.absent += [entry.digest for name, entry in blobs.items() if name not in done]
