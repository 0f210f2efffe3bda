"""Blob rows (one per digest, registry-wide) and their links into repositories."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

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
# Links one write transaction takes at most: a batch's commit acknowledges them all at once.
LINK_BATCH_MAX = 64


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
        self.batches = LinkBatcher(db)

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
        pending = _PendingLink(
            name,
            blob,
            time.time() if now is None else now,
            ended_upload,
            place_file,
            quota_limit,
            adopt,
            asyncio.get_running_loop().create_future(),
            contextvars.copy_context(),
        )
        await self.batches.link(pending)

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


@dataclass(slots=True, eq=False)
class _PendingLink:
    """One caller's ``link``, queued for the next batch; ``outcome`` resolves after its commit."""

    name: str
    blob: BlobRow
    now: float
    ended_upload: str | None
    place_file: PlaceFile | None
    quota_limit: int | None
    adopt: bool
    outcome: asyncio.Future[None]
    # The caller's context (its request id, on the webhook events and log lines of its link).
    context: contextvars.Context


class LinkBatcher:
    """Group commit: concurrent links share one write transaction and one WAL fsync.

    Each commit (``synchronous=FULL``) costs an fsync, and with many pushers
    every link used to queue for the write lock to pay its own. Here a caller
    queues its link and waits for its own outcome. One leader task takes the
    write lock, then every link queued by then (up to ``LINK_BATCH_MAX``), each
    in a SAVEPOINT so a refusal (quota, a typed index error, a failed
    ``place_file``) rolls back that link alone and raises to its caller alone,
    and commits once. Links arriving meanwhile make the next batch; a lone link
    commits at once (nothing waits on a timer). A link is acknowledged only
    after the commit that holds it.
    """

    def __init__(self, db: Database, max_batch: int = LINK_BATCH_MAX) -> None:
        self._db = db
        self.max_batch = max_batch
        self._queue: deque[_PendingLink] = deque()
        self._leader: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Links queued for a batch not yet begun."""
        return len(self._queue)

    async def link(self, pending: _PendingLink) -> None:
        """Run ``pending`` in the next batch; return once that batch committed it.

        The batch runs in a task of its own: a caller cancelled while waiting
        cancels nothing of it. If its link was not yet taken into a batch it is
        dropped (never linked); if it was, the cancellation waits for that
        batch's outcome, so whatever the caller cleans up finds the index final.
        """
        self._queue.append(pending)
        if self._leader is None:
            self._leader = asyncio.create_task(self._lead(), name="index link batches")
        try:
            await asyncio.shield(pending.outcome)
        except asyncio.CancelledError:
            if pending in self._queue:
                self._queue.remove(pending)
                raise
            await _settled(pending.outcome)
            raise

    async def _lead(self) -> None:
        try:
            while self._queue:
                await self._run_batch()
        finally:
            self._leader = None
            while self._queue:  # only a cancelled leader (shutdown) leaves links never run
                self._queue.popleft().outcome.cancel()

    def _take(self) -> list[_PendingLink]:
        count = min(len(self._queue), self.max_batch)
        return [self._queue.popleft() for _ in range(count)]

    async def _run_batch(self) -> None:
        batch: list[_PendingLink] = []
        errors: list[Exception | None] = []
        try:
            async with self._db.transaction() as db:
                batch = self._take()  # after the lock's wait: all that queued meanwhile
                for pending in batch:
                    run = self._run_one(db, pending)
                    errors.append(await asyncio.create_task(run, context=pending.context))
        except BaseException as exc:
            # BEGIN, COMMIT or an error that ended the transaction: none of the batch stands.
            batch = batch or self._take()
            for pending in batch:
                if not pending.outcome.done():
                    if isinstance(exc, Exception):
                        pending.outcome.set_exception(exc)
                    else:
                        pending.outcome.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for pending, error in zip(batch, errors, strict=True):
            if pending.outcome.done():
                continue
            if error is None:
                pending.outcome.set_result(None)
            else:
                pending.outcome.set_exception(error)

    async def _run_one(self, db: aiosqlite.Connection, pending: _PendingLink) -> Exception | None:
        """One link in its own savepoint: its error, rolled back alone, or None."""
        await db.execute("SAVEPOINT link")
        try:
            await _insert_and_link(db, pending, self._db.outbox)
        except Exception as exc:
            if not await _undo_savepoint(db):
                raise  # the error ended the whole transaction
            return exc
        await db.execute("RELEASE link")
        return None


async def _insert_and_link(db: aiosqlite.Connection, pending: _PendingLink, outbox: Outbox) -> None:
    blob = pending.blob
    await db.execute(
        "INSERT INTO blobs(digest, size, xxh3_128, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(digest) DO UPDATE SET quarantined_at = NULL, "
        "xxh3_128 = coalesce(excluded.xxh3_128, xxh3_128) "
        "WHERE quarantined_at IS NOT NULL",
        (blob.digest, blob.size, blob.xxh3_128, pending.now),
    )
    await _link(
        db, pending.name, blob.digest, pending.now, pending.quota_limit, pending.adopt, outbox
    )
    if pending.ended_upload is not None:
        await db.execute("DELETE FROM uploads WHERE id = ?", (pending.ended_upload,))
    if pending.place_file is not None:
        # Last, so a refusal above never leaves a file under a final name.
        await asyncio.to_thread(pending.place_file)


async def _undo_savepoint(db: aiosqlite.Connection) -> bool:
    """Roll back to the link's savepoint; False if the transaction itself is gone."""
    try:
        await db.execute("ROLLBACK TO link")
        await db.execute("RELEASE link")
    except sqlite3.Error:
        return False
    return db.in_transaction


async def _settled(outcome: asyncio.Future[None]) -> None:
    """Wait, through further cancellations, until ``outcome`` is decided (a batch is short)."""
    while not outcome.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([outcome])
    if not outcome.cancelled():
        outcome.exception()  # its caller has gone: retrieved here, not logged as lost


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
