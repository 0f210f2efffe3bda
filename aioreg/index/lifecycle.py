"""Index queries for repository management: usage, listings, events, deletes, GC, retention."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import aiosqlite
import msgspec

from aioreg.domain.rules import namespace_of


@dataclass(frozen=True, slots=True)
class RepositorySummary:
    name: str
    tag_count: int
    artifact_count: int
    size: int  # distinct bytes the repository references (blobs + manifests)
    last_push_at: float | None
    last_pull_at: float | None


@dataclass(frozen=True, slots=True)
class TagInfo:
    name: str
    digest: str
    pushed_at: float
    last_pull_at: float | None


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    subject: str | None
    body: bytes
    pushed_at: float
    last_pull_at: float | None
    blob_bytes: int  # config + layers (for an index: 0; its children count themselves)


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    kind: str
    repository: str
    reference: str | None
    digest: str | None
    actor: str | None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    name: str
    logical: int  # what every artifact references, shared layers counted per artifact
    physical: int  # distinct bytes, each blob once


@dataclass(frozen=True, slots=True)
class GcResult:
    manifests: list[tuple[str, str]]  # (repository, digest) of untagged manifests removed
    blobs: list[tuple[str, int]]  # (digest, size) of blobs removed


class BlobFiles:
    """Blob rows read and changed inside the write transaction ``blob_files`` holds."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def rows(self, digests: Sequence[str]) -> dict[str, bool]:
        """Each digest that has a row, mapped to whether it is servable (not quarantined)."""
        found: dict[str, bool] = {}
        for start in range(0, len(digests), 500):  # under SQLite's bound-parameter limit
            batch = list(digests[start : start + 500])
            marks = ",".join("?" * len(batch))
            async with self._db.execute(
                f"SELECT digest, quarantined_at IS NULL FROM blobs WHERE digest IN ({marks})",
                batch,
            ) as cursor:
                found.update((r[0], bool(r[1])) for r in await cursor.fetchall())
        return found

    async def quarantine(self, digest: str, now: float | None = None) -> None:
        """Stop serving a blob; a later upload of the same digest heals it."""
        await self._db.execute(
            "UPDATE blobs SET quarantined_at = ? WHERE digest = ?",
            (time.time() if now is None else now, digest),
        )


NAMESPACE_REPOS = "(r.name = ? OR r.name LIKE ? ESCAPE '\\')"


def _ns_params(namespace: str) -> tuple[str, str]:
    escaped = namespace.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return namespace, escaped + "/%"


class LifecycleQueries:
    """Mixed into ``Index``, whose ``_transaction``, ``_one`` and ``_all`` it uses."""

    # -- events ----------------------------------------------------------

    async def add_events(self, events: list[Event]) -> None:
        if not events:
            return
        async with self._transaction(invalidates=False) as db:  # type: ignore[attr-defined]
            await db.executemany(
                "INSERT INTO events(at, kind, repository, reference, digest, actor, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.at, e.kind, e.repository, e.reference, e.digest, e.actor, e.detail)
                    for e in events
                ],
            )
            await self._prune_history(db, "events")  # type: ignore[attr-defined]

    async def events(
        self, limit: int, repository: str | None = None, kinds: list[str] | None = None
    ) -> list[Event]:
        sql = "SELECT at, kind, repository, reference, digest, actor, detail FROM events"
        where, params = [], []
        if repository is not None:
            where.append("repository = ?")
            params.append(repository)
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            params.extend(kinds)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self._all(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))  # type: ignore[attr-defined]
        return [Event(*r) for r in rows]

    # -- usage -----------------------------------------------------------

    async def usage(self, namespace: str | None = None) -> tuple[list[Usage], list[Usage], Usage]:
        """(per namespace, per repository, whole registry) logical and physical bytes."""
        where, params = "", ()
        if namespace is not None:
            where, params = f"WHERE {NAMESPACE_REPOS}", _ns_params(namespace)
        repo_rows = await self._all(  # type: ignore[attr-defined]
            f"""SELECT r.name,
                  coalesce((SELECT sum(m.size) FROM manifests m WHERE m.repository_id = r.id), 0)
                  + coalesce((SELECT sum(b.size) FROM manifests m
                      JOIN manifest_blobs mb ON mb.manifest_id = m.id
                      JOIN blobs b ON b.digest = mb.digest WHERE m.repository_id = r.id), 0),
                  coalesce((SELECT sum(m.size) FROM manifests m WHERE m.repository_id = r.id), 0)
                  + coalesce((SELECT sum(b.size) FROM blobs b WHERE b.digest IN (
                      SELECT rb.digest FROM repository_blobs rb
                      WHERE rb.repository_id = r.id)), 0)
                FROM repositories r {where} ORDER BY r.name""",
            params,
        )
        repositories = [Usage(r[0], int(r[1]), int(r[2])) for r in repo_rows]
        by_namespace: dict[str, list[Usage]] = {}
        for usage in repositories:
            by_namespace.setdefault(namespace_of(usage.name), []).append(usage)
        namespaces = []
        for ns, members in sorted(by_namespace.items()):
            row = await self._one(  # type: ignore[attr-defined]
                f"""SELECT coalesce((SELECT sum(b.size) FROM blobs b WHERE b.digest IN (
                        SELECT rb.digest FROM repository_blobs rb
                        JOIN repositories r ON r.id = rb.repository_id
                        WHERE {NAMESPACE_REPOS})), 0)
                      + coalesce((SELECT sum(m.size) FROM manifests m
                        JOIN repositories r ON r.id = m.repository_id
                        WHERE {NAMESPACE_REPOS}), 0)""",
                (*_ns_params(ns), *_ns_params(ns)),
            )
            namespaces.append(Usage(ns, sum(u.logical for u in members), int(row[0])))
        total = await self._one(  # type: ignore[attr-defined]
            "SELECT coalesce(sum(size), 0) FROM blobs WHERE quarantined_at IS NULL"
        )
        manifest_total = await self._one("SELECT coalesce(sum(size), 0) FROM manifests")  # type: ignore[attr-defined]
        whole = Usage(
            "",
            sum(u.logical for u in repositories),
            int(total[0]) + int(manifest_total[0]),
        )
        return namespaces, repositories, whole

    # -- listings --------------------------------------------------------

    async def namespace_names(self) -> list[str]:
        rows = await self._all(  # type: ignore[attr-defined]
            "SELECT name FROM namespaces UNION SELECT CASE WHEN instr(name, '/') > 0 "
            "THEN substr(name, 1, instr(name, '/') - 1) ELSE name END FROM repositories "
            "ORDER BY 1"
        )
        return [r[0] for r in rows]

    async def repository_summaries(self, namespace: str | None) -> list[RepositorySummary]:
        where, params = "", ()
        if namespace is not None:
            where, params = f"WHERE {NAMESPACE_REPOS}", _ns_params(namespace)
        rows = await self._all(  # type: ignore[attr-defined]
            f"""SELECT r.name,
                  (SELECT count(*) FROM tags t WHERE t.repository_id = r.id),
                  (SELECT count(*) FROM manifests m WHERE m.repository_id = r.id),
                  coalesce((SELECT sum(m.size) FROM manifests m WHERE m.repository_id = r.id), 0)
                  + coalesce((SELECT sum(b.size) FROM blobs b WHERE b.digest IN (
                      SELECT rb.digest FROM repository_blobs rb
                      WHERE rb.repository_id = r.id)), 0),
                  r.last_push_at, r.last_pull_at
                FROM repositories r {where} ORDER BY r.name""",
            params,
        )
        return [RepositorySummary(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows]

    async def tag_infos(self, name: str) -> list[TagInfo]:
        rows = await self._all(  # type: ignore[attr-defined]
            """SELECT t.name, m.digest, t.pushed_at, t.last_pull_at FROM tags t
               JOIN manifests m ON m.id = t.manifest_id JOIN repositories r
               ON r.id = t.repository_id WHERE r.name = ? ORDER BY t.name""",
            (name,),
        )
        return [TagInfo(*r) for r in rows]

    _ARTIFACT = """SELECT m.digest, m.media_type, m.artifact_type, m.size, m.subject, m.body,
                     m.pushed_at, m.last_pull_at,
                     coalesce((SELECT sum(b.size) FROM manifest_blobs mb JOIN blobs b
                               ON b.digest = mb.digest WHERE mb.manifest_id = m.id), 0)
                   FROM manifests m JOIN repositories r ON r.id = m.repository_id"""

    async def artifacts(self, name: str) -> list[ArtifactRow]:
        rows = await self._all(f"{self._ARTIFACT} WHERE r.name = ? ORDER BY m.pushed_at", (name,))  # type: ignore[attr-defined]
        return [ArtifactRow(*r) for r in rows]

    async def artifact(self, name: str, digest: str) -> ArtifactRow | None:
        row = await self._one(f"{self._ARTIFACT} WHERE r.name = ? AND m.digest = ?", (name, digest))  # type: ignore[attr-defined]
        return None if row is None else ArtifactRow(*row)

    async def blob_sizes(self, digests: list[str]) -> dict[str, int]:
        if not digests:
            return {}
        rows = await self._all(  # type: ignore[attr-defined]
            f"SELECT digest, size FROM blobs WHERE digest IN ({','.join('?' * len(digests))})",
            digests,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def search(self, query: str, limit: int) -> list[tuple[str, str | None, str | None]]:
        """(repository, tag, digest) matches for a path, tag or digest fragment."""
        like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = await self._all(  # type: ignore[attr-defined]
            """SELECT name, NULL, NULL FROM repositories WHERE name LIKE ?1 ESCAPE '\\'
               UNION ALL
               SELECT r.name, t.name, m.digest FROM tags t JOIN repositories r
                 ON r.id = t.repository_id JOIN manifests m ON m.id = t.manifest_id
                 WHERE t.name LIKE ?1 ESCAPE '\\'
               UNION ALL
               SELECT r.name, NULL, m.digest FROM manifests m JOIN repositories r
                 ON r.id = m.repository_id WHERE m.digest LIKE ?1 ESCAPE '\\'
               LIMIT ?2""",
            (like, limit),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # -- deletes and copies ----------------------------------------------

    async def delete_repository(self, name: str) -> bool:
        async with self._transaction() as db:  # type: ignore[attr-defined]
            cursor = await db.execute("DELETE FROM repositories WHERE name = ?", (name,))
            return cursor.rowcount > 0

    async def delete_namespace(self, namespace: str, repositories: list[str]) -> None:
        """Remove these repositories and the namespace's settings in one transaction."""
        async with self._transaction() as db:  # type: ignore[attr-defined]
            await db.executemany(
                "DELETE FROM repositories WHERE name = ?", [(name,) for name in repositories]
            )
            await db.execute("DELETE FROM namespaces WHERE name = ?", (namespace,))

    async def repositories_in(self, namespace: str) -> list[str]:
        rows = await self._all(  # type: ignore[attr-defined]
            f"SELECT r.name FROM repositories r WHERE {NAMESPACE_REPOS} ORDER BY r.name",
            _ns_params(namespace),
        )
        return [r[0] for r in rows]

    async def copy_manifest(
        self,
        source: str,
        digest: str,
        target: str,
        tag: str | None,
        now: float,
        quota: Callable[[int, int], None] | None = None,
    ) -> bool:
        """Make ``target`` hold the manifest (and its blob links) ``source`` has; no bytes move.

        ``quota`` may refuse the blob links the copy adds to ``target``'s namespace.
        """
        async with self._transaction() as db:  # type: ignore[attr-defined]
            async with db.execute(
                "SELECT m.id, m.media_type, m.size, m.artifact_type, m.subject, m.annotations, "
                "m.body FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                "WHERE r.name = ? AND m.digest = ?",
                (source, digest),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return False
            repo_id = await self._ensure_repository(db, target, now)  # type: ignore[attr-defined]
            cursor = await db.execute(
                """INSERT INTO manifests(repository_id, digest, media_type, size, artifact_type,
                       subject, annotations, body, pushed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(repository_id, digest) DO UPDATE SET pushed_at = pushed_at
                   RETURNING id""",
                (repo_id, digest, row[1], row[2], row[3], row[4], row[5], row[6], now),
            )
            new_id = (await cursor.fetchone())[0]
            await db.execute(
                "INSERT OR IGNORE INTO manifest_blobs(manifest_id, digest) "
                "SELECT ?, digest FROM manifest_blobs WHERE manifest_id = ?",
                (new_id, row[0]),
            )
            await db.execute(
                "INSERT OR IGNORE INTO manifest_children(manifest_id, child_digest) "
                "SELECT ?, child_digest FROM manifest_children WHERE manifest_id = ?",
                (new_id, row[0]),
            )
            async with self._within_quota(db, target, quota):  # type: ignore[attr-defined]
                await db.execute(
                    "INSERT INTO repository_blobs(repository_id, digest, linked_at) "
                    "SELECT ?, digest, ? FROM manifest_blobs WHERE manifest_id = ? "
                    "ON CONFLICT DO UPDATE SET linked_at = excluded.linked_at",
                    (repo_id, now, row[0]),
                )
            if tag is not None:
                await db.execute(
                    """INSERT INTO tags(repository_id, name, manifest_id, pushed_at)
                       VALUES (?, ?, ?, ?) ON CONFLICT(repository_id, name) DO UPDATE
                       SET manifest_id = excluded.manifest_id, pushed_at = excluded.pushed_at""",
                    (repo_id, tag, new_id, now),
                )
            await db.execute(
                "UPDATE repositories SET last_push_at = ? WHERE id = ?", (now, repo_id)
            )
            return True

    # -- quotas and retention policies -----------------------------------

    async def set_quota(self, namespace: str, quota_bytes: int | None) -> bool:
        async with self._transaction() as db:  # type: ignore[attr-defined]
            cursor = await db.execute(
                "UPDATE namespaces SET quota_bytes = ? WHERE name = ?", (quota_bytes, namespace)
            )
            return cursor.rowcount > 0

    async def quota(self, namespace: str) -> int | None:
        row = await self._one("SELECT quota_bytes FROM namespaces WHERE name = ?", (namespace,))  # type: ignore[attr-defined]
        return None if row is None or row[0] is None else int(row[0])

    async def set_retention_policy(self, target: str, policy: dict[str, object] | None) -> None:
        async with self._transaction() as db:  # type: ignore[attr-defined]
            if policy is None:
                await db.execute("DELETE FROM retention_policies WHERE target = ?", (target,))
            else:
                await db.execute(
                    "INSERT INTO retention_policies(target, policy) VALUES (?, ?) "
                    "ON CONFLICT(target) DO UPDATE SET policy = excluded.policy",
                    (target, msgspec.json.encode(policy)),
                )

    async def retention_policies(self) -> dict[str, dict[str, object]]:
        rows = await self._all("SELECT target, policy FROM retention_policies ORDER BY target")  # type: ignore[attr-defined]
        return {r[0]: msgspec.json.decode(r[1]) for r in rows}

    # -- garbage collection ----------------------------------------------

    @contextlib.asynccontextmanager
    async def blob_files(self) -> AsyncIterator[BlobFiles]:
        """Hold the index's write lock while blob files are moved or removed.

        It is the lock a GC sweep removes files under and an upload places its
        file under (see ``link_blob``), across processes (SQLite's write lock):
        rows read inside agree with the files on disk until the block ends.
        """
        async with self._transaction() as db:  # type: ignore[attr-defined]
            yield BlobFiles(db)

    async def collect_garbage(
        self,
        grace_seconds: float,
        untagged: bool,
        dry_run: bool,
        remove_file: Callable[[str], None],
        now: float | None = None,
    ) -> GcResult:
        """Mark and sweep in one write transaction.

        Holding the index's write lock is what makes this safe while pushes go
        on: a manifest PUT checks its blobs inside its own write transaction (so
        it sees either the blob or nothing), and an upload puts its file in
        place inside the transaction that indexes it (so a sweep never removes
        a file a concurrent upload is publishing). ``remove_file`` moves a
        blob's file out of the served tree while the lock is held.
        """
        now = time.time() if now is None else now
        cutoff = now - grace_seconds
        async with self._transaction() as db:  # type: ignore[attr-defined]
            manifests: list[tuple[str, str]] = []
            if untagged:
                async with db.execute(
                    """SELECT m.id, r.name, m.digest FROM manifests m
                       JOIN repositories r ON r.id = m.repository_id
                       WHERE m.pushed_at < ?
                         AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
                         AND NOT EXISTS (SELECT 1 FROM manifest_children c
                             JOIN manifests p ON p.id = c.manifest_id
                             WHERE c.child_digest = m.digest AND p.repository_id = m.repository_id)
                         AND NOT (m.subject IS NOT NULL AND EXISTS (SELECT 1 FROM manifests s
                             WHERE s.repository_id = m.repository_id AND s.digest = m.subject))""",
                    (cutoff,),
                ) as cursor:
                    doomed = await cursor.fetchall()
                manifests = [(r[1], r[2]) for r in doomed]
                if not dry_run:
                    await db.executemany(
                        "DELETE FROM manifests WHERE id = ?", [(r[0],) for r in doomed]
                    )
            async with db.execute(
                """SELECT b.digest, b.size FROM blobs b
                   WHERE b.created_at < ?
                     AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.digest = b.digest)
                     AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                                     WHERE rb.digest = b.digest AND rb.linked_at >= ?)""",
                (cutoff, cutoff),
            ) as cursor:
                blobs = [(r[0], int(r[1])) for r in await cursor.fetchall()]
            if not dry_run:
                for digest, _ in blobs:
                    await db.execute("DELETE FROM repository_blobs WHERE digest = ?", (digest,))
                    await db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
                    await asyncio.to_thread(remove_file, digest)
            return GcResult(manifests, blobs)
