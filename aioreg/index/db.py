"""Index over SQLite (WAL): one serialized writer connection, one reader connection.

WAL lets reads run while a write transaction is open; writes go through a single
connection behind an asyncio lock so each transaction is one unit, never
interleaved with another coroutine's statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path

import aiosqlite
import msgspec

from aioreg.config import EventsConfig, LimitsConfig
from aioreg.domain.manifest import ParsedManifest
from aioreg.domain.periodic import PeriodicJob
from aioreg.domain.rules import namespace_of
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index.accounts import AccountQueries
from aioreg.index.cache import ReadCache
from aioreg.index.lifecycle import Event, LifecycleQueries
from aioreg.index.migrations import MIGRATIONS, statements
from aioreg.index.rows import BlobRow, ManifestRow, Referrer, UploadRow

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # FULL: the commit that acknowledges a push is on disk (WAL fsynced) when
    # COMMIT returns, so a 201 survives power loss, not only a killed process.
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
)
PULL_FLUSH_SECONDS = 1.0
# ``quota(used, added)``: the namespace's usage before a change and the bytes it adds; raises
# to refuse the change.
QuotaCheck = Callable[[int, int], None]
PRUNE_BATCH = 10000
MAX_PENDING_EVENTS = 100000  # kept across failed flushes; the oldest go beyond it
DAY = 86400.0
SERVABLE_LINKED_BLOBS = (
    "repository_blobs JOIN blobs USING (digest) WHERE blobs.quarantined_at IS NULL AND"
)


class Index(AccountQueries, LifecycleQueries):
    def __init__(
        self,
        path: Path,
        busy_timeout: float = 10.0,
        *,
        read_cache_bytes: int | None = None,
        history: EventsConfig | None = None,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.history = history or EventsConfig()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        # Pull timestamps are batched: a pull must not cost a write transaction.
        self._pending_pulls: dict[tuple[int, int, str | None], float] = {}
        self._pending_events: list[Event] = []
        self._pending_pull_events: set[tuple[str, str | None, str | None, str | None]] = set()
        self._token_uses: dict[str, float] = {}  # token id -> last used, see touch_token
        self._writer_version: int | None = None  # see _note_bookkeeping_commit
        self.cache = ReadCache(
            self._data_version,
            LimitsConfig().read_cache_bytes if read_cache_bytes is None else read_cache_bytes,
        )
        self._flusher = PeriodicJob("pull flush", PULL_FLUSH_SECONDS, self.flush_pulls)

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_private(self.path)
        self._writer = await self._connect()
        await self._migrate()
        self._reader = await self._connect()
        self._writer_version = await self._others_version(self._writer)
        self._flusher.start()

    async def close(self) -> None:
        await self._flusher.stop()
        if self._writer is not None:
            await self.flush_pulls()
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in PRAGMAS:
            await conn.execute(pragma)
        # Another process (``aioreg check``, a second server) may hold the write lock briefly.
        await conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    async def _migrate(self) -> None:
        async with self._transaction() as db:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            row = await (await db.execute("SELECT max(version) FROM schema_version")).fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in statements(script):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    @contextlib.asynccontextmanager
    async def _transaction(
        self, *, invalidates: bool = True
    ) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; ``invalidates=False`` for bookkeeping no cached read shows."""
        assert self._writer is not None, "index is not open"
        async with self._write_lock:
            db = self._writer
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                # Whatever failed, nothing of it stays pending on the connection,
                # so the next transaction starts clean and never commits this
                # one's leftovers: a COMMIT refused (a deferred constraint, a full
                # disk), or a BEGIN or COMMIT whose caller was cancelled while the
                # statement still ran. The ROLLBACK queues behind such a statement
                # on the connection's thread; with no transaction open it fails,
                # harmlessly.
                with contextlib.suppress(sqlite3.Error):  # the original error matters
                    await db.execute("ROLLBACK")
                self.cache.invalidate()
                raise
            if invalidates:
                self.cache.invalidate()
            else:
                await self._note_bookkeeping_commit(db)

    async def _note_bookkeeping_commit(self, db: aiosqlite.Connection) -> None:
        """Keep the cache across this process's own bookkeeping commits (pull times, events).

        The reader's ``data_version`` changes with them like with anyone's. Read it
        first, then the writer's, which only other processes' commits change: if
        that one has not moved since it was last read (at the previous such
        commit), every change the reader sees is this process's and nothing cached
        went stale. Otherwise the cache is emptied now, after those commits.
        """
        try:
            reader_version = await self._data_version()
            writer_version = await self._others_version(db)
        except sqlite3.Error:
            self.cache.invalidate()  # the commit stands; the cache just starts over
            return
        others = writer_version != self._writer_version
        self._writer_version = writer_version
        self.cache.seen(reader_version, invalidate=others)

    async def _prune_history(self, db: aiosqlite.Connection, table: str) -> None:
        """Keep an append-only log (events, audit) within its age and row limits.

        Runs inside the transaction that appends to it, removing at most
        ``PRUNE_BATCH`` of the oldest rows a time, so a large backlog (after an
        upgrade, or a lowered limit) drains over a few flushes, never in one
        long transaction. Both deletes walk an index from the oldest end.
        """
        if self.history.max_age_days > 0:
            await db.execute(
                f"DELETE FROM {table} WHERE id IN "
                f"(SELECT id FROM {table} WHERE at < ? ORDER BY at LIMIT ?)",
                (time.time() - self.history.max_age_days * DAY, PRUNE_BATCH),
            )
        if self.history.max_rows > 0:
            await db.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
                f"WHERE id <= (SELECT max(id) FROM {table}) - ? ORDER BY id LIMIT ?)",
                (self.history.max_rows, PRUNE_BATCH),
            )

    @property
    def _read(self) -> aiosqlite.Connection:
        assert self._reader is not None, "index is not open"
        return self._reader

    # Each read runs start to finish in one call on the reader's thread. A
    # statement left open across an await would keep the connection's read
    # transaction (its WAL snapshot) alive while other coroutines' reads join
    # it, and they would miss commits made since: a tag pushed a moment ago
    # could read as unknown.

    async def _one(self, sql: str, params: Iterable[object] = ()) -> aiosqlite.Row | None:
        rows = await self._read.execute_fetchall(sql, tuple(params))
        return next(iter(rows), None)

    async def _all(self, sql: str, params: Iterable[object] = ()) -> list[aiosqlite.Row]:
        return list(await self._read.execute_fetchall(sql, tuple(params)))

    # -- repositories ----------------------------------------------------

    @staticmethod
    async def _others_version(conn: aiosqlite.Connection) -> int:
        """``data_version`` as ``conn`` sees it: changed by every commit but its own."""
        rows = list(await conn.execute_fetchall("PRAGMA data_version"))  # one call, see _one
        return int(rows[0][0]) if rows else 0

    async def _data_version(self) -> int:
        """Changes whenever anyone else commits: other processes, and this one's writer.

        Asked on the reader, never the writer: the writer's thread may be waiting
        for another process's write lock (``aioreg gc``), and a read must never
        queue behind that.
        """
        return await self._others_version(self._read)

    async def repository_id(self, name: str) -> int | None:
        return await self.cache.get(("repo", name), lambda: self._repository_id(name))

    async def _repository_id(self, name: str) -> int | None:
        row = await self._one("SELECT id FROM repositories WHERE name = ?", (name,))
        return None if row is None else row[0]

    @staticmethod
    async def _ensure_repository(db: aiosqlite.Connection, name: str, now: float) -> int:
        await db.execute(
            "INSERT INTO repositories(name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
            (name, now),
        )
        row = await (
            await db.execute("SELECT id FROM repositories WHERE name = ?", (name,))
        ).fetchone()
        assert row is not None
        return int(row[0])

    async def catalog(self, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Repository names after ``last`` in byte order; the flag says whether more follow."""
        return await self._page(
            "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?", (), last, limit
        )

    # -- blobs -----------------------------------------------------------

    async def blob(self, digest: str) -> BlobRow | None:
        """A stored, servable blob (quarantined ones are not)."""
        row = await self._one(
            "SELECT digest, size, xxh3_128 FROM blobs WHERE digest = ? AND quarantined_at IS NULL",
            (digest,),
        )
        return None if row is None else BlobRow(*row)

    async def servable_blobs(self, page: int = 500) -> AsyncIterator[BlobRow]:
        """Every servable blob in digest order, read a page at a time."""
        last = ""
        while rows := await self._all(
            "SELECT digest, size, xxh3_128 FROM blobs WHERE digest > ? AND quarantined_at IS NULL "
            "ORDER BY digest LIMIT ?",
            (last, page),
        ):
            for row in rows:
                yield BlobRow(*row)
            last = rows[-1][0]

    async def blob_totals(self) -> tuple[int, int]:
        row = await self._one(
            "SELECT count(*), coalesce(sum(size), 0) FROM blobs WHERE quarantined_at IS NULL"
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def known_blob_digests(self) -> set[str]:
        """Every blob row, quarantined or not: files without one are orphans."""
        return {r[0] for r in await self._all("SELECT digest FROM blobs")}

    async def repository_blob(self, name: str, digest: str) -> BlobRow | None:
        return await self.cache.get(
            ("blob", name, digest), lambda: self._repository_blob(name, digest)
        )

    async def _repository_blob(self, name: str, digest: str) -> BlobRow | None:
        row = await self._one(
            """SELECT b.digest, b.size, b.xxh3_128 FROM blobs b
               JOIN repository_blobs rb ON rb.digest = b.digest
               JOIN repositories r ON r.id = rb.repository_id
               WHERE r.name = ? AND b.digest = ? AND b.quarantined_at IS NULL""",
            (name, digest),
        )
        return None if row is None else BlobRow(*row)

    async def link_blob(
        self,
        name: str,
        blob: BlobRow,
        now: float | None = None,
        *,
        ended_upload: str | None = None,
        place: Callable[[], None] | None = None,
        quota: QuotaCheck | None = None,
    ) -> None:
        """Record a stored blob (once, registry-wide) and make it visible in ``name``.

        ``ended_upload`` names the session that produced it, deleted in the same
        transaction so a crash never leaves a session whose blob is already in.
        ``place`` puts the file under its final name while this transaction holds
        the index's write lock, which garbage collection also holds while it
        removes files: a sweep can never take the file of a blob being indexed.
        ``quota`` may refuse the blob given the namespace's usage (see ``_within_quota``).
        """
        now = time.time() if now is None else now
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO blobs(digest, size, xxh3_128, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(digest) DO UPDATE SET quarantined_at = NULL, "
                "xxh3_128 = coalesce(excluded.xxh3_128, xxh3_128) "
                "WHERE quarantined_at IS NOT NULL",
                (blob.digest, blob.size, blob.xxh3_128, now),
            )
            await self._link(db, name, blob.digest, now, quota)
            if ended_upload is not None:
                await db.execute("DELETE FROM uploads WHERE id = ?", (ended_upload,))
            if place is not None:
                # Last, so a refusal above never leaves a file under a final name.
                await asyncio.to_thread(place)

    async def mount_blob(
        self,
        name: str,
        digest: str,
        source: str | None,
        stored: Callable[[], bool],
        quota: QuotaCheck | None = None,
    ) -> BlobRow | None:
        """Link a servable blob (in ``source``, if named) into ``name``; None if there is none.

        The blob row, its link in the source and ``stored()`` (its file is there)
        are checked inside the transaction that links it, under the write lock a
        garbage collection sweep holds: a mount either precedes a sweep (and its
        fresh link keeps the blob) or finds the blob gone.
        """
        now = time.time()
        async with self._transaction() as db:
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
            if row is None or not await asyncio.to_thread(stored):
                return None
            await self._link(db, name, digest, now, quota)
            return BlobRow(*row)

    async def _link(
        self, db: aiosqlite.Connection, name: str, digest: str, now: float, quota: QuotaCheck | None
    ) -> None:
        async with self._within_quota(db, name, quota):
            repo_id = await self._ensure_repository(db, name, now)
            await db.execute(
                "INSERT INTO repository_blobs(repository_id, digest, linked_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET linked_at = excluded.linked_at",
                (repo_id, digest, now),
            )

    @contextlib.asynccontextmanager
    async def _within_quota(
        self, db: aiosqlite.Connection, name: str, quota: QuotaCheck | None
    ) -> AsyncIterator[None]:
        """Run links into ``name``'s namespace, then let ``quota(used, added)`` refuse them.

        The figure is the namespace's incremental usage (kept by triggers on every
        link and unlink), read in the same transaction: one check serves uploads,
        mounts and copies alike, and a refusal rolls the links back.
        """
        if quota is None:
            yield
            return
        namespace = namespace_of(name)
        before = await self._namespace_usage(db, namespace)
        yield
        added = await self._namespace_usage(db, namespace) - before
        if added > 0:
            quota(before, added)

    @staticmethod
    async def _namespace_usage(db: aiosqlite.Connection, namespace: str) -> int:
        async with db.execute(
            "SELECT blob_bytes FROM namespace_usage WHERE namespace = ?", (namespace,)
        ) as cursor:
            row = await cursor.fetchone()
        return 0 if row is None else int(row[0])

    async def counted_size(self, namespace: str, digest: str) -> int:
        """The blob's size if the namespace's usage already counts it, else 0."""
        row = await self._one(
            "SELECT b.size FROM namespace_blobs nb JOIN blobs b USING (digest) "
            "WHERE nb.namespace = ? AND nb.digest = ?",
            (namespace, digest),
        )
        return 0 if row is None else int(row[0])

    async def namespace_usage(self, namespace: str) -> int:
        """Distinct blob bytes linked in the namespace: what its quota limits."""
        row = await self._one(
            "SELECT blob_bytes FROM namespace_usage WHERE namespace = ?", (namespace,)
        )
        return 0 if row is None else int(row[0])

    async def unlink_blob(
        self, name: str, digest: str, refuse: Callable[[list[str]], None] | None = None
    ) -> bool:
        """Unlink a blob from ``name``. ``refuse(manifests)`` may stop it, given the digests of
        the repository's manifests that reference the blob, checked in the same transaction."""
        async with self._transaction() as db:
            if refuse is not None:
                async with db.execute(
                    "SELECT m.digest FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id "
                    "WHERE mb.digest = ? AND m.repository_id = "
                    "(SELECT id FROM repositories WHERE name = ?) ORDER BY m.digest LIMIT 20",
                    (digest, name),
                ) as cursor:
                    manifests = [r[0] for r in await cursor.fetchall()]
                if manifests:
                    refuse(manifests)
            return await self._delete_in(db, "repository_blobs", "digest", name, digest)

    # -- upload sessions -------------------------------------------------

    async def create_upload(
        self,
        upload_id: str,
        name: str,
        now: float,
        client: str | None = None,
        admit: Callable[[int, int], None] | None = None,
    ) -> None:
        """Open a session; ``admit(open_sessions, open_sessions_of_client)`` may refuse it.

        Counting and inserting in one transaction keeps concurrent starts from all
        slipping under a cap.
        """
        async with self._transaction() as db:
            if admit is not None:
                async with db.execute(
                    "SELECT count(*), coalesce(sum(client = ?), 0) FROM uploads", (client,)
                ) as cursor:
                    row = await cursor.fetchone()
                assert row is not None
                admit(int(row[0]), int(row[1]))
            await db.execute(
                "INSERT INTO uploads(id, repository, started_at, updated_at, client) "
                "VALUES (?, ?, ?, ?, ?)",
                (upload_id, name, now, now, client),
            )

    async def upload(self, upload_id: str) -> UploadRow | None:
        row = await self._one(
            "SELECT id, repository, started_at, updated_at, committed_bytes FROM uploads "
            "WHERE id = ?",
            (upload_id,),
        )
        return None if row is None else UploadRow(*row)

    async def uploads(self) -> list[UploadRow]:
        rows = await self._all(
            "SELECT id, repository, started_at, updated_at, committed_bytes FROM uploads"
        )
        return [UploadRow(*r) for r in rows]

    async def set_upload_offset(self, upload_id: str, committed_bytes: int, now: float) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE uploads SET committed_bytes = ?, updated_at = ? WHERE id = ?",
                (committed_bytes, now, upload_id),
            )

    async def delete_upload(self, upload_id: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    # -- manifests and tags ----------------------------------------------

    async def put_manifest(
        self,
        name: str,
        manifest: ParsedManifest,
        body: bytes,
        tag: str | None,
        now: float,
        *,
        protect_existing_tag: bool = False,
    ) -> None:
        """Store a manifest and its references, moving ``tag`` to it, in one transaction.

        Every referenced blob must be linked to the repository and every child
        manifest stored in it; the check runs inside the write transaction so a
        concurrent delete cannot slip between check and insert. With
        ``protect_existing_tag`` a tag already pointing at another digest is
        refused (immutable tags, overwrite disabled); the same digest again is fine.
        """
        digest = str(manifest.digest)
        async with self._transaction() as db:
            repo_id = await self._ensure_repository(db, name, now)
            if tag is not None and protect_existing_tag:
                async with db.execute(
                    "SELECT m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id "
                    "WHERE t.repository_id = ? AND t.name = ?",
                    (repo_id, tag),
                ) as cursor:
                    existing = await cursor.fetchone()
                if existing is not None and existing[0] != digest:
                    raise RegistryError(
                        ErrorCode.DENIED,
                        f"tag {name}:{tag} already points at {existing[0]} and may not be "
                        "overwritten",
                        {"tag": tag, "current": existing[0]},
                    )
            blobs = sorted({str(d) for d in manifest.blobs})
            await self._require(
                db, SERVABLE_LINKED_BLOBS, repo_id, blobs, f"blob in {name}", manifest.sizes
            )
            children = sorted({str(d) for d in manifest.children})
            await self._require(
                db,
                "manifests WHERE",
                repo_id,
                children,
                f"child manifest in {name}",
                manifest.sizes,
            )
            cursor = await db.execute(
                """INSERT INTO manifests(repository_id, digest, media_type, size, artifact_type,
                       subject, annotations, body, pushed_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(repository_id, digest) DO UPDATE SET pushed_at = excluded.pushed_at
                   RETURNING id""",
                (
                    repo_id,
                    digest,
                    manifest.media_type,
                    manifest.size,
                    manifest.artifact_type,
                    None if manifest.subject is None else str(manifest.subject),
                    msgspec.json.encode(manifest.annotations) if manifest.annotations else None,
                    body,
                    now,
                ),
            )
            row = await cursor.fetchone()
            assert row is not None
            manifest_id = int(row[0])
            await db.executemany(
                "INSERT OR IGNORE INTO manifest_blobs(manifest_id, digest) VALUES (?, ?)",
                [(manifest_id, d) for d in blobs],
            )
            await db.executemany(
                "INSERT OR IGNORE INTO manifest_children(manifest_id, child_digest) VALUES (?, ?)",
                [(manifest_id, d) for d in children],
            )
            if tag is not None:
                await db.execute(
                    """INSERT INTO tags(repository_id, name, manifest_id, pushed_at)
                       VALUES (?, ?, ?, ?)
                       ON CONFLICT(repository_id, name) DO UPDATE
                       SET manifest_id = excluded.manifest_id, pushed_at = excluded.pushed_at""",
                    (repo_id, tag, manifest_id, now),
                )
            await db.execute(
                "UPDATE repositories SET last_push_at = ? WHERE id = ?", (now, repo_id)
            )

    @staticmethod
    async def _require(
        db: aiosqlite.Connection,
        source: str,
        repo_id: int,
        digests: list[str],
        what: str,
        sizes: Mapping[str, int],
    ) -> None:
        """Raise MANIFEST_BLOB_UNKNOWN unless every digest has a row in ``source`` for the repo,
        MANIFEST_INVALID when its stored size is not the one ``sizes`` declares.

        ``source`` is a FROM clause ending in WHERE or AND.
        """
        found: dict[str, int] = {}
        # Stay under SQLite's bound-parameter limit for very wide manifests.
        for start in range(0, len(digests), 500):
            batch = digests[start : start + 500]
            marks = ",".join("?" * len(batch))
            sql = f"SELECT digest, size FROM {source} repository_id = ? AND digest IN ({marks})"
            async with db.execute(sql, (repo_id, *batch)) as cursor:
                found.update((r[0], r[1]) for r in await cursor.fetchall())
        for digest, size in found.items():
            if digest in sizes and sizes[digest] != size:
                raise RegistryError(
                    ErrorCode.MANIFEST_INVALID,
                    f"the descriptor of {digest} says {sizes[digest]} bytes; the stored {what} "
                    f"has {size}",
                    {"digest": digest, "declared": sizes[digest], "stored": size},
                )
        missing = [d for d in digests if d not in found]
        if missing:
            raise RegistryError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                f"manifest references {missing[0]}, which is not a {what}",
                {"missing": missing},
            )

    _MANIFEST_COLUMNS = "m.id, m.repository_id, m.digest, m.media_type, m.size, m.body, m.subject"

    async def manifest_by_digest(self, name: str, digest: str) -> ManifestRow | None:
        return await self.cache.get(
            ("manifest", name, digest), lambda: self._manifest_by_digest(name, digest)
        )

    async def _manifest_by_digest(self, name: str, digest: str) -> ManifestRow | None:
        row = await self._one(
            f"""SELECT {self._MANIFEST_COLUMNS} FROM manifests m
                JOIN repositories r ON r.id = m.repository_id
                WHERE r.name = ? AND m.digest = ?""",
            (name, digest),
        )
        return None if row is None else ManifestRow(*row)

    async def manifest_by_tag(self, name: str, tag: str) -> ManifestRow | None:
        return await self.cache.get(("tag", name, tag), lambda: self._manifest_by_tag(name, tag))

    async def _manifest_by_tag(self, name: str, tag: str) -> ManifestRow | None:
        row = await self._one(
            f"""SELECT {self._MANIFEST_COLUMNS} FROM tags t
                JOIN repositories r ON r.id = t.repository_id
                JOIN manifests m ON m.id = t.manifest_id
                WHERE r.name = ? AND t.name = ?""",
            (name, tag),
        )
        return None if row is None else ManifestRow(*row)

    async def tags_of(self, name: str, digest: str) -> list[str]:
        rows = await self._all(
            "SELECT t.name FROM tags t JOIN manifests m ON m.id = t.manifest_id "
            "JOIN repositories r ON r.id = t.repository_id WHERE r.name = ? AND m.digest = ?",
            (name, digest),
        )
        return [r[0] for r in rows]

    async def delete_manifest(self, name: str, digest: str) -> bool:
        """Remove a manifest and every tag pointing at it."""
        return await self._delete_in_repository("manifests", "digest", name, digest)

    async def delete_tag(self, name: str, tag: str, digest: str | None = None) -> bool:
        """Remove a tag; with ``digest``, only while it still points at that manifest."""
        if digest is None:
            return await self._delete_in_repository("tags", "name", name, tag)
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM tags WHERE name = ? AND repository_id = "
                "(SELECT id FROM repositories WHERE name = ?) AND manifest_id = "
                "(SELECT id FROM manifests m WHERE m.repository_id = tags.repository_id "
                "AND m.digest = ?)",
                (tag, name, digest),
            )
            return cursor.rowcount > 0

    async def _delete_in_repository(self, table: str, column: str, name: str, key: str) -> bool:
        async with self._transaction() as db:
            return await self._delete_in(db, table, column, name, key)

    @staticmethod
    async def _delete_in(
        db: aiosqlite.Connection, table: str, column: str, name: str, key: str
    ) -> bool:
        cursor = await db.execute(
            f"DELETE FROM {table} WHERE {column} = ? AND repository_id = "
            "(SELECT id FROM repositories WHERE name = ?)",
            (key, name),
        )
        return cursor.rowcount > 0

    async def tags(self, repo_id: int, last: str | None, limit: int) -> tuple[list[str], bool]:
        return await self._page(
            "SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name LIMIT ?",
            (repo_id,),
            last,
            limit,
        )

    async def _page(
        self, sql: str, params: tuple[object, ...], last: str | None, limit: int
    ) -> tuple[list[str], bool]:
        """One page of names after ``last``, fetching one extra to learn whether more follow."""
        rows = await self._all(sql, (*params, last or "", limit + 1))
        names = [r[0] for r in rows]
        return names[:limit], len(names) > limit

    async def referrers(
        self, repo_id: int, subject: str, artifact_type: str | None
    ) -> list[Referrer]:
        sql = (
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests "
            "WHERE repository_id = ? AND subject = ?"
        )
        params: list[object] = [repo_id, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = ?"
            params.append(artifact_type)
        rows = await self._all(sql + " ORDER BY pushed_at, digest", params)
        return [
            Referrer(
                digest=r[0],
                media_type=r[1],
                size=r[2],
                artifact_type=r[3],
                annotations=None if r[4] is None else msgspec.json.decode(r[4]),
            )
            for r in rows
        ]

    # -- pull bookkeeping ------------------------------------------------

    def note_pull(self, manifest: ManifestRow, tag: str | None) -> None:
        self._pending_pulls[(manifest.repository_id, manifest.id, tag)] = time.time()

    def note_event(self, event: Event) -> None:
        """Activity is batched like pulls: recording it must not cost a transaction each.

        Pulls of the same reference by the same actor within one flush interval
        are one event (the first), so a hot tag cannot flood the activity log.
        """
        if event.kind == "pull":
            key = (event.repository, event.reference, event.digest, event.actor)
            if key in self._pending_pull_events:
                return
            self._pending_pull_events.add(key)
        self._pending_events.append(event)

    async def flush_pulls(self) -> None:
        """Write the batched bookkeeping. What a failed or cancelled flush (a shutdown while
        another process holds the lock) was writing stays pending for the next one."""
        if self._pending_events:
            events, self._pending_events = self._pending_events, []
            self._pending_pull_events = set()
            try:
                await self.add_events(events)
            except BaseException:
                self._pending_events = (events + self._pending_events)[-MAX_PENDING_EVENTS:]
                raise
        if not self._pending_pulls and not self._token_uses:
            return
        pending, self._pending_pulls = self._pending_pulls, {}
        token_uses, self._token_uses = self._token_uses, {}
        try:
            await self._write_pulls(pending, token_uses)
        except BaseException:
            for key, when in pending.items():
                self._pending_pulls[key] = max(when, self._pending_pulls.get(key, when))
            for token_id, when in token_uses.items():
                self._token_uses[token_id] = max(when, self._token_uses.get(token_id, when))
            raise

    async def _write_pulls(
        self,
        pending: dict[tuple[int, int, str | None], float],
        token_uses: dict[str, float],
    ) -> None:
        async with self._transaction(invalidates=False) as db:
            await db.executemany(
                "UPDATE tokens SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                [(when, token_id) for token_id, when in token_uses.items()],
            )
            for (repo_id, manifest_id, tag), when in pending.items():
                await db.execute(
                    "UPDATE repositories SET last_pull_at = max(coalesce(last_pull_at, 0), ?) "
                    "WHERE id = ?",
                    (when, repo_id),
                )
                await db.execute(
                    "UPDATE manifests SET last_pull_at = ? WHERE id = ?", (when, manifest_id)
                )
                if tag is not None:
                    await db.execute(
                        "UPDATE tags SET last_pull_at = ? WHERE repository_id = ? AND name = ?",
                        (when, repo_id, tag),
                    )

    async def pull_times(self, name: str) -> tuple[float | None, float | None]:
        """(last push, last pull) of a repository, for tests and the management API."""
        await self.flush_pulls()
        row = await self._one(
            "SELECT last_push_at, last_pull_at FROM repositories WHERE name = ?", (name,)
        )
        return (None, None) if row is None else (row[0], row[1])


def _make_private(path: Path) -> None:
    """The index holds password hashes: it and its -wal/-shm are for this user alone.

    Created 0600 before SQLite opens it, SQLite gives the -wal and -shm files it
    creates the same mode; files left by an older version are tightened.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
