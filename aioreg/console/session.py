"""Console sign-in sessions and their CSRF tokens.

A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure when the
request came over TLS), mapped to the identity that signed in and a CSRF token every
state-changing form carries. Sessions live in the index, so every worker process of
``aioreg serve --workers N`` knows them and a restart keeps them; the index holds
only the sha256 of an id, never the id. Each request checks the login still stands
(password unchanged, token not revoked), so revoking a credential ends the sessions
it opened. Anonymous visitors get a session only when a page shows them a form (sign
in, or everything with access control off).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import msgspec
from aiohttp import web

from aioreg.auth.service import ANONYMOUS, AuthService, Identity
from aioreg.index.protocols import IndexProtocol
from aioreg.index.sessions import SessionRow

COOKIE = "aioreg_session"
# Idle sessions end after this long; at most this many are kept (the least recently
# seen go first), so a flood of visitors cannot grow the table without bound.
SESSION_IDLE_SECONDS = 12 * 3600.0
MAX_SESSIONS = 10_000
# A session's last-seen time is written at most this often: browsing is reads only.
SEEN_WRITE_SECONDS = 60.0
# How often the maintenance worker removes idle sessions from the index.
SESSION_EXPIRY_SECONDS = 600.0
CSRF_FIELD = "csrf"
_FLASH = msgspec.json.Decoder(tuple[str, str])


@dataclass
class Session:
    id: str  # the cookie's value; only its hash is stored
    csrf: str
    identity: Identity
    seen: float  # wall clock, as other processes compare it
    has_flash: bool = False  # a value waits to be shown once (``shown_once``)

    @property
    def id_hash(self) -> bytes:
        return hashlib.sha256(self.id.encode()).digest()


def _row(session: Session) -> SessionRow:
    identity = session.identity
    scopes = None
    if identity.scopes is not None:
        scopes = [(namespace, sorted(actions)) for namespace, actions in identity.scopes]
    return SessionRow(
        session.id_hash,
        session.csrf,
        identity.user_id,
        identity.name,
        identity.admin,
        identity.method,
        identity.token_id,
        scopes,
        identity.generation,
        session.seen,
        session.seen,
    )


def _identity(row: SessionRow) -> Identity:
    if row.user_name is None:
        return ANONYMOUS
    scopes = None
    if row.scopes is not None:
        scopes = tuple((namespace, frozenset(actions)) for namespace, actions in row.scopes)
    return Identity(
        row.user_name,
        row.user_id,
        row.is_admin,
        row.method,
        scopes,
        row.token_id,
        generation=row.generation,
    )


def _keystream(session_id: str, nonce: bytes, size: int) -> bytes:
    return hashlib.shake_256(b"aioreg console flash\0" + session_id.encode() + nonce).digest(size)


def _seal(session_id: str, plain: bytes) -> bytes:
    """``plain`` encrypted with a key only the cookie's holder has: the index alone
    never reveals a new token or webhook secret waiting to be shown."""
    nonce = secrets.token_bytes(16)
    stream = _keystream(session_id, nonce, len(plain))
    return nonce + bytes(a ^ b for a, b in zip(plain, stream, strict=True))


def _unseal(session_id: str, sealed: bytes) -> bytes:
    nonce, body = sealed[:16], sealed[16:]
    stream = _keystream(session_id, nonce, len(body))
    return bytes(a ^ b for a, b in zip(body, stream, strict=True))


class Sessions:
    """The sessions in the index, bounded in count and idle time. Anonymous sessions
    (a form's CSRF token before sign-in) are counted apart, so a flood of visitors
    evicts only other anonymous sessions, never a signed-in one."""

    def __init__(
        self,
        index: IndexProtocol,
        idle_seconds: float = SESSION_IDLE_SECONDS,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.index = index
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 100:
            return None
        session = Session(session_id, "", ANONYMOUS, 0.0)
        row = await self.index.sessions.get(session.id_hash)
        if row is None:
            return None
        now = time.time()
        if now - row.seen_at > self.idle_seconds:
            await self.index.sessions.drop(row.id_hash)
            return None
        if now - row.seen_at >= SEEN_WRITE_SECONDS:
            await self.index.sessions.touch(row.id_hash, now)
        session.csrf, session.identity = row.csrf, _identity(row)
        session.seen, session.has_flash = now, row.has_flash
        return session

    def new(self, identity: Identity) -> Session:
        """A session for ``identity``, stored by ``save`` (before its cookie is sent)."""
        return Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), identity, time.time())

    async def save(self, session: Session) -> None:
        await self.index.sessions.create(_row(session), self.max_sessions)

    async def drop(self, session: Session) -> None:
        await self.index.sessions.drop(session.id_hash)

    async def show_once(self, session: Session, kind: str, value: str) -> None:
        sealed = _seal(session.id, msgspec.json.encode((kind, value)))
        await self.index.sessions.set_flash(session.id_hash, sealed)

    async def shown_once(self, session: Session, kind: str) -> str | None:
        """The value ``show_once`` left for this page, gone once read by any page that
        shows such values (``kind`` names the one this page wants)."""
        if not session.has_flash:
            return None
        session.has_flash = False
        sealed = await self.index.sessions.take_flash(session.id_hash)
        if sealed is None:
            return None
        try:
            stored_kind, value = _FLASH.decode(_unseal(session.id, sealed))
        except msgspec.DecodeError:
            return None
        return value if stored_kind == kind else None

    async def expire(self) -> int:
        """Remove idle sessions (a periodic job of the maintenance worker)."""
        return await self.index.sessions.expire(time.time() - self.idle_seconds)


SESSIONS_KEY = web.AppKey("console_sessions", Sessions)
SESSION = web.RequestKey("console_session", Session)
NEW_SESSION = web.RequestKey("console_new_session", Session)


async def current(request: web.Request, service: AuthService) -> Session | None:
    """The request's session, if its cookie names one whose login still stands."""
    sessions = request.app[SESSIONS_KEY]
    session = await sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    if service.enabled and not await service.still_valid(session.identity):
        await sessions.drop(session)
        return None
    return session


def identity_of(request: web.Request) -> Identity:
    session = request.get(SESSION)
    return ANONYMOUS if session is None else session.identity


def csrf_token(request: web.Request) -> str:
    """The CSRF token a form on this page carries; starts a session when there is none
    (stored by ``set_cookie`` before the page is sent)."""
    session = request.get(SESSION)
    if session is None:
        session = request.app[SESSIONS_KEY].new(ANONYMOUS)
        request[SESSION] = session
        request[NEW_SESSION] = session
    return session.csrf


async def sign_in(request: web.Request, identity: Identity) -> Session:
    """A fresh session id for the signed-in identity (never the pre-login one)."""
    sessions = request.app[SESSIONS_KEY]
    old = request.get(SESSION)
    if old is not None:
        await sessions.drop(old)
    session = sessions.new(identity)
    request[SESSION] = session
    request[NEW_SESSION] = session
    return session


async def sign_out(request: web.Request, response: web.StreamResponse) -> None:
    session = request.get(SESSION)
    if session is not None:
        await request.app[SESSIONS_KEY].drop(session)
    request.pop(NEW_SESSION, None)
    response.del_cookie(COOKIE, path="/")


def csrf_ok(request: web.Request, submitted: str | None) -> bool:
    session = request.get(SESSION)
    if session is None or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())


def over_tls(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


async def set_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """Store a session this request started, then send its cookie."""
    session = request.get(NEW_SESSION)
    if session is None:
        return
    await request.app[SESSIONS_KEY].save(session)
    response.set_cookie(
        COOKIE,
        session.id,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=over_tls(request),
    )
