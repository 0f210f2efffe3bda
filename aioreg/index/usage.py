"""Storage usage: per-namespace figures the quota reads, logical and physical usage reports."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiosqlite

from aioreg.domain.rules import namespace_of
from aioreg.index.database import Database
from aioreg.index.errors import QuotaWouldExceed
from aioreg.index.outbox import Announcement, Outbox
from aioreg.index.rows import StoreTotals, Usage

NAMESPACE_REPOS = "(r.name = ? OR r.name LIKE ? ESCAPE '\\')"
# The bytes repository ``r`` holds: its manifests and each blob it links, counted once.
REPOSITORY_STORED_BYTES = """
    coalesce((SELECT sum(m.size) FROM manifests m WHERE m.repository_id = r.id), 0)
    + coalesce((SELECT sum(b.size) FROM blobs b WHERE b.digest IN (
        SELECT rb.digest FROM repository_blobs rb WHERE rb.repository_id = r.id)), 0)"""


def namespace_params(namespace: str) -> tuple[str, str]:
    """Parameters for ``NAMESPACE_REPOS``: the namespace itself and everything under it."""
    escaped = namespace.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return namespace, escaped + "/%"


def namespace_filter(namespace: str | None) -> tuple[str, tuple[str, ...]]:
    """A ``WHERE`` clause (and its parameters) keeping the repositories in ``namespace``;
    none when it is None."""
    if namespace is None:
        return "", ()
    return f"WHERE {NAMESPACE_REPOS}", namespace_params(namespace)


async def _namespace_usage(db: aiosqlite.Connection, namespace: str) -> int:
    async with db.execute(
        "SELECT blob_bytes FROM namespace_usage WHERE namespace = ?", (namespace,)
    ) as cursor:
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


@contextlib.asynccontextmanager
async def within_quota(
    db: aiosqlite.Connection, name: str, quota_limit: int | None, outbox: Outbox | None = None
) -> AsyncIterator[None]:
    """Run links into ``name``'s namespace, then raise ``QuotaWouldExceed`` past ``quota_limit``.

    The figure is the namespace's incremental usage (kept by triggers on every
    link and unlink), read in the same transaction: one check serves uploads,
    mounts and copies alike, and the refusal rolls the links back. Links that
    take the usage over the outbox's warning share of the quota announce it.
    """
    if quota_limit is None:
        yield
        return
    namespace = namespace_of(name)
    before = await _namespace_usage(db, namespace)
    yield
    added = await _namespace_usage(db, namespace) - before
    if added > 0 and before + added > quota_limit:
        raise QuotaWouldExceed(namespace, before, added, quota_limit)
    if outbox is not None and added > 0:
        threshold = quota_limit * outbox.quota_warning_percent
        if before * 100 < threshold <= (before + added) * 100:
            detail: dict[str, object] = {
                "namespace": namespace,
                "used": before + added,
                "quota": quota_limit,
                "percent": outbox.quota_warning_percent,
            }
            await outbox.add(db, [Announcement("quota_warning", name, detail=detail)])


class UsageQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def namespace(self, namespace: str) -> int:
        """Distinct blob bytes linked in the namespace: what its quota limits."""
        row = await self._db.one(
            "SELECT blob_bytes FROM namespace_usage WHERE namespace = ?", (namespace,)
        )
        return 0 if row is None else int(row[0])

    async def counted_size(self, namespace: str, digest: str) -> int:
        """The blob's size if the namespace's usage already counts it, else 0."""
        row = await self._db.one(
            "SELECT b.size FROM namespace_blobs nb JOIN blobs b USING (digest) "
            "WHERE nb.namespace = ? AND nb.digest = ?",
            (namespace, digest),
        )
        return 0 if row is None else int(row[0])

    async def quota(self, namespace: str) -> int | None:
        row = await self._db.one("SELECT quota_bytes FROM namespaces WHERE name = ?", (namespace,))
        return None if row is None or row[0] is None else int(row[0])

    async def set_quota(self, namespace: str, quota_bytes: int | None) -> bool:
        async with self._db.transaction() as db:
            cursor = await db.execute(
                "UPDATE namespaces SET quota_bytes = ? WHERE name = ?", (quota_bytes, namespace)
            )
            return cursor.rowcount > 0

    async def report(self, namespace: str | None = None) -> tuple[list[Usage], list[Usage], Usage]:
        """(per namespace, per repository, whole registry) logical and physical bytes."""
        where, params = namespace_filter(namespace)
        repo_rows = await self._db.all(
            f"""SELECT r.name,
                  coalesce((SELECT sum(m.size) FROM manifests m WHERE m.repository_id = r.id), 0)
                  + coalesce((SELECT sum(b.size) FROM manifests m
                      JOIN manifest_blobs mb ON mb.manifest_id = m.id
                      JOIN blobs b ON b.digest = mb.digest WHERE m.repository_id = r.id), 0),
                  {REPOSITORY_STORED_BYTES}
                FROM repositories r {where} ORDER BY r.name""",
            params,
        )
        repositories = [Usage(r[0], int(r[1]), int(r[2])) for r in repo_rows]
        by_namespace: dict[str, list[Usage]] = {}
        for usage in repositories:
            by_namespace.setdefault(namespace_of(usage.name), []).append(usage)
        namespaces = []
        for ns, members in sorted(by_namespace.items()):
            row = await self._db.one(
                f"""SELECT coalesce((SELECT sum(b.size) FROM blobs b WHERE b.digest IN (
                        SELECT rb.digest FROM repository_blobs rb
                        JOIN repositories r ON r.id = rb.repository_id
                        WHERE {NAMESPACE_REPOS})), 0)
                      + coalesce((SELECT sum(m.size) FROM manifests m
                        JOIN repositories r ON r.id = m.repository_id
                        WHERE {NAMESPACE_REPOS}), 0)""",
                (*namespace_params(ns), *namespace_params(ns)),
            )
            assert row is not None
            namespaces.append(Usage(ns, sum(u.logical for u in members), int(row[0])))
        total = await self._db.one(
            "SELECT coalesce(sum(size), 0) FROM blobs WHERE quarantined_at IS NULL"
        )
        manifest_total = await self._db.one("SELECT coalesce(sum(size), 0) FROM manifests")
        assert total is not None and manifest_total is not None
        whole = Usage(
            "",
            sum(u.logical for u in repositories),
            int(total[0]) + int(manifest_total[0]),
        )
        return namespaces, repositories, whole

    async def totals(self) -> StoreTotals:
        """Counts and bytes for metrics: aggregates over primary keys and the per-namespace
        figures the quota triggers keep, never a walk of every repository."""
        row = await self._db.one(
            "SELECT (SELECT count(*) FROM blobs WHERE quarantined_at IS NULL),"
            " (SELECT coalesce(sum(size), 0) FROM blobs WHERE quarantined_at IS NULL),"
            " (SELECT count(*) FROM manifests), (SELECT count(*) FROM repositories),"
            " (SELECT count(*) FROM uploads)"
        )
        assert row is not None
        namespaces = await self._db.all("SELECT namespace, blob_bytes FROM namespace_usage")
        return StoreTotals(
            int(row[0]),
            int(row[1]),
            int(row[2]),
            int(row[3]),
            {r[0]: int(r[1]) for r in namespaces},
            int(row[4]),
        )
