"""Command line: ``aioreg serve|scrub|check``, accounts and repository lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from aioreg import __version__, admin, lifecycle_cli
from aioreg.config import Config, ConfigError, load_config
from aioreg.maintenance import check, open_parts, scrub
from aioreg.progress import Progress
from aioreg.server import ListenError, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aioreg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aioreg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the registry")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides config)")
    serve.add_argument(
        "--auth", action="store_true", help="turn on access control (same as [auth] enabled)"
    )
    scrub_cmd = commands.add_parser(
        "scrub", help="verify every blob's bytes; quarantine corrupt or missing ones"
    )
    scrub_cmd.add_argument(
        "--full", action="store_true", help="recompute sha256 (default: compare stored xxh3-128)"
    )
    check_cmd = commands.add_parser(
        "check", help="reconcile index and disk, repairing what is safe to repair"
    )
    check_cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    for command in (
        serve,
        scrub_cmd,
        check_cmd,
        *admin.add_parsers(commands),
        *lifecycle_cli.add_parsers(commands),
    ):
        command.add_argument(
            "--config", help="TOML config file (default: $AIOREG_CONFIG or built-in)"
        )
        command.add_argument("--data", help="data directory (overrides config)")
        command.add_argument(
            "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
        )
    return parser


def _cli_overrides(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    if getattr(args, "listen", None):
        overrides.setdefault("server", {})["listen"] = args.listen
    if args.data:
        overrides.setdefault("storage", {})["data_dir"] = args.data
    if getattr(args, "auth", False):
        overrides.setdefault("auth", {})["enabled"] = True
    return overrides


async def _scrub(config: Config, full: bool) -> int:
    index, store = open_parts(config.data_path)
    await index.open()
    try:
        count, total = await index.blob_totals()
        progress = Progress("scrub" + (" (sha256)" if full else " (xxh3)"), count, total)
        report = await scrub(index, store, full=full, on_blob=progress.advance)
        progress.done()
    finally:
        await index.close()
    for digest in report.corrupt:
        print(f"corrupt, quarantined: {digest}")
    for digest in report.missing:
        print(f"missing, quarantined: {digest}")
    for digest in report.restored:
        print(f"missing, restored from an interrupted GC's trash: {digest}")
    print(
        f"checked {report.checked} blobs ({report.bytes} bytes): "
        f"{len(report.corrupt)} corrupt, {len(report.missing)} missing"
    )
    return 1 if report.corrupt or report.missing else 0


async def _check(config: Config, dry_run: bool) -> int:
    index, store = open_parts(config.data_path)
    await index.open()
    try:
        report = await check(index, store, grace=config.gc.grace_period, repair=not dry_run)
    finally:
        await index.close()
    for line in report.actions:
        print(line)
    for line in report.problems:
        print(f"problem: {line}")
    if not report.actions and not report.problems:
        print("index and disk agree")
    return 1 if dry_run and report.actions else 0


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
        try:
            run(config)
        except ListenError as exc:
            print(f"aioreg: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "scrub":
        return asyncio.run(_scrub(config, args.full))
    if args.command == "check":
        return asyncio.run(_check(config, args.dry_run))
    if args.command in lifecycle_cli.COMMANDS:
        return asyncio.run(lifecycle_cli.run(config, args))
    return asyncio.run(admin.run(config, args))
