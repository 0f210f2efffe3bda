"""Garbage collection's mark and sweep over the index, in one write transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aioreg.index.database import Database
from aioreg.index.outbox import Announcement
from aioreg.index.rows import GcResult

# Storage hook: move a swept blob's file out of the served tree. It decides nothing.
RemoveFile = Callable[[str], None]


class GcQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def collect(
        self,
        grace_seconds: float,
        untagged: bool,
        dry_run: bool,
        remove_file: RemoveFile,
        now: float | None = None,
    ) -> GcResult:
        """Mark and sweep in one write transaction.

        Holding the index's write lock is what makes this safe while pushes go
        on: a manifest PUT checks its blobs inside its own write transaction (so
        it sees either the blob or nothing), and an upload puts its file in
        place inside the transaction that indexes it (so a sweep never removes
        a file a concurrent upload is publishing). ``remove_file`` moves a
        blob's file out of the served tree while the lock is held.
        """
        now = time.time() if now is None else now
        cutoff = now - grace_seconds
        async with self._db.transaction() as db:
            manifests: list[tuple[str, str]] = []
            if untagged:
                async with db.execute(
                    """SELECT m.id, r.name, m.digest, m.media_type, m.size FROM manifests m
                       JOIN repositories r ON r.id = m.repository_id
                       WHERE m.pushed_at < ?
                         AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
                         AND NOT EXISTS (SELECT 1 FROM manifest_children c
                             JOIN manifests p ON p.id = c.manifest_id
                             WHERE c.child_digest = m.digest AND p.repository_id = m.repository_id)
                         AND NOT (m.subject IS NOT NULL AND EXISTS (SELECT 1 FROM manifests s
                             WHERE s.repository_id = m.repository_id AND s.digest = m.subject))""",
                    (cutoff,),
                ) as cursor:
                    doomed = list(await cursor.fetchall())
                manifests = [(r[1], r[2]) for r in doomed]
                if not dry_run:
                    await db.executemany(
                        "DELETE FROM manifests WHERE id = ?", [(r[0],) for r in doomed]
                    )
                    await self._db.outbox.add(
                        db,
                        [
                            Announcement("delete", r[1], None, r[2], r[3], r[4], "gc", at=now)
                            for r in doomed
                        ],
                    )
            async with db.execute(
                """SELECT b.digest, b.size FROM blobs b
                   WHERE b.created_at < ?
                     AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.digest = b.digest)
                     AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                                     WHERE rb.digest = b.digest AND rb.linked_at >= ?)""",
                (cutoff, cutoff),
            ) as cursor:
                blobs = [(str(r[0]), int(r[1])) for r in await cursor.fetchall()]
            if not dry_run:
                for digest, _ in blobs:
                    await db.execute("DELETE FROM repository_blobs WHERE digest = ?", (digest,))
                    await db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
                    await asyncio.to_thread(remove_file, digest)
            return GcResult(manifests, blobs)
