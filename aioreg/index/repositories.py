"""Repository rows: ids, the catalog, and whole-repository (or namespace) deletes."""

from __future__ import annotations

from aioreg.index.database import Database
from aioreg.index.outbox import Announcement
from aioreg.index.usage import NAMESPACE_REPOS, namespace_params


class RepositoryQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def id(self, name: str) -> int | None:
        """The repository's id (through the read cache); None until something is pushed."""
        repo_id: int | None = await self._db.cache.get(("repo", name), lambda: self._id(name))
        return repo_id

    async def _id(self, name: str) -> int | None:
        row = await self._db.one("SELECT id FROM repositories WHERE name = ?", (name,))
        return None if row is None else int(row[0])

    async def deprecation(self, name: str, tag: str | None = None) -> str | None:
        """The notice on a repository (or one of its tags), through the read cache."""
        message: str | None = await self._db.cache.get(
            ("deprecation", name, tag), lambda: self._deprecation(name, tag)
        )
        return message

    async def _deprecation(self, name: str, tag: str | None) -> str | None:
        if tag is None:
            row = await self._db.one("SELECT deprecation FROM repositories WHERE name = ?", (name,))
        else:
            row = await self._db.one(
                "SELECT d.message FROM tag_deprecations d JOIN repositories r "
                "ON r.id = d.repository_id WHERE r.name = ? AND d.tag = ?",
                (name, tag),
            )
        return None if row is None or row[0] is None else str(row[0])

    async def tag_deprecations(self, name: str) -> dict[str, str]:
        rows = await self._db.all(
            "SELECT d.tag, d.message FROM tag_deprecations d JOIN repositories r "
            "ON r.id = d.repository_id WHERE r.name = ? ORDER BY d.tag",
            (name,),
        )
        return {r[0]: r[1] for r in rows}

    async def set_deprecation(self, name: str, message: str | None, tag: str | None = None) -> bool:
        """Set or (with None) clear a notice; False when there is no such repository."""
        async with self._db.transaction() as db:
            if tag is None:
                cursor = await db.execute(
                    "UPDATE repositories SET deprecation = ? WHERE name = ?", (message, name)
                )
                return cursor.rowcount > 0
            found = await (
                await db.execute("SELECT id FROM repositories WHERE name = ?", (name,))
            ).fetchone()
            if found is None:
                return False
            if message is None:
                await db.execute(
                    "DELETE FROM tag_deprecations WHERE repository_id = ? AND tag = ?",
                    (found[0], tag),
                )
            else:
                await db.execute(
                    "INSERT INTO tag_deprecations(repository_id, tag, message) VALUES (?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET message = excluded.message",
                    (found[0], tag, message),
                )
            return True

    async def catalog(self, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Repository names after ``last`` in byte order; the flag says whether more follow."""
        return await self._db.page(
            "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?", (), last, limit
        )

    async def in_namespace(self, namespace: str) -> list[str]:
        rows = await self._db.all(
            f"SELECT r.name FROM repositories r WHERE {NAMESPACE_REPOS} ORDER BY r.name",
            namespace_params(namespace),
        )
        return [r[0] for r in rows]

    async def namespace_names(self) -> list[str]:
        """Namespaces with a row or with repositories, in order."""
        rows = await self._db.all(
            "SELECT name FROM namespaces UNION SELECT CASE WHEN instr(name, '/') > 0 "
            "THEN substr(name, 1, instr(name, '/') - 1) ELSE name END FROM repositories "
            "ORDER BY 1"
        )
        return [r[0] for r in rows]

    async def delete(self, name: str, actor: str | None = None) -> bool:
        async with self._db.transaction() as db:
            cursor = await db.execute("DELETE FROM repositories WHERE name = ?", (name,))
            if cursor.rowcount > 0:
                await self._db.outbox.add(
                    db, [Announcement("repository_deleted", name, actor=actor)]
                )
            return cursor.rowcount > 0

    async def delete_namespace(
        self, namespace: str, repositories: list[str], actor: str | None = None
    ) -> None:
        """Remove these repositories and the namespace's settings in one transaction."""
        async with self._db.transaction() as db:
            deleted = []
            for name in repositories:
                cursor = await db.execute("DELETE FROM repositories WHERE name = ?", (name,))
                if cursor.rowcount > 0:
                    deleted.append(Announcement("repository_deleted", name, actor=actor))
            await db.execute("DELETE FROM namespaces WHERE name = ?", (namespace,))
            await self._db.outbox.add(db, deleted)
