"""Hot index lookups (manifests by tag, blob links, namespace settings) served from memory.

Entries are dropped whenever the index changes: this process's own commits
invalidate at once, and commits by other processes (the CLI) are noticed
through SQLite's ``data_version``, checked at most every ``CHECK_INTERVAL``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

CHECK_INTERVAL = 0.25
MAX_ENTRIES = 8192


class ReadCache:
    def __init__(self, data_version: Callable[[], Awaitable[int]]) -> None:
        self._data_version = data_version
        self._entries: dict[Hashable, tuple[int, Any]] = {}
        self._generation = 0
        self._seen_version: int | None = None
        self._checked_at = 0.0

    def invalidate(self) -> None:
        self._generation += 1
        self._entries.clear()

    async def _notice_other_writers(self) -> None:
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
        entry = self._entries.get(key)
        if entry is not None and entry[0] == self._generation:
            return entry[1]
        generation = self._generation  # a write during the load makes this entry stale
        value = await load()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (generation, value)
        return value
