"""Upload session rows: what a resumable upload has committed so far."""

from __future__ import annotations

from aioreg.index.database import Database
from aioreg.index.errors import UploadCapReached
from aioreg.index.rows import UploadRow

_UPLOAD = (
    "SELECT id, repository, started_at, updated_at, committed_bytes, digest_algorithm, owner "
    "FROM uploads"
)


class UploadQueries:
    """Session rows; no cached read shows them, so writing them keeps the read cache."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        upload_id: str,
        name: str,
        now: float,
        client: str | None = None,
        *,
        max_open: int = 0,
        max_open_per_client: int = 0,
        digest_algorithm: str | None = None,
        owner: str | None = None,
    ) -> None:
        """Open a session unless ``max_open`` sessions (or ``max_open_per_client`` of
        ``client``'s) already are, raising ``UploadCapReached``; 0 is no cap.

        Counting and inserting in one transaction keeps concurrent starts from all
        slipping under a cap.
        """
        async with self._db.transaction(invalidates=False) as db:
            if max_open or max_open_per_client:
                async with db.execute(
                    "SELECT count(*), coalesce(sum(client = ?), 0) FROM uploads", (client,)
                ) as cursor:
                    row = await cursor.fetchone()
                assert row is not None
                total, mine = int(row[0]), int(row[1])
                if max_open and total >= max_open:
                    raise UploadCapReached(total, per_client=False)
                if max_open_per_client and mine >= max_open_per_client:
                    raise UploadCapReached(mine, per_client=True)
            await db.execute(
                "INSERT INTO uploads(id, repository, started_at, updated_at, client, "
                "digest_algorithm, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (upload_id, name, now, now, client, digest_algorithm, owner),
            )

    async def get(self, upload_id: str) -> UploadRow | None:
        row = await self._db.one(f"{_UPLOAD} WHERE id = ?", (upload_id,))
        return None if row is None else UploadRow(*row)

    async def all(self) -> list[UploadRow]:
        return [UploadRow(*r) for r in await self._db.all(_UPLOAD)]

    async def set_offset(self, upload_id: str, committed_bytes: int, now: float) -> None:
        async with self._db.transaction(invalidates=False) as db:
            await db.execute(
                "UPDATE uploads SET committed_bytes = ?, updated_at = ? WHERE id = ?",
                (committed_bytes, now, upload_id),
            )

    async def claim(self, upload_id: str, previous: str | None, owner: str) -> bool:
        """Make ``owner`` the session's owner if ``previous`` still is; False if someone
        else claimed it first (or it ended)."""
        async with self._db.transaction(invalidates=False) as db:
            cursor = await db.execute(
                "UPDATE uploads SET owner = ? WHERE id = ? AND owner IS ?",
                (owner, upload_id, previous),
            )
            return cursor.rowcount == 1

    async def delete(self, upload_id: str) -> None:
        async with self._db.transaction(invalidates=False) as db:
            await db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
