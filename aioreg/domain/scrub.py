"""``scrub``: re-verify the bytes of every servable blob, beside a running server.

Corrupt files are quarantined under the index's write lock (the protocol in
``aioreg.domain.check``'s docstring); missing ones are restored from a killed
sweep's trash or quarantined.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import xxhash

from aioreg.domain.reference import Digest
from aioreg.domain.trash import settle_missing
from aioreg.index import BlobRow
from aioreg.index.protocols import IndexProtocol
from aioreg.storage import BlobStorage

READ_BLOCK = 4 << 20


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass
class ScrubReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # missing, found in a killed sweep's trash


def _verify(path: Path, blob: BlobRow, full: bool) -> tuple[bool, int]:
    """Whether the file holds exactly the blob's bytes, and which file (inode) was read."""
    digest = Digest.parse(blob.digest)
    hasher: _Hasher
    if full or blob.xxh3_128 is None:
        hasher = hashlib.new(digest.algorithm)
        expected = digest.hex
    else:
        hasher = xxhash.xxh3_128()
        expected = blob.xxh3_128
    size = 0
    with open(path, "rb") as f:
        inode = os.fstat(f.fileno()).st_ino
        while block := f.read(READ_BLOCK):
            hasher.update(block)
            size += len(block)
    return size == blob.size and hasher.hexdigest() == expected, inode


async def _quarantine_corrupt(
    index: IndexProtocol, store: BlobStorage, digest: Digest, inode: int
) -> bool:
    """Move a corrupt file to ``quarantine/`` and mark its row, unless either changed meanwhile."""
    async with index.blobs.files() as files:
        if not (await files.rows([str(digest)])).get(str(digest)):
            return False  # swept or quarantined meanwhile

        def move() -> bool:
            try:
                if os.stat(store.path(digest)).st_ino != inode:
                    return False  # a different file now: swept and pushed again
            except FileNotFoundError:
                pass
            store.quarantine(digest)
            return True

        if not await asyncio.to_thread(move):
            return False
        await files.quarantine(str(digest))
    return True


async def scrub(
    index: IndexProtocol,
    store: BlobStorage,
    *,
    full: bool = False,
    on_blob: Callable[[int], None] | None = None,
) -> ScrubReport:
    """Verify every servable blob; quarantine the ones whose bytes are wrong or gone.

    Fast mode compares the xxh3-128 recorded at upload; ``full`` recomputes the
    digest itself. A quarantined file moves to ``quarantine/`` so it is never
    served, and a fresh upload of the same digest heals the blob.
    """
    report = ScrubReport()
    loop = asyncio.get_running_loop()
    missing: list[str] = []
    async for blob in index.blobs.servable():
        digest = Digest.parse(blob.digest)
        path = store.path(digest)
        try:
            ok, inode = await loop.run_in_executor(None, _verify, path, blob, full)
        except FileNotFoundError:
            missing.append(blob.digest)
        else:
            if not ok and await _quarantine_corrupt(index, store, digest, inode):
                report.corrupt.append(blob.digest)
        report.checked += 1
        report.bytes += blob.size
        if on_blob is not None:
            on_blob(blob.size)
    report.restored, report.missing = await settle_missing(index, store, missing)
    return report
