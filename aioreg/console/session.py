"""Console sign-in sessions and their CSRF tokens.

A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure when the
request came over TLS), mapped in memory to the identity that signed in and a
CSRF token every state-changing form carries. Sessions live in this process:
a restart signs everyone out, which a console can afford. Each request checks
the login still stands (password unchanged, token not revoked), so revoking a
credential ends the sessions it opened. Anonymous visitors get a session only
when a page shows them a form (sign in, or everything with access control off).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from aioreg.auth.service import ANONYMOUS, AuthService, Identity

COOKIE = "aioreg_session"
# Idle sessions end after this long; at most this many are kept (the least recently
# used go first), so a flood of visitors cannot grow the table without bound.
SESSION_IDLE_SECONDS = 12 * 3600.0
MAX_SESSIONS = 10_000
CSRF_FIELD = "csrf"


@dataclass
class Session:
    id: str
    csrf: str
    identity: Identity
    seen: float
    new_token: str | None = None  # shown on the next page, once (post/redirect/get)
    new_secret: tuple[int, str] | None = None  # (webhook endpoint, its secret), likewise


class Sessions:
    """The table of live sessions, bounded in count and idle time. Anonymous sessions
    (a form's CSRF token before sign-in) have a table of their own, so a flood of
    visitors evicts only other anonymous sessions, never a signed-in one."""

    def __init__(
        self, idle_seconds: float = SESSION_IDLE_SECONDS, max_sessions: int = MAX_SESSIONS
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self._signed_in: OrderedDict[str, Session] = OrderedDict()
        self._anonymous: OrderedDict[str, Session] = OrderedDict()

    def _table(self, identity: Identity) -> OrderedDict[str, Session]:
        return self._anonymous if identity.anonymous else self._signed_in

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._signed_in.get(session_id) or self._anonymous.get(session_id)
        if session is None:
            return None
        table = self._table(session.identity)
        now = time.monotonic()
        if now - session.seen > self.idle_seconds:
            del table[session_id]
            return None
        session.seen = now
        table.move_to_end(session_id)
        return session

    def create(self, identity: Identity) -> Session:
        table = self._table(identity)
        while len(table) >= self.max_sessions:
            table.popitem(last=False)
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), identity, time.monotonic()
        )
        table[session.id] = session
        return session

    def drop(self, session_id: str) -> None:
        self._signed_in.pop(session_id, None)
        self._anonymous.pop(session_id, None)


SESSIONS_KEY = web.AppKey("console_sessions", Sessions)
SESSION = web.RequestKey("console_session", Session)
NEW_SESSION = web.RequestKey("console_new_session", Session)


async def current(request: web.Request, service: AuthService) -> Session | None:
    """The request's session, if its cookie names one whose login still stands."""
    sessions = request.app[SESSIONS_KEY]
    session = sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    if service.enabled and not await service.still_valid(session.identity):
        sessions.drop(session.id)
        return None
    return session


def identity_of(request: web.Request) -> Identity:
    session = request.get(SESSION)
    return ANONYMOUS if session is None else session.identity


def csrf_token(request: web.Request) -> str:
    """The CSRF token a form on this page carries; starts a session when there is none."""
    session = request.get(SESSION)
    if session is None:
        session = request.app[SESSIONS_KEY].create(ANONYMOUS)
        request[SESSION] = session
        request[NEW_SESSION] = session
    return session.csrf


def sign_in(request: web.Request, identity: Identity) -> Session:
    """A fresh session id for the signed-in identity (never the pre-login one)."""
    sessions = request.app[SESSIONS_KEY]
    old = request.get(SESSION)
    if old is not None:
        sessions.drop(old.id)
    session = sessions.create(identity)
    request[SESSION] = session
    request[NEW_SESSION] = session
    return session


def sign_out(request: web.Request, response: web.StreamResponse) -> None:
    session = request.get(SESSION)
    if session is not None:
        request.app[SESSIONS_KEY].drop(session.id)
    response.del_cookie(COOKIE, path="/")


def csrf_ok(request: web.Request, submitted: str | None) -> bool:
    session = request.get(SESSION)
    if session is None or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())


def over_tls(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """Send the cookie of a session this request started."""
    session = request.get(NEW_SESSION)
    if session is None:
        return
    response.set_cookie(
        COOKIE,
        session.id,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=over_tls(request),
    )
