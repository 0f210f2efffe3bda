"""Blob rows (one per digest, registry-wide) and their links into repositories."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

import aiosqlite

from aioreg.index.database import Database, delete_in_repository, ensure_repository
from aioreg.index.errors import BlobStillReferenced
from aioreg.index.outbox import Outbox
from aioreg.index.rows import BlobRow
from aioreg.index.usage import within_quota

# Storage hooks: file work the index runs inside a linking transaction, under the write lock a
# GC sweep also holds, so the files on disk and the rows agree. They decide nothing.
PlaceFile = Callable[[], None]  # move the blob's file under its final name
FileExists = Callable[[], bool]  # is the blob's file there


class BlobFiles:
    """Blob rows read and changed inside the write transaction ``BlobQueries.files`` holds."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def rows(self, digests: Sequence[str]) -> dict[str, bool]:
        """Each digest that has a row, mapped to whether it is servable (not quarantined)."""
        found: dict[str, bool] = {}
        for start in range(0, len(digests), 500):  # under SQLite's bound-parameter limit
            batch = list(digests[start : start + 500])
            marks = ",".join("?" * len(batch))
            async with self._db.execute(
                f"SELECT digest, quarantined_at IS NULL FROM blobs WHERE digest IN ({marks})",
                batch,
            ) as cursor:
                found.update((r[0], bool(r[1])) for r in await cursor.fetchall())
        return found

    async def quarantine(self, digest: str, now: float | None = None) -> None:
        """Stop serving a blob; a later upload of the same digest heals it."""
        await self._db.execute(
            "UPDATE blobs SET quarantined_at = ? WHERE digest = ?",
            (time.time() if now is None else now, digest),
        )


class BlobQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, digest: str) -> BlobRow | None:
        """A stored, servable blob (quarantined ones are not)."""
        row = await self._db.one(
            "SELECT digest, size, xxh3_128 FROM blobs WHERE digest = ? AND quarantined_at IS NULL",
            (digest,),
        )
        return None if row is None else BlobRow(*row)

    async def servable(self, page: int = 500) -> AsyncIterator[BlobRow]:
        """Every servable blob in digest order, read a page at a time."""
        last = ""
        while rows := await self._db.all(
            "SELECT digest, size, xxh3_128 FROM blobs WHERE digest > ? AND quarantined_at IS NULL "
            "ORDER BY digest LIMIT ?",
            (last, page),
        ):
            for row in rows:
                yield BlobRow(*row)
            last = rows[-1][0]

    async def totals(self) -> tuple[int, int]:
        """(count, bytes) of servable blobs."""
        row = await self._db.one(
            "SELECT count(*), coalesce(sum(size), 0) FROM blobs WHERE quarantined_at IS NULL"
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def known_digests(self) -> set[str]:
        """Every blob row, quarantined or not: files without one are orphans."""
        return {r[0] for r in await self._db.all("SELECT digest FROM blobs")}

    async def sizes(self, digests: list[str]) -> dict[str, int]:
        if not digests:
            return {}
        rows = await self._db.all(
            f"SELECT digest, size FROM blobs WHERE digest IN ({','.join('?' * len(digests))})",
            digests,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def in_repository(self, name: str, digest: str) -> BlobRow | None:
        """The servable blob if it is linked in ``name`` (through the read cache)."""
        row: BlobRow | None = await self._db.cache.get(
            ("blob", name, digest), lambda: self._in_repository(name, digest)
        )
        return row

    async def _in_repository(self, name: str, digest: str) -> BlobRow | None:
        row = await self._db.one(
            """SELECT b.digest, b.size, b.xxh3_128 FROM blobs b
               JOIN repository_blobs rb ON rb.digest = b.digest
               JOIN repositories r ON r.id = rb.repository_id
               WHERE r.name = ? AND b.digest = ? AND b.quarantined_at IS NULL""",
            (name, digest),
        )
        return None if row is None else BlobRow(*row)

    async def link(
        self,
        name: str,
        blob: BlobRow,
        now: float | None = None,
        *,
        ended_upload: str | None = None,
        place_file: PlaceFile | None = None,
        quota_limit: int | None = None,
        adopt: bool = False,
    ) -> None:
        """Record a stored blob (once, registry-wide) and make it visible in ``name``.

        ``ended_upload`` names the session that produced it, deleted in the same
        transaction so a crash never leaves a session whose blob is already in.
        ``place_file`` puts the file under its final name while this transaction
        holds the index's write lock, which garbage collection also holds while it
        removes files: a sweep can never take the file of a blob being indexed.
        Past ``quota_limit`` (the namespace's distinct blob bytes) it raises
        ``QuotaWouldExceed`` and nothing is linked. With ``adopt``, the repository's
        manifests stored before this blob (a proxy's) that name it now reference it,
        in the same transaction: GC never sees the blob linked but unreferenced.
        """
        now = time.time() if now is None else now
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO blobs(digest, size, xxh3_128, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(digest) DO UPDATE SET quarantined_at = NULL, "
                "xxh3_128 = coalesce(excluded.xxh3_128, xxh3_128) "
                "WHERE quarantined_at IS NOT NULL",
                (blob.digest, blob.size, blob.xxh3_128, now),
            )
            await _link(db, name, blob.digest, now, quota_limit, adopt, self._db.outbox)
            if ended_upload is not None:
                await db.execute("DELETE FROM uploads WHERE id = ?", (ended_upload,))
            if place_file is not None:
                # Last, so a refusal above never leaves a file under a final name.
                await asyncio.to_thread(place_file)

    async def mount(
        self,
        name: str,
        digest: str,
        source: str | None,
        file_exists: FileExists,
        quota_limit: int | None = None,
        adopt: bool = False,
    ) -> BlobRow | None:
        """Link a servable blob (in ``source``, if named) into ``name``; None if there is none.

        The blob row, its link in the source and ``file_exists()`` are checked
        inside the transaction that links it, under the write lock a garbage
        collection sweep holds: a mount either precedes a sweep (and its fresh
        link keeps the blob) or finds the blob gone. ``quota_limit``, ``adopt`` as in ``link``.
        """
        now = time.time()
        async with self._db.transaction() as db:
            sql = (
                "SELECT b.digest, b.size, b.xxh3_128 FROM blobs b "
                "WHERE b.digest = ? AND b.quarantined_at IS NULL"
            )
            params: tuple[str, ...] = (digest,)
            if source is not None:
                sql += (
                    " AND EXISTS (SELECT 1 FROM repository_blobs rb JOIN repositories r "
                    "ON r.id = rb.repository_id WHERE rb.digest = b.digest AND r.name = ?)"
                )
                params = (digest, source)
            async with db.execute(sql, params) as cursor:
                row = await cursor.fetchone()
            if row is None or not await asyncio.to_thread(file_exists):
                return None
            await _link(db, name, digest, now, quota_limit, adopt, self._db.outbox)
            return BlobRow(*row)

    async def unlink(self, name: str, digest: str, *, refuse_if_referenced: bool = False) -> bool:
        """Unlink a blob from ``name``; False when it was not linked there.

        With ``refuse_if_referenced``, raise ``BlobStillReferenced`` (naming up to
        20 of them) while manifests of the repository reference it, checked in the
        same transaction.
        """
        async with self._db.transaction() as db:
            if refuse_if_referenced:
                async with db.execute(
                    "SELECT m.digest FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id "
                    "WHERE mb.digest = ? AND m.repository_id = "
                    "(SELECT id FROM repositories WHERE name = ?) ORDER BY m.digest LIMIT 20",
                    (digest, name),
                ) as cursor:
                    manifests = [str(r[0]) for r in await cursor.fetchall()]
                if manifests:
                    raise BlobStillReferenced(manifests)
            return await delete_in_repository(db, "repository_blobs", "digest", name, digest)

    @contextlib.asynccontextmanager
    async def files(self) -> AsyncIterator[BlobFiles]:
        """Hold the index's write lock while blob files are moved or removed.

        It is the lock a GC sweep removes files under and an upload places its
        file under (see ``link``), across processes (SQLite's write lock):
        rows read inside agree with the files on disk until the block ends.
        """
        async with self._db.transaction() as db:
            yield BlobFiles(db)


async def _link(
    db: aiosqlite.Connection,
    name: str,
    digest: str,
    now: float,
    quota_limit: int | None,
    adopt: bool = False,
    outbox: Outbox | None = None,
) -> None:
    if adopt:
        outbox = None  # a proxy caching upstream content: nobody pushed anything
    async with within_quota(db, name, quota_limit, outbox):
        repo_id = await ensure_repository(db, name, now, outbox)
        await db.execute(
            "INSERT INTO repository_blobs(repository_id, digest, linked_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO UPDATE SET linked_at = excluded.linked_at",
            (repo_id, digest, now),
        )
    if adopt:
        # A manifest references a blob when its body names the digest.
        await db.execute(
            "INSERT OR IGNORE INTO manifest_blobs(manifest_id, digest) "
            "SELECT id, ? FROM manifests WHERE repository_id = ? "
            "AND instr(body, CAST(? AS BLOB)) > 0",
            (digest, repo_id, digest),
        )
