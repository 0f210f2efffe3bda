"""Running the registry: listen, serve until SIGTERM, drain, close.

``RegistryServer`` is the one way a listening registry is built, for
``aioreg serve`` and for the test suite alike, so tests exercise the same
event loop, runner options and shutdown path users run.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket

from aiohttp import web

from aioreg import __version__
from aioreg.app import IN_FLIGHT_KEY, create_app
from aioreg.config import Config

log = logging.getLogger("aioreg")


# aiohttp's access log fields; the request id links a line to the request's other lines.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf "%{User-Agent}i" req=%{X-Request-Id}o'


class ListenError(Exception):
    """The configured address cannot be listened on (taken, unresolvable, not ours)."""


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The runner ``aioreg serve`` uses: no handler cancellation, bounded headers."""
    return web.AppRunner(
        app,
        access_log=log.getChild("access") if config.server.access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=config.server.shutdown_timeout,
        handle_signals=False,
        handler_cancellation=False,
        max_field_size=config.server.client_max_header_bytes,
        max_line_size=config.server.client_max_header_bytes,
        # Let the socket fill a deeper buffer while a worker thread hashes and
        # writes the previous batch of an upload.
        read_bufsize=config.storage.write_buffer_bytes,
    )


class RegistryServer:
    """A registry listening on a TCP port: ``start`` → ``stop``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = create_app(config)
        self.runner = make_runner(self.app, config)
        self._site: web.TCPSite | None = None
        self.host = config.server.host
        self.port = config.server.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Open the registry and listen; ``ListenError`` when the address is unusable."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except (OSError, socket.gaierror) as exc:
            await self.runner.cleanup()
            raise ListenError(
                f"cannot listen on {self.config.server.listen}: {_reason(exc)}"
            ) from exc
        self._site = site
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

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
        await self.runner.cleanup()
        self._site = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"host name does not resolve ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


async def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting and let in-flight requests finish."""
    loop = asyncio.get_running_loop()
    loop_name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    server = RegistryServer(config)
    await server.start()
    if not config.auth.enabled and not _loopback(config.server.host):
        log.warning(
            "!!! AUTHENTICATION IS OFF and %s is reachable beyond this machine: anyone who can "
            "connect may pull, push and delete. Turn it on with [auth] enabled = true, "
            "AIOREG_AUTH=1 or `aioreg serve --auth`. !!!",
            config.server.listen,
        )
    log.info(
        "aioreg %s listening on %s (%s), data in %s",
        __version__,
        server.url,
        loop_name,
        config.data_path,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "shutting down: draining in-flight requests (up to %ss)", config.server.shutdown_timeout
    )
    await server.stop()
    log.info("stopped")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(config: Config) -> None:
    """``serve`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
