"""Hot index lookups (manifests by tag and digest, blob links, namespace settings) served
from memory, within a byte budget.

Entries are dropped whenever the index changes: this process's own commits
invalidate at once, and commits by other processes (the CLI) are noticed
through SQLite's ``data_version``, checked at most every ``CHECK_INTERVAL``.
Worker processes of one server (``server.workers``) must see each other's
commits at once (a tag pushed to one is pulled from another the next moment):
each bumps its slot of a ``SharedGeneration`` after every commit that changes
cached reads, and every lookup compares those counters (a read of shared
memory, no system call) before trusting an entry.

The budget counts manifest bodies, which dominate, plus a flat estimate per
entry; the least recently used entries go first. A body is held once however
many entries (tags, the digest itself, other repositories) lead to it: bodies
are content-addressed, so equal digests are equal bytes.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

from aioreg.index.rows import ManifestRow

CHECK_INTERVAL = 0.25
ENTRY_BYTES = 512  # key, record and bookkeeping of one entry, besides a manifest body


SLOT = struct.Struct("Q")


class SharedGeneration:
    """One counter per worker in a small file mapped by all of them.

    A worker only ever writes its own slot (so no increment is lost), and only
    after the commit it announces: a peer that sees the new value reads the
    new rows. Between the commit and the bump the peer may still serve the old
    entry, but the committing request has not been answered yet.
    """

    def __init__(self, path: Path, slot: int, slots: int) -> None:
        size = SLOT.size * max(slots, slot + 1)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zero-filled; growing it twice is harmless
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._offset = SLOT.size * slot

    def bump(self) -> None:
        (value,) = SLOT.unpack_from(self._map, self._offset)
        SLOT.pack_into(self._map, self._offset, value + 1)

    def snapshot(self) -> bytes:
        return self._map[:]

    def close(self) -> None:
        self._map.close()


class ReadCache:
    def __init__(
        self,
        data_version: Callable[[], Awaitable[int]],
        max_bytes: int,
        shared: SharedGeneration | None = None,
    ) -> None:
        self._data_version = data_version
        self._shared = shared
        self._shared_seen = b"" if shared is None else shared.snapshot()
        self.max_bytes = max_bytes
        self.bytes = 0  # what the entries and shared bodies are accounted at
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()  # least recently used first
        self._bodies: dict[str, tuple[bytes, int]] = {}  # digest -> (body, entries using it)
        self._generation = 0
        self._seen_version: int | None = None
        self._checked_at = 0.0

    def invalidate(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._bodies.clear()
        self.bytes = 0

    def committed(self) -> None:
        """This process committed a change to cached reads: drop them, and tell the peers."""
        self.invalidate()
        if self._shared is not None:
            # No await between the two: nothing was loaded since the line above.
            self._shared.bump()
            self._shared_seen = self._shared.snapshot()

    def _peers_committed(self) -> bool:
        return self._shared is not None and self._shared.snapshot() != self._shared_seen

    def seen(self, version: int, *, invalidate: bool) -> None:
        """The index is at ``version``; ``invalidate`` unless every change up to it is known
        to leave cached reads as they are."""
        if invalidate:
            self.invalidate()
        self._seen_version = version

    async def _notice_other_writers(self) -> None:
        if self._peers_committed():
            assert self._shared is not None
            self._shared_seen = self._shared.snapshot()
            self.invalidate()
        now = time.monotonic()
        if now - self._checked_at < CHECK_INTERVAL:
            return
        self._checked_at = now
        version = await self._data_version()
        if version != self._seen_version:
            self._seen_version = version
            self.invalidate()

    async def get(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        await self._notice_other_writers()
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        generation = self._generation
        value = await load()
        # A write during the load (here or by a peer worker) may have changed what it
        # read: serve it, keep nothing.
        if (
            generation == self._generation
            and key not in self._entries
            and not self._peers_committed()
        ):
            value = self._store(key, value)
        return value

    def _store(self, key: Hashable, value: Any) -> Any:
        body = value.body if isinstance(value, ManifestRow) else None
        shared = None if body is None else self._bodies.get(value.digest)
        adding = ENTRY_BYTES + (len(body) if body is not None and shared is None else 0)
        if adding > self.max_bytes:
            return value  # larger than the whole budget (or the cache is off)
        if shared is not None:
            value = dataclasses.replace(value, body=shared[0])
            self._bodies[value.digest] = (shared[0], shared[1] + 1)
        elif body is not None:
            self._bodies[value.digest] = (body, 1)
            self.bytes += len(body)
        self._entries[key] = value
        self.bytes += ENTRY_BYTES
        while self.bytes > self.max_bytes:
            self._evict()
        return value

    def _evict(self) -> None:
        _, value = self._entries.popitem(last=False)
        self.bytes -= ENTRY_BYTES
        if isinstance(value, ManifestRow):
            body, users = self._bodies[value.digest]
            if users > 1:
                self._bodies[value.digest] = (body, users - 1)
            else:
                del self._bodies[value.digest]
                self.bytes -= len(body)
