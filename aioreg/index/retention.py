"""Stored retention policies, by target (a namespace or repository pattern)."""

from __future__ import annotations

from typing import Any

import msgspec

from aioreg.index.database import Database


class RetentionQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set_policy(self, target: str, policy: dict[str, object] | None) -> None:
        """Store ``target``'s policy; None removes it."""
        async with self._db.transaction() as db:
            if policy is None:
                await db.execute("DELETE FROM retention_policies WHERE target = ?", (target,))
            else:
                await db.execute(
                    "INSERT INTO retention_policies(target, policy) VALUES (?, ?) "
                    "ON CONFLICT(target) DO UPDATE SET policy = excluded.policy",
                    (target, msgspec.json.encode(policy)),
                )

    async def policies(self) -> dict[str, dict[str, object]]:
        rows = await self._db.all("SELECT target, policy FROM retention_policies ORDER BY target")
        decoded: dict[str, dict[str, Any]] = {
            r[0]: msgspec.json.decode(r[1], type=dict[str, Any]) for r in rows
        }
        return dict(decoded)
