"""Running the registry: listen, serve until SIGTERM, drain, close."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

from aiohttp import web

from aioreg import __version__
from aioreg.app import IN_FLIGHT_KEY, create_app
from aioreg.config import Config

log = logging.getLogger("aioreg")


async def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting and let in-flight requests finish."""
    try:
        import uvloop  # noqa: F401 - presence checked for the log line only

        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    app = create_app(config)
    runner = web.AppRunner(
        app,
        access_log=log.getChild("access") if config.server.access_log else None,
        shutdown_timeout=config.server.shutdown_timeout,
        handle_signals=False,
        max_field_size=config.server.client_max_header_bytes,
        max_line_size=config.server.client_max_header_bytes,
        # Let the socket fill a deeper buffer while a worker thread hashes and
        # writes the previous batch of an upload.
        read_bufsize=config.storage.write_buffer_bytes,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
    await site.start()
    if not config.auth.enabled and not _loopback(config.server.host):
        log.warning(
            "!!! AUTHENTICATION IS OFF and %s is reachable beyond this machine: anyone who can "
            "connect may pull, push and delete. Turn it on with [auth] enabled = true, "
            "AIOREG_AUTH=1 or `aioreg serve --auth`. !!!",
            config.server.listen,
        )
    log.info(
        "aioreg %s listening on http://%s (%s), data in %s",
        __version__,
        config.server.listen,
        loop_name,
        config.data_path,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    timeout = config.server.shutdown_timeout
    log.info("shutting down: draining in-flight requests (up to %ss)", timeout)
    await site.stop()  # no new connections
    in_flight = app[IN_FLIGHT_KEY]
    if not await in_flight.drain(timeout):
        log.warning("%d requests still running after %ss; closing them", in_flight.count, timeout)
    await runner.cleanup()
    log.info("stopped")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(config: Config) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
