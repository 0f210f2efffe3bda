"""Access control rows: users, tokens, namespaces, members, repository settings, audit."""

from __future__ import annotations

import aiosqlite
import msgspec

from aioreg.index.database import Database
from aioreg.index.rows import AuditRow, NamespaceRow, TokenRow, UserRow

# A fresh account's credential generation: random, so a re-created user (which may get
# the deleted one's id) does not match the old one's tokens.
RANDOM_GENERATION = "(random() & 281474976710655)"


def _json(value: bytes | None) -> dict[str, object]:
    return {} if value is None else msgspec.json.decode(value)


class AccountQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- users -----------------------------------------------------------

    _USER = "SELECT id, name, password_hash, is_admin, is_robot, generation FROM users"

    @staticmethod
    def _user(row: aiosqlite.Row | None) -> UserRow | None:
        if row is None:
            return None
        return UserRow(row[0], row[1], row[2], bool(row[3]), bool(row[4]), int(row[5]))

    async def user(self, name: str) -> UserRow | None:
        return self._user(await self._db.one(f"{self._USER} WHERE name = ?", (name,)))

    async def user_by_id(self, user_id: int) -> UserRow | None:
        return self._user(await self._db.one(f"{self._USER} WHERE id = ?", (user_id,)))

    async def account(self, user_id: int) -> UserRow | None:
        """``user_by_id`` through the read cache: checked on every bearer token use."""
        row: UserRow | None = await self._db.cache.get(
            ("account", user_id), lambda: self.user_by_id(user_id)
        )
        return row

    async def users(self) -> list[UserRow]:
        rows = await self._db.all(f"{self._USER} ORDER BY name")
        return [u for u in map(self._user, rows) if u is not None]

    async def created(self) -> dict[str, float]:
        """When each user was created, by name (the console's user list)."""
        rows = await self._db.all("SELECT name, created_at FROM users")
        return {r[0]: float(r[1]) for r in rows}

    async def user_count(self) -> int:
        row = await self._db.one("SELECT count(*) FROM users WHERE is_robot = 0")
        return 0 if row is None else int(row[0])

    async def add_user(
        self, name: str, password_hash: str | None, *, admin: bool, robot: bool, now: float
    ) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO users(name, password_hash, is_admin, is_robot, created_at, "
                f"generation) VALUES (?, ?, ?, ?, ?, {RANDOM_GENERATION})",
                (name, password_hash, int(admin), int(robot), now),
            )

    async def set_password(self, name: str, password_hash: str) -> bool:
        async with self._db.transaction() as db:
            cursor = await db.execute(
                "UPDATE users SET password_hash = ?, generation = generation + 1 WHERE name = ?",
                (password_hash, name),
            )
            return cursor.rowcount > 0

    async def remove_user(self, name: str) -> bool:
        async with self._db.transaction() as db:
            cursor = await db.execute("DELETE FROM users WHERE name = ?", (name,))
            return cursor.rowcount > 0

    # -- tokens ----------------------------------------------------------

    _TOKEN = (
        "SELECT id, user_id, name, secret_hash, scopes, created_at, expires_at, revoked_at, "
        "last_used_at FROM tokens"
    )

    @staticmethod
    def _token(row: aiosqlite.Row) -> TokenRow:
        return TokenRow(row[0], row[1], row[2], row[3], msgspec.json.decode(row[4]), *row[5:9])

    async def add_token(
        self,
        token_id: str,
        user_id: int,
        name: str,
        secret_hash: str,
        scopes: list[dict[str, object]],
        expires_at: float | None,
        now: float,
    ) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO tokens(id, user_id, name, secret_hash, scopes, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token_id,
                    user_id,
                    name,
                    secret_hash,
                    msgspec.json.encode(scopes),
                    now,
                    expires_at,
                ),
            )

    async def token(self, token_id: str) -> TokenRow | None:
        row = await self._db.one(f"{self._TOKEN} WHERE id = ?", (token_id,))
        return None if row is None else self._token(row)

    async def tokens(self, user_id: int | None = None) -> list[TokenRow]:
        if user_id is None:
            rows = await self._db.all(f"{self._TOKEN} ORDER BY created_at")
        else:
            rows = await self._db.all(
                f"{self._TOKEN} WHERE user_id = ? ORDER BY created_at", (user_id,)
            )
        return [self._token(r) for r in rows]

    async def revoke_token(self, token_id: str, now: float) -> bool:
        async with self._db.transaction() as db:
            cursor = await db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            return cursor.rowcount > 0

    # -- namespaces ------------------------------------------------------

    _NAMESPACE = (
        "SELECT n.id, n.name, u.name, n.visibility, n.rules FROM namespaces n "
        "LEFT JOIN users u ON u.id = n.owner_id"
    )

    @staticmethod
    def _namespace(row: aiosqlite.Row) -> NamespaceRow:
        return NamespaceRow(row[0], row[1], row[2], row[3], _json(row[4]))

    async def namespace(self, name: str) -> NamespaceRow | None:
        row: NamespaceRow | None = await self._db.cache.get(
            ("namespace", name), lambda: self._namespace_row(name)
        )
        return row

    async def _namespace_row(self, name: str) -> NamespaceRow | None:
        row = await self._db.one(f"{self._NAMESPACE} WHERE n.name = ?", (name,))
        return None if row is None else self._namespace(row)

    async def namespaces(self) -> list[NamespaceRow]:
        return [
            self._namespace(r) for r in await self._db.all(f"{self._NAMESPACE} ORDER BY n.name")
        ]

    async def add_namespace(
        self, name: str, owner_id: int | None, visibility: str, now: float
    ) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO namespaces(name, owner_id, visibility, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO NOTHING",
                (name, owner_id, visibility, now),
            )
            if owner_id is not None:
                await db.execute(
                    "INSERT OR REPLACE INTO namespace_members(namespace_id, user_id, role) "
                    "SELECT id, ?, 'admin' FROM namespaces WHERE name = ?",
                    (owner_id, name),
                )

    async def remove_namespace(self, name: str) -> bool:
        async with self._db.transaction() as db:
            cursor = await db.execute("DELETE FROM namespaces WHERE name = ?", (name,))
            return cursor.rowcount > 0

    async def update_namespace(
        self, name: str, visibility: str | None, rules: dict[str, object] | None
    ) -> bool:
        async with self._db.transaction() as db:
            cursor = await db.execute(
                "UPDATE namespaces SET visibility = coalesce(?, visibility), "
                "rules = coalesce(?, rules) WHERE name = ?",
                (visibility, None if rules is None else msgspec.json.encode(rules), name),
            )
            return cursor.rowcount > 0

    async def set_member(self, namespace: str, user_id: int, role: str | None) -> bool:
        async with self._db.transaction() as db:
            if role is None:
                cursor = await db.execute(
                    "DELETE FROM namespace_members WHERE user_id = ? AND namespace_id = "
                    "(SELECT id FROM namespaces WHERE name = ?)",
                    (user_id, namespace),
                )
            else:
                cursor = await db.execute(
                    "INSERT OR REPLACE INTO namespace_members(namespace_id, user_id, role) "
                    "SELECT id, ?, ? FROM namespaces WHERE name = ?",
                    (user_id, role, namespace),
                )
            return cursor.rowcount > 0

    async def role(self, namespace: str, user_id: int) -> str | None:
        row = await self._db.one(
            "SELECT m.role FROM namespace_members m JOIN namespaces n ON n.id = m.namespace_id "
            "WHERE n.name = ? AND m.user_id = ?",
            (namespace, user_id),
        )
        return None if row is None else str(row[0])

    async def members(self, namespace: str) -> list[tuple[str, str]]:
        rows = await self._db.all(
            "SELECT u.name, m.role FROM namespace_members m JOIN namespaces n ON n.id = m.namespace_id "
            "JOIN users u ON u.id = m.user_id WHERE n.name = ? ORDER BY u.name",
            (namespace,),
        )
        return [(r[0], r[1]) for r in rows]

    # -- per-repository overrides ----------------------------------------

    async def repository_settings(self, name: str) -> tuple[str | None, dict[str, object]]:
        settings: tuple[str | None, dict[str, object]] = await self._db.cache.get(
            ("settings", name), lambda: self._repository_settings(name)
        )
        return settings

    async def _repository_settings(self, name: str) -> tuple[str | None, dict[str, object]]:
        row = await self._db.one(
            "SELECT visibility, rules FROM repository_settings WHERE name = ?", (name,)
        )
        return (None, {}) if row is None else (row[0], _json(row[1]))

    async def set_repository_settings(
        self, name: str, visibility: str | None, rules: dict[str, object] | None
    ) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO repository_settings(name, visibility, rules) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET visibility = coalesce(excluded.visibility, "
                "visibility), rules = coalesce(excluded.rules, rules)",
                (name, visibility, None if rules is None else msgspec.json.encode(rules)),
            )

    # -- audit -----------------------------------------------------------

    async def add_audit(self, entries: list[AuditRow]) -> None:
        if not entries:
            return
        async with self._db.transaction(invalidates=False) as db:
            await db.executemany(
                "INSERT INTO audit(at, actor, action, resource, client, allowed, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.at, e.actor, e.action, e.resource, e.client, int(e.allowed), e.reason)
                    for e in entries
                ],
            )
            await self._db.prune_history(db, "audit")

    async def audit_log(self, limit: int = 100) -> list[AuditRow]:
        rows = await self._db.all(
            "SELECT at, actor, action, resource, client, allowed, reason FROM audit "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [AuditRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]
