"""``aioreg serve``: run the registry in the foreground."""

from __future__ import annotations

import argparse
import sys

from aioreg.api.server import ListenError, run
from aioreg.cli.command import Subparsers, bind
from aioreg.config import Config


def add_parsers(commands: Subparsers) -> None:
    serve = bind(commands.add_parser("serve", help="run the registry"), _serve)
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides config)")
    serve.add_argument(
        "--auth", action="store_true", help="turn on access control (same as [auth] enabled)"
    )


def _serve(config: Config, args: argparse.Namespace) -> int:
    try:
        run(config)
    except ListenError as exc:
        print(f"aioreg: {exc}", file=sys.stderr)
        return 1
    return 0
