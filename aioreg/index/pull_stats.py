"""Pull statistics: how often each repository, tag and artifact is pulled, in total and per day.

Counted in memory (``PendingPulls``, fed by ``ActivityQueries.note_pull``) and
written by the batched flush in the transaction that writes the pull times,
so a pull costs no write transaction of its own. Tag and digest pulls count
alike for the repository and the artifact; a tag's count is the pulls by that
tag, and pulls by digest have a day series of their own (tag ``BY_DIGEST``).
"""

from __future__ import annotations

import time
from collections import Counter

import aiosqlite

from aioreg.index.database import DAY, PRUNE_BATCH, Database
from aioreg.index.rows import PullCounts

BY_DIGEST = ""  # the tag of pulls by digest in ``pull_days``

# (repository id, manifest id, tag or None for a pull by digest, UTC day number)
PullKey = tuple[int, int, str | None, int]


def day_of(when: float) -> int:
    """The UTC day (days since 1970-01-01) ``when`` falls on."""
    return int(when // DAY)


class PendingPulls:
    """Pulls counted since the last flush."""

    def __init__(self) -> None:
        self._counts: Counter[PullKey] = Counter()

    def __bool__(self) -> bool:
        return bool(self._counts)

    def note(self, repository_id: int, manifest_id: int, tag: str | None, when: float) -> None:
        self._counts[(repository_id, manifest_id, tag, day_of(when))] += 1

    def take(self) -> Counter[PullKey]:
        taken, self._counts = self._counts, Counter()
        return taken

    def give_back(self, taken: Counter[PullKey]) -> None:
        """What a failed flush was writing counts again at the next one."""
        self._counts.update(taken)


async def write_counts(
    db: aiosqlite.Connection, counts: Counter[PullKey], keep_days: float
) -> None:
    """Add ``counts`` to the totals and the day rows, inside the flush's transaction.

    A repository deleted since the pulls simply loses them (no row to add to).
    Day rows older than ``keep_days`` (0: kept) go a batch at a time.
    """
    repositories: Counter[int] = Counter()
    manifests: Counter[int] = Counter()
    tags: Counter[tuple[int, str]] = Counter()
    days: Counter[tuple[int, str, int]] = Counter()
    for (repository_id, manifest_id, tag, day), pulls in counts.items():
        repositories[repository_id] += pulls
        manifests[manifest_id] += pulls
        if tag is not None:
            tags[(repository_id, tag)] += pulls
        days[(repository_id, BY_DIGEST if tag is None else tag, day)] += pulls
    await db.executemany(
        "UPDATE repositories SET pull_count = pull_count + ? WHERE id = ?",
        [(pulls, repository_id) for repository_id, pulls in repositories.items()],
    )
    await db.executemany(
        "UPDATE manifests SET pull_count = pull_count + ? WHERE id = ?",
        [(pulls, manifest_id) for manifest_id, pulls in manifests.items()],
    )
    await db.executemany(
        "UPDATE tags SET pull_count = pull_count + ? WHERE repository_id = ? AND name = ?",
        [(pulls, repository_id, tag) for (repository_id, tag), pulls in tags.items()],
    )
    await db.executemany(
        "INSERT INTO pull_days(repository_id, tag, day, pulls) "
        "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM repositories WHERE id = ?) "
        "ON CONFLICT DO UPDATE SET pulls = pulls + excluded.pulls",
        [(r, tag, day, pulls, r) for (r, tag, day), pulls in days.items()],
    )
    if keep_days > 0:
        await db.execute(
            "DELETE FROM pull_days WHERE (repository_id, tag, day) IN "
            "(SELECT repository_id, tag, day FROM pull_days WHERE day < ? LIMIT ?)",
            (day_of(time.time() - keep_days * DAY), PRUNE_BATCH),
        )


async def pull_counts(db: Database, name: str) -> PullCounts | None:
    """Total pulls of a repository, of each of its tags and of each artifact (by digest)."""
    row = await db.one("SELECT id, pull_count FROM repositories WHERE name = ?", (name,))
    if row is None:
        return None
    tags = await db.all("SELECT name, pull_count FROM tags WHERE repository_id = ?", (row[0],))
    manifests = await db.all(
        "SELECT digest, pull_count FROM manifests WHERE repository_id = ?", (row[0],)
    )
    return PullCounts(
        int(row[1]), {t[0]: int(t[1]) for t in tags}, {m[0]: int(m[1]) for m in manifests}
    )


async def pull_days(db: Database, name: str, tag: str | None, since_day: int) -> dict[int, int]:
    """Pulls per UTC day from ``since_day`` on: of the whole repository (``tag`` None), of
    one tag, or by digest (``BY_DIGEST``). Days without pulls are absent."""
    sql = (
        "SELECT pd.day, sum(pd.pulls) FROM pull_days pd "
        "JOIN repositories r ON r.id = pd.repository_id WHERE r.name = ? AND pd.day >= ?"
    )
    params: tuple[object, ...] = (name, since_day)
    if tag is not None:
        sql += " AND pd.tag = ?"
        params += (tag,)
    rows = await db.all(sql + " GROUP BY pd.day", params)
    return {int(r[0]): int(r[1]) for r in rows}


async def registry_pull_days(db: Database, since_day: int) -> dict[int, int]:
    """Pulls per UTC day from ``since_day`` on, of every repository together."""
    rows = await db.all(
        "SELECT day, sum(pulls) FROM pull_days WHERE day >= ? GROUP BY day", (since_day,)
    )
    return {int(r[0]): int(r[1]) for r in rows}
