"""Stored proxy definitions: those added through ``/api/v1`` or ``aioreg proxy add``."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import aiosqlite
import msgspec

from aioreg.config import ProxyConfig
from aioreg.index.database import Database
from aioreg.index.usage import namespace_params

# The table's columns are ProxyConfig's fields, in its order.
FIELDS = ProxyConfig.__struct_fields__
COLUMNS = ", ".join(FIELDS)


@dataclass(frozen=True, slots=True)
class Evicted:
    """What one eviction took out of a proxy's cache: a root manifest (with the child
    manifests only it held) or a blob no cached manifest references."""

    repository: str
    digest: str
    manifests: list[str]  # the root's digest and its children's, empty for a loose blob
    blobs: list[str]  # blobs unlinked from the repository


# A proxy namespace's cached units, least recently used first: root manifests (no cached
# index lists them; last use is the latest pull or fetch of it or of its children) and
# blobs linked but named by no cached manifest of their repository (last use: linked).
_UNITS = """
    SELECT r.id, r.name, m.id, m.digest,
        max(coalesce(m.last_pull_at, m.pushed_at), coalesce((
            SELECT max(coalesce(c.last_pull_at, c.pushed_at)) FROM manifest_children mc
            JOIN manifests c ON c.repository_id = m.repository_id AND c.digest = mc.child_digest
            WHERE mc.manifest_id = m.id), 0)) AS used
    FROM manifests m JOIN repositories r ON r.id = m.repository_id
    WHERE r.name LIKE ? ESCAPE '\\'
      AND NOT EXISTS (SELECT 1 FROM manifest_children pc JOIN manifests p ON p.id = pc.manifest_id
                      WHERE pc.child_digest = m.digest AND p.repository_id = m.repository_id)
    UNION ALL
    SELECT r.id, r.name, NULL, rb.digest, rb.linked_at
    FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
    WHERE r.name LIKE ? ESCAPE '\\'
      AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id
                      WHERE mb.digest = rb.digest AND m.repository_id = rb.repository_id)
    ORDER BY 5, 4 LIMIT ?"""
UNIT_PAGE = 200


class ProxyQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def cached_bytes(self, namespace: str) -> int:
        """Distinct blob bytes linked in the namespace plus its manifests' bytes (what
        ``/api/v1/usage`` calls its physical size)."""
        row = await self._db.one(
            "SELECT coalesce((SELECT blob_bytes FROM namespace_usage WHERE namespace = ?), 0)"
            " + coalesce((SELECT sum(m.size) FROM manifests m JOIN repositories r"
            " ON r.id = m.repository_id WHERE r.name LIKE ? ESCAPE '\\'), 0)",
            (namespace, namespace_params(namespace)[1]),
        )
        assert row is not None
        return int(row[0])

    async def evict_oldest(self, namespace: str, keep: Collection[str]) -> Evicted | None:
        """Take the least recently used unit out of ``namespace``'s cache; None if none may go.

        A unit whose manifests name a digest in ``keep`` (being fetched right now)
        stays. Its blobs are unlinked from the repository unless another manifest
        there still references them, so the namespace's usage drops at once and GC
        frees the files as anything unreferenced.
        """
        wanted = [k.encode() for k in keep]
        async with self._db.transaction() as db:
            under = namespace_params(namespace)[1]
            async with db.execute(_UNITS, (under, under, UNIT_PAGE)) as cursor:
                units = list(await cursor.fetchall())
            for repo_id, name, manifest_id, digest, _ in units:
                if manifest_id is None:
                    if digest in keep:
                        continue
                    await db.execute(
                        "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?",
                        (repo_id, digest),
                    )
                    return Evicted(name, digest, [], [digest])
                async with db.execute(
                    "SELECT id, digest, body FROM manifests WHERE id = ? OR (repository_id = ? "
                    "AND digest IN (SELECT child_digest FROM manifest_children "
                    "WHERE manifest_id = ?))",
                    (manifest_id, repo_id, manifest_id),
                ) as cursor:
                    members = [(int(m[0]), str(m[1]), bytes(m[2])) for m in await cursor.fetchall()]
                if any(w in m[2] for m in members for w in wanted):
                    continue
                return await _evict_root(db, repo_id, name, manifest_id, members, keep)
        return None

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


async def _evict_root(
    db: aiosqlite.Connection,
    repo_id: int,
    name: str,
    root_id: int,
    members: list[tuple[int, str, bytes]],
    keep: Collection[str],
) -> Evicted:
    ids = [m[0] for m in members]
    marks = ",".join("?" * len(ids))
    async with db.execute(
        f"SELECT DISTINCT digest FROM manifest_blobs WHERE manifest_id IN ({marks})", ids
    ) as cursor:
        referenced = [str(r[0]) for r in await cursor.fetchall()]
    await db.execute("DELETE FROM manifests WHERE id = ?", (root_id,))
    removed = [next(m[1] for m in members if m[0] == root_id)]
    for child_id, child_digest, _ in members:
        if child_id == root_id:
            continue
        # A child another cached index still lists stays with that index.
        cursor = await db.execute(
            "DELETE FROM manifests WHERE id = ? AND NOT EXISTS (SELECT 1 FROM manifest_children "
            "pc JOIN manifests p ON p.id = pc.manifest_id WHERE pc.child_digest = ? "
            "AND p.repository_id = ?)",
            (child_id, child_digest, repo_id),
        )
        if cursor.rowcount:
            removed.append(child_digest)
    unlinked: list[str] = []
    for digest in referenced:
        if digest in keep:
            continue
        cursor = await db.execute(
            "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ? "
            "AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb JOIN manifests m "
            "ON m.id = mb.manifest_id WHERE mb.digest = ? AND m.repository_id = ?)",
            (repo_id, digest, digest, repo_id),
        )
        if cursor.rowcount:
            unlinked.append(digest)
    return Evicted(name, removed[0], removed, unlinked)
