"""Bookkeeping of what happens: pull times, token uses and activity events.

Batched in memory and written by ``flush`` (which ``Index`` runs every
``PULL_FLUSH_SECONDS``): a pull must not cost a write transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiosqlite
import msgspec

from aioreg.index.database import Database
from aioreg.index.outbox import Announcement
from aioreg.index.pull_stats import (
    PendingPulls,
    PullKey,
    pull_counts,
    pull_days,
    registry_pull_days,
    write_counts,
)
from aioreg.index.rows import Event, ManifestRow, PullCounts

MAX_PENDING_EVENTS = 100000  # kept across failed flushes; the oldest go beyond it


class ActivityQueries:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending_pulls: dict[tuple[int, int, str | None], float] = {}
        self._pending_events: list[Event] = []
        self._pending_pull_events: set[tuple[str, str | None, str | None, str | None]] = set()
        self._token_uses: dict[str, float] = {}  # token id -> last used, see touch_token
        self._pull_counts = PendingPulls()
        # One flush at a time: a reader that flushes first (listings) then sees every
        # pull noted before, even while the periodic flush is writing them.
        self._flushing = asyncio.Lock()

    def note_pull(self, manifest: ManifestRow, tag: str | None) -> None:
        now = time.time()
        self._pending_pulls[(manifest.repository_id, manifest.id, tag)] = now
        self._pull_counts.note(manifest.repository_id, manifest.id, tag, now)

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

    async def touch_token(self, token_id: str, now: float) -> None:
        """Batched with pull times: a pull with a token must not wait for the write lock."""
        self._token_uses[token_id] = now

    async def flush(self) -> None:
        """Write the batched bookkeeping. What a failed or cancelled flush (a shutdown while
        another process holds the lock) was writing stays pending for the next one."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending_events:
            events, self._pending_events = self._pending_events, []
            self._pending_pull_events = set()
            try:
                await self.add_events(events)
            except BaseException:
                self._pending_events = (events + self._pending_events)[-MAX_PENDING_EVENTS:]
                raise
        if not self._pending_pulls and not self._token_uses and not self._pull_counts:
            return
        pending, self._pending_pulls = self._pending_pulls, {}
        token_uses, self._token_uses = self._token_uses, {}
        counts = self._pull_counts.take()
        try:
            await self._write_pulls(pending, token_uses, counts)
        except BaseException:
            self._pull_counts.give_back(counts)
            for key, when in pending.items():
                self._pending_pulls[key] = max(when, self._pending_pulls.get(key, when))
            for token_id, when in token_uses.items():
                self._token_uses[token_id] = max(when, self._token_uses.get(token_id, when))
            raise

    async def _write_pulls(
        self,
        pending: dict[tuple[int, int, str | None], float],
        token_uses: dict[str, float],
        counts: Counter[PullKey],
    ) -> None:
        async with self._db.transaction(invalidates=False) as db:
            await write_counts(db, counts, self._db.history.max_age_days)
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
                # max(): several processes (server.workers) flush their own batches.
                await db.execute(
                    "UPDATE manifests SET last_pull_at = max(coalesce(last_pull_at, 0), ?) "
                    "WHERE id = ?",
                    (when, manifest_id),
                )
                if tag is not None:
                    await db.execute(
                        "UPDATE tags SET last_pull_at = max(coalesce(last_pull_at, 0), ?) "
                        "WHERE repository_id = ? AND name = ?",
                        (when, repo_id, tag),
                    )

    async def pull_times(self, name: str) -> tuple[float | None, float | None]:
        """(last push, last pull) of a repository, for tests and the management API."""
        await self.flush()
        row = await self._db.one(
            "SELECT last_push_at, last_pull_at FROM repositories WHERE name = ?", (name,)
        )
        return (None, None) if row is None else (row[0], row[1])

    async def pull_counts(self, name: str) -> PullCounts | None:
        """Pulls of a repository, its tags and artifacts (None: no such repository)."""
        await self.flush()
        return await pull_counts(self._db, name)

    async def pull_days(self, name: str, tag: str | None, since_day: int) -> dict[int, int]:
        """Pulls per UTC day since ``since_day``: of the repository, a tag, or by digest."""
        await self.flush()
        return await pull_days(self._db, name, tag, since_day)

    async def registry_pull_days(self, since_day: int) -> dict[int, int]:
        """Pulls per UTC day since ``since_day`` of all repositories together."""
        await self.flush()
        return await registry_pull_days(self._db, since_day)

    async def add_events(self, events: list[Event]) -> None:
        if not events:
            return
        async with self._db.transaction(invalidates=False) as db:
            await db.executemany(
                "INSERT INTO events(at, kind, repository, reference, digest, actor, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.at, e.kind, e.repository, e.reference, e.digest, e.actor, e.detail)
                    for e in events
                ],
            )
            await self._db.prune_history(db, "events")
            # The batched kinds webhooks hear; the others were announced with their change.
            batched = [e for e in events if e.kind in ("pull", "quota_exceeded")]
            if batched and await self._db.outbox.active(db):
                await self._db.outbox.add(db, [await _announcement(db, e) for e in batched])

    async def events(
        self,
        limit: int,
        repository: str | None = None,
        kinds: list[str] | None = None,
        actor: str | None = None,
    ) -> list[Event]:
        """The newest ``limit`` events, optionally of one repository, kinds or actor."""
        repositories = None if repository is None else [repository]
        return await self.feed(limit, repositories=repositories, kinds=kinds, actor=actor)

    async def feed(
        self,
        limit: int,
        *,
        before: int | None = None,
        repositories: list[str] | None = None,
        kinds: list[str] | None = None,
        actor: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Event]:
        """Events newest first, each with its id; ``before`` an id (the cursor) to go on from."""
        where: list[str] = []
        params: list[object] = []
        for clause, value in (
            ("id < ?", before),
            ("actor = ?", actor),
            ("at >= ?", since),
            ("at < ?", until),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        for column, values in (("repository", repositories), ("kind", kinds)):
            if values:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params.extend(values)
        sql = "SELECT at, kind, repository, reference, digest, actor, detail, id FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self._db.all(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [Event(*r) for r in rows]


async def _announcement(db: aiosqlite.Connection, event: Event) -> Announcement:
    """A batched event as a webhook event; a pull with the manifest's media type and size."""
    if event.kind != "pull":
        detail = {} if event.detail is None else msgspec.json.decode(event.detail)
        return Announcement(
            event.kind, event.repository, actor=event.actor, detail=detail, at=event.at
        )
    async with db.execute(
        "SELECT m.media_type, m.size FROM manifests m JOIN repositories r "
        "ON r.id = m.repository_id WHERE r.name = ? AND m.digest = ?",
        (event.repository, event.digest),
    ) as cursor:
        row = await cursor.fetchone()
    return Announcement(
        "pull",
        event.repository,
        event.reference,
        event.digest,
        None if row is None else str(row[0]),
        None if row is None else int(row[1]),
        event.actor,
        at=event.at,
    )
