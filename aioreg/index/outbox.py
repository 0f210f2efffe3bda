"""The webhook outbox: events written in the transaction of the change they report.

A push, tag or delete adds its events with ``Outbox.add`` inside its own write
transaction, so an acknowledged change is never missed and a rolled-back one
never announced. Pulls and quota refusals arrive batched (``ActivityQueries.flush``). Nothing is
written while no endpoint is enabled: nobody could be told. The outbox keeps
at most ``max_rows`` events (delivery history included); past it the oldest
go, with a warning when any of them was still undelivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosqlite
import msgspec

from aioreg import logcontext

log = logging.getLogger("aioreg.webhooks")


@dataclass(frozen=True, slots=True)
class Announcement:
    """One event as a change reports it; ``Outbox.add`` gives it its id and time."""

    action: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    media_type: str | None = None
    size: int | None = None
    actor: str | None = None
    detail: dict[str, object] = field(default_factory=dict)
    at: float | None = None  # None: now


class Outbox:
    """Appends announcements inside a caller's transaction; wakes the delivery worker after."""

    def __init__(self, max_rows: int, quota_warning_percent: int = 90) -> None:
        self.max_rows = max_rows
        self.quota_warning_percent = quota_warning_percent
        self.written = asyncio.Event()  # set after a commit that added events
        self._in_transaction = False

    async def active(self, db: aiosqlite.Connection) -> bool:
        """Whether anyone listens (an endpoint is enabled): else there is nothing to prepare."""
        async with db.execute("SELECT 1 FROM webhook_endpoints WHERE enabled LIMIT 1") as cursor:
            return await cursor.fetchone() is not None

    async def add(self, db: aiosqlite.Connection, announcements: Sequence[Announcement]) -> None:
        """Write ``announcements`` (in order) in the open transaction ``db``."""
        if not announcements or not await self.active(db):
            return
        now = time.time()
        request_id = logcontext.request_id.get()
        await db.executemany(
            "INSERT INTO webhook_events(uid, at, action, repository, tag, digest, media_type, "
            "size, actor, request_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    str(uuid.uuid4()),
                    now if a.at is None else a.at,
                    a.action,
                    a.repository,
                    a.tag,
                    a.digest,
                    a.media_type,
                    a.size,
                    a.actor,
                    request_id,
                    msgspec.json.encode(a.detail).decode() if a.detail else None,
                )
                for a in announcements
            ],
        )
        self._in_transaction = True
        await self._bound(db)

    async def _bound(self, db: aiosqlite.Connection) -> None:
        async with db.execute("SELECT min(id), max(id) FROM webhook_events") as cursor:
            row = await cursor.fetchone()
        if row is None or row[0] is None:
            return
        lowest, cutoff = int(row[0]), int(row[1]) - self.max_rows
        if cutoff < lowest:
            return
        async with db.execute(
            "SELECT count(*) FROM webhook_events e WHERE e.id BETWEEN ? AND ? AND "
            "(e.dispatched = 0 OR EXISTS (SELECT 1 FROM webhook_deliveries d "
            "WHERE d.event_id = e.id AND d.state = 'pending'))",
            (lowest, cutoff),
        ) as cursor:
            counted = await cursor.fetchone()
        undelivered = int(counted[0]) if counted is not None else 0
        await db.execute("DELETE FROM webhook_events WHERE id BETWEEN ? AND ?", (lowest, cutoff))
        if undelivered:
            log.warning(
                "webhook outbox full (webhooks.outbox_max_rows = %d): dropped %d undelivered "
                "events (outbox ids %d-%d); their receivers will never get them",
                self.max_rows,
                undelivered,
                lowest,
                cutoff,
            )

    def committed(self) -> None:
        """The transaction that called ``add`` committed: the worker has work."""
        if self._in_transaction:
            self._in_transaction = False
            self.written.set()

    def rolled_back(self) -> None:
        self._in_transaction = False
