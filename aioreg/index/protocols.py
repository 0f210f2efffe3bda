"""What the domain needs from an index, as ``typing.Protocol``s.

``aioreg.index.Index`` (SQLite) is one implementation; another store (PostgreSQL,
say) implements ``IndexProtocol`` with the same rows (``aioreg.index.rows``) and
the same refusals (``aioreg.index.errors``), raised from inside the transaction
they concern so that nothing of a refused change is kept. The storage hooks
(``PlaceFile``, ``FileExists``, ``RemoveFile``) must run while the index holds the
lock a GC sweep takes, so file placement and sweeping never interleave.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from aioreg.config import ProxyConfig
from aioreg.domain.manifest import ParsedManifest
from aioreg.index.blobs import FileExists, PlaceFile
from aioreg.index.gc import RemoveFile
from aioreg.index.proxies import Evicted
from aioreg.index.rows import (
    ArtifactRow,
    AuditRow,
    BlobRow,
    Event,
    GcResult,
    ManifestRow,
    NamespaceRow,
    PullCounts,
    Referrer,
    RepositorySummary,
    StoreTotals,
    TagInfo,
    TokenRow,
    UploadRow,
    Usage,
    UserRow,
)
from aioreg.index.sessions import SessionRow
from aioreg.index.webhooks import (
    AttemptRow,
    DeliveryRow,
    EndpointRow,
    NewEndpoint,
    OutboxEventRow,
)


class BlobFileRows(Protocol):
    """Blob rows read and changed while ``BlobIndex.files`` holds the sweep lock."""

    async def rows(self, digests: Sequence[str]) -> dict[str, bool]: ...

    async def quarantine(self, digest: str, now: float | None = None) -> None: ...


class RepositoryIndex(Protocol):
    """Repository rows: ids, catalog, deletes."""

    async def id(self, name: str) -> int | None: ...

    async def deprecation(self, name: str, tag: str | None = None) -> str | None: ...

    async def tag_deprecations(self, name: str) -> dict[str, str]: ...

    async def set_deprecation(
        self, name: str, message: str | None, tag: str | None = None
    ) -> bool: ...

    async def catalog(self, last: str | None, limit: int) -> tuple[list[str], bool]: ...

    async def in_namespace(self, namespace: str) -> list[str]: ...

    async def namespace_names(self) -> list[str]: ...

    async def delete(self, name: str, actor: str | None = None) -> bool: ...

    async def delete_namespace(
        self, namespace: str, repositories: list[str], actor: str | None = None
    ) -> None: ...


class BlobIndex(Protocol):
    """Blob rows and their links into repositories."""

    async def get(self, digest: str) -> BlobRow | None: ...

    def servable(self, page: int = 500) -> AsyncIterator[BlobRow]: ...

    async def totals(self) -> tuple[int, int]: ...

    async def known_digests(self) -> set[str]: ...

    async def sizes(self, digests: list[str]) -> dict[str, int]: ...

    async def in_repository(self, name: str, digest: str) -> BlobRow | None: ...

    async def link(
        self,
        name: str,
        blob: BlobRow,
        now: float | None = None,
        *,
        ended_upload: str | None = None,
        place_file: PlaceFile | None = None,
        quota_limit: int | None = None,
        adopt: bool = False,
    ) -> None: ...

    async def mount(
        self,
        name: str,
        digest: str,
        source: str | None,
        file_exists: FileExists,
        quota_limit: int | None = None,
        adopt: bool = False,
    ) -> BlobRow | None: ...

    async def unlink(
        self, name: str, digest: str, *, refuse_if_referenced: bool = False
    ) -> bool: ...

    def files(self) -> AbstractAsyncContextManager[BlobFileRows]: ...


class UploadIndex(Protocol):
    """Upload session rows."""

    async def create(
        self,
        upload_id: str,
        name: str,
        now: float,
        client: str | None = None,
        *,
        max_open: int = 0,
        max_open_per_client: int = 0,
        digest_algorithm: str | None = None,
        owner: str | None = None,
    ) -> None: ...

    async def get(self, upload_id: str) -> UploadRow | None: ...

    async def all(self) -> list[UploadRow]: ...

    async def set_offset(self, upload_id: str, committed_bytes: int, now: float) -> None: ...

    async def claim(self, upload_id: str, previous: str | None, owner: str) -> bool: ...

    async def delete(self, upload_id: str) -> None: ...


class ManifestIndex(Protocol):
    """Manifests, their references and tags."""

    async def put(
        self,
        name: str,
        manifest: ParsedManifest,
        body: bytes,
        tags: Sequence[str],
        now: float,
        *,
        protected_tags: Collection[str] = (),
        require_references: bool = True,
        actor: str | None = None,
    ) -> None: ...

    async def put_tags(
        self,
        tags: Sequence[tuple[str, str, str]],
        now: float,
        *,
        protected: Collection[tuple[str, str]] = (),
    ) -> list[tuple[str, str, str]]:
        """(repository, tag, digest) in one transaction; returns the protected ones refused."""
        ...

    async def copy(
        self,
        source: str,
        digest: str,
        target: str,
        tag: str | None,
        now: float,
        quota_limit: int | None = None,
        actor: str | None = None,
    ) -> bool: ...

    async def by_digest(self, name: str, digest: str) -> ManifestRow | None: ...

    async def by_tag(self, name: str, tag: str) -> ManifestRow | None: ...

    async def tags_of(self, name: str, digest: str) -> list[str]: ...

    async def tag_validated_at(self, name: str, tag: str) -> float | None: ...

    async def set_tag_validated(self, name: str, tag: str, when: float) -> None: ...

    async def tags(self, repo_id: int, last: str | None, limit: int) -> tuple[list[str], bool]: ...

    async def delete(self, name: str, digest: str, actor: str | None = None) -> bool: ...

    async def delete_tag(
        self, name: str, tag: str, digest: str | None = None, actor: str | None = None
    ) -> bool: ...

    async def referrers(
        self, repo_id: int, subject: str, artifact_type: str | None
    ) -> list[Referrer]: ...


class AccountIndex(Protocol):
    """Users, tokens, namespaces, members, settings, audit."""

    async def user(self, name: str) -> UserRow | None: ...

    async def user_by_id(self, user_id: int) -> UserRow | None: ...

    async def account(self, user_id: int) -> UserRow | None: ...

    async def users(self) -> list[UserRow]: ...

    async def created(self) -> dict[str, float]: ...

    async def user_count(self) -> int: ...

    async def add_user(
        self, name: str, password_hash: str | None, *, admin: bool, robot: bool, now: float
    ) -> None: ...

    async def set_password(self, name: str, password_hash: str) -> bool: ...

    async def remove_user(self, name: str) -> bool: ...

    async def add_token(
        self,
        token_id: str,
        user_id: int,
        name: str,
        secret_hash: str,
        scopes: list[dict[str, object]],
        expires_at: float | None,
        now: float,
    ) -> None: ...

    async def token(self, token_id: str) -> TokenRow | None: ...

    async def tokens(self, user_id: int | None = None) -> list[TokenRow]: ...

    async def revoke_token(self, token_id: str, now: float) -> bool: ...

    async def namespace(self, name: str) -> NamespaceRow | None: ...

    async def namespaces(self) -> list[NamespaceRow]: ...

    async def add_namespace(
        self, name: str, owner_id: int | None, visibility: str, now: float
    ) -> None: ...

    async def remove_namespace(self, name: str) -> bool: ...

    async def update_namespace(
        self, name: str, visibility: str | None, rules: dict[str, object] | None
    ) -> bool: ...

    async def set_member(self, namespace: str, user_id: int, role: str | None) -> bool: ...

    async def role(self, namespace: str, user_id: int) -> str | None: ...

    async def members(self, namespace: str) -> list[tuple[str, str]]: ...

    async def repository_settings(self, name: str) -> tuple[str | None, dict[str, object]]: ...

    async def set_repository_settings(
        self, name: str, visibility: str | None, rules: dict[str, object] | None
    ) -> None: ...

    async def add_audit(self, entries: list[AuditRow]) -> None: ...

    async def audit_log(self, limit: int = 100) -> list[AuditRow]: ...


class ActivityIndex(Protocol):
    """Batched bookkeeping: pull times, token uses, events."""

    def note_pull(self, manifest: ManifestRow, tag: str | None) -> None: ...

    def note_event(self, event: Event) -> None: ...

    async def touch_token(self, token_id: str, now: float) -> None: ...

    async def flush(self) -> None: ...

    async def pull_times(self, name: str) -> tuple[float | None, float | None]: ...

    async def add_events(self, events: list[Event]) -> None: ...

    async def events(
        self,
        limit: int,
        repository: str | None = None,
        kinds: list[str] | None = None,
        actor: str | None = None,
    ) -> list[Event]: ...

    async def pull_counts(self, name: str) -> PullCounts | None: ...

    async def pull_days(self, name: str, tag: str | None, since_day: int) -> dict[int, int]: ...

    async def registry_pull_days(self, since_day: int) -> dict[int, int]: ...

    async def feed(
        self,
        limit: int,
        *,
        before: int | None = None,
        repositories: list[str] | None = None,
        kinds: list[str] | None = None,
        actor: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Event]: ...


class UsageIndex(Protocol):
    """Per-namespace usage, quotas, usage reports."""

    async def namespace(self, namespace: str) -> int: ...

    async def counted_size(self, namespace: str, digest: str) -> int: ...

    async def quota(self, namespace: str) -> int | None: ...

    async def set_quota(self, namespace: str, quota_bytes: int | None) -> bool: ...

    async def report(
        self, namespace: str | None = None
    ) -> tuple[list[Usage], list[Usage], Usage]: ...

    async def totals(self) -> StoreTotals: ...


class ListingIndex(Protocol):
    """Read-only management listings."""

    async def repository_summaries(self, namespace: str | None) -> list[RepositorySummary]: ...

    async def repository_summary(self, name: str) -> RepositorySummary | None: ...

    async def tag_infos(self, name: str) -> list[TagInfo]: ...

    async def artifacts(self, name: str) -> list[ArtifactRow]: ...

    async def artifact(self, name: str, digest: str) -> ArtifactRow | None: ...

    async def search(self, query: str, limit: int) -> list[tuple[str, str | None, str | None]]: ...

    async def repository_page(
        self,
        namespace: str | None,
        contains: str,
        only: list[str] | None,
        sort: str,
        descending: bool,
        offset: int,
        limit: int,
    ) -> tuple[int, list[RepositorySummary]]: ...

    async def tag_page(
        self, name: str, contains: str, sort: str, descending: bool, offset: int, limit: int
    ) -> tuple[int, list[TagInfo]]: ...

    async def artifact_page(
        self, name: str, offset: int, limit: int
    ) -> tuple[int, list[ArtifactRow]]: ...

    async def artifacts_by_digest(self, name: str, digests: list[str]) -> list[ArtifactRow]: ...

    async def tags_by_digest(
        self, name: str, digests: list[str], per_digest: int
    ) -> dict[str, tuple[int, list[str]]]: ...

    async def referrer_digests(self, name: str, subjects: list[str]) -> dict[str, list[str]]: ...


class RetentionIndex(Protocol):
    """Stored retention policies."""

    async def set_policy(self, target: str, policy: dict[str, object] | None) -> None: ...

    async def policies(self) -> dict[str, dict[str, object]]: ...


class ProxyIndex(Protocol):
    """Proxy definitions added through /api/v1 or the CLI (the config file's are not here)."""

    async def all(self) -> list[ProxyConfig]: ...

    async def add(self, proxy: ProxyConfig, now: float) -> bool: ...

    async def remove(self, namespace: str) -> bool: ...

    async def cached_bytes(self, namespace: str) -> int: ...

    async def evict_oldest(self, namespace: str, keep: Collection[str]) -> Evicted | None: ...


class GcIndex(Protocol):
    """Garbage collection's mark and sweep."""

    async def collect(
        self,
        grace_seconds: float,
        untagged: bool,
        dry_run: bool,
        remove_file: RemoveFile,
        now: float | None = None,
    ) -> GcResult: ...


class WebhookIndex(Protocol):
    """Webhook endpoints, the outbox's events, deliveries and attempts."""

    @property
    def written(self) -> asyncio.Event: ...

    async def add_endpoint(self, endpoint: NewEndpoint, now: float) -> int: ...

    async def sync_config(self, endpoints: Sequence[NewEndpoint], now: float) -> None: ...

    async def endpoints(self) -> list[EndpointRow]: ...

    async def endpoint(self, endpoint_id: int) -> EndpointRow | None: ...

    async def remove_endpoint(self, endpoint_id: int) -> bool: ...

    async def set_enabled(self, endpoint_id: int, enabled: bool) -> bool: ...

    async def undispatched(self, limit: int) -> list[OutboxEventRow]: ...

    async def fan_out(self, targets: dict[int, list[int]], now: float) -> None: ...

    async def pending_count(self) -> int: ...

    async def heads(self) -> list[tuple[int, int, float]]: ...

    async def delivery(self, delivery_id: int) -> DeliveryRow | None: ...

    async def deliveries(
        self, endpoint_id: int, limit: int, state: str | None = None
    ) -> list[DeliveryRow]: ...

    async def attempts(self, delivery_ids: Sequence[int]) -> dict[int, list[AttemptRow]]: ...

    async def record_attempt(
        self, delivery_id: int, attempt: AttemptRow, state: str, next_at: float
    ) -> None: ...

    async def redeliver(self, delivery_id: int, now: float) -> bool: ...


class SessionIndex(Protocol):
    """Web console sessions, keyed by the sha256 of their id (never the id itself)."""

    async def get(self, id_hash: bytes) -> SessionRow | None: ...

    async def create(self, session: SessionRow, max_sessions: int) -> None: ...

    async def touch(self, id_hash: bytes, now: float) -> None: ...

    async def drop(self, id_hash: bytes) -> None: ...

    async def set_flash(self, id_hash: bytes, sealed: bytes) -> None: ...

    async def take_flash(self, id_hash: bytes) -> bytes | None: ...

    async def expire(self, seen_before: float) -> int: ...


class IndexProtocol(Protocol):
    """The whole index, one query object per noun; opened before use, closed after."""

    @property
    def repositories(self) -> RepositoryIndex: ...

    @property
    def blobs(self) -> BlobIndex: ...

    @property
    def uploads(self) -> UploadIndex: ...

    @property
    def manifests(self) -> ManifestIndex: ...

    @property
    def accounts(self) -> AccountIndex: ...

    @property
    def activity(self) -> ActivityIndex: ...

    @property
    def usage(self) -> UsageIndex: ...

    @property
    def listings(self) -> ListingIndex: ...

    @property
    def retention(self) -> RetentionIndex: ...

    @property
    def gc(self) -> GcIndex: ...

    @property
    def proxies(self) -> ProxyIndex: ...

    @property
    def webhooks(self) -> WebhookIndex: ...

    @property
    def sessions(self) -> SessionIndex: ...

    @property
    def schema_version(self) -> int: ...

    def observe_write_waits(self, observer: Callable[[float], None]) -> None: ...

    async def ping(self) -> None: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...
