"""Command line: ``aioreg serve``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from aioreg import __version__
from aioreg.app import IN_FLIGHT_KEY, create_app
from aioreg.config import Config, ConfigError, load_config

log = logging.getLogger("aioreg")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aioreg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aioreg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the registry")
    serve.add_argument("--config", help="TOML config file (default: $AIOREG_CONFIG or built-in)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides config)")
    serve.add_argument("--data", help="data directory (overrides config)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _cli_overrides(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    if args.listen:
        overrides.setdefault("server", {})["listen"] = args.listen
    if args.data:
        overrides.setdefault("storage", {})["data_dir"] = args.data
    return overrides


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
    )
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
    await site.start()
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


def _run(config: Config) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config, overrides=_cli_overrides(args))
    except ConfigError as exc:
        print(f"aioreg: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        _run(config)
    return 0
