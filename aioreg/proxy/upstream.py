"""The HTTP client of one upstream registry: bounded connections, timeouts, and its auth.

Anonymous first; a 401 names how to authenticate (``WWW-Authenticate``):
``Basic`` gets the configured user and password, ``Bearer`` sends us to the
challenge's realm for a token of the challenge's scope (with the credentials,
if any), cached until shortly before it expires. Failures are ``UpstreamError``
carrying the OCI error a client should get when there is no cached copy.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from aioreg.config import ProxyConfig
from aioreg.errors import ErrorCode, RegistryError, TooManyRequestsError, UnavailableError

log = logging.getLogger("aioreg.proxy")
CHALLENGE_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
TOKEN_MAX_BYTES = 1 << 16
# A token is dropped this long before the upstream said it expires.
TOKEN_MARGIN_SECONDS = 10.0
DEFAULT_TOKEN_SECONDS = 60.0


class UpstreamError(Exception):
    """The upstream could not answer; ``error`` is what a client is told without a cache."""

    def __init__(self, error: RegistryError, *, not_found: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.not_found = not_found


class _Token(msgspec.Struct):
    token: str = ""
    access_token: str = ""
    expires_in: float = DEFAULT_TOKEN_SECONDS


class Upstream:
    """One upstream registry; ``request`` is the only way to talk to it."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.base = config.upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expires at)
        self._basic: str | None = None  # the Authorization value of Basic credentials
        self._send_basic = False  # the upstream asked for Basic once: send it every time

    async def open(self) -> None:
        if self.config.username:
            self._basic = aiohttp.encode_basic_auth(self.config.username, self.config.secret())
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.read_timeout,
            ),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def repository(self, local: str) -> str:
        """The upstream name of a local repository path (below the proxy's namespace).

        The prefix applies to one-component names only, as Docker Hub's implicit
        ``library/`` does: ``alpine`` is ``library/alpine``, ``grafana/loki`` stays.
        """
        prefix = self.config.upstream_prefix
        return f"{prefix}/{local}" if prefix and "/" not in local else local

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, repository: str, path: str, accept: str | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``method /v2/<repository>/<path>`` with auth; yields a 2xx response.

        404 raises ``UpstreamError(not_found=True)``; 429 and other failures raise
        ``UpstreamError`` with TOOMANYREQUESTS (the upstream's Retry-After) or UNAVAILABLE.
        """
        assert self._session is not None, "Upstream.open() first"
        url = f"{self.base}/v2/{repository}/{path}"
        scope = f"repository:{repository}:pull"
        headers = {"Accept": accept} if accept else {}
        try:
            for attempt in range(2):
                auth = self._authorization(scope)
                if auth:
                    headers["Authorization"] = auth
                async with self._session.request(method, url, headers=headers) as response:
                    if response.status == 401 and attempt == 0:
                        challenge = response.headers.get("WWW-Authenticate", "")
                        if await self._answer(challenge, scope):
                            continue
                    self._raise_for(response, f"{repository}/{path}")
                    yield response
                    return
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamError(
                UnavailableError(f"upstream {self.base} is unreachable: {exc!r}"[:300], 5.0)
            ) from exc

    def _raise_for(self, response: aiohttp.ClientResponse, what: str) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        if status == 404:
            raise UpstreamError(
                RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"{what} is not upstream"),
                not_found=True,
            )
        if status == 429:
            retry_after = _seconds(response.headers.get("Retry-After"))
            raise UpstreamError(
                TooManyRequestsError(f"upstream {self.base} is rate limiting us", retry_after)
            )
        if status in (401, 403):
            raise UpstreamError(
                RegistryError(ErrorCode.UNAVAILABLE, f"upstream {self.base} refused access")
            )
        raise UpstreamError(UnavailableError(f"upstream {self.base} answered {status}", 5.0))

    def _authorization(self, scope: str) -> str | None:
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        if self._send_basic and self._basic is not None:
            return self._basic
        return None

    async def _answer(self, challenge: str, scope: str) -> bool:
        """Get what the challenge asks for; False when there is nothing to retry with."""
        kind, _, params_text = challenge.partition(" ")
        if kind.lower() == "basic":
            if self._basic is None:
                return False
            if self._basic is None or self._send_basic:
                return False
            self._send_basic = True
            return True
        if kind.lower() != "bearer":
            return False
        params = dict(CHALLENGE_PARAM_RE.findall(params_text))
        realm = params.get("realm")
        if not realm:
            return False
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        assert self._session is not None
        headers = {"Authorization": self._basic} if self._basic else {}
        async with self._session.get(realm, params=query, headers=headers) as response:
            if response.status != 200:
                log.warning("upstream token endpoint %s answered %d", realm, response.status)
                return False
            body = await response.content.read(TOKEN_MAX_BYTES)
        try:
            answer = msgspec.json.decode(body, type=_Token)
        except msgspec.DecodeError:
            return False
        token = answer.token or answer.access_token
        if not token:
            return False
        lifetime = max(answer.expires_in - TOKEN_MARGIN_SECONDS, 1.0)
        self._tokens[scope] = (token, time.monotonic() + lifetime)
        return True


def _seconds(value: str | None) -> float:
    """Retry-After in seconds (a date or garbage reads as 1 s)."""
    try:
        return max(float(value or "1"), 0.0)
    except ValueError:
        return 1.0
