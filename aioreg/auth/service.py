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
import math
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioreg.auth.accounts import ROLES, Accounts
from aioreg.auth.passwords import verify_password
from aioreg.auth.scopes import ACTIONS, Access
from aioreg.auth.tokens import (
    InvalidToken,
    TokenSigner,
    load_or_create_key,
    secret_matches,
    split_personal_token,
    token_account,
)
from aioreg.config import AuthConfig
from aioreg.domain.periodic import PeriodicJob
from aioreg.domain.rules import effective_rules, namespace_of
from aioreg.domain.warnings import warn
from aioreg.errors import ErrorCode, RegistryError, TooManyRequestsError
from aioreg.index import AuditRow, TokenRow, UserRow
from aioreg.index.protocols import IndexProtocol

log = logging.getLogger("aioreg.auth")
AUDIT_FLUSH_SECONDS = 1.0
# Seconds a verified password is remembered (a changed password takes effect
# within this time; tokens are checked on every request).
VERIFIED_TTL = 10.0
# A bearer token in the last quarter of its life, and at most this close to its
# end, gets its holder a warning that it will expire (no setting: a client only
# reports it, and fetches a new token when the old one is refused anyway).
EXPIRY_WARNING_SECONDS = 30.0


@dataclass(frozen=True)
class Identity:
    name: str | None  # None: anonymous
    user_id: int | None = None
    admin: bool = False
    method: str = "anonymous"  # "password", "token" or "anonymous"
    scopes: tuple[tuple[str, frozenset[str]], ...] | None = None  # a PAT's limits; None: none
    token_id: str | None = None
    granted: tuple[Access, ...] | None = None  # set for bearer tokens: exactly what was issued
    generation: int | None = None  # the account's credential generation when authenticated

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

    def granted_on(self, repository: str) -> frozenset[str]:
        """What a bearer token's grants allow on ``repository`` (``granted`` must be set)."""
        assert self.granted is not None
        actions: set[str] = set()
        for access in self.granted:
            if access.type == "repository" and access.name == repository:
                actions |= access.actions
        return frozenset(actions)


ANONYMOUS = Identity(None)
CATALOG_ACTIONS = frozenset({"*"})


def _account(identity: Identity) -> tuple[int, int] | None:
    """What an issued token is bound to: the account and its credential generation."""
    if identity.anonymous:
        return None
    assert identity.user_id is not None and identity.generation is not None
    return identity.user_id, identity.generation


class AuthError(RegistryError):
    """Credentials missing or wrong (401 with a challenge)."""

    def __init__(self, message: str, scope: list[Access] | None = None) -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, message)
        self.scope = scope or []


@dataclass
class Throttle:
    """Failed logins per key within a sliding window, in a map of at most ``max_keys`` keys
    (least recently attempted dropped first, so a flood of made-up user names cannot grow
    it). An attempt is counted before its slow check and given back if it succeeds, so
    concurrent attempts cannot all pass the count."""

    window: float
    max_keys: int
    failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def _recent(self, key: str, now: float) -> int:
        stamps = self.failures.get(key)
        if stamps is None:
            return 0
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self.failures[key]
        return len(stamps)

    def reserve(self, limits: dict[str, int]) -> float:
        """Count an attempt against each key (its limit given); 429 if one is at its limit."""
        now = time.monotonic()
        blocked = [key for key, limit in limits.items() if self._recent(key, now) >= limit]
        if blocked:
            retry = max(self.failures[key][0] for key in blocked) + self.window - now
            raise TooManyRequestsError("too many failed logins; try again later", retry)
        for key in limits:
            stamps = self.failures.get(key)
            if stamps is None:
                stamps = self.failures[key] = deque()
            else:
                self.failures.move_to_end(key)
            stamps.append(now)
        while len(self.failures) > self.max_keys:
            self.failures.popitem(last=False)
        return now

    def release(self, keys: dict[str, int], stamp: float) -> None:
        """Give back a reserved attempt that succeeded."""
        for key in keys:
            stamps = self.failures.get(key)
            if stamps is None:
                continue
            with contextlib.suppress(ValueError):
                stamps.remove(stamp)
            if not stamps:
                del self.failures[key]


def _token_scopes(row: TokenRow) -> tuple[tuple[str, frozenset[str]], ...]:
    scopes: list[tuple[str, frozenset[str]]] = []
    for scope in row.scopes:
        actions = scope["actions"]
        assert isinstance(actions, list), "token scopes are stored as action lists"
        scopes.append((str(scope["namespace"]), frozenset(str(a) for a in actions)))
    return tuple(scopes)


def _throttle_key(kind: str, *parts: str) -> str:
    """A short fixed-size key: user names come from clients and may be long."""
    return kind + hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


class AuthService:
    def __init__(self, config: AuthConfig, index: IndexProtocol, data_dir: Path) -> None:
        self.config = config
        self.index = index
        self.accounts = Accounts(index)
        self.data_dir = data_dir
        self.signer: TokenSigner | None = None
        self.throttle = Throttle(config.failed_login_window, config.failed_login_tracked_max)
        self._checking: dict[bytes, asyncio.Future[Identity | None]] = {}
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
        if await self.index.accounts.user_count() > 0:
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
        # Clients sending Basic credentials on every request would pay for argon2
        # each time; a verified pair is remembered briefly, by hash only.
        key = hashlib.sha256(f"{username}\0{secret}".encode()).digest()
        cached = self._verified.get(key)
        if cached is not None and cached[1] > time.monotonic() and await self._current(cached[0]):
            return cached[0]
        # The same credentials already being checked: share that check (a client's
        # parallel requests cost one argon2 and one attempt).
        pending = self._checking.get(key)
        if pending is not None:
            identity = await asyncio.shield(pending)
        else:
            identity = await self._throttled_check(key, username, secret, client)
        if identity is None:
            raise AuthError("invalid username, password or token")
        return identity

    async def _throttled_check(
        self, key: bytes, username: str, secret: str, client: str
    ) -> Identity | None:
        config = self.config
        limits = {
            _throttle_key("pair:", username, client): config.failed_login_limit,
            _throttle_key("user:", username): config.failed_login_user_limit,
            _throttle_key("addr:", client): config.failed_login_address_limit,
        }
        stamp = self.throttle.reserve(limits)
        pending: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._checking[key] = pending
        try:
            identity = await self._check_credentials(username, secret)
        except BaseException as exc:
            self.throttle.release(limits, stamp)  # not a wrong guess: the check itself failed
            interrupted = AuthError("the credential check was interrupted; try again")
            # A cancellation stays with this request; the requests sharing the check go on.
            pending.set_exception(interrupted if isinstance(exc, asyncio.CancelledError) else exc)
            raise
        finally:
            del self._checking[key]
        pending.set_result(identity)
        if identity is None:
            log.info("failed login for %r from %s", username[:64], client)
            return None
        self.throttle.release(limits, stamp)
        if identity.method == "password":  # tokens are cheap to check and must revoke at once
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[key] = (identity, time.monotonic() + VERIFIED_TTL)
        return identity

    async def _current(self, identity: Identity) -> bool:
        """The account behind a remembered login still has the same credentials."""
        if identity.user_id is None:
            return False
        user = await self.index.accounts.account(identity.user_id)
        return user is not None and user.generation == identity.generation

    async def still_valid(self, identity: Identity) -> bool:
        """Whether a signed-in session's login still stands: the same account with the
        same credentials and, for a token login, the token neither revoked nor expired."""
        if identity.anonymous:
            return True
        if not await self._current(identity):
            return False
        if identity.token_id is None:
            return True
        row = await self.index.accounts.token(identity.token_id)
        return (
            row is not None
            and row.revoked_at is None
            and (row.expires_at is None or row.expires_at > time.time())
        )

    async def _check_credentials(self, username: str, secret: str) -> Identity | None:
        pat = split_personal_token(secret)
        if pat is not None:
            return await self._token_identity(*pat)
        user = await self.index.accounts.user(username)
        ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, secret)
        if user is None or not ok:
            return None
        return Identity(user.name, user.id, user.is_admin, "password", generation=user.generation)

    async def _token_identity(self, token_id: str, secret: str) -> Identity | None:
        row = await self.index.accounts.token(token_id)
        if row is None or not secret_matches(row.secret_hash, secret):
            return None
        now = time.time()
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        user = await self.index.accounts.user_by_id(row.user_id)
        if user is None:
            return None
        await self.index.activity.touch_token(token_id, now)
        return Identity(
            user.name,
            user.id,
            user.is_admin,
            "token",
            _token_scopes(row),
            token_id,
            generation=user.generation,
        )

    async def _bound_user(self, claims: dict[str, object], what: str) -> UserRow:
        """The account a token was issued to, if it still exists with the same credentials."""
        account = token_account(claims)
        if account is None:
            raise AuthError(f"this {what} is not bound to an account; log in again")
        user = await self.index.accounts.account(account[0])
        if user is None or user.name != claims["sub"] or user.generation != account[1]:
            raise AuthError(
                f"this {what} is no longer valid: its user was removed or changed password"
            )
        return user

    async def bearer(self, token: str) -> Identity:
        """A bearer JWT's holder; 401 once its account is gone or its password changed."""
        assert self.signer is not None
        try:
            claims = self.signer.verify(token)
        except InvalidToken as exc:
            raise AuthError(f"invalid token: {exc}") from None
        _warn_if_expiring(claims)
        granted = tuple(
            Access(str(a["type"]), str(a["name"]), frozenset(a["actions"]))
            for a in claims.get("access", [])
        )
        method = str(claims.get("amr", "token"))
        if not claims["sub"]:
            return Identity(None, method=method, granted=granted)
        user = await self._bound_user(claims, "token")
        return Identity(
            user.name,
            user.id,
            user.is_admin,
            method,
            granted=granted,
            generation=user.generation,
        )

    async def refresh(self, refresh_token: str) -> Identity:
        """The identity behind a refresh token, checked again: the same account with the
        same credentials, and its access token (if any) neither revoked nor expired."""
        assert self.signer is not None
        try:
            claims = self.signer.verify(refresh_token, kind="refresh")
        except InvalidToken as exc:
            raise AuthError(f"invalid refresh token: {exc}") from None
        user = await self._bound_user(claims, "refresh token")
        method, scopes = str(claims.get("amr", "password")), None
        token_id = claims.get("tid") or None
        if token_id:
            row = await self.index.accounts.token(token_id)
            if row is None or row.revoked_at is not None:
                raise AuthError("the access token behind this refresh token was revoked")
            if row.expires_at is not None and row.expires_at <= time.time():
                raise AuthError("the access token behind this refresh token expired")
            method, scopes = "token", _token_scopes(row)
        return Identity(
            user.name, user.id, user.is_admin, method, scopes, token_id, generation=user.generation
        )

    # -- authorization ---------------------------------------------------

    async def _full_identity(self, identity: Identity) -> Identity:
        """A bearer identity with its user's current standing (for permission checks)."""
        if identity.anonymous or identity.user_id is not None:
            return identity
        user: UserRow | None = await self.index.accounts.user(identity.name or "")
        if user is None:
            return ANONYMOUS
        return Identity(user.name, user.id, user.is_admin, identity.method)

    async def permitted(self, identity: Identity, repository: str) -> tuple[frozenset[str], str]:
        """Actions the identity may take on a repository, and why not the others."""
        identity = await self._full_identity(identity)
        namespace_name = namespace_of(repository)
        namespace = await self.index.accounts.namespace(namespace_name)
        repo_visibility, repo_rules = await self.index.accounts.repository_settings(repository)
        visibility = repo_visibility or (
            namespace.visibility if namespace else self.config.default_visibility
        )
        rules = effective_rules(namespace.rules if namespace else {}, repo_rules)
        role = None
        if identity.user_id is not None and namespace is not None:
            role = await self.index.accounts.role(namespace_name, identity.user_id)
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
                # Any user may list the catalog; it shows what the holder may pull.
                allowed = frozenset() if identity.anonymous else CATALOG_ACTIONS
                granted.append(Access(access.type, access.name, access.actions & allowed))
        return granted

    def issue(self, identity: Identity, access: list[Access]) -> tuple[str, float]:
        assert self.signer is not None
        return self.signer.access_token(
            identity.name or "", access, identity.method, self.config.token_ttl, _account(identity)
        )

    def issue_refresh(self, identity: Identity) -> str:
        assert self.signer is not None and identity.name is not None
        account = _account(identity)
        assert account is not None
        return self.signer.refresh_token(
            identity.name,
            identity.method,
            self.config.refresh_token_ttl,
            identity.token_id,
            account,
        )

    async def ensure_namespace(self, identity: Identity, repository: str) -> None:
        """First push into a personal namespace, or by an admin, creates the namespace."""
        namespace = namespace_of(repository)
        if await self.index.accounts.namespace(namespace) is not None:
            return
        identity = await self._full_identity(identity)
        owner = identity.user_id if namespace == identity.name else None
        with contextlib.suppress(Exception):
            await self.index.accounts.add_namespace(
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
        await self.index.accounts.add_audit(entries)

    # -- a credential's scope, on every API --------------------------------

    def registry_wide(self, identity: Identity) -> bool:
        """Whether a credential's scope covers the whole registry (not one namespace).

        A password login's does. A personal access token's only when scoped
        ``*:pull,push,delete``. A JWT's only when it was issued to a password
        login with the registry scope ``registry:catalog:*``; one exchanged for a
        personal access token never is (it cannot tell that token's scope).
        """
        if identity.anonymous:
            return False
        if identity.granted is not None:
            return identity.method == "password" and any(
                access.type == "registry" and access.name == "catalog"
                for access in identity.granted
            )
        return identity.scope_allows("*") == frozenset(ACTIONS)

    async def effective_actions(
        self, identity: Identity, repository: str
    ) -> tuple[frozenset[str], str]:
        """The holder's rights on a repository intersected with the credential's scope.

        A PAT's scope is applied by ``permitted``; a JWT's is its repository
        grants (a registry scope grants no repository actions, as on ``/v2``).
        """
        allowed, why = await self.permitted(identity, repository)
        if identity.granted is None:
            return allowed, why
        scoped = identity.granted_on(repository)
        if allowed - scoped:
            why = f"this token's scope does not cover those actions on {repository}"
        return allowed & scoped, why

    async def listable(self, identity: Identity, repository: str) -> bool:
        """Whether listings (catalog, search) show a repository to this credential:
        pullable under its scope, or by its holder when the scope is registry-wide."""
        if self.registry_wide(identity):
            allowed, _ = await self.permitted(identity, repository)
        else:
            allowed, _ = await self.effective_actions(identity, repository)
        return "pull" in allowed

    async def registry_admin(self, identity: Identity) -> bool:
        """Registry-wide operations need an admin whose credential is registry-wide."""
        return self.registry_wide(identity) and (await self._full_identity(identity)).admin

    async def reaches_namespace(self, identity: Identity, namespace: str) -> bool:
        """Namespace-wide reads (usage): a member, with a credential scoped to reach it."""
        if await self.registry_admin(identity):
            return True
        holder = await self._full_identity(identity)
        if holder.anonymous:
            return False
        member = (
            holder.admin
            or holder.name == namespace
            or (
                holder.user_id is not None
                and await self.index.accounts.role(namespace, holder.user_id) is not None
            )
        )
        if not member or self.registry_wide(identity):
            return member
        if identity.granted is not None:
            return any(
                access.type == "repository"
                and namespace_of(access.name) == namespace
                and "pull" in access.actions
                for access in identity.granted
            )
        return "pull" in identity.scope_allows(namespace)


def _warn_if_expiring(claims: dict[str, Any]) -> None:
    """Warn a bearer token's holder that it is about to expire (spec, "Warnings")."""
    expires, issued = float(claims["exp"]), float(claims["iat"])
    left = expires - time.time()
    if left < min(EXPIRY_WARNING_SECONDS, (expires - issued) / 4):
        warn(f"Your auth token will expire in {max(0, math.ceil(left))} seconds.")
