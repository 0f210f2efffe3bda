"""Running the registry: listen, serve until SIGTERM, drain, close.

``RegistryServer`` is the one way a listening registry is built, for
``aioreg serve`` and for the test suite alike, so tests exercise the same
event loop, runner options and shutdown path users run.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import signal
import socket
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from aioreg import __version__, logformat
from aioreg.api.access_log import JsonAccessLogger
from aioreg.api.app import IN_FLIGHT_KEY, create_app, create_peer_app
from aioreg.api.errors import ErrorBody, ErrorDetail, error_response
from aioreg.api.http import REGISTRY_KEY
from aioreg.api.management.handlers import MANAGEMENT_KEY
from aioreg.api.metrics import METRICS_KEY
from aioreg.config import Config
from aioreg.domain.workers import MAX_SOCKET_PATH, WorkerIdentity
from aioreg.errors import ErrorCode
from aioreg.events.delivery import DeliveryWorker

log = logging.getLogger("aioreg")


# aiohttp's access log fields; the request id links a line to the request's other lines.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf "%{User-Agent}i" req=%{X-Request-Id}o'


# What aiohttp's LineTooLong quotes when the request target is too long: the URI
# itself (C parser) or the request line (pure-Python parser).
REQUEST_TARGET_RE = re.compile(rb"(?:[A-Z]+ )?/")


class ListenError(Exception):
    """The configured address cannot be listened on (taken, unresolvable, not ours)."""


REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s"
)


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The runner ``aioreg serve`` uses: no handler cancellation, bounded headers,
    and every stage of a connection under a timeout."""
    json_log = logformat.effective(config.log.format) == "json"
    return _Runner(
        app,
        config.server.header_read_timeout,
        access_log=log.getChild("access") if config.server.access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
        access_log_class=JsonAccessLogger if json_log else AccessLogger,
        shutdown_timeout=config.server.shutdown_timeout,
        handle_signals=False,
        handler_cancellation=False,
        max_field_size=config.server.client_max_header_bytes,
        max_line_size=config.server.client_max_header_bytes,
        # Idle: a connection that sends nothing, before its first request or between two.
        keepalive_timeout=config.server.idle_timeout,
        # Let the socket fill a deeper buffer while a worker thread hashes and
        # writes the previous batch of an upload.
        read_bufsize=config.storage.write_buffer_bytes,
    )


class _Runner(web.AppRunner):
    """An ``AppRunner`` whose connections are ``_Connection``s."""

    def __init__(self, app: web.Application, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            header_timeout=self._header_timeout,
            **server._kwargs,
        )


class _Server(web.Server):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return _Connection(self, self._header_timeout, loop=self._loop, **self._kwargs)


class _Connection(RequestHandler):
    """aiohttp's connection protocol with a deadline for request heads.

    aiohttp bounds a head's size but not the time it takes to arrive, so a
    client trickling header bytes (slowloris) could hold a connection forever.
    The clock starts at the first byte of a request and stops when the parser
    has the whole head; at the deadline the client gets 408 and is closed.
    Idle time before that first byte is the keep-alive timeout's.
    """

    __slots__ = ("_head_deadline", "_head_timeout", "_last_body")

    def __init__(self, manager: web.Server, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_deadline: asyncio.TimerHandle | None = None
        self._last_body: Any = None  # body stream of the newest parsed request

    def data_received(self, data: bytes) -> None:
        # Past the last request's body (or before any): these bytes begin a new head.
        between = self._last_body is None or self._last_body.is_eof()
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._cancel_head_deadline()
            if self._messages:
                self._last_body = self._messages[-1][1]
        elif between and data and self._head_deadline is None and self.transport is not None:
            self._head_deadline = self._loop.call_later(self._head_timeout, self._head_too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_deadline()
        self._last_body = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request line or header over ``client_max_header_bytes`` is answered in
        the spec's terms (414 URI Too Long, 431 for a header) with its error JSON."""
        if not isinstance(exc, LineTooLong):
            return super().handle_error(request, status, exc, message)
        line, limit = (*exc.args, b"", None)[:2]
        line = bytes(line) if isinstance(line, (bytes, bytearray)) else b""
        if REQUEST_TARGET_RE.match(line):
            status, what = 414, "request URI"
        else:
            status, what = 431, "request header"
        resp = error_response(
            ErrorCode.UNSUPPORTED,
            f"the {what} is longer than the {limit} bytes this registry accepts",
            {"limit": limit},
            status=status,
        )
        resp.force_close()
        return resp

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        transport = self.transport
        if transport is None or self._force_close or self._close:
            return
        if self._request_in_progress or self._messages:
            # Still answering an earlier request: the late head waits its turn.
            self._head_deadline = self._loop.call_later(self._head_timeout, self._head_too_slow)
            return
        log.debug(
            "closing connection from %s: request head incomplete after %gs",
            transport.get_extra_info("peername"),
            self._head_timeout,
        )
        message = f"request head not received within {self._head_timeout:g}s"
        body = msgspec.json.encode(
            ErrorBody(
                [ErrorDetail(ErrorCode.UNKNOWN.value, message, {"timeout": self._head_timeout})]
            )
        )
        transport.write(REQUEST_TIMEOUT % (len(body), body))
        self.force_close()


class RegistryServer:
    """A registry listening on a TCP port: ``start`` → ``stop``.

    As one of ``server.workers`` processes (``worker`` given) it binds the port
    with SO_REUSEPORT next to its peers: the kernel spreads new connections
    across them. It also serves its peers, on a Unix socket, the requests on
    upload sessions it holds (``aioreg.api.forward``).
    """

    def __init__(self, config: Config, worker: WorkerIdentity | None = None) -> None:
        self.config = config
        self.worker = worker
        self.app = create_app(config, worker)
        self.runner = make_runner(self.app, config)
        self._site: web.TCPSite | None = None
        self._peer_runner: web.AppRunner | None = None
        self.webhooks = DeliveryWorker(self.app[REGISTRY_KEY].index, config)
        self.app[METRICS_KEY].observe_webhooks(self.webhooks)
        self.host = config.server.host
        self.port = config.server.port

    @property
    def _delivers_webhooks(self) -> bool:
        """One process sends webhooks (worker 0 of several), so each endpoint's queue
        goes out in order, once."""
        return self.worker is None or self.worker.maintenance

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Open the registry and listen; ``ListenError`` when the address is unusable."""
        if self.worker is not None and len(str(self.worker.socket_path())) > MAX_SOCKET_PATH:
            raise ListenError(
                f"the data directory's path is too long for the workers' Unix sockets "
                f"({self.worker.socket_path()} is over {MAX_SOCKET_PATH} bytes)"
            )
        await self.runner.setup()
        if self.worker is not None:
            # Before the port: peers forward to it as soon as it holds a session.
            self._peer_runner = make_runner(create_peer_app(self.app, self.config), self.config)
            await self._peer_runner.setup()
            await web.UnixSite(self._peer_runner, str(self.worker.socket_path())).start()
        if self._delivers_webhooks:
            # The config file's webhook endpoints, as the file has them now.
            await self.app[MANAGEMENT_KEY].webhooks.sync_config(self.config.webhook)
        site = web.TCPSite(
            self.runner,
            self.host,
            self.port,
            reuse_address=True,
            reuse_port=self.worker is not None,
        )
        try:
            await site.start()
        except (OSError, socket.gaierror) as exc:
            if self._peer_runner is not None:
                await self._peer_runner.cleanup()
            await self.runner.cleanup()
            raise ListenError(
                f"cannot listen on {self.config.server.listen}: {_reason(exc)}"
            ) from exc
        self._site = site
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        if self._delivers_webhooks:
            self.webhooks.start()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the timeout), close."""
        if self._site is None:
            return
        timeout = self.config.server.shutdown_timeout
        await self._site.stop()  # no new connections
        in_flight = self.app[IN_FLIGHT_KEY]
        if not await in_flight.drain(timeout):
            log.warning(
                "%d requests still running after %ss; closing them", in_flight.count, timeout
            )
        if self._peer_runner is not None:
            await self._peer_runner.cleanup()
        await self.webhooks.stop()
        await self.runner.cleanup()
        self._site = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"host name does not resolve ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


async def serve(
    config: Config,
    worker: WorkerIdentity | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting and let in-flight requests finish.

    A worker (``worker`` given) calls ``ready`` once it listens; its supervisor
    says where the server listens, once all of them do.
    """
    loop = asyncio.get_running_loop()
    loop_name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    server = RegistryServer(config, worker)
    await server.start()
    if worker is not None:
        log.info("worker %d (pid %d, %s) serving", worker.number, worker.pid, loop_name)
    else:
        warn_if_open(config)
        log.info(
            "aioreg %s listening on %s (%s), data in %s",
            __version__,
            server.url,
            loop_name,
            config.data_path,
        )
    if ready is not None:
        ready()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "shutting down: draining in-flight requests (up to %ss)", config.server.shutdown_timeout
    )
    await server.stop()
    log.info("stopped")


def warn_if_open(config: Config) -> None:
    if not config.auth.enabled and not _loopback(config.server.host):
        log.warning(
            "!!! AUTHENTICATION IS OFF and %s is reachable beyond this machine: anyone who can "
            "connect may pull, push and delete. Turn it on with [auth] enabled = true, "
            "AIOREG_AUTH=1 or `aioreg serve --auth`. !!!",
            config.server.listen,
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(
    config: Config,
    worker: WorkerIdentity | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """``serve`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, worker, ready))
    else:
        uvloop.run(serve(config, worker, ready))
