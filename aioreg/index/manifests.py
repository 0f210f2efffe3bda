"""Manifests, the blobs and child manifests they reference, and the tags pointing at them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

import aiosqlite
import msgspec

from aioreg.domain.manifest import ParsedManifest
from aioreg.index.database import Database, delete_in_repository, ensure_repository
from aioreg.index.errors import Kind, MissingReferences, SizeMismatch, TagMoveRefused
from aioreg.index.outbox import Announcement
from aioreg.index.rows import ManifestRow, Referrer
from aioreg.index.usage import within_quota

SERVABLE_LINKED_BLOBS = (
    "repository_blobs JOIN blobs USING (digest) WHERE blobs.quarantined_at IS NULL AND"
)
_MANIFEST_COLUMNS = "m.id, m.repository_id, m.digest, m.media_type, m.size, m.body, m.subject"
_UPSERT_TAG = """INSERT INTO tags(repository_id, name, manifest_id, pushed_at)
   VALUES (?, ?, ?, ?) ON CONFLICT(repository_id, name) DO UPDATE
   SET manifest_id = excluded.manifest_id, pushed_at = excluded.pushed_at"""


class ManifestQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(
        self,
        name: str,
        manifest: ParsedManifest,
        body: bytes,
        tags: Sequence[str],
        now: float,
        *,
        protected_tags: Collection[str] = (),
        require_references: bool = True,
        actor: str | None = None,
    ) -> None:
        """Store a manifest and its references, moving ``tags`` to it, in one transaction.

        Without ``require_references`` (a proxy caching an upstream manifest before
        its blobs) nothing referenced need be stored yet: blobs not stored are
        recorded once they are (``BlobQueries.link``/``mount`` with ``adopt``).

        Every referenced blob must be linked to the repository and every child
        manifest stored in it (else ``MissingReferences``), at the size its
        descriptor declares (else ``SizeMismatch``); the check runs inside the
        write transaction so a concurrent delete cannot slip between check and
        insert. A tag in ``protected_tags`` already pointing at another digest
        raises ``TagMoveRefused`` (the same digest again is fine), and then neither
        the manifest nor any of the tags is stored. The webhook events (push, tags
        created or moved, the repository created) go in the same transaction; a
        proxy's cached copy (without ``require_references``) is no push and has none.
        """
        digest = str(manifest.digest)
        outbox = self._db.outbox if require_references else None
        async with self._db.transaction() as db:
            repo_id = await ensure_repository(db, name, now, outbox, actor)
            for tag in tags:
                if tag not in protected_tags:
                    continue
                existing = await _tagged_digest(db, repo_id, tag)
                if existing is not None and existing != digest:
                    raise TagMoveRefused(tag, existing)
            blobs = sorted({str(d) for d in manifest.blobs})
            children = sorted({str(d) for d in manifest.children})
            if require_references:
                await _require(db, SERVABLE_LINKED_BLOBS, repo_id, blobs, "blob", manifest.sizes)
                await _require(db, "manifests WHERE", repo_id, children, "manifest", manifest.sizes)
            else:
                blobs = await _stored(db, blobs)
            cursor = await db.execute(
                """INSERT INTO manifests(repository_id, digest, media_type, size, artifact_type,
                       subject, annotations, body, pushed_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(repository_id, digest) DO UPDATE SET pushed_at = excluded.pushed_at
                   RETURNING id""",
                (
                    repo_id,
                    digest,
                    manifest.media_type,
                    manifest.size,
                    manifest.artifact_type,
                    None if manifest.subject is None else str(manifest.subject),
                    msgspec.json.encode(manifest.annotations) if manifest.annotations else None,
                    body,
                    now,
                ),
            )
            row = await cursor.fetchone()
            assert row is not None
            manifest_id = int(row[0])
            await db.executemany(
                "INSERT OR IGNORE INTO manifest_blobs(manifest_id, digest) VALUES (?, ?)",
                [(manifest_id, d) for d in blobs],
            )
            await db.executemany(
                "INSERT OR IGNORE INTO manifest_children(manifest_id, child_digest) VALUES (?, ?)",
                [(manifest_id, d) for d in children],
            )
            announce = outbox is not None and await outbox.active(db)
            previous = await _tag_digests(db, repo_id, tags) if announce else {}
            await db.executemany(_UPSERT_TAG, [(repo_id, t, manifest_id, now) for t in tags])
            await db.execute(
                "UPDATE repositories SET last_push_at = ? WHERE id = ?", (now, repo_id)
            )
            if announce and outbox is not None:
                target = Announcement(
                    "push", name, None, digest, manifest.media_type, manifest.size, actor, at=now
                )
                await outbox.add(db, _pushed(target, tags, previous))

    async def put_tags(
        self,
        tags: Sequence[tuple[str, str, str]],
        now: float,
        *,
        protected: Collection[tuple[str, str]] = (),
    ) -> list[tuple[str, str, str]]:
        """Point each (repository, tag) at a manifest stored there (by digest), all in one
        transaction: an import's tags appear together or not at all.

        A ``protected`` tag already pointing at another digest stays as it is and
        comes back as (repository, tag, current digest); a digest not stored in its
        repository raises ``MissingReferences`` and no tag moves.
        """
        refused: list[tuple[str, str, str]] = []
        async with self._db.transaction() as db:
            for name, tag, digest in tags:
                async with db.execute(
                    "SELECT m.id, m.repository_id FROM manifests m JOIN repositories r "
                    "ON r.id = m.repository_id WHERE r.name = ? AND m.digest = ?",
                    (name, digest),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None:
                    raise MissingReferences("manifest", [digest])
                manifest_id, repo_id = int(row[0]), int(row[1])
                if (name, tag) in protected:
                    existing = await _tagged_digest(db, repo_id, tag)
                    if existing is not None and existing != digest:
                        refused.append((name, tag, existing))
                        continue
                await db.execute(_UPSERT_TAG, (repo_id, tag, manifest_id, now))
                await db.execute(
                    "UPDATE repositories SET last_push_at = ? WHERE id = ?", (now, repo_id)
                )
        return refused

    async def copy(
        self,
        source: str,
        digest: str,
        target: str,
        tag: str | None,
        now: float,
        quota_limit: int | None = None,
        actor: str | None = None,
    ) -> bool:
        """Make ``target`` hold the manifest (and its blob links) ``source`` has; no bytes move.

        Past ``quota_limit`` for ``target``'s namespace it raises ``QuotaWouldExceed``
        and nothing is copied. False when ``source`` has no such manifest.
        """
        async with self._db.transaction() as db:
            async with db.execute(
                "SELECT m.id, m.media_type, m.size, m.artifact_type, m.subject, m.annotations, "
                "m.body FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                "WHERE r.name = ? AND m.digest = ?",
                (source, digest),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return False
            outbox = self._db.outbox
            repo_id = await ensure_repository(db, target, now, outbox, actor)
            cursor = await db.execute(
                """INSERT INTO manifests(repository_id, digest, media_type, size, artifact_type,
                       subject, annotations, body, pushed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(repository_id, digest) DO UPDATE SET pushed_at = pushed_at
                   RETURNING id""",
                (repo_id, digest, row[1], row[2], row[3], row[4], row[5], row[6], now),
            )
            inserted = await cursor.fetchone()
            assert inserted is not None
            new_id = int(inserted[0])
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
            async with within_quota(db, target, quota_limit, outbox):
                await db.execute(
                    "INSERT INTO repository_blobs(repository_id, digest, linked_at) "
                    "SELECT ?, digest, ? FROM manifest_blobs WHERE manifest_id = ? "
                    "ON CONFLICT DO UPDATE SET linked_at = excluded.linked_at",
                    (repo_id, now, row[0]),
                )
            tags = [] if tag is None else [tag]
            announce = await outbox.active(db)
            previous = await _tag_digests(db, repo_id, tags) if announce else {}
            if tag is not None:
                await db.execute(_UPSERT_TAG, (repo_id, tag, new_id, now))
            await db.execute(
                "UPDATE repositories SET last_push_at = ? WHERE id = ?", (now, repo_id)
            )
            if announce:
                pushed = Announcement(
                    "push", target, None, digest, row[1], row[2], actor, {"source": source}, now
                )
                await outbox.add(db, _pushed(pushed, tags, previous))
            return True

    async def by_digest(self, name: str, digest: str) -> ManifestRow | None:
        row: ManifestRow | None = await self._db.cache.get(
            ("manifest", name, digest), lambda: self._by_digest(name, digest)
        )
        return row

    async def _by_digest(self, name: str, digest: str) -> ManifestRow | None:
        row = await self._db.one(
            f"""SELECT {_MANIFEST_COLUMNS} FROM manifests m
                JOIN repositories r ON r.id = m.repository_id
                WHERE r.name = ? AND m.digest = ?""",
            (name, digest),
        )
        return None if row is None else ManifestRow(*row)

    async def by_tag(self, name: str, tag: str) -> ManifestRow | None:
        row: ManifestRow | None = await self._db.cache.get(
            ("tag", name, tag), lambda: self._by_tag(name, tag)
        )
        return row

    async def _by_tag(self, name: str, tag: str) -> ManifestRow | None:
        row = await self._db.one(
            f"""SELECT {_MANIFEST_COLUMNS} FROM tags t
                JOIN repositories r ON r.id = t.repository_id
                JOIN manifests m ON m.id = t.manifest_id
                WHERE r.name = ? AND t.name = ?""",
            (name, tag),
        )
        return None if row is None else ManifestRow(*row)

    async def tag_validated_at(self, name: str, tag: str) -> float | None:
        """When a proxy last checked this cached tag upstream (None: never)."""
        row = await self._db.one(
            "SELECT t.validated_at FROM tags t JOIN repositories r ON r.id = t.repository_id "
            "WHERE r.name = ? AND t.name = ?",
            (name, tag),
        )
        return None if row is None else row[0]

    async def set_tag_validated(self, name: str, tag: str, when: float) -> None:
        """Record a proxy's upstream check of a tag (no cached read shows it)."""
        async with self._db.transaction(invalidates=False) as db:
            await db.execute(
                "UPDATE tags SET validated_at = ? WHERE name = ? AND repository_id = "
                "(SELECT id FROM repositories WHERE name = ?)",
                (when, tag, name),
            )

    async def tags_of(self, name: str, digest: str) -> list[str]:
        rows = await self._db.all(
            "SELECT t.name FROM tags t JOIN manifests m ON m.id = t.manifest_id "
            "JOIN repositories r ON r.id = t.repository_id WHERE r.name = ? AND m.digest = ?",
            (name, digest),
        )
        return [r[0] for r in rows]

    async def tags(self, repo_id: int, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Tag names after ``last`` in byte order; the flag says whether more follow."""
        return await self._db.page(
            "SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name LIMIT ?",
            (repo_id,),
            last,
            limit,
        )

    async def delete(self, name: str, digest: str, actor: str | None = None) -> bool:
        """Remove a manifest and every tag pointing at it (each a webhook event)."""
        async with self._db.transaction() as db:
            doomed: list[Announcement] = []
            if await self._db.outbox.active(db):
                doomed = await _doomed(db, name, "m.digest = ?", digest, actor)
            deleted = await delete_in_repository(db, "manifests", "digest", name, digest)
            if deleted and doomed:
                tags = [a for a in doomed if a.tag is not None]
                await self._db.outbox.add(
                    db, [*tags, replace(doomed[0], action="delete", tag=None)]
                )
            return deleted

    async def delete_tag(
        self, name: str, tag: str, digest: str | None = None, actor: str | None = None
    ) -> bool:
        """Remove a tag; with ``digest``, only while it still points at that manifest."""
        async with self._db.transaction() as db:
            doomed: list[Announcement] = []
            if await self._db.outbox.active(db):
                doomed = await _doomed(db, name, "t.name = ?", tag, actor)
            if digest is None:
                deleted = await delete_in_repository(db, "tags", "name", name, tag)
            else:
                cursor = await db.execute(
                    "DELETE FROM tags WHERE name = ? AND repository_id = "
                    "(SELECT id FROM repositories WHERE name = ?) AND manifest_id = "
                    "(SELECT id FROM manifests m WHERE m.repository_id = tags.repository_id "
                    "AND m.digest = ?)",
                    (tag, name, digest),
                )
                deleted = cursor.rowcount > 0
            if deleted:
                await self._db.outbox.add(db, [a for a in doomed if a.tag == tag])
            return deleted

    async def referrers(
        self, repo_id: int, subject: str, artifact_type: str | None
    ) -> list[Referrer]:
        sql = (
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests "
            "WHERE repository_id = ? AND subject = ?"
        )
        params: list[object] = [repo_id, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = ?"
            params.append(artifact_type)
        rows = await self._db.all(sql + " ORDER BY pushed_at, digest", params)
        return [
            Referrer(
                digest=r[0],
                media_type=r[1],
                size=r[2],
                artifact_type=r[3],
                annotations=None if r[4] is None else msgspec.json.decode(r[4]),
            )
            for r in rows
        ]


async def _tag_digests(
    db: aiosqlite.Connection, repo_id: int, tags: Sequence[str]
) -> dict[str, str]:
    """The digest each of ``tags`` points at now (those that exist)."""
    found: dict[str, str] = {}
    for tag in tags:
        async with db.execute(
            "SELECT m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id "
            "WHERE t.repository_id = ? AND t.name = ?",
            (repo_id, tag),
        ) as cursor:
            row = await cursor.fetchone()
        if row is not None:
            found[tag] = str(row[0])
    return found


def _pushed(
    push: Announcement, tags: Sequence[str], previous: Mapping[str, str]
) -> list[Announcement]:
    """A push's events: one push per tag (or one untagged), then each tag that now points
    at the manifest and did not before (new, or moved from ``previous``)."""
    pushes = [replace(push, tag=t) for t in tags] or [push]
    created = [
        replace(push, action="tag_created", tag=t, detail={**push.detail, "previous": previous[t]})
        if t in previous
        else replace(push, action="tag_created", tag=t)
        for t in tags
        if previous.get(t) != push.digest
    ]
    return pushes + created


async def _doomed(
    db: aiosqlite.Connection, name: str, where: str, key: str, actor: str | None
) -> list[Announcement]:
    """Before a delete: the manifest matched by ``where`` (first, untagged) and its tags,
    as ``tag_deleted`` events."""
    async with db.execute(
        "SELECT t.name, m.digest, m.media_type, m.size FROM manifests m "
        "JOIN repositories r ON r.id = m.repository_id "
        "LEFT JOIN tags t ON t.manifest_id = m.id "
        f"WHERE r.name = ? AND {where} ORDER BY t.name",
        (name, key),
    ) as cursor:
        rows = list(await cursor.fetchall())
    return [Announcement("tag_deleted", name, r[0], r[1], r[2], r[3], actor) for r in rows]


async def _stored(db: aiosqlite.Connection, digests: list[str]) -> list[str]:
    """Those of ``digests`` that have a blob row (registry-wide)."""
    found: set[str] = set()
    for start in range(0, len(digests), 500):
        batch = digests[start : start + 500]
        marks = ",".join("?" * len(batch))
        async with db.execute(
            f"SELECT digest FROM blobs WHERE digest IN ({marks})", batch
        ) as cursor:
            found.update(str(r[0]) for r in await cursor.fetchall())
    return [d for d in digests if d in found]


async def _require(
    db: aiosqlite.Connection,
    source: str,
    repo_id: int,
    digests: list[str],
    kind: Kind,
    sizes: Mapping[str, int],
) -> None:
    """Raise ``SizeMismatch`` when a digest's row in ``source`` (for the repo) has another
    size than ``sizes`` declares, ``MissingReferences`` unless every digest has a row.

    ``source`` is a FROM clause ending in WHERE or AND.
    """
    found: dict[str, int] = {}
    # Stay under SQLite's bound-parameter limit for very wide manifests.
    for start in range(0, len(digests), 500):
        batch = digests[start : start + 500]
        marks = ",".join("?" * len(batch))
        sql = f"SELECT digest, size FROM {source} repository_id = ? AND digest IN ({marks})"
        async with db.execute(sql, (repo_id, *batch)) as cursor:
            found.update((r[0], r[1]) for r in await cursor.fetchall())
    for digest, size in found.items():
        if digest in sizes and sizes[digest] != size:
            raise SizeMismatch(kind, digest, sizes[digest], size)
    missing = [d for d in digests if d not in found]
    if missing:
        raise MissingReferences(kind, missing)


async def _tagged_digest(db: aiosqlite.Connection, repo_id: int, tag: str) -> str | None:
    """The digest ``tag`` points at in the repository, if it exists."""
    async with db.execute(
        "SELECT m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id "
        "WHERE t.repository_id = ? AND t.name = ?",
        (repo_id, tag),
    ) as cursor:
        row = await cursor.fetchone()
    return None if row is None else str(row[0])
