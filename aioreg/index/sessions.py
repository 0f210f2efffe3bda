"""Web console sign-in sessions, shared by every worker process through the index.

Rows are keyed by the sha256 of the session id; the id itself (the cookie) is never
stored. Session writes are bookkeeping no cached read shows (``invalidates=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite
import msgspec

from aioreg.index.database import Database

_COLUMNS = (
    "id_hash, csrf, user_id, user_name, is_admin, method, token_id, scopes, generation, "
    "created_at, seen_at, flash IS NOT NULL"
)
_SCOPES = msgspec.json.Decoder(list[tuple[str, list[str]]])


@dataclass(frozen=True, slots=True, repr=False)
class SessionRow:
    """One session; ``user_id`` None for an anonymous visitor's."""

    id_hash: bytes
    csrf: str
    user_id: int | None
    user_name: str | None
    is_admin: bool
    method: str  # "password", "token" or "anonymous"
    token_id: str | None
    scopes: list[tuple[str, list[str]]] | None  # a token login's limits; None: none
    generation: int | None
    created_at: float
    seen_at: float
    has_flash: bool = False  # a one-shot value waits for ``take_flash``

    def __repr__(self) -> str:  # the CSRF token stays out of logs
        return f"SessionRow(user={self.user_name!r}, method={self.method!r})"


def _row(row: aiosqlite.Row) -> SessionRow:
    return SessionRow(
        bytes(row[0]),
        row[1],
        row[2],
        row[3],
        bool(row[4]),
        row[5],
        row[6],
        None if row[7] is None else _SCOPES.decode(row[7]),
        row[8],
        float(row[9]),
        float(row[10]),
        bool(row[11]),
    )


class SessionQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, id_hash: bytes) -> SessionRow | None:
        row = await self._db.one(
            f"SELECT {_COLUMNS} FROM console_sessions WHERE id_hash = ?", (id_hash,)
        )
        return None if row is None else _row(row)

    async def create(self, session: SessionRow, max_sessions: int) -> None:
        """Add ``session``; beyond ``max_sessions`` of its kind (signed in or anonymous),
        the least recently seen of that kind go."""
        anonymous = int(session.user_id is None)
        scopes = None if session.scopes is None else msgspec.json.encode(session.scopes)
        async with self._db.transaction(invalidates=False) as db:
            await db.execute(
                "INSERT INTO console_sessions(id_hash, anonymous, csrf, user_id, user_name, "
                "is_admin, method, token_id, scopes, generation, created_at, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id_hash,
                    anonymous,
                    session.csrf,
                    session.user_id,
                    session.user_name,
                    int(session.is_admin),
                    session.method,
                    session.token_id,
                    scopes,
                    session.generation,
                    session.created_at,
                    session.seen_at,
                ),
            )
            await db.execute(
                "DELETE FROM console_sessions WHERE anonymous = ? AND id_hash IN "
                "(SELECT id_hash FROM console_sessions WHERE anonymous = ? "
                "ORDER BY seen_at DESC LIMIT -1 OFFSET ?)",
                (anonymous, anonymous, max_sessions),
            )

    async def touch(self, id_hash: bytes, now: float) -> None:
        """Record that the session was seen (callers do so at most once a minute)."""
        async with self._db.transaction(invalidates=False) as db:
            await db.execute(
                "UPDATE console_sessions SET seen_at = ? WHERE id_hash = ? AND seen_at < ?",
                (now, id_hash, now),
            )

    async def drop(self, id_hash: bytes) -> None:
        async with self._db.transaction(invalidates=False) as db:
            await db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))

    async def set_flash(self, id_hash: bytes, sealed: bytes) -> None:
        async with self._db.transaction(invalidates=False) as db:
            await db.execute(
                "UPDATE console_sessions SET flash = ? WHERE id_hash = ?", (sealed, id_hash)
            )

    async def take_flash(self, id_hash: bytes) -> bytes | None:
        """The one-shot value, cleared as it is read (by whichever worker reads it first)."""
        async with self._db.transaction(invalidates=False) as db:
            rows = await db.execute_fetchall(
                "SELECT flash FROM console_sessions WHERE id_hash = ?", (id_hash,)
            )
            value = next(iter(rows), (None,))[0]
            if value is not None:
                await db.execute(
                    "UPDATE console_sessions SET flash = NULL WHERE id_hash = ?", (id_hash,)
                )
            return None if value is None else bytes(value)

    async def expire(self, seen_before: float) -> int:
        """Remove the sessions idle since before ``seen_before``; how many went."""
        async with self._db.transaction(invalidates=False) as db:
            cursor = await db.execute(
                "DELETE FROM console_sessions WHERE anonymous IN (0, 1) AND seen_at < ?",
                (seen_before,),
            )
            return cursor.rowcount
