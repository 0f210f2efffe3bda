"""The SQLite index: one ``Database`` and the query objects over it, one per noun."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aioreg.config import EventsConfig, WebhooksConfig
from aioreg.domain.periodic import PeriodicJob
from aioreg.index.accounts import AccountQueries
from aioreg.index.activity import ActivityQueries
from aioreg.index.blobs import BlobQueries
from aioreg.index.cache import ReadCache, SharedGeneration
from aioreg.index.database import Database
from aioreg.index.gc import GcQueries
from aioreg.index.listings import ListingQueries
from aioreg.index.manifests import ManifestQueries
from aioreg.index.proxies import ProxyQueries
from aioreg.index.repositories import RepositoryQueries
from aioreg.index.retention import RetentionQueries
from aioreg.index.sessions import SessionQueries
from aioreg.index.uploads import UploadQueries
from aioreg.index.usage import UsageQueries
from aioreg.index.webhooks import WebhookQueries

PULL_FLUSH_SECONDS = 1.0


class Index:
    """What repositories, tags, manifests, blob links, sessions and accounts exist.

    Open it before use and close it after: closing writes the batched
    bookkeeping (``activity``) that a running index flushes every
    ``PULL_FLUSH_SECONDS``.
    """

    def __init__(
        self,
        path: Path,
        busy_timeout: float = 10.0,
        *,
        read_cache_bytes: int | None = None,
        history: EventsConfig | None = None,
        shared_generation: SharedGeneration | None = None,
        webhooks: WebhooksConfig | None = None,
    ) -> None:
        self.db = Database(
            path,
            busy_timeout,
            read_cache_bytes=read_cache_bytes,
            history=history,
            shared_generation=shared_generation,
            webhooks=webhooks,
        )
        self.repositories = RepositoryQueries(self.db)
        self.blobs = BlobQueries(self.db)
        self.uploads = UploadQueries(self.db)
        self.manifests = ManifestQueries(self.db)
        self.accounts = AccountQueries(self.db)
        self.activity = ActivityQueries(self.db)
        self.usage = UsageQueries(self.db)
        self.listings = ListingQueries(self.db)
        self.retention = RetentionQueries(self.db)
        self.gc = GcQueries(self.db)
        self.proxies = ProxyQueries(self.db)
        self.webhooks = WebhookQueries(self.db)
        self.sessions = SessionQueries(self.db)
        self._flusher = PeriodicJob("pull flush", PULL_FLUSH_SECONDS, self.activity.flush)

    @property
    def path(self) -> Path:
        return self.db.path

    @property
    def cache(self) -> ReadCache:
        return self.db.cache

    @property
    def schema_version(self) -> int:
        return self.db.schema_version

    def observe_write_waits(self, observer: Callable[[float], None]) -> None:
        """Have ``observer`` called with each write transaction's wait for the lock."""
        self.db.wait_observers.append(observer)

    async def ping(self) -> None:
        """One read on the reader connection; raises when the index cannot be read."""
        await self.db.one("SELECT 1 FROM schema_version LIMIT 1")

    async def open(self) -> None:
        await self.db.open()
        self._flusher.start()

    async def close(self) -> None:
        await self._flusher.stop()
        if self.db.is_open:
            await self.activity.flush()
        await self.db.close()
