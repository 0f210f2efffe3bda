"""An index snapshot (``Database.online_backup``'s copy): a file no server has open.

A backup reads from it which blobs to take and what it holds; a restore marks in
it the blobs that could not be taken. Blocking calls on short-lived connections:
run them on a worker thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SnapshotCounts:
    repositories: int
    tags: int
    manifests: int
    blobs: int  # servable blob rows: the files a backup takes
    bytes: int


class SnapshotFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            yield conn

    def schema_version(self) -> int:
        with self._connect() as db:
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def servable_blobs(self) -> list[tuple[str, int]]:
        """(digest, size) of every blob row not quarantined, in digest order: the files
        a server on this index serves, so the files a backup must hold."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT digest, size FROM blobs WHERE quarantined_at IS NULL ORDER BY digest"
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def counts(self) -> SnapshotCounts:
        with self._connect() as db:
            row = db.execute(
                """SELECT (SELECT count(*) FROM repositories), (SELECT count(*) FROM tags),
                          (SELECT count(*) FROM manifests),
                          (SELECT count(*) FROM blobs WHERE quarantined_at IS NULL),
                          (SELECT coalesce(sum(size), 0) FROM blobs WHERE quarantined_at IS NULL)"""
            ).fetchone()
        return SnapshotCounts(*(int(v) for v in row))

    def forget_uploads(self) -> None:
        """Drop upload sessions: their temp files are not part of a backup, so a restored
        registry could not resume them (clients start those uploads again)."""
        with self._connect() as db:
            db.execute("DELETE FROM uploads")

    def quarantine(self, digests: Sequence[str], now: float | None = None) -> None:
        """Mark blobs whose files a backup could not take as quarantined: never served,
        and healed by the next push of the same bytes, as ``scrub`` leaves a corrupt one."""
        stamp = time.time() if now is None else now
        with self._connect() as db:
            db.executemany(
                "UPDATE blobs SET quarantined_at = ? WHERE digest = ?",
                [(stamp, d) for d in digests],
            )

    def integrity_problem(self) -> str | None:
        """What ``PRAGMA quick_check`` finds wrong with the file, or None if it is sound."""
        try:
            with self._connect() as db:
                rows = db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        found = [str(r[0]) for r in rows]
        return None if found == ["ok"] else "; ".join(found[:5])
