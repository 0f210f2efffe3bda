"""``aioreg scrub|check``: verify blob bytes, reconcile index and disk."""

from __future__ import annotations

import argparse
import asyncio

from aioreg.cli.command import Subparsers, bind
from aioreg.cli.output import Progress
from aioreg.config import Config
from aioreg.domain.check import check, open_parts
from aioreg.domain.scrub import scrub


def add_parsers(commands: Subparsers) -> None:
    scrub_cmd = bind(
        commands.add_parser(
            "scrub", help="verify every blob's bytes; quarantine corrupt or missing ones"
        ),
        _scrub,
    )
    scrub_cmd.add_argument(
        "--full", action="store_true", help="recompute sha256 (default: compare stored xxh3-128)"
    )
    check_cmd = bind(
        commands.add_parser(
            "check", help="reconcile index and disk, repairing what is safe to repair"
        ),
        _check,
    )
    check_cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")


def _scrub(config: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_scrub_async(config, args.full))


def _check(config: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_check_async(config, args.dry_run))


async def _scrub_async(config: Config, full: bool) -> int:
    index, store = open_parts(config.data_path)
    await index.open()
    try:
        count, total = await index.blobs.totals()
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


async def _check_async(config: Config, dry_run: bool) -> int:
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
