"""Content-addressed blob files: ``blobs/<algorithm>/<first two hex>/<hex>``.

A blob is stored once, whatever number of repositories link it. Files reach
their final name only complete and fsynced (see ``BlobWriter.commit``), so a
file under a final name always holds exactly its digest's bytes.

Upload temp files live in ``uploads/``. The writer that owns one holds a shared
advisory lock (``flock``) on it for as long as the upload lives in its process;
``remove_upload_file`` is the one rule every remover (janitor, GC, ``check``,
in any process) follows: never a file someone holds, never a young one.

GC moves swept blobs to ``trash/<run>/`` inside its index transaction and
empties that run's directory after the commit; whatever a crash leaves there
is settled by ``aioreg.domain.trash.recover_trash``.

A backup keeps sweeps from removing any blob file while it copies the ones its
index snapshot names: it holds ``gc.lock`` shared (``hold_sweeps``), and a sweep
removes files only while it holds it exclusively (``sweep_guard``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from aioreg.domain.reference import Digest
from aioreg.errors import RegistryError
from aioreg.storage.writer import BlobWriter

# However short the grace period, an upload file this young may not be locked by its
# writer yet (it is created, then locked): no remover touches it.
UPLOAD_CLAIM_SECONDS = 10.0


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.uploads_dir = root / "uploads"
        self.trash_dir = root / "trash"

    def open(self) -> None:
        # The data dir also holds the index (password hashes) and the signing key.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (self.blobs_dir, self.uploads_dir):
            directory.mkdir(mode=0o700, exist_ok=True)

    def path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.algorithm / digest.hex[:2] / digest.hex

    def create_writer(self, upload_id: str, algorithm: str = "sha256") -> BlobWriter:
        """A new upload's writer, owning a fresh temp file, hashing with ``algorithm``."""
        return BlobWriter.create(self, upload_id, algorithm=algorithm)

    async def resume_writer(
        self, upload_id: str, committed_bytes: int, algorithm: str = "sha256"
    ) -> BlobWriter:
        """The writer of an upload begun earlier, rolled back to ``committed_bytes``."""
        return await BlobWriter.resume(self, upload_id, committed_bytes, algorithm=algorithm)

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

    def is_young(self, path: Path, grace: float, now: float | None = None) -> bool:
        """Changed (written, or linked under this name) less than ``grace`` seconds ago.

        ctime counts because a hard link keeps the temp file's mtime: a blob
        placed a moment ago can carry the mtime of its upload's last write.
        """
        try:
            st = path.lstat()
        except FileNotFoundError:
            return False
        return _age(st, now) < grace

    # -- upload temp files -------------------------------------------------

    def upload_files(self) -> list[Path]:
        """Every name in ``uploads/`` (blocking; a listed file may be gone when examined)."""
        return sorted(self.uploads_dir.iterdir())

    def own_upload(self, path: Path, fd: int | None = None) -> int:
        """Take the lock that marks ``path`` as owned by a live writer; returns the fd holding it.

        The lock is shared: several writers (a second server resuming the same
        session) may hold it at once, and any one of them keeps removers off.
        It waits only while a remover holds its exclusive lock to examine the
        file (never long). If the remover took the file meanwhile, the name no
        longer leads to the locked file and the upload is gone: FileNotFoundError.
        """
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(errno.ENOENT, "upload file was removed", str(path))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remove_upload_file(
        self, path: Path, grace: float, now: float | None = None, *, remove: bool = True
    ) -> bool:
        """Remove an upload temp file unless a writer owns it or it was written less than
        ``grace`` (and never less than ``UPLOAD_CLAIM_SECONDS``) ago.

        The one rule for every remover. True if this call removed the file (or,
        with ``remove=False``, would have); False if it is owned, young, not a
        regular file, or already gone.
        """
        try:
            st = path.lstat()
            # mtime: an upload file is as old as its last write. The floor covers the
            # instant between a writer creating its file and locking it.
            age = (time.time() if now is None else now) - st.st_mtime
            if not stat.S_ISREG(st.st_mode) or age < max(grace, UPLOAD_CLAIM_SECONDS):
                return False
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # gone meanwhile, or not ours to open
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a writer holds it: the upload is alive
            if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                return False
            if remove:
                path.unlink()
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)

    # -- trash -----------------------------------------------------------

    def trash_run(self) -> Path:
        """A directory name for one sweep's files, so emptying it touches no other sweep's.

        It is created by the sweep's first ``trash``, under the index's write
        lock, so ``recover_trash`` (which prunes empty run directories under the
        same lock) never removes it between creation and use.
        """
        return self.trash_dir / uuid.uuid4().hex

    def trash(self, digest: Digest, run: Path) -> None:
        """Move a blob out of the served tree into a sweep's trash (blocking)."""
        run.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path(digest), run / f"{digest.algorithm}-{digest.hex}")

    @contextlib.contextmanager
    def hold_sweeps(self) -> Iterator[None]:
        """Keep every GC sweep, in any process, from removing blob files until the block ends.

        A shared ``flock`` on ``gc.lock``: taking it waits for a sweep in progress
        to finish, and a sweep that starts meanwhile finds it taken and removes
        nothing. The kernel drops it when its holder dies, so a killed backup
        never keeps GC off. Blocking: call it from a worker thread.
        """
        fd = self._open_gc_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def sweep_guard(self) -> Iterator[bool]:
        """Whether a sweep may remove blob files (True) for as long as the block runs;
        False while someone holds sweeps off (``hold_sweeps``). Never waits."""
        fd = self._open_gc_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
            else:
                yield True
        finally:
            os.close(fd)

    def _open_gc_lock(self) -> int:
        return os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT, 0o600)

    def has_trash(self) -> bool:
        return self.trash_dir.is_dir()

    def trashed(self) -> list[tuple[Path, Digest]]:
        """Every blob file in the trash, of any sweep (and of the flat layout of old versions)."""
        if not self.trash_dir.is_dir():
            return []
        found = []
        for path in sorted(self.trash_dir.rglob("*")):
            algorithm, _, hex_ = path.name.partition("-")
            try:
                digest = Digest.parse(f"{algorithm}:{hex_}")
            except RegistryError:
                continue
            if path.is_file():
                found.append((path, digest))
        return found

    def restore(self, trashed: Path, digest: Digest) -> None:
        """Put a trashed file back under its final name (an existing copy there wins),
        as ``place`` does an upload's, then drop it from the trash."""
        self.place(trashed, digest)
        trashed.unlink(missing_ok=True)

    def empty_trash(self, run: Path | None = None) -> None:
        """Delete one sweep's trash, or with no run prune every empty run directory."""
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile: nothing left to do
            for path in run.iterdir() if run is not None else ():
                path.unlink(missing_ok=True)
        runs = [run] if run is not None else list(self.trash_dir.glob("*"))
        for directory in runs:
            with contextlib.suppress(OSError):  # not empty, not a directory, or gone
                directory.rmdir()

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
        fsync_dir(final.parent)


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
    fsync_dir(directory.parent)


def _age(st: os.stat_result, now: float | None) -> float:
    return (time.time() if now is None else now) - max(st.st_mtime, st.st_ctime)


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
