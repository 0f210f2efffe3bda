"""Uploads across worker processes: a request on a session another worker holds goes there.

With ``server.workers`` > 1, consecutive requests of one chunked upload often
arrive on different connections, which the kernel hands to any worker. The
session's running hash (sha256 + xxh3 state, not serialisable) stays in the
worker that opened it (``uploads.owner`` in the index); re-hashing the upload
so far on every chunk that lands elsewhere would make a chunked push quadratic.
So a worker that is not the owner streams the request, body as it arrives and
never buffered, to the owner over the owner's Unix socket
(``<data_dir>/run/w<n>-<pid>.sock``, a directory only this user may enter),
and relays the owner's small answer. The owner serves it with the same
handlers behind no auth (the forwarding worker authorised it) and hashes on.

Only when the owner cannot be reached and is gone (its life lock is free: see
``aioreg.domain.workers``) does the receiving worker adopt the session, once:
it claims the row and rebuilds the writer from disk, re-hashing the
acknowledged bytes (``UploadSessions.adopt``). An owner that is alive but not
answering (draining for shutdown) gets the client a 503 to retry the request.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from aioreg.api.http import body_stream, has_body, registry
from aioreg.api.request_id import REQUEST_ID, REQUEST_ID_HEADER
from aioreg.domain.workers import WorkerIdentity
from aioreg.errors import SessionElsewhere, UnavailableError

log = logging.getLogger("aioreg.forward")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What the owner needs of the client's request besides method, path and body.
REQUEST_HEADERS = ("Content-Type", "Content-Range", "Content-Length")
# Set again by this worker's own response hooks, or per connection.
OWN_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Date",
        "Server",
        "X-Aioreg-Worker",
        REQUEST_ID_HEADER,
        "Docker-Distribution-API-Version",
    )
)
# Forward, adopt, forward again (someone else adopted first)... at most this often.
MAX_ATTEMPTS = 3


class Forwarder:
    """This worker's client to its peers' Unix sockets."""

    def __init__(self, worker: WorkerIdentity) -> None:
        self.worker = worker
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def forward(self, request: web.Request, owner: str) -> web.Response | None:
        """The owner's answer to ``request``; None if the owner cannot be reached
        (nothing of the request was sent: it may be served here instead)."""
        headers = {h: v for h in REQUEST_HEADERS if (v := request.headers.get(h)) is not None}
        if (rid := request.get(REQUEST_ID)) is not None:
            headers[REQUEST_ID_HEADER] = rid
        body = body_stream(request) if has_body(request) else None
        url = URL("http://worker").join(URL(request.raw_path, encoded=True))
        try:
            session = self._session(owner)
            async with session.request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            ) as answer:
                payload = await answer.read()  # headers and at most an error JSON
                relayed = CIMultiDict(
                    (k, v) for k, v in answer.headers.items() if k.lower() not in OWN_HEADERS
                )
                return web.Response(status=answer.status, body=payload, headers=relayed)
        except aiohttp.ClientConnectorError:
            await self._drop(owner)
            return None
        except aiohttp.ClientError as exc:
            # Cut off after the body started: the owner rolls the chunk back.
            log.warning("forwarding to worker %s failed: %s", owner, exc)
            raise UnavailableError(
                "the worker holding this upload went away mid-request; retry the chunk"
            ) from exc

    async def fetch(self, owner: str, path: str, timeout: float) -> bytes | None:
        """A peer's answer body to ``GET path``; None unless it answered 200 in time
        (gone, starting, draining, refusing)."""
        try:
            async with self._session(owner).get(
                URL("http://worker").join(URL(path)),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as answer:
                return await answer.read() if answer.status == 200 else None
        except aiohttp.ClientConnectorError:
            await self._drop(owner)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "asking worker %s for %s failed: %s", owner, path, str(exc) or type(exc).__name__
            )
        return None

    def _session(self, owner: str) -> aiohttp.ClientSession:
        session = self._sessions.get(owner)
        if session is None:
            # A new connection per request: a pooled one could outlive its owner.
            connector = aiohttp.UnixConnector(
                path=str(self.worker.socket_path(owner)), force_close=True
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=10.0),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self._sessions[owner] = session
        return session

    async def _drop(self, owner: str) -> None:
        session = self._sessions.pop(owner, None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        for owner in list(self._sessions):
            await self._drop(owner)


FORWARDER_KEY = web.AppKey("forwarder", Forwarder)


def owned(handler: Handler) -> Handler:
    """An upload-session handler that follows the session to the worker holding it."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        forwarder = request.app.get(FORWARDER_KEY)
        for _ in range(MAX_ATTEMPTS):
            try:
                return await handler(request)
            except SessionElsewhere as exc:
                if forwarder is None:
                    raise  # the owner's side of a forward: never a second hop
                elsewhere = exc
            if elsewhere.owner is not None:
                answer = await forwarder.forward(request, elsewhere.owner)
                if answer is not None:
                    return answer
            try:
                name = request.match_info["name"]
                await registry(request).uploads.adopt(name, elsewhere.upload_id, elsewhere.owner)
            except SessionElsewhere:
                continue  # another worker adopted it first: forward there
        raise UnavailableError("this upload keeps changing workers; retry shortly")

    return wrapper
