"""``aioreg export|import``: repositories out of and into a registry as OCI image layouts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from aioreg.cli.command import Subparsers, bind, print_error
from aioreg.cli.output import Progress
from aioreg.config import Config
from aioreg.domain.registry import Registry
from aioreg.errors import RegistryError
from aioreg.transfer.export import ExportPlan, plan_export, write_export


def add_parsers(commands: Subparsers) -> None:
    export = bind(
        commands.add_parser(
            "export",
            help="write repositories, tags or artifacts as an OCI image layout (tar, zstd)",
        ),
        _export,
    )
    export.add_argument(
        "selectors",
        nargs="*",
        metavar="NAMESPACE|REPO|REPO:TAG|REPO@DIGEST",
        help="what to export (default: everything); referrers and child manifests come along",
    )
    export.add_argument(
        "-o", "--output", required=True, help="archive to write (.tar.zst; '-' for stdout)"
    )
    export.add_argument(
        "--no-compress",
        action="store_true",
        help="write a plain tar (what 'skopeo copy oci-archive:FILE' reads)",
    )
    export.add_argument("--level", type=int, help="zstd level 1-22 (default: transfer.zstd_level)")
    export.add_argument(
        "--threads", type=int, help="zstd threads, 0: one per core (default: transfer.zstd_threads)"
    )


@contextlib.contextmanager
def _output(target: str) -> Iterator[IO[bytes]]:
    """stdout, or a file that gets its name only once the archive is complete."""
    if target == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    final = Path(target)
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)


def _export(config: Config, args: argparse.Namespace) -> int:
    level = None if args.no_compress else (args.level or config.transfer.zstd_level)
    if level is not None and not 1 <= level <= 22:
        print("aioreg: --level must be 1-22", file=sys.stderr)
        return 2
    threads = config.transfer.zstd_threads if args.threads is None else args.threads
    try:
        plan = asyncio.run(_plan(config, args.selectors))
        progress = (
            Progress("export", plan.files, plan.bytes, unit="files")
            if sys.stderr.isatty()
            else None
        )
        with _output(args.output) as out:
            write_export(
                plan,
                out,
                level=level,
                threads=max(threads, 0),
                on_file=None if progress is None else progress.advance,
            )
        if progress is not None:
            progress.done()
    except RegistryError as exc:
        return print_error(exc)
    if args.output != "-":
        print(
            f"exported {len(plan.index.manifests)} tags and artifacts of "
            f"{len(plan.repositories)} repositories: {plan.files} files, {plan.bytes} bytes "
            f"to {args.output}",
            file=sys.stderr,
        )
    return 0


async def _plan(config: Config, selectors: list[str]) -> ExportPlan:
    registry = Registry(config)
    registry.store.open()
    await registry.index.open()
    try:
        return await plan_export(registry, selectors)
    finally:
        await registry.index.close()
