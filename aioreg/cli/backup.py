"""``aioreg backup|restore``: online backups of a data directory, and restoring one."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aioreg.backup.archive import DEFAULT_LEVEL
from aioreg.backup.errors import BackupError
from aioreg.backup.restore import restore
from aioreg.backup.snapshot import take_backup
from aioreg.cli.command import Subparsers, bind
from aioreg.cli.output import Progress
from aioreg.config import Config
from aioreg.units import format_size


def add_parsers(commands: Subparsers) -> None:
    backup = bind(
        commands.add_parser(
            "backup",
            help="back the data directory up while the server runs (index snapshot + blobs)",
        ),
        _backup,
    )
    backup.add_argument("target", type=Path, help="new directory (or archive, with --zstd)")
    backup.add_argument(
        "--since",
        type=Path,
        metavar="PREVIOUS",
        help="incremental: take only blobs PREVIOUS (a backup) and its bases lack",
    )
    backup.add_argument(
        "--zstd", action="store_true", help="write one tar.zst archive instead of a directory"
    )
    backup.add_argument(
        "--level",
        type=int,
        choices=range(1, 23),
        default=DEFAULT_LEVEL,
        metavar="1-22",
        help=f"zstd level (default {DEFAULT_LEVEL})",
    )
    restore_cmd = bind(
        commands.add_parser(
            "restore", help="restore a backup (directory or archive) into an empty --data dir"
        ),
        _restore,
    )
    restore_cmd.add_argument("source", type=Path, help="backup directory or archive")


class _Bar:
    """A progress bar created once the total is known."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Progress | None = None

    def plan(self, blobs: int, size: int) -> None:
        self.bar = Progress(self.label, blobs, size)

    def advance(self, size: int) -> None:
        if self.bar is not None:
            self.bar.advance(size)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.done()


def _backup(config: Config, args: argparse.Namespace) -> int:
    bar = _Bar("backup")
    try:
        manifest = asyncio.run(
            take_backup(
                config.data_path,
                args.target,
                since=args.since,
                zstd=args.zstd,
                level=args.level,
                on_plan=bar.plan,
                on_blob=bar.advance,
            )
        )
    except BackupError as exc:
        print(f"aioreg: {exc.message}", file=sys.stderr)
        return 1
    bar.done()
    counts = manifest.counts
    print(
        f"backup {manifest.id} at {args.target}: {counts.repositories} repositories, "
        f"{counts.tags} tags, {counts.manifests} manifests, {counts.blobs} blobs "
        f"({format_size(counts.bytes)})"
    )
    base = f" (the rest are in {args.since})" if manifest.base is not None else ""
    print(
        f"took {manifest.taken_blobs} blobs ({format_size(manifest.taken_bytes)}), "
        f"{manifest.linked_blobs} of them as hard links{base}"
    )
    for digest in manifest.missing:
        print(f"missing or corrupt on disk, quarantined in the backup: {digest}")
    return 1 if manifest.missing else 0


def _restore(config: Config, args: argparse.Namespace) -> int:
    bar = _Bar("restore")
    try:
        report = restore(args.source, config.data_path, on_plan=bar.plan, on_blob=bar.advance)
    except BackupError as exc:
        print(f"aioreg: {exc.message}", file=sys.stderr)
        return 1
    bar.done()
    for digest in report.corrupt:
        print(f"corrupt in the backup, quarantined: {digest}")
    for digest in report.absent:
        print(f"absent from the backup, quarantined: {digest}")
    for digest in report.missing:
        print(f"not taken when the backup was made, quarantined: {digest}")
    chain = " <- ".join(str(p) for p in report.backups)
    print(
        f"restored {report.blobs} blobs ({format_size(report.bytes)}) from {chain} "
        f"into {config.data_path}"
    )
    return 1 if report.corrupt or report.absent else 0
