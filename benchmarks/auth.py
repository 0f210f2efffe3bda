"""Credentials for load-testing a registry that wants them: HTTP Basic, a fixed bearer
token, or Docker's token flow (follow the ``WWW-Authenticate: Bearer`` challenge to its
realm, ask for the scope each repository needs, keep each token until it expires).

It is an aiohttp client middleware, so :class:`benchmarks.client.Client` stays unaware
of it. Tokens are fetched *before* a request that needs a new scope is sent, because an
upload's streamed body cannot be sent twice; a 401 that still happens (a token revoked or
narrower than asked) is answered by following its challenge and retrying once when the
body can be replayed.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, payload
from yarl import URL

_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
# /v2/<name>/<what>: the name is everything before the last route word.
_REPO_PATH = re.compile(r"^/v2/(.+?)/(?:blobs/|manifests/|tags/list|referrers/)")
EXPIRY_MARGIN = 30.0  # seconds before a token's end that it is replaced
DEFAULT_TOKEN_SECONDS = 60  # the distribution spec's default when expires_in is missing


class AuthError(RuntimeError):
    """The registry or its token realm refused the credentials: the run cannot go on."""


@dataclass(frozen=True)
class Credentials:
    user: str | None = None
    password: str | None = None
    token: str | None = None  # a bearer token used as is

    def basic(self) -> str | None:
        if self.user is None:
            return None
        raw = f"{self.user}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m[1].lower(): (m[2].replace('\\"', '"').replace("\\\\", "\\") if m[2] else m[3])
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


def needed_scope(method: str, path: str) -> str | None:
    """The token scope a registry request needs, from its method and path."""
    if path.startswith("/v2/_catalog"):
        return "registry:catalog:*"
    match = _REPO_PATH.match(path)
    if match is None:
        return None
    if method in ("GET", "HEAD"):
        actions = "pull"
    elif method == "DELETE":
        actions = "delete"
    else:
        actions = "pull,push"
    return f"repository:{match[1]}:{actions}"


def _covers(granted: str, wanted: str) -> bool:
    """Whether a token asked for ``granted`` also serves ``wanted`` (same resource)."""
    g_res, _, g_actions = granted.rpartition(":")
    w_res, _, w_actions = wanted.rpartition(":")
    return g_res == w_res and set(w_actions.split(",")) <= set(g_actions.split(","))


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class RegistryAuth:
    """What one target wants, found by :meth:`discover`, and the tokens it handed out."""

    base: URL
    credentials: Credentials
    mode: str = "none"  # none | basic | bearer (fixed token) | token (the token flow)
    realm: str = ""
    service: str = ""
    tokens: dict[str, _Token] = field(default_factory=dict)
    fetched: int = 0  # token requests made (shown in the results)
    _pending: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None

    async def discover(self, session: aiohttp.ClientSession) -> None:
        """``GET /v2/`` without credentials: 200 needs none, 401 says how to send them."""
        self._session = session
        if self.credentials.token:
            self.mode = "bearer"
            return
        async with session.get(self.base / "v2/", middlewares=()) as r:
            await r.read()
            challenge = r.headers.get("WWW-Authenticate", "")
            status = r.status
        if status == 200:
            return
        if status != 401:
            raise AuthError(f"GET {self.base}/v2/ answered {status}, not 200 or 401")
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            basic = self.credentials.basic()
            if basic is None:
                raise AuthError(f"{self.base} wants Basic credentials: give --user/--password")
            async with session.get(
                self.base / "v2/", headers={"Authorization": basic}, middlewares=()
            ) as r:
                await r.read()
                if r.status != 200:
                    raise AuthError(f"GET {self.base}/v2/ with Basic credentials: {r.status}")
            self.mode = "basic"
        elif scheme == "bearer" and params.get("realm"):
            self.mode = "token"
            self.realm = params["realm"]
            self.service = params.get("service", "")
        else:
            raise AuthError(f"{self.base}/v2/: unusable challenge {challenge!r}")

    async def token(self, scope: str) -> str:
        """A token for ``scope`` from the cache, else from the realm (one request for all
        the workers that want it at once)."""
        now = time.monotonic()
        for granted, tok in self.tokens.items():
            if tok.expires > now and _covers(granted, scope):
                return tok.value
        pending = self._pending.get(scope)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(scope))
            self._pending[scope] = pending
            pending.add_done_callback(lambda _: self._pending.pop(scope, None))
        return await asyncio.shield(pending)

    async def _fetch(self, scope: str) -> str:
        assert self._session is not None
        params = [("scope", scope)]
        if self.service:
            params.insert(0, ("service", self.service))
        headers = {}
        basic = self.credentials.basic()
        if basic:
            headers["Authorization"] = basic
        started = time.monotonic()
        async with self._session.get(
            URL(self.realm).update_query(params), headers=headers, middlewares=()
        ) as r:
            body: Any = await r.json(content_type=None) if r.status == 200 else await r.text()
            if r.status != 200:
                raise AuthError(f"token realm {self.realm} answered {r.status}: {body!s:.200}")
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"token realm {self.realm}: no token in {str(body)[:200]}")
        seconds = float(body.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        self.fetched += 1
        self.tokens[scope] = _Token(value, started + max(seconds - EXPIRY_MARGIN, seconds / 2))
        return value

    async def _authorization(self, method: str, path: str) -> str | None:
        if self.mode == "basic":
            return self.credentials.basic()
        if self.mode == "bearer":
            return f"Bearer {self.credentials.token}"
        if self.mode == "token":
            scope = needed_scope(method, path)
            if scope is not None:
                return f"Bearer {await self.token(scope)}"
        return None

    async def middleware(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Adds the Authorization header; follows a Bearer challenge once if it can."""
        if req.url.origin() != self.base.origin():
            return await handler(req)
        value = await self._authorization(req.method, req.url.path)
        if value:
            req.headers["Authorization"] = value
        response = await handler(req)
        if response.status != 401 or self.mode != "token" or not _replayable(req):
            return response
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        scope = params.get("scope")
        if scheme != "bearer" or not scope:
            return response
        response.release()
        self.tokens.pop(scope, None)
        req.headers["Authorization"] = f"Bearer {await self.token(scope)}"
        return await handler(req)


def _replayable(req: ClientRequest) -> bool:
    """A request without a body, or with bytes in memory, can be sent again."""
    body = req.body
    return isinstance(body, (bytes, payload.BytesPayload))
