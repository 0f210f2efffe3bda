"""Read-only listings for management: repository summaries, tags, artifacts, search."""

from __future__ import annotations

from aioreg.index.database import Database
from aioreg.index.rows import ArtifactRow, RepositorySummary, TagInfo
from aioreg.index.usage import REPOSITORY_STORED_BYTES, namespace_filter

_ARTIFACT = """SELECT m.digest, m.media_type, m.artifact_type, m.size, m.subject, m.body,
                 m.pushed_at, m.last_pull_at,
                 coalesce((SELECT sum(b.size) FROM manifest_blobs mb JOIN blobs b
                           ON b.digest = mb.digest WHERE mb.manifest_id = m.id), 0)
               FROM manifests m JOIN repositories r ON r.id = m.repository_id"""


class ListingQueries:
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
        like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
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
