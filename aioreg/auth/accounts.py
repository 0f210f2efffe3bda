"""Managing identities and namespaces: what the CLI (and the bootstrap) call."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import msgspec

from aioreg.auth.passwords import generate_password, hash_password
from aioreg.auth.scopes import ACTIONS
from aioreg.auth.tokens import hash_secret, new_personal_token
from aioreg.domain.reference import NAME_COMPONENT
from aioreg.domain.rules import PushRules
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index.protocols import IndexProtocol

ROLES = {
    "read": frozenset({"pull"}),
    "write": frozenset({"pull", "push"}),
    "admin": frozenset(ACTIONS),
}
VISIBILITIES = ("public", "private")
USER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")


class TokenScope(msgspec.Struct, forbid_unknown_fields=True):
    """What a personal access token may do: actions within one namespace (or ``*``)."""

    namespace: str
    actions: list[str]


@dataclass(frozen=True)
class NewToken:
    id: str
    value: str


@dataclass(frozen=True)
class ScopeGap:
    """Actions a token scope names that its user may not take in that namespace."""

    namespace: str
    missing: frozenset[str]
    role: str  # the smallest role that covers the whole scope
    namespace_exists: bool


def _fail(message: str) -> RegistryError:
    return RegistryError(ErrorCode.DENIED, message)


def parse_token_scope(text: str) -> TokenScope:
    """``team:pull,push`` or ``*:pull``."""
    namespace, sep, actions = text.partition(":")
    wanted = [a for a in actions.split(",") if a]
    if not sep or not namespace or not wanted or set(wanted) - set(ACTIONS):
        raise _fail(f"scope {text!r} must look like NAMESPACE:pull,push,delete")
    return TokenScope(namespace, sorted(set(wanted)))


class Accounts:
    def __init__(self, index: IndexProtocol) -> None:
        self.index = index

    async def add_user(
        self, name: str, password: str | None, *, admin: bool = False, robot: bool = False
    ) -> str | None:
        """Create a user; returns the generated password when none was given (not for robots)."""
        if not name or set(name) - USER_NAME_CHARS or name[0] in "._-":
            raise _fail(f"user name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if await self.index.accounts.user(name) is not None:
            raise _fail(f"user {name} exists already")
        generated = None
        if password is None and not robot:
            password = generated = generate_password()
        await self.index.accounts.add_user(
            name,
            None if password is None else hash_password(password),
            admin=admin,
            robot=robot,
            now=time.time(),
        )
        return generated

    async def set_password(self, name: str, password: str) -> None:
        if not await self.index.accounts.set_password(name, hash_password(password)):
            raise _fail(f"no user {name}")

    async def remove_user(self, name: str) -> None:
        if not await self.index.accounts.remove_user(name):
            raise _fail(f"no user {name}")

    async def create_token(
        self, user: str, name: str, scopes: list[TokenScope], expires_in: float | None
    ) -> NewToken:
        row = await self.index.accounts.user(user)
        if row is None:
            raise _fail(f"no user {user}")
        token_id, secret, value = new_personal_token()
        now = time.time()
        await self.index.accounts.add_token(
            token_id,
            row.id,
            name,
            hash_secret(secret),
            [msgspec.to_builtins(s) for s in scopes],
            None if expires_in is None else now + expires_in,
            now,
        )
        return NewToken(token_id, value)

    async def scope_gaps(self, user: str, scopes: list[TokenScope]) -> list[ScopeGap]:
        """Where scopes exceed the user's roles: a token never does more than its user,
        so those actions would be denied until the user gets the role."""
        row = await self.index.accounts.user(user)
        if row is None or row.is_admin:
            return []
        gaps = []
        for scope in scopes:
            if scope.namespace in ("*", row.name):  # "*": as far as the roles go; own namespace
                continue
            namespace = await self.index.accounts.namespace(scope.namespace)
            has: set[str] = set()
            if namespace is not None:
                role = await self.index.accounts.role(scope.namespace, row.id)
                has |= ROLES[role] if role else set()
                if namespace.visibility == "public":
                    has.add("pull")
            missing = frozenset(scope.actions) - has
            if missing:
                wanted = set(scope.actions)
                role_name = next(name for name, actions in ROLES.items() if wanted <= actions)
                gaps.append(ScopeGap(scope.namespace, missing, role_name, namespace is not None))
        return gaps

    async def revoke_token(self, token_id: str) -> None:
        if not await self.index.accounts.revoke_token(token_id, time.time()):
            raise _fail(f"no active token {token_id}")

    async def create_namespace(
        self, name: str, owner: str | None, visibility: str = "private"
    ) -> None:
        if not re.fullmatch(NAME_COMPONENT, name):
            raise _fail(f"namespace {name!r} is not a valid repository path component")
        if visibility not in VISIBILITIES:
            raise _fail("visibility must be public or private")
        owner_id = None
        if owner is not None:
            row = await self.index.accounts.user(owner)
            if row is None:
                raise _fail(f"no user {owner}")
            owner_id = row.id
        if await self.index.accounts.namespace(name) is not None:
            raise _fail(f"namespace {name} exists already")
        await self.index.accounts.add_namespace(name, owner_id, visibility, time.time())

    async def set_member(self, namespace: str, user: str, role: str | None) -> None:
        if role is not None and role not in ROLES:
            raise _fail(f"role must be one of {', '.join(ROLES)}")
        row = await self.index.accounts.user(user)
        if row is None:
            raise _fail(f"no user {user}")
        if not await self.index.accounts.set_member(namespace, row.id, role):
            raise _fail(f"no namespace {namespace}" if role else f"{user} is not in {namespace}")

    async def configure(
        self,
        namespace: str,
        repository: str | None,
        visibility: str | None,
        rules: dict[str, object],
    ) -> None:
        """Set visibility and push rules on a namespace, or override them on one repository."""
        if visibility is not None and visibility not in VISIBILITIES:
            raise _fail("visibility must be public or private")
        if repository is None:
            current = await self.index.accounts.namespace(namespace)
            if current is None:
                raise _fail(f"no namespace {namespace}")
            merged = {**current.rules, **rules}
            msgspec.convert(merged, PushRules)  # validate before storing
            await self.index.accounts.update_namespace(namespace, visibility, merged)
        else:
            _, current_rules = await self.index.accounts.repository_settings(repository)
            merged = {**current_rules, **rules}
            msgspec.convert(merged, PushRules)
            await self.index.accounts.set_repository_settings(repository, visibility, merged)
