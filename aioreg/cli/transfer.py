"""``aioreg export|import``: repositories out of and into a registry as OCI image layouts.

Both run on the data directory next to a running server: the index's write lock and
the upload files' locks keep them and the server (and its GC) out of each other's way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from aioreg.cli.command import Subparsers, bind, print_error
from aioreg.cli.output import Progress
from aioreg.config import Config
from aioreg.domain.registry import Registry
from aioreg.errors import RegistryError
from aioreg.transfer.archive import COPY_BYTES
from aioreg.transfer.export import ExportPlan, plan_export, write_export
from aioreg.transfer.importer import Importer, ImportReport, directory_entries, tar_entries


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
    importing = bind(
        commands.add_parser(
            "import",
            help="store an OCI image layout (tar, tar.zst, tar.gz or directory): blobs verified, "
            "tags last and all at once",
        ),
        _import,
    )
    importing.add_argument(
        "source", metavar="FILE|DIR|-", help="archive, layout directory, or - for stdin"
    )
    importing.add_argument(
        "--repository",
        help="repository for images the layout does not name one for (skopeo's layouts)",
    )
    importing.add_argument(
        "--verify",
        action="store_true",
        help="also hash the archive's copies of blobs this registry already stores",
    )
    importing.add_argument(
        "--dry-run", action="store_true", help="verify and list what would be stored; store nothing"
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
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise  # the reader of stdout left: the entry point ends quietly
        print(f"aioreg: export failed, no archive was written: {exc}", file=sys.stderr)
        return 1
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


def _raise_open_file_limit() -> None:
    """An import holds one locked temp file per new blob until its manifests are stored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _import(config: Config, args: argparse.Namespace) -> int:
    _raise_open_file_limit()
    try:
        report = asyncio.run(_import_async(config, args))
    except RegistryError as exc:
        return print_error(exc)
    except FileNotFoundError as exc:
        print(f"aioreg: {exc.filename}: no such file or directory", file=sys.stderr)
        return 1
    except OSError as exc:  # the data directory's disk (full, read-only): nothing was tagged
        print(f"aioreg: import failed, no tag was moved: {exc}", file=sys.stderr)
        return 1
    for line in describe_import(report):
        print(line)
    return 0 if report.ok else 1


async def _import_async(config: Config, args: argparse.Namespace) -> ImportReport:
    registry = Registry(config)
    registry.store.open()
    await registry.index.open()
    progress = Progress("import", 0) if sys.stderr.isatty() else None
    importer = Importer(
        registry,
        repository=args.repository,
        dry_run=args.dry_run,
        verify=args.verify,
        on_blob=None if progress is None else progress.advance,
    )
    try:
        if args.source == "-":
            report = await importer.run(tar_entries(sys.stdin.buffer))
        elif Path(args.source).is_dir():
            report = await importer.run(directory_entries(Path(args.source)))
        else:
            with open(args.source, "rb", buffering=COPY_BYTES) as f:
                report = await importer.run(tar_entries(f))
    finally:
        await registry.index.close()
    if progress is not None:
        progress.done()
    return report


def describe_import(report: ImportReport) -> list[str]:
    """What an import did (or would do), one line per change, for people."""
    would = "would be " if report.dry_run else ""
    lines = [f"manifest {r}@{d}: {would}stored" for r, d in report.manifests_new]
    lines += [f"tag {r}:{t} -> {d}: {would}set" for r, t, d in report.tags_set]
    lines += [f"tag {r}:{t} -> {d}: unchanged" for r, t, d in report.tags_unchanged]
    lines += [
        f"tag {r}:{t}: REFUSED, the repository's rules protect it; it stays at {current}, "
        f"the archive has {wanted}"
        for r, t, current, wanted in report.tags_refused
    ]
    lines.append(
        f"{'dry run: ' if report.dry_run else ''}{len(report.repositories)} repositories, "
        f"{len(report.manifests_new)} new manifests ({report.manifests_existing} already "
        f"stored), {len(report.tags_set)} tags set, {len(report.tags_refused)} refused; "
        f"blobs: {report.blobs_new} new ({report.bytes_new} bytes), "
        f"{report.blobs_existing} already stored"
    )
    return lines
