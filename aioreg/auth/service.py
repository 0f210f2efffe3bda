"""Who is calling and what they may do.

Identities come from HTTP Basic credentials (a password, or a personal access
token used as the password, with any user name) or from a bearer JWT this
registry issued. Permissions come from namespace membership, visibility and
admin status, narrowed by a token's scopes, and by the push rules that are
about identities (member-only push, token-only push).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

from aioreg.auth.accounts import ROLES, Accounts
from aioreg.auth.passwords import verify_password
from aioreg.auth.scopes import ACTIONS, Access
from aioreg.auth.tokens import (
    InvalidToken,
    TokenSigner,
    load_or_create_key,
    secret_matches,
    split_personal_token,
)
from aioreg.config import AuthConfig
from aioreg.errors import ErrorCode, RegistryError, TooManyRequestsError
from aioreg.index import Index
from aioreg.index.accounts import AuditRow, UserRow
from aioreg.periodic import PeriodicJob
from aioreg.rules import effective_rules, namespace_of

log = logging.getLogger("aioreg.auth")
AUDIT_FLUSH_SECONDS = 1.0
# Seconds a verified password is remembered (a changed password takes effect
# within this time; tokens are checked on every request).
VERIFIED_TTL = 10.0


@dataclass(frozen=True)
class Identity:
    name: str | None  # None: anonymous
    user_id: int | None = None
    admin: bool = False
    method: str = "anonymous"  # "password", "token" or "anonymous"
    scopes: tuple[tuple[str, frozenset[str]], ...] | None = None  # a PAT's limits; None: none
    token_id: str | None = None
    granted: tuple[Access, ...] | None = None  # set for bearer tokens: exactly what was issued

    @property
    def anonymous(self) -> bool:
        return self.name is None

    def scope_allows(self, namespace: str) -> frozenset[str]:
        if self.scopes is None:
            return frozenset(ACTIONS)
        allowed: set[str] = set()
        for scope_namespace, actions in self.scopes:
            if scope_namespace in ("*", namespace):
                allowed |= actions
        return frozenset(allowed)


ANONYMOUS = Identity(None)


class AuthError(RegistryError):
    """Credentials missing or wrong (401 with a challenge)."""

    def __init__(self, message: str, scope: list[Access] | None = None) -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, message)
        self.scope = scope or []


@dataclass
class Throttle:
    """Failed logins per key within a sliding window."""

    limit: int
    window: float
    failures: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self.failures[key]
        while stamps and stamps[0] < now - self.window:
            stamps.popleft()
        if not stamps:
            self.failures.pop(key, None)
        return stamps

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            stamps = self._recent(key, now)
            if len(stamps) >= self.limit:
                raise TooManyRequestsError(
                    "too many failed logins; try again later", stamps[0] + self.window - now
                )

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self.failures[key].append(now)


class AuthService:
    def __init__(self, config: AuthConfig, index: Index, data_dir: Path) -> None:
        self.config = config
        self.index = index
        self.accounts = Accounts(index)
        self.data_dir = data_dir
        self.signer: TokenSigner | None = None
        self.throttle = Throttle(config.failed_login_limit, config.failed_login_window)
        self._audit: list[AuditRow] = []
        self._verified: dict[bytes, tuple[Identity, float]] = {}
        self._flusher = PeriodicJob("audit flush", AUDIT_FLUSH_SECONDS, self.flush_audit)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    async def open(self) -> None:
        if not self.enabled:
            return
        key = await asyncio.to_thread(load_or_create_key, self.data_dir / "auth")
        self.signer = TokenSigner(key, self.config.service)
        await self._bootstrap_admin()
        self._flusher.start()

    async def close(self) -> None:
        await self._flusher.stop()
        await self.flush_audit()

    async def _bootstrap_admin(self) -> None:
        if await self.index.user_count() > 0:
            return
        password = self.config.admin_password or None
        generated = await self.accounts.add_user(self.config.admin_user, password, admin=True)
        if generated is not None:
            # Shown once on the console, never written to the log.
            print(
                f"aioreg: created admin user {self.config.admin_user!r} with password: "
                f"{generated}\naioreg: this password is shown only once; change it with "
                f"`aioreg user passwd {self.config.admin_user}`",
                file=sys.stderr,
                flush=True,
            )
        log.info("created initial admin user %r", self.config.admin_user)

    # -- authentication --------------------------------------------------

    async def login(self, username: str, secret: str, client: str) -> Identity:
        """Basic credentials: a password, or a personal access token (any user name)."""
        self.throttle.check(f"user:{username}", f"addr:{client}")
        # Clients sending Basic credentials on every request would pay for argon2
        # each time; a verified pair is remembered briefly, by hash only.
        key = hashlib.sha256(f"{username}\0{secret}".encode()).digest()
        cached = self._verified.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        identity = await self._check_credentials(username, secret)
        if identity is None:
            self.throttle.fail(f"user:{username}", f"addr:{client}")
            log.info("failed login for %r from %s", username[:64], client)
            raise AuthError("invalid username, password or token")
        if identity.method == "password":  # tokens are cheap to check and must revoke at once
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[key] = (identity, time.monotonic() + VERIFIED_TTL)
        return identity

    async def _check_credentials(self, username: str, secret: str) -> Identity | None:
        pat = split_personal_token(secret)
        if pat is not None:
            return await self._token_identity(*pat)
        user = await self.index.user(username)
        ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, secret)
        if user is None or not ok:
            return None
        return Identity(user.name, user.id, user.is_admin, "password")

    async def _token_identity(self, token_id: str, secret: str) -> Identity | None:
        row = await self.index.token(token_id)
        if row is None or not secret_matches(row.secret_hash, secret):
            return None
        now = time.time()
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        user = await self.index.user_by_id(row.user_id)
        if user is None:
            return None
        await self.index.touch_token(token_id, now)
        scopes = tuple(
            (str(s["namespace"]), frozenset(s["actions"]))  # type: ignore[arg-type]
            for s in row.scopes
        )
        return Identity(user.name, user.id, user.is_admin, "token", scopes, token_id)

    def bearer(self, token: str) -> Identity:
        assert self.signer is not None
        try:
            claims = self.signer.verify(token)
        except InvalidToken as exc:
            raise AuthError(f"invalid token: {exc}") from None
        granted = tuple(
            Access(str(a["type"]), str(a["name"]), frozenset(a["actions"]))
            for a in claims.get("access", [])
        )
        subject = claims["sub"] or None
        return Identity(subject, method=str(claims.get("amr", "token")), granted=granted)

    async def refresh(self, refresh_token: str) -> Identity:
        """The identity behind a refresh token, checked again (user kept, token not revoked)."""
        assert self.signer is not None
        try:
            claims = self.signer.verify(refresh_token, kind="refresh")
        except InvalidToken as exc:
            raise AuthError(f"invalid refresh token: {exc}") from None
        user = await self.index.user(claims["sub"])
        if user is None:
            raise AuthError("the user of this refresh token no longer exists")
        token_id = claims.get("tid")
        if token_id:
            row = await self.index.token(token_id)
            if row is None or row.revoked_at is not None:
                raise AuthError("the access token behind this refresh token was revoked")
            if row.expires_at is not None and row.expires_at <= time.time():
                raise AuthError("the access token behind this refresh token expired")
            scopes = tuple(
                (str(s["namespace"]), frozenset(s["actions"]))  # type: ignore[arg-type]
                for s in row.scopes
            )
            return Identity(user.name, user.id, user.is_admin, "token", scopes, token_id)
        return Identity(user.name, user.id, user.is_admin, str(claims.get("amr", "password")))

    # -- authorization ---------------------------------------------------

    async def _full_identity(self, identity: Identity) -> Identity:
        """A bearer identity with its user's current standing (for permission checks)."""
        if identity.anonymous or identity.user_id is not None:
            return identity
        user: UserRow | None = await self.index.user(identity.name or "")
        if user is None:
            return ANONYMOUS
        return Identity(user.name, user.id, user.is_admin, identity.method)

    async def permitted(self, identity: Identity, repository: str) -> tuple[frozenset[str], str]:
        """Actions the identity may take on a repository, and why not the others."""
        identity = await self._full_identity(identity)
        namespace_name = namespace_of(repository)
        namespace = await self.index.namespace(namespace_name)
        repo_visibility, repo_rules = await self.index.repository_settings(repository)
        visibility = repo_visibility or (
            namespace.visibility if namespace else self.config.default_visibility
        )
        rules = effective_rules(namespace.rules if namespace else {}, repo_rules)
        role = None
        if identity.user_id is not None and namespace is not None:
            role = await self.index.role(namespace_name, identity.user_id)
        actions: set[str] = set()
        why = ""
        if visibility == "public":
            actions.add("pull")
        if role is not None:
            actions |= ROLES[role]
        if identity.admin:
            actions |= set(ACTIONS)
        elif identity.name is not None and namespace_name == identity.name:
            actions |= set(ACTIONS)  # a user's personal namespace
        elif namespace is None and not identity.anonymous:
            why = f"namespace {namespace_name} does not exist"
        if "push" in actions and rules.must_be_project_member and role is None:
            actions -= {"push", "delete"}
            why = f"only members of {namespace_name} may push"
        if "push" in actions and rules.must_use_auth_token_for_push and identity.method != "token":
            actions.discard("push")
            why = f"{namespace_name} accepts pushes only with an access token, not a password"
        actions &= identity.scope_allows(namespace_name)
        if not why:
            why = (
                "anonymous access is limited to public repositories"
                if identity.anonymous
                else f"{identity.name} has no such access to {repository}"
            )
        return frozenset(actions), why

    async def grant(self, identity: Identity, requested: list[Access]) -> list[Access]:
        """What a token request gets: each requested scope narrowed to what is permitted."""
        granted: list[Access] = []
        for access in requested:
            if access.type == "repository":
                allowed, _ = await self.permitted(identity, access.name)
                granted.append(Access(access.type, access.name, access.actions & allowed))
            elif access.type == "registry" and access.name == "catalog":
                granted.append(
                    Access(access.type, access.name, access.actions & {"*"} or frozenset())
                )
        return granted

    def issue(self, identity: Identity, access: list[Access]) -> tuple[str, float]:
        assert self.signer is not None
        return self.signer.access_token(
            identity.name or "", access, identity.method, self.config.token_ttl
        )

    def issue_refresh(self, identity: Identity) -> str:
        assert self.signer is not None and identity.name is not None
        return self.signer.refresh_token(
            identity.name, identity.method, self.config.refresh_token_ttl, identity.token_id
        )

    async def ensure_namespace(self, identity: Identity, repository: str) -> None:
        """First push into a personal namespace, or by an admin, creates the namespace."""
        namespace = namespace_of(repository)
        if await self.index.namespace(namespace) is not None:
            return
        identity = await self._full_identity(identity)
        owner = identity.user_id if namespace == identity.name else None
        with contextlib.suppress(Exception):
            await self.index.add_namespace(
                namespace, owner, self.config.default_visibility, time.time()
            )

    # -- audit -----------------------------------------------------------

    def audit(
        self,
        identity: Identity,
        action: str,
        resource: str,
        client: str | None,
        allowed: bool,
        reason: str | None,
    ) -> None:
        self._audit.append(
            AuditRow(
                time.time(),
                identity.name or "<anonymous>",
                action,
                resource,
                client,
                allowed,
                reason,
            )
        )

    async def flush_audit(self) -> None:
        entries, self._audit = self._audit, []
        await self.index.add_audit(entries)
