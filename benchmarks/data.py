"""Test content: one large random file on disk, and many mid-sized blobs derived from a
random pool in memory (unique by a per-blob prefix), each with its digest known
before anything is timed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.units import MiB


@dataclass
class BigBlob:
    path: Path
    size: int
    digest: str
    _range_sha: dict[tuple[int, int], str] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path, size: int) -> BigBlob:
        """Write ``size`` random bytes to ``path`` in 16 MiB steps, hashing as it goes."""
        h = hashlib.sha256()
        left = size
        with open(path, "wb") as f:
            while left > 0:
                block = os.urandom(min(16 * MiB, left))
                h.update(block)
                f.write(block)
                left -= len(block)
        return cls(path, size, "sha256:" + h.hexdigest())

    def range_sha256(self, start: int, length: int) -> str:
        """Hex sha256 of ``length`` bytes at ``start``, read back from the file."""
        key = (start, length)
        if key not in self._range_sha:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                f.seek(start)
                left = length
                while left > 0:
                    data = f.read(min(16 * MiB, left))
                    if not data:
                        raise AssertionError(f"{self.path} is shorter than {start + length}")
                    h.update(data)
                    left -= len(data)
            self._range_sha[key] = h.hexdigest()
        return self._range_sha[key]


class BlobPool:
    """Blobs of ``size`` bytes: a 16-byte id followed by a window of a random pool."""

    PREFIX = 16

    def __init__(self, size: int) -> None:
        if size <= self.PREFIX:
            raise ValueError(f"blob size {size} is too small")
        self.size = size
        self._spread = 1 * MiB
        self._pool = os.urandom(size - self.PREFIX + self._spread)
        self._digests: dict[int, str] = {}

    def content(self, k: int) -> bytes:
        offset = (k * 4099 * 16) % self._spread
        body = memoryview(self._pool)[offset : offset + self.size - self.PREFIX]
        return k.to_bytes(self.PREFIX, "big") + body

    def digest(self, k: int) -> str:
        if k not in self._digests:
            self._digests[k] = "sha256:" + hashlib.sha256(self.content(k)).hexdigest()
        return self._digests[k]


class BlobSource:
    """Unique blobs of any size, generated as they are sent: a 32-byte id (from a per-run
    nonce and the blob's number) followed by windows of a 1 MiB random pool. At most one
    chunk exists at a time, so a 10 GiB layer costs as much memory as a 1 MiB one."""

    CHUNK = 1 * MiB
    HEADER = 32

    def __init__(self, nonce: bytes | None = None) -> None:
        self.nonce = nonce or os.urandom(16)
        self._pool = os.urandom(2 * self.CHUNK)

    def header(self, k: int) -> bytes:
        return hashlib.sha256(self.nonce + k.to_bytes(8, "big")).digest()

    def chunks(self, k: int, size: int) -> Iterator[bytes]:
        """The bytes of blob ``k`` of ``size`` bytes, a chunk at a time."""
        head = self.header(k)[:size]
        yield head
        left = size - len(head)
        i = 0
        while left > 0:
            n = min(self.CHUNK, left)
            offset = (k * 7919 + i * 4099) % self.CHUNK
            yield self._pool[offset : offset + n]
            left -= n
            i += 1
