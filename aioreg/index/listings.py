"""Read-only listings for management: repository summaries, tags, artifacts, search."""

from __future__ import annotations

import msgspec

from aioreg.index.database import Database
from aioreg.index.rows import ArtifactRow, RepositorySummary, TagInfo
from aioreg.index.usage import REPOSITORY_STORED_BYTES, namespace_filter

_ARTIFACT = """SELECT m.digest, m.media_type, m.artifact_type, m.size, m.subject, m.body,
                 m.pushed_at, m.last_pull_at,
                 coalesce((SELECT sum(b.size) FROM manifest_blobs mb JOIN blobs b
                           ON b.digest = mb.digest WHERE mb.manifest_id = m.id), 0)
               FROM manifests m JOIN repositories r ON r.id = m.repository_id"""


# Console sort keys: what each orders by (a tie breaks on the name).
REPOSITORY_SORTS = {
    "name": "r.name",
    "tags": "tag_count",
    "size": "size",
    "last_push": "coalesce(r.last_push_at, 0)",
    "last_pull": "coalesce(r.last_pull_at, 0)",
}
TAG_SORTS = {
    "name": "t.name",
    "pushed": "t.pushed_at",
    "pulled": "coalesce(t.last_pull_at, 0)",
}


def _like(fragment: str) -> str:
    return "%" + fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class ListingQueries:
    """Read-only listings; the console's long ones are sorted, filtered and paged in SQL,
    so a namespace of thousands of repositories or a repository of thousands of tags
    costs one page."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def repository_summaries(self, namespace: str | None) -> list[RepositorySummary]:
        where, params = namespace_filter(namespace)
        return await self._summaries(f"{where} ORDER BY r.name", params)

    async def repository_summary(self, name: str) -> RepositorySummary | None:
        """One repository's summary, without sizing the rest of its namespace."""
        summaries = await self._summaries("WHERE r.name = ?", (name,))
        return summaries[0] if summaries else None

    async def _summaries(self, tail: str, params: tuple[str, ...]) -> list[RepositorySummary]:
        rows = await self._db.all(
            f"""SELECT r.name,
                  (SELECT count(*) FROM tags t WHERE t.repository_id = r.id),
                  (SELECT count(*) FROM manifests m WHERE m.repository_id = r.id),
                  {REPOSITORY_STORED_BYTES},
                  r.last_push_at, r.last_pull_at
                FROM repositories r {tail}""",
            params,
        )
        return [RepositorySummary(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows]

    async def tag_infos(self, name: str) -> list[TagInfo]:
        rows = await self._db.all(
            """SELECT t.name, m.digest, t.pushed_at, t.last_pull_at FROM tags t
               JOIN manifests m ON m.id = t.manifest_id JOIN repositories r
               ON r.id = t.repository_id WHERE r.name = ? ORDER BY t.name""",
            (name,),
        )
        return [TagInfo(*r) for r in rows]

    async def artifacts(self, name: str) -> list[ArtifactRow]:
        rows = await self._db.all(f"{_ARTIFACT} WHERE r.name = ? ORDER BY m.pushed_at", (name,))
        return [ArtifactRow(*r) for r in rows]

    async def artifact(self, name: str, digest: str) -> ArtifactRow | None:
        row = await self._db.one(f"{_ARTIFACT} WHERE r.name = ? AND m.digest = ?", (name, digest))
        return None if row is None else ArtifactRow(*row)

    async def search(self, query: str, limit: int) -> list[tuple[str, str | None, str | None]]:
        """(repository, tag, digest) matches for a path, tag or digest fragment."""
        like = _like(query)
        rows = await self._db.all(
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

    async def repository_page(
        self,
        namespace: str | None,
        contains: str,
        only: list[str] | None,
        sort: str,
        descending: bool,
        offset: int,
        limit: int,
    ) -> tuple[int, list[RepositorySummary]]:
        """(total matching, the page); ``only`` restricts to those names (None: all)."""
        where, params = namespace_filter(namespace)
        clauses = [where.removeprefix("WHERE ")] if where else []
        values: list[object] = list(params)
        if contains:
            clauses.append("r.name LIKE ? ESCAPE '\\'")
            values.append(_like(contains))
        if only is not None:
            clauses.append("r.name IN (SELECT value FROM json_each(?))")
            values.append(msgspec.json.encode(only).decode())
        filtered = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        row = await self._db.one(f"SELECT count(*) FROM repositories r {filtered}", tuple(values))
        total = int(row[0]) if row else 0
        direction = "DESC" if descending else "ASC"
        rows = await self._db.all(
            f"""SELECT r.name,
                  (SELECT count(*) FROM tags t WHERE t.repository_id = r.id) AS tag_count,
                  (SELECT count(*) FROM manifests m WHERE m.repository_id = r.id),
                  {REPOSITORY_STORED_BYTES} AS size,
                  r.last_push_at, r.last_pull_at
                FROM repositories r {filtered}
                ORDER BY {REPOSITORY_SORTS[sort]} {direction}, r.name {direction}
                LIMIT ? OFFSET ?""",
            (*values, limit, offset),
        )
        return total, [RepositorySummary(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows]

    async def tag_page(
        self, name: str, contains: str, sort: str, descending: bool, offset: int, limit: int
    ) -> tuple[int, list[TagInfo]]:
        filtered = "WHERE t.repository_id = (SELECT id FROM repositories WHERE name = ?)"
        values: list[object] = [name]
        if contains:
            filtered += " AND t.name LIKE ? ESCAPE '\\'"
            values.append(_like(contains))
        row = await self._db.one(f"SELECT count(*) FROM tags t {filtered}", tuple(values))
        total = int(row[0]) if row else 0
        direction = "DESC" if descending else "ASC"
        rows = await self._db.all(
            f"""SELECT t.name, m.digest, t.pushed_at, t.last_pull_at FROM tags t
                JOIN manifests m ON m.id = t.manifest_id {filtered}
                ORDER BY {TAG_SORTS[sort]} {direction}, t.name {direction} LIMIT ? OFFSET ?""",
            (*values, limit, offset),
        )
        return total, [TagInfo(*r) for r in rows]

    async def artifact_page(
        self, name: str, offset: int, limit: int
    ) -> tuple[int, list[ArtifactRow]]:
        """A repository's artifacts, newest first."""
        row = await self._db.one(
            "SELECT count(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id "
            "WHERE r.name = ?",
            (name,),
        )
        rows = await self._db.all(
            f"{_ARTIFACT} WHERE r.name = ? ORDER BY m.pushed_at DESC, m.id DESC LIMIT ? OFFSET ?",
            (name, limit, offset),
        )
        return (int(row[0]) if row else 0), [ArtifactRow(*r) for r in rows]

    async def artifacts_by_digest(self, name: str, digests: list[str]) -> list[ArtifactRow]:
        rows = await self._db.all(
            f"{_ARTIFACT} WHERE r.name = ? AND m.digest IN (SELECT value FROM json_each(?))",
            (name, msgspec.json.encode(digests).decode()),
        )
        return [ArtifactRow(*r) for r in rows]

    async def tags_by_digest(
        self, name: str, digests: list[str], per_digest: int
    ) -> dict[str, tuple[int, list[str]]]:
        """digest -> (how many tags, the first ``per_digest`` of them by name)."""
        rows = await self._db.all(
            """SELECT m.digest,
                 (SELECT count(*) FROM tags t WHERE t.manifest_id = m.id),
                 (SELECT json_group_array(name) FROM (SELECT t.name FROM tags t
                    WHERE t.manifest_id = m.id ORDER BY t.name LIMIT ?))
               FROM manifests m JOIN repositories r ON r.id = m.repository_id
               WHERE r.name = ? AND m.digest IN (SELECT value FROM json_each(?))""",
            (per_digest, name, msgspec.json.encode(digests).decode()),
        )
        return {
            digest: (int(total), sorted(msgspec.json.decode(names, type=list[str])))
            for digest, total, names in rows
            if total
        }

    async def referrer_digests(self, name: str, subjects: list[str]) -> dict[str, list[str]]:
        """subject digest -> digests of the artifacts in ``name`` that refer to it."""
        rows = await self._db.all(
            """SELECT m.subject, m.digest FROM manifests m JOIN repositories r
               ON r.id = m.repository_id WHERE r.name = ?
               AND m.subject IN (SELECT value FROM json_each(?)) ORDER BY m.pushed_at""",
            (name, msgspec.json.encode(subjects).decode()),
        )
        found: dict[str, list[str]] = {}
        for subject, digest in rows:
            found.setdefault(subject, []).append(digest)
        return found
