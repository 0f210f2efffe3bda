"""Command line: ``aioreg serve|scrub|check|backup|restore``, accounts, repository lifecycle,
proxies, webhooks, export and import."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from aioreg import __version__, logcontext
from aioreg.cli import (
    accounts,
    backup,
    cleanup,
    maintenance,
    proxies,
    repositories,
    serve,
    transfer,
    webhooks,
)
from aioreg.cli.command import handler_of
from aioreg.cli.output import until_reader_leaves
from aioreg.config import ConfigError, check_data_dir, load_config

GROUPS = (serve, maintenance, backup, accounts, repositories, proxies, webhooks, cleanup, transfer)
"""Command group modules, in the order ``aioreg --help`` lists their commands."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aioreg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aioreg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(commands)
    for command in _leaves(parser):
        command.add_argument(
            "--config", help="TOML config file (default: $AIOREG_CONFIG or built-in)"
        )
        command.add_argument("--data", help="data directory (overrides config)")
        command.add_argument(
            "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
        )
    return parser


def _leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parsers of runnable commands: those without sub-commands of their own."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield parser
    for action in subcommands:
        for child in action.choices.values():
            yield from _leaves(child)


def _cli_overrides(args: argparse.Namespace) -> dict[str, dict[str, str | bool]]:
    overrides: dict[str, dict[str, str | bool]] = {}
    if getattr(args, "listen", None):
        overrides.setdefault("server", {})["listen"] = args.listen
    if args.data:
        overrides.setdefault("storage", {})["data_dir"] = args.data
    if getattr(args, "workers", None) is not None:
        overrides.setdefault("server", {})["workers"] = str(args.workers)
    if getattr(args, "auth", False):
        overrides.setdefault("auth", {})["enabled"] = True
    if getattr(args, "log_format", None):
        overrides.setdefault("log", {})["format"] = args.log_format
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logcontext.install()
    logging.basicConfig(
        level=args.log_level,
        format=logcontext.LOG_FORMAT,
        stream=sys.stderr,
    )
    # aiosqlite's DEBUG records carry statement parameters (proxy passwords, token hashes).
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        config = load_config(args.config, overrides=_cli_overrides(args))
        check_data_dir(config.data_path)
    except ConfigError as exc:
        print(f"aioreg: {exc}", file=sys.stderr)
        return 2
    return until_reader_leaves(lambda: handler_of(args)(config, args))
