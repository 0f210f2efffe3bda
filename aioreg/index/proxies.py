"""Stored proxy definitions: those added through ``/api/v1`` or ``aioreg proxy add``."""

from __future__ import annotations

import msgspec

from aioreg.config import ProxyConfig
from aioreg.index.database import Database

# The table's columns are ProxyConfig's fields, in its order.
FIELDS = ProxyConfig.__struct_fields__
COLUMNS = ", ".join(FIELDS)


class ProxyQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[ProxyConfig]:
        rows = await self._db.all(f"SELECT {COLUMNS} FROM proxies ORDER BY namespace")
        return [
            msgspec.convert(dict(zip(FIELDS, row, strict=True)), ProxyConfig, strict=False)
            for row in rows
        ]

    async def add(self, proxy: ProxyConfig, now: float) -> bool:
        """Store ``proxy``; False if its namespace already has one."""
        values = [getattr(proxy, f) for f in FIELDS]
        async with self._db.transaction() as db:
            cursor = await db.execute(
                f"INSERT INTO proxies({COLUMNS}, created_at) "
                f"VALUES ({', '.join('?' * (len(FIELDS) + 1))}) ON CONFLICT DO NOTHING",
                (*values, now),
            )
            return cursor.rowcount == 1

    async def remove(self, namespace: str) -> bool:
        """Forget ``namespace``'s proxy; False if there was none."""
        async with self._db.transaction() as db:
            cursor = await db.execute("DELETE FROM proxies WHERE namespace = ?", (namespace,))
            return cursor.rowcount == 1
