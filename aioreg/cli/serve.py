"""``aioreg serve``: run the registry in the foreground."""

from __future__ import annotations

import argparse
import sys

from aioreg import logformat
from aioreg.api.server import ListenError, run
from aioreg.api.supervisor import supervise
from aioreg.cli.command import Subparsers, bind
from aioreg.config import LOG_FORMATS, Config


def add_parsers(commands: Subparsers) -> None:
    serve = bind(commands.add_parser("serve", help="run the registry"), _serve)
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides config)")
    serve.add_argument(
        "--auth", action="store_true", help="turn on access control (same as [auth] enabled)"
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="plain lines, one JSON object per line, or auto: plain on a terminal "
        "(overrides [log] format)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port and the index (server.workers)",
    )


def _serve(config: Config, args: argparse.Namespace) -> int:
    logformat.install(config.log.format)
    try:
        if config.server.workers > 1:
            return supervise(config)
        run(config)
    except ListenError as exc:
        print(f"aioreg: {exc}", file=sys.stderr)
        return 1
    return 0
