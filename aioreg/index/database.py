"""The SQLite database under the index (WAL): one serialized writer connection, one reader.

WAL lets reads run while a write transaction is open; writes go through a single
connection behind an asyncio lock so each transaction is one unit, never
interleaved with another coroutine's statements. The query objects
(``aioreg.index.blobs`` and the rest) all run through one ``Database``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import aiosqlite

from aioreg.config import EventsConfig, LimitsConfig, WebhooksConfig
from aioreg.index.cache import ReadCache, SharedGeneration
from aioreg.index.migrations import MIGRATIONS, statements
from aioreg.index.outbox import Announcement, Outbox

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # FULL: the commit that acknowledges a push is on disk (WAL fsynced) when
    # COMMIT returns, so a 201 survives power loss, not only a killed process.
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
)
PRUNE_BATCH = 10000
DAY = 86400.0


class Database:
    """Connections, transactions, the read cache and the schema of one index file."""

    def __init__(
        self,
        path: Path,
        busy_timeout: float = 10.0,
        *,
        read_cache_bytes: int | None = None,
        history: EventsConfig | None = None,
        shared_generation: SharedGeneration | None = None,
        webhooks: WebhooksConfig | None = None,
    ) -> None:
        """``shared_generation``: the commit counters of the server's worker processes."""
        self.path = path
        self.busy_timeout = busy_timeout
        self.history = history or EventsConfig()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        webhooks = webhooks or WebhooksConfig()
        # Webhook events, written in the transactions of the changes they report.
        self.outbox = Outbox(webhooks.outbox_max_rows, webhooks.quota_warning_percent)
        self._writer_version: int | None = None  # see _note_bookkeeping_commit
        # Called with the seconds each write transaction waited for the write lock
        # (this process's lock, then SQLite's): how the API layer counts busy waits.
        self.wait_observers: list[Callable[[float], None]] = []
        self.write_transactions = 0  # begun by this process: what group commit saves
        self.cache = ReadCache(
            self.data_version,
            LimitsConfig().read_cache_bytes if read_cache_bytes is None else read_cache_bytes,
            shared_generation,
        )

    # -- lifecycle -------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_private(self.path)
        self._writer = await self._connect()
        await self._migrate()
        self._reader = await self._connect()
        self._writer_version = await self._others_version(self._writer)

    async def close(self) -> None:
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
        async with self.transaction() as db:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            row = await (await db.execute("SELECT max(version) FROM schema_version")).fetchone()
            current = int(row[0] or 0) if row is not None else 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in statements(script):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    async def online_backup(self, dest: Path) -> None:
        """Copy the whole database into the new file ``dest``, while servers use it.

        SQLite's online backup API, on a connection of its own, in one step: the
        copy is read in one read transaction, so it is the state after some
        commit and never part of one, and in WAL mode it neither blocks writers
        nor waits for them. The copy is left in rollback-journal mode, one
        self-contained file (a server opening it switches it back to WAL).
        """

        def copy() -> None:
            _make_private(dest)
            with (
                contextlib.closing(sqlite3.connect(self.path, timeout=self.busy_timeout)) as src,
                contextlib.closing(sqlite3.connect(dest)) as target,
            ):
                src.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")

        await asyncio.to_thread(copy)

    # -- writes ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self, *, invalidates: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; ``invalidates=False`` for bookkeeping no cached read shows."""
        assert self._writer is not None, "index is not open"
        asked = time.monotonic()
        async with self._write_lock:
            db = self._writer
            try:
                await db.execute("BEGIN IMMEDIATE")
                self.write_transactions += 1
                waited = time.monotonic() - asked
                for observe in self.wait_observers:
                    observe(waited)
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
                self.outbox.rolled_back()
                self.cache.committed()  # perhaps it did commit
                raise
            self.outbox.committed()
            if invalidates:
                self.cache.committed()
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
            reader_version = await self.data_version()
            writer_version = await self._others_version(db)
        except sqlite3.Error:
            self.cache.invalidate()  # the commit stands; the cache just starts over
            return
        others = writer_version != self._writer_version
        self._writer_version = writer_version
        self.cache.seen(reader_version, invalidate=others)

    async def prune_history(self, db: aiosqlite.Connection, table: str) -> None:
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

    # -- reads -----------------------------------------------------------

    # Each read runs start to finish in one call on the reader's thread. A
    # statement left open across an await would keep the connection's read
    # transaction (its WAL snapshot) alive while other coroutines' reads join
    # it, and they would miss commits made since: a tag pushed a moment ago
    # could read as unknown.

    @property
    def _read(self) -> aiosqlite.Connection:
        assert self._reader is not None, "index is not open"
        return self._reader

    async def one(self, sql: str, params: Iterable[object] = ()) -> aiosqlite.Row | None:
        rows = await self._read.execute_fetchall(sql, tuple(params))
        return next(iter(rows), None)

    async def all(self, sql: str, params: Iterable[object] = ()) -> list[aiosqlite.Row]:
        return list(await self._read.execute_fetchall(sql, tuple(params)))

    async def page(
        self, sql: str, params: tuple[object, ...], last: str | None, limit: int
    ) -> tuple[list[str], bool]:
        """One page of names after ``last``, fetching one extra to learn whether more follow."""
        rows = await self.all(sql, (*params, last or "", limit + 1))
        names = [str(r[0]) for r in rows]
        return names[:limit], len(names) > limit

    @staticmethod
    async def _others_version(conn: aiosqlite.Connection) -> int:
        """``data_version`` as ``conn`` sees it: changed by every commit but its own."""
        rows = list(await conn.execute_fetchall("PRAGMA data_version"))  # one call, see one()
        return int(rows[0][0]) if rows else 0

    async def data_version(self) -> int:
        """Changes whenever anyone else commits: other processes, and this one's writer.

        Asked on the reader, never the writer: the writer's thread may be waiting
        for another process's write lock (``aioreg gc``), and a read must never
        queue behind that.
        """
        return await self._others_version(self._read)


# -- statements shared by several query objects, run inside their transaction --


async def ensure_repository(
    db: aiosqlite.Connection,
    name: str,
    now: float,
    outbox: Outbox | None = None,
    actor: str | None = None,
) -> int:
    """The repository's id, creating its row on first use (announced to ``outbox``)."""
    cursor = await db.execute(
        "INSERT INTO repositories(name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
        (name, now),
    )
    if cursor.rowcount == 1 and outbox is not None:
        await outbox.add(db, [Announcement("repository_created", name, actor=actor, at=now)])
    row = await (await db.execute("SELECT id FROM repositories WHERE name = ?", (name,))).fetchone()
    assert row is not None
    return int(row[0])


async def delete_in_repository(
    db: aiosqlite.Connection, table: str, column: str, name: str, key: str
) -> bool:
    """Delete the row of ``table`` keyed ``column = key`` in repository ``name``."""
    cursor = await db.execute(
        f"DELETE FROM {table} WHERE {column} = ? AND repository_id = "
        "(SELECT id FROM repositories WHERE name = ?)",
        (key, name),
    )
    return cursor.rowcount > 0


def _make_private(path: Path) -> None:
    """The index holds password hashes: it and its -wal/-shm are for this user alone.

    Created 0600 before SQLite opens it, SQLite gives the -wal and -shm files it
    creates the same mode; files left by an older version are tightened.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
