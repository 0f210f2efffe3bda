"""Webhook endpoints, the outbox's events, their deliveries and every delivery attempt.

Events enter the outbox in the transactions of the changes they report
(``aioreg.index.outbox``). The delivery worker fans each out into one delivery
per matching endpoint (``fan_out``), sends the oldest pending delivery of each
endpoint (``heads``) and records each attempt (``record_attempt``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import msgspec

from aioreg.index.database import Database

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
_ENDPOINT_COLUMNS = (
    "id, namespace, url, secret, events, repository_pattern, media_types, format, enabled, "
    "created_at, source"
)
_EVENT_COLUMNS = (
    "e.id, e.uid, e.at, e.action, e.repository, e.tag, e.digest, e.media_type, e.size, "
    "e.actor, e.request_id, e.detail"
)
_DELIVERY_COLUMNS = (
    "d.id, d.endpoint_id, d.state, d.attempts, d.next_at, d.created_at, d.finished_at"
)


@dataclass(frozen=True, slots=True, repr=False)
class EndpointRow:
    """A receiver; its ``secret`` signs each request and never appears in a repr or log."""

    id: int
    namespace: str | None  # None: registry-wide
    url: str
    secret: str
    events: list[str]  # empty: every kind
    repository_pattern: str
    media_types: list[str]  # empty: any
    format: str
    enabled: bool
    created_at: float
    source: str  # "api" (API or CLI) or "config" (the config file's [[webhook]])

    def __repr__(self) -> str:
        return f"EndpointRow(id={self.id}, url={self.url!r}, namespace={self.namespace!r})"


@dataclass(frozen=True, slots=True)
class OutboxEventRow:
    id: int
    uid: str
    at: float
    action: str
    repository: str
    tag: str | None
    digest: str | None
    media_type: str | None
    size: int | None
    actor: str | None
    request_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AttemptRow:
    at: float
    status: int | None
    latency: float
    error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    endpoint_id: int
    state: str
    attempts: int
    next_at: float
    created_at: float
    finished_at: float | None
    event: OutboxEventRow


@dataclass(frozen=True, slots=True, repr=False)
class NewEndpoint:
    """What ``add_endpoint`` stores."""

    namespace: str | None
    url: str
    secret: str
    events: list[str]
    repository_pattern: str
    media_types: list[str]
    format: str
    enabled: bool


def _settings(endpoint: NewEndpoint) -> tuple[object, ...]:
    """(namespace, url, secret, events, pattern, media types, format, enabled) as stored."""
    return (
        endpoint.namespace,
        endpoint.url,
        endpoint.secret,
        msgspec.json.encode(endpoint.events).decode(),
        endpoint.repository_pattern,
        msgspec.json.encode(endpoint.media_types).decode(),
        endpoint.format,
        int(endpoint.enabled),
    )


async def _insert(db: aiosqlite.Connection, endpoint: NewEndpoint, now: float, source: str) -> int:
    cursor = await db.execute(
        f"INSERT INTO webhook_endpoints({_ENDPOINT_COLUMNS.removeprefix('id, ')}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (*_settings(endpoint), now, source),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def _endpoint(row: Sequence[Any]) -> EndpointRow:
    return EndpointRow(
        int(row[0]),
        row[1],
        row[2],
        row[3],
        msgspec.json.decode(row[4], type=list[str]),
        row[5],
        msgspec.json.decode(row[6], type=list[str]),
        row[7],
        bool(row[8]),
        float(row[9]),
        row[10],
    )


def _event(row: Sequence[Any]) -> OutboxEventRow:
    detail = {} if row[11] is None else msgspec.json.decode(row[11], type=dict[str, Any])
    return OutboxEventRow(
        int(row[0]),
        row[1],
        float(row[2]),
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        detail,
    )


def _delivery(row: Sequence[Any]) -> DeliveryRow:
    return DeliveryRow(
        int(row[0]),
        int(row[1]),
        row[2],
        int(row[3]),
        float(row[4]),
        float(row[5]),
        row[6],
        _event(row[7:]),
    )


class WebhookQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def written(self) -> asyncio.Event:
        """Set after a commit added events (the worker's wake-up)."""
        return self._db.outbox.written

    # -- endpoints ---------------------------------------------------------

    async def add_endpoint(self, endpoint: NewEndpoint, now: float) -> int:
        async with self._db.transaction(invalidates=False) as db:
            return await _insert(db, endpoint, now, "api")

    async def sync_config(self, endpoints: Sequence[NewEndpoint], now: float) -> None:
        """Make the config file's endpoints these, in one transaction.

        One is known by its URL and namespace: kept (its id, queue and history) and
        updated when still configured, removed when no longer.
        """
        async with self._db.transaction(invalidates=False) as db:
            async with db.execute(
                "SELECT id, url, coalesce(namespace, '') FROM webhook_endpoints "
                "WHERE source = 'config'"
            ) as cursor:
                known = {(r[1], r[2]): int(r[0]) for r in await cursor.fetchall()}
            for endpoint in endpoints:
                endpoint_id = known.pop((endpoint.url, endpoint.namespace or ""), None)
                if endpoint_id is None:
                    await _insert(db, endpoint, now, "config")
                    continue
                await db.execute(
                    "UPDATE webhook_endpoints SET secret = ?, events = ?, repository_pattern = ?, "
                    "media_types = ?, format = ?, enabled = ? WHERE id = ?",
                    (*_settings(endpoint)[2:], endpoint_id),
                )
            await db.executemany(
                "DELETE FROM webhook_endpoints WHERE id = ?", [(i,) for i in known.values()]
            )

    async def endpoints(self) -> list[EndpointRow]:
        rows = await self._db.all(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id")
        return [_endpoint(r) for r in rows]

    async def endpoint(self, endpoint_id: int) -> EndpointRow | None:
        row = await self._db.one(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?", (endpoint_id,)
        )
        return None if row is None else _endpoint(row)

    async def remove_endpoint(self, endpoint_id: int) -> bool:
        """Forget an endpoint with its deliveries and their history."""
        async with self._db.transaction(invalidates=False) as db:
            cursor = await db.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            return cursor.rowcount > 0

    async def set_enabled(self, endpoint_id: int, enabled: bool) -> bool:
        async with self._db.transaction(invalidates=False) as db:
            cursor = await db.execute(
                "UPDATE webhook_endpoints SET enabled = ? WHERE id = ?", (int(enabled), endpoint_id)
            )
            return cursor.rowcount > 0

    # -- the outbox ----------------------------------------------------------

    async def undispatched(self, limit: int) -> list[OutboxEventRow]:
        """The oldest events not yet fanned out to their endpoints."""
        rows = await self._db.all(
            f"SELECT {_EVENT_COLUMNS} FROM webhook_events e WHERE e.dispatched = 0 "
            "ORDER BY e.id LIMIT ?",
            (limit,),
        )
        return [_event(r) for r in rows]

    async def fan_out(self, targets: dict[int, list[int]], now: float) -> None:
        """Queue event ``id`` for each of ``targets[id]``'s endpoints, in event order.

        An event another process fanned out meanwhile is left alone.
        """
        async with self._db.transaction(invalidates=False) as db:
            for event_id in sorted(targets):
                cursor = await db.execute(
                    "UPDATE webhook_events SET dispatched = 1 WHERE id = ? AND dispatched = 0",
                    (event_id,),
                )
                if cursor.rowcount != 1:
                    continue
                await db.executemany(
                    "INSERT INTO webhook_deliveries(endpoint_id, event_id, state, next_at, "
                    "created_at) SELECT id, ?, 'pending', ?, ? FROM webhook_endpoints "
                    "WHERE id = ?",
                    [(event_id, now, now, endpoint_id) for endpoint_id in targets[event_id]],
                )

    async def pending_count(self) -> int:
        """Events not yet fanned out plus deliveries still to make: the queue's depth."""
        row = await self._db.one(
            "SELECT (SELECT count(*) FROM webhook_events WHERE dispatched = 0) + "
            "(SELECT count(*) FROM webhook_deliveries WHERE state = 'pending')"
        )
        return 0 if row is None else int(row[0])

    # -- deliveries ------------------------------------------------------------

    async def heads(self) -> list[tuple[int, int, float]]:
        """(delivery id, endpoint id, due time) of each enabled endpoint's oldest pending
        delivery: only it may go, so each endpoint hears its events in order."""
        rows = await self._db.all(
            "SELECT d.id, d.endpoint_id, d.next_at FROM webhook_deliveries d "
            "JOIN (SELECT endpoint_id, min(id) AS id FROM webhook_deliveries "
            "WHERE state = 'pending' GROUP BY endpoint_id) h ON h.id = d.id "
            "JOIN webhook_endpoints w ON w.id = d.endpoint_id WHERE w.enabled"
        )
        return [(int(r[0]), int(r[1]), float(r[2])) for r in rows]

    async def delivery(self, delivery_id: int) -> DeliveryRow | None:
        row = await self._db.one(
            f"SELECT {_DELIVERY_COLUMNS}, {_EVENT_COLUMNS} FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.id = d.event_id WHERE d.id = ?",
            (delivery_id,),
        )
        return None if row is None else _delivery(row)

    async def deliveries(
        self, endpoint_id: int, limit: int, state: str | None = None
    ) -> list[DeliveryRow]:
        """An endpoint's deliveries, newest first."""
        sql = (
            f"SELECT {_DELIVERY_COLUMNS}, {_EVENT_COLUMNS} FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.id = d.event_id WHERE d.endpoint_id = ?"
        )
        params: list[object] = [endpoint_id]
        if state is not None:
            sql += " AND d.state = ?"
            params.append(state)
        rows = await self._db.all(sql + " ORDER BY d.id DESC LIMIT ?", (*params, limit))
        return [_delivery(r) for r in rows]

    async def attempts(self, delivery_ids: Sequence[int]) -> dict[int, list[AttemptRow]]:
        """Each delivery's attempts, oldest first (every id has an entry)."""
        found: dict[int, list[AttemptRow]] = {i: [] for i in delivery_ids}
        ids = list(found)
        for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            batch = ids[start : start + 500]
            rows = await self._db.all(
                "SELECT delivery_id, at, status, latency, error FROM webhook_attempts "
                f"WHERE delivery_id IN ({','.join('?' * len(batch))}) ORDER BY id",
                batch,
            )
            for r in rows:
                found[int(r[0])].append(AttemptRow(r[1], r[2], r[3], r[4]))
        return found

    async def record_attempt(
        self, delivery_id: int, attempt: AttemptRow, state: str, next_at: float
    ) -> None:
        """Keep an attempt and move its delivery on: delivered, dead, or due again at
        ``next_at``. A delivery redelivered or removed meanwhile keeps only the attempt."""
        async with self._db.transaction(invalidates=False) as db:
            cursor = await db.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, next_at = ?, "
                "finished_at = ? WHERE id = ? AND state = 'pending'",
                (state, next_at, None if state == PENDING else attempt.at, delivery_id),
            )
            if cursor.rowcount:
                await db.execute(
                    "INSERT INTO webhook_attempts(delivery_id, at, status, latency, error) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (delivery_id, attempt.at, attempt.status, attempt.latency, attempt.error),
                )

    async def redeliver(self, delivery_id: int, now: float) -> bool:
        """Queue a delivery again from its first attempt (its history stays)."""
        async with self._db.transaction(invalidates=False) as db:
            cursor = await db.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = ?, "
                "finished_at = NULL WHERE id = ?",
                (now, delivery_id),
            )
            queued = cursor.rowcount > 0
        if queued:
            self._db.outbox.written.set()
        return queued
