"""Activity: pull statistics per repository and tag, and the activity feed.

Pulls are counted by the index's batched bookkeeping (a pull costs no write
transaction); reads here flush it first, so what a caller sees includes every
pull answered before it asked.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from aioreg.domain.reference import validate_name, validate_tag
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index import Event
from aioreg.index.pull_stats import BY_DIGEST, day_of

HISTORY_DAYS = 30  # the day series a repository's detail shows
MAX_DAYS = 366
# Events one feed page looks at, at most, for a caller who may see few of them; the
# page then ends early with a cursor to go on from.
FEED_SCAN_MAX = 10000
FEED_BATCH = 500
EPOCH = datetime.date(1970, 1, 1)


class DayPulls(msgspec.Struct):
    day: str  # YYYY-MM-DD, UTC
    pulls: int


class PullHistory(msgspec.Struct):
    repository: str
    tag: str | None  # None: the whole repository
    by_digest: bool  # only the pulls by digest
    total: int  # since statistics began (not limited to the days shown)
    last_pull_at: float | None
    days: list[DayPulls]


@dataclass(frozen=True)
class FeedQuery:
    limit: int
    before: int | None = None  # the cursor: an event id
    repository: str | None = None
    kinds: list[str] | None = None
    actor: str | None = None
    since: float | None = None
    until: float | None = None


def day_series(counts: dict[int, int], days: int, now: float | None = None) -> list[DayPulls]:
    """The last ``days`` UTC days, oldest first, ending today; days without pulls are 0."""
    today = day_of(time.time() if now is None else now)
    return [
        DayPulls((EPOCH + datetime.timedelta(days=day)).isoformat(), counts.get(day, 0))
        for day in range(today - days + 1, today + 1)
    ]


class Activity:
    def __init__(self, registry: Registry) -> None:
        self.index = registry.index

    async def pulls(
        self, name: str, tag: str | None = None, days: int = HISTORY_DAYS, by_digest: bool = False
    ) -> PullHistory:
        """Pulls of a repository, one of its tags, or by digest: total, last, per day."""
        validate_name(name)
        if tag is not None:
            validate_tag(tag)
        if not 1 <= days <= MAX_DAYS:
            raise RegistryError(ErrorCode.BAD_REQUEST, f"days must be 1 to {MAX_DAYS}")
        counts = await self.index.activity.pull_counts(name)
        if counts is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")
        which = BY_DIGEST if by_digest else tag
        series = await self.index.activity.pull_days(name, which, day_of(time.time()) - days + 1)
        _, last_pull = await self.index.activity.pull_times(name)
        if by_digest:
            total, last_pull = sum(series.values()), None
        elif tag is not None:
            total = counts.tags.get(tag, 0)
            infos = await self.index.listings.tag_infos(name)
            last_pull = next((t.last_pull_at for t in infos if t.name == tag), None)
        else:
            total = counts.total
        return PullHistory(name, tag, by_digest, total, last_pull, day_series(series, days))

    async def feed(
        self, query: FeedQuery, visible: Callable[[str], Awaitable[bool]]
    ) -> tuple[list[Event], int | None]:
        """One page of events, newest first, of repositories ``visible`` admits; and the
        cursor of the next page (None at the end).

        Filtering by visibility happens as rows are read, looking at no more than
        ``FEED_SCAN_MAX`` of them: a caller who may see little of a busy registry gets a
        short page and a cursor, never a request that walks the whole log.
        """
        await self.index.activity.flush()
        page: list[Event] = []
        cursor = query.before
        scanned = 0
        seen: dict[str, bool] = {}
        while scanned < FEED_SCAN_MAX:
            asked = min(FEED_BATCH, FEED_SCAN_MAX - scanned)
            batch = await self.index.activity.feed(
                asked,
                before=cursor,
                repositories=None if query.repository is None else [query.repository],
                kinds=query.kinds,
                actor=query.actor,
                since=query.since,
                until=query.until,
            )
            for event in batch:
                scanned += 1
                cursor = event.id
                if event.repository not in seen:
                    seen[event.repository] = await visible(event.repository)
                if seen[event.repository]:
                    page.append(event)
                    if len(page) == query.limit:
                        return page, cursor
            if len(batch) < asked:
                return page, None
        return page, cursor
