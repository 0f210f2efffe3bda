"""A backup as one zstd-compressed tar stream (``--zstd``), written and read sequentially.

Members in this order: ``backup.json`` first (so reading the manifest of a base
costs one small member), ``index.db``, the extra files, then ``blobs/...``.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import IO

import zstandard

from aioreg.backup.errors import BackupError
from aioreg.backup.files import Reader

DEFAULT_LEVEL = 3


class ArchiveWriter:
    """Members appended to ``path`` as a PAX tar inside one zstd frame (all cores compress)."""

    def __init__(self, path: Path, level: int = DEFAULT_LEVEL) -> None:
        # The index holds password hashes: the archive is for this user alone.
        self._file = open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")  # noqa: SIM115 - closed in close()
        self._zstd = zstandard.ZstdCompressor(level=level, threads=-1).stream_writer(
            self._file, closefd=False
        )
        self._tar = tarfile.open(fileobj=self._zstd, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def add_file(self, name: str, path: Path, size: int | None = None) -> bool:
        """Append a file; False (nothing appended) if it is gone or not ``size`` bytes."""
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return False
        with f:
            actual = os.fstat(f.fileno()).st_size
            if size is not None and actual != size:
                return False
            self._tar.addfile(self._info(name, actual), f)
        return True

    def close(self) -> None:
        """End the tar and the zstd frame and make the file durable."""
        self._tar.close()
        self._zstd.close()  # type: ignore[no-untyped-call]
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._zstd.close()  # type: ignore[no-untyped-call]
        self._file.close()

    @staticmethod
    def _info(name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o600
        info.mtime = int(time.time())
        return info


def members(path: Path) -> Generator[tuple[str, Reader], None, None]:
    """(name, reader) of each regular file in the archive, in order; a reader is valid
    only until the next member. A damaged archive raises ``BackupError``."""
    try:
        with open(path, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    yield member.name, _Checked(extracted, path)
    except DAMAGED as exc:
        raise damaged(path, exc) from None


DAMAGED = (tarfile.TarError, zstandard.ZstdError, EOFError)


def damaged(path: Path, exc: BaseException) -> BackupError:
    return BackupError(f"archive {path} is damaged or truncated: {exc}")


class _Checked:
    """A member's reader whose read errors (a truncated or corrupt stream, found while
    the caller reads) say which archive is damaged."""

    def __init__(self, reader: IO[bytes], path: Path) -> None:
        self._reader = reader
        self._path = path

    def read(self, size: int = -1) -> bytes:
        try:
            return self._reader.read(size)
        except DAMAGED as exc:
            raise damaged(self._path, exc) from None


def is_archive(path: Path) -> bool:
    return path.is_file()
