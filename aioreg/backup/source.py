"""A backup on disk, directory or archive: its manifest, its base chain, its files."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from pathlib import Path

from aioreg.backup.archive import members
from aioreg.backup.errors import BackupError
from aioreg.backup.files import Reader
from aioreg.backup.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, BackupManifest, decode


class BackupSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise BackupError(f"no backup at {path}")
        self.archive = path.is_file()
        self.manifest = self._read_manifest()

    def _read_manifest(self) -> BackupManifest:
        if not self.archive:
            try:
                data = (self.path / MANIFEST_NAME).read_bytes()
            except FileNotFoundError:
                raise BackupError(
                    f"{self.path} is not an aioreg backup: no {MANIFEST_NAME}"
                ) from None
            return decode(data, self.path)
        with contextlib.closing(members(self.path)) as found:
            for name, reader in found:
                if name != MANIFEST_NAME:
                    break
                return decode(reader.read(MAX_MANIFEST_BYTES), self.path)
        raise BackupError(f"{self.path} is not an aioreg backup archive: no {MANIFEST_NAME} first")

    def base(self) -> BackupSource | None:
        """The backup this incremental one builds on: looked for next to it (moved
        together), then where it was when this one was taken."""
        ref = self.manifest.base
        if ref is None:
            return None
        for candidate in (self.path.parent / ref.name, Path(ref.path)):
            if candidate.exists():
                base = BackupSource(candidate)
                if base.manifest.id == ref.id:
                    return base
        raise BackupError(
            f"{self.path} is incremental: its base backup {ref.name} (id {ref.id}) "
            f"is neither next to it nor at {ref.path}"
        )

    def chain(self) -> list[BackupSource]:
        """This backup and its bases, newest first."""
        chain = [self]
        while (base := chain[-1].base()) is not None:
            if any(b.manifest.id == base.manifest.id for b in chain):
                raise BackupError(f"{self.path}: the chain of base backups loops")
            chain.append(base)
        return chain

    def files(self, wanted: set[str]) -> Generator[tuple[str, Reader], None, None]:
        """(name, reader) of each wanted file the backup holds (names relative to its root),
        in archive order or sorted; wanted files it lacks are not yielded."""
        if self.archive:
            with contextlib.closing(members(self.path)) as found:
                for name, reader in found:
                    if name in wanted:
                        yield name, reader
            return
        for name in sorted(wanted):
            try:
                f = open(self.path / name, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue
            with f:
                yield name, f
