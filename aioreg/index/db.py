"""Index over SQLite (WAL): one serialized writer connection, one reader connection.

WAL lets reads run while a write transaction is open; writes go through a single
connection behind an asyncio lock so each transaction is one unit, never
interleaved with another coroutine's statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import aiosqlite
import msgspec

from aioreg.errors import ErrorCode, RegistryError
from aioreg.index.accounts import AccountQueries
from aioreg.index.cache import ReadCache
from aioreg.index.lifecycle import Event, LifecycleQueries
from aioreg.index.migrations import MIGRATIONS
from aioreg.index.rows import BlobRow, ManifestRow, Referrer, UploadRow
from aioreg.manifest import ParsedManifest
from aioreg.periodic import PeriodicJob
from aioreg.rules import namespace_of

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
PULL_FLUSH_SECONDS = 1.0
SERVABLE_LINKED_BLOBS = (
    "repository_blobs JOIN blobs USING (digest) WHERE blobs.quarantined_at IS NULL AND"
)


class Index(AccountQueries, LifecycleQueries):
    def __init__(self, path: Path, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        # Pull timestamps are batched: a pull must not cost a write transaction.
        self._pending_pulls: dict[tuple[int, int, str | None], float] = {}
        self._pending_events: list[Event] = []
        self._pending_pull_events: set[tuple[str, str | None, str | None, str | None]] = set()
        self.cache = ReadCache(self._data_version)
        self._flusher = PeriodicJob("pull flush", PULL_FLUSH_SECONDS, self.flush_pulls)

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._migrate()
        self._reader = await self._connect()
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
                for statement in script.split(";"):
                    if statement.strip():
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
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            else:
                await db.execute("COMMIT")
                if invalidates:
                    self.cache.invalidate()

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

    async def _data_version(self) -> int:
        """Changes when another process commits (asked on the writer, which sees all but itself)."""
        assert self._writer is not None, "index is not open"
        async with self._writer.execute("PRAGMA data_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

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
        quota: Callable[[int, int], None] | None = None,
    ) -> None:
        """Record a stored blob (once, registry-wide) and make it visible in ``name``.

        ``ended_upload`` names the session that produced it, deleted in the same
        transaction so a crash never leaves a session whose blob is already in.
        ``place`` puts the file under its final name while this transaction holds
        the index's write lock, which garbage collection also holds while it
        removes files: a sweep can never take the file of a blob being indexed.
        ``quota(used, adding)`` may refuse the blob given the namespace's usage.
        """
        now = time.time() if now is None else now
        async with self._transaction() as db:
            if quota is not None:
                used = await self._namespace_physical(db, name)
                known = await (
                    await db.execute(
                        "SELECT 1 FROM repository_blobs rb JOIN repositories r "
                        "ON r.id = rb.repository_id WHERE rb.digest = ? AND "
                        "(r.name = ? OR r.name LIKE ?)",
                        (blob.digest, namespace_of(name), namespace_of(name) + "/%"),
                    )
                ).fetchone()
                quota(used, 0 if known else blob.size)
            if place is not None:
                await asyncio.to_thread(place)
            await db.execute(
                "INSERT INTO blobs(digest, size, xxh3_128, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(digest) DO UPDATE SET quarantined_at = NULL, "
                "xxh3_128 = coalesce(excluded.xxh3_128, xxh3_128) "
                "WHERE quarantined_at IS NOT NULL",
                (blob.digest, blob.size, blob.xxh3_128, now),
            )
            repo_id = await self._ensure_repository(db, name, now)
            await db.execute(
                "INSERT INTO repository_blobs(repository_id, digest, linked_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET linked_at = excluded.linked_at",
                (repo_id, blob.digest, now),
            )
            if ended_upload is not None:
                await db.execute("DELETE FROM uploads WHERE id = ?", (ended_upload,))

    async def unlink_blob(self, name: str, digest: str) -> bool:
        return await self._delete_in_repository("repository_blobs", "digest", name, digest)

    # -- upload sessions -------------------------------------------------

    async def create_upload(self, upload_id: str, name: str, now: float) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO uploads(id, repository, started_at, updated_at) VALUES (?, ?, ?, ?)",
                (upload_id, name, now, now),
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
            await self._require(db, SERVABLE_LINKED_BLOBS, repo_id, blobs, f"blob in {name}")
            children = sorted({str(d) for d in manifest.children})
            await self._require(
                db, "manifests WHERE", repo_id, children, f"child manifest in {name}"
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
        db: aiosqlite.Connection, source: str, repo_id: int, digests: list[str], what: str
    ) -> None:
        """Raise MANIFEST_BLOB_UNKNOWN unless every digest has a row in ``source`` for the repo.

        ``source`` is a FROM clause ending in WHERE or AND.
        """
        found: set[str] = set()
        # Stay under SQLite's bound-parameter limit for very wide manifests.
        for start in range(0, len(digests), 500):
            batch = digests[start : start + 500]
            marks = ",".join("?" * len(batch))
            sql = f"SELECT digest FROM {source} repository_id = ? AND digest IN ({marks})"
            async with db.execute(sql, (repo_id, *batch)) as cursor:
                found.update(r[0] for r in await cursor.fetchall())
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

    async def delete_tag(self, name: str, tag: str) -> bool:
        return await self._delete_in_repository("tags", "name", name, tag)

    async def _delete_in_repository(self, table: str, column: str, name: str, key: str) -> bool:
        async with self._transaction() as db:
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
        if self._pending_events:
            events, self._pending_events = self._pending_events, []
            self._pending_pull_events = set()
            await self.add_events(events)
        if not self._pending_pulls:
            return
        pending, self._pending_pulls = self._pending_pulls, {}
        async with self._transaction(invalidates=False) as db:
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
