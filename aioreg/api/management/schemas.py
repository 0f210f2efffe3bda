"""The management API's own request and response bodies.

These types are the public contract (they become the OpenAPI document's
schemas), so they are declared here rather than borrowed from the index's rows
or the domain's results: a column renamed in SQL must not rename a JSON field.
Each response type that mirrors a domain result has one ``from_domain`` that
maps it; that is the only place the two meet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

from aioreg.config import ProxyConfig
from aioreg.domain.repositories import DEPRECATION_MESSAGE_MAX
from aioreg.domain.retention import RetentionPolicy as DomainPolicy

if TYPE_CHECKING:
    from aioreg.domain.activity import PullHistory as DomainPullHistory
    from aioreg.domain.gc import GcReport
    from aioreg.domain.listings import ArtifactDetail as DomainArtifact
    from aioreg.domain.listings import LayerDetail as DomainLayer
    from aioreg.domain.listings import RepositoryDetail as DomainRepository
    from aioreg.domain.listings import TagDetail as DomainTag
    from aioreg.domain.proxies import ProxyDefinition
    from aioreg.domain.retention import Removal
    from aioreg.events.endpoints import DeliveryHistory
    from aioreg.index import Event as EventRow
    from aioreg.index import RepositorySummary as SummaryRow
    from aioreg.index import Usage as UsageRow
    from aioreg.index.webhooks import AttemptRow, EndpointRow
    from aioreg.transfer.importer import ImportReport


# -- repositories -------------------------------------------------------------------


class DayPulls(msgspec.Struct):
    day: str  # YYYY-MM-DD, UTC
    pulls: int


class NamespaceList(msgspec.Struct):
    namespaces: list[str]


class RepositorySummary(msgspec.Struct):
    name: str
    tag_count: int
    artifact_count: int
    size: int  # distinct bytes the repository references (blobs + manifests)
    last_push_at: float | None
    last_pull_at: float | None

    @classmethod
    def from_domain(cls, row: SummaryRow) -> RepositorySummary:
        return cls(
            row.name,
            row.tag_count,
            row.artifact_count,
            row.size,
            row.last_push_at,
            row.last_pull_at,
        )


class RepositoryPage(msgspec.Struct):
    repositories: list[RepositorySummary]
    total: int
    next_offset: int | None


class TagDetail(msgspec.Struct):
    name: str
    digest: str
    size: int
    pushed_at: float
    last_pulled_at: float | None
    deprecation: str | None = None
    pull_count: int = 0  # pulls by this tag

    @classmethod
    def from_domain(cls, tag: DomainTag) -> TagDetail:
        return cls(
            tag.name,
            tag.digest,
            tag.size,
            tag.pushed_at,
            tag.last_pulled_at,
            tag.deprecation,
            tag.pull_count,
        )


class ArtifactDetail(msgspec.Struct):
    digest: str
    media_type: str
    artifact_type: str | None
    size: int  # manifest plus everything it references (children, for an index)
    tags: list[str]
    platforms: list[str]
    referrers: list[str]
    subject: str | None
    pushed_at: float
    last_pulled_at: float | None
    pull_count: int = 0  # pulls of this manifest, by tag and by digest

    @classmethod
    def from_domain(cls, artifact: DomainArtifact) -> ArtifactDetail:
        return cls(
            artifact.digest,
            artifact.media_type,
            artifact.artifact_type,
            artifact.size,
            list(artifact.tags),
            list(artifact.platforms),
            list(artifact.referrers),
            artifact.subject,
            artifact.pushed_at,
            artifact.last_pulled_at,
            artifact.pull_count,
        )


class RepositoryDetail(msgspec.Struct):
    name: str
    tag_count: int
    artifact_count: int
    size: int
    last_push_at: float | None
    last_pull_at: float | None
    tags: list[TagDetail]
    artifacts: list[ArtifactDetail]
    deprecation: str | None = None
    pull_count: int = 0  # pulls by tag and by digest since statistics began
    pulls_by_day: list[DayPulls] = msgspec.field(default_factory=list)  # last 30 UTC days

    @classmethod
    def from_domain(cls, detail: DomainRepository) -> RepositoryDetail:
        return cls(
            detail.name,
            detail.tag_count,
            detail.artifact_count,
            detail.size,
            detail.last_push_at,
            detail.last_pull_at,
            [TagDetail.from_domain(t) for t in detail.tags],
            [ArtifactDetail.from_domain(a) for a in detail.artifacts],
            detail.deprecation,
            detail.pull_count,
            [DayPulls(d.day, d.pulls) for d in detail.pulls_by_day],
        )


class LayerDetail(msgspec.Struct):
    digest: str
    media_type: str
    size: int

    @classmethod
    def from_domain(cls, layer: DomainLayer) -> LayerDetail:
        return cls(layer.digest, layer.media_type, layer.size)


class LayerList(msgspec.Struct):
    digest: str
    layers: list[LayerDetail]


class Deleted(msgspec.Struct):
    deleted: list[str]


class CopyRequest(msgspec.Struct, forbid_unknown_fields=True):
    source: str  # repository to copy from
    reference: str  # tag or digest there
    tag: str | None = None  # tag to set in the target repository


class Copied(msgspec.Struct):
    repository: str
    digest: str
    tag: str | None


# -- usage, activity, search ----------------------------------------------------------


class Usage(msgspec.Struct):
    name: str
    logical: int  # what every artifact references, shared layers counted per artifact
    physical: int  # distinct bytes, each blob once

    @classmethod
    def from_domain(cls, row: UsageRow) -> Usage:
        return cls(row.name, row.logical, row.physical)


class UsageReport(msgspec.Struct):
    total: Usage
    namespaces: list[Usage]
    repositories: list[Usage]


class Event(msgspec.Struct):
    at: float
    kind: str
    repository: str
    reference: str | None
    digest: str | None
    actor: str | None
    detail: str | None = None

    @classmethod
    def from_domain(cls, row: EventRow) -> Event:
        return cls(
            row.at, row.kind, row.repository, row.reference, row.digest, row.actor, row.detail
        )


class EventList(msgspec.Struct):
    events: list[Event]


class SearchHit(msgspec.Struct):
    repository: str
    tag: str | None
    digest: str | None


class SearchResult(msgspec.Struct):
    results: list[SearchHit]


# -- maintenance ------------------------------------------------------------------------


class GcResult(msgspec.Struct):
    dry_run: bool
    blobs_removed: int
    bytes_freed: int
    manifests_removed: list[str]
    uploads_expired: int
    seconds: float
    held_by_backup: bool = False  # a running backup held sweeps off: nothing was removed

    @classmethod
    def from_domain(cls, report: GcReport) -> GcResult:
        return cls(
            report.dry_run,
            report.blobs,
            report.bytes,
            [f"{repository}@{digest}" for repository, digest in report.manifests],
            report.uploads_expired,
            report.seconds,
            report.held,
        )


class RemovalItem(msgspec.Struct):
    repository: str
    tag: str
    digest: str
    reason: str

    @classmethod
    def from_domain(cls, removal: Removal) -> RemovalItem:
        return cls(removal.repository, removal.tag, removal.digest, removal.reason)


class RetentionResult(msgspec.Struct):
    applied: bool
    removals: list[RemovalItem]


class RetentionPolicy(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Which tags a cleanup removes; protected patterns are never removed."""

    keep_last: int | None = None  # keep the N most recently pushed tags
    older_than_days: float | None = None  # remove tags pushed longer ago
    unpulled_days: float | None = None  # remove tags not pulled (or pushed) for that long
    include: list[str] = []  # regexes a tag must match to be considered (default: all)
    exclude: list[str] = []  # regexes that take a tag out of consideration
    protected: list[str] = msgspec.field(default_factory=lambda: ["latest"])  # globs never removed

    @classmethod
    def from_domain(cls, policy: DomainPolicy) -> RetentionPolicy:
        return cls(
            policy.keep_last,
            policy.older_than_days,
            policy.unpulled_days,
            list(policy.include),
            list(policy.exclude),
            list(policy.protected),
        )

    def to_domain(self) -> DomainPolicy:
        """The domain's policy with the same rules."""
        return DomainPolicy(
            keep_last=self.keep_last,
            older_than_days=self.older_than_days,
            unpulled_days=self.unpulled_days,
            include=list(self.include),
            exclude=list(self.exclude),
            protected=list(self.protected),
        )


class PolicyList(msgspec.Struct):
    policies: dict[str, RetentionPolicy]


class QuotaRequest(msgspec.Struct, forbid_unknown_fields=True):
    quota_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None


class DeprecationRequest(msgspec.Struct, forbid_unknown_fields=True):
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=DEPRECATION_MESSAGE_MAX)]


class Deprecation(msgspec.Struct, omit_defaults=True):
    repository: str
    message: str | None  # None: not deprecated
    tag: str | None = None  # a tag's notice; absent for the repository's


class Empty(msgspec.Struct):
    pass


# A proxy added through the API is exactly a ``[[proxy]]`` entry of the config file:
# the same type validates both (types, bounds, unknown fields refused).
ProxyRequest = ProxyConfig


class Proxy(msgspec.Struct):
    """A proxy as listed: every setting but the credentials, of which only whether one is set."""

    namespace: str
    upstream: str
    source: str  # "config" (only the config file changes it) or "api" (added by API or CLI)
    username: str
    password_set: bool
    upstream_prefix: str
    revalidate_interval: float
    serve_stale: bool
    max_bytes: int
    connect_timeout: float
    read_timeout: float
    max_connections: int

    @classmethod
    def from_domain(cls, definition: ProxyDefinition) -> Proxy:
        c = definition.config
        return cls(
            c.namespace,
            c.upstream,
            definition.source,
            c.username,
            definition.password_set,
            c.upstream_prefix,
            c.revalidate_interval,
            c.serve_stale,
            c.max_bytes,
            c.connect_timeout,
            c.read_timeout,
            c.max_connections,
        )


class ProxyList(msgspec.Struct):
    proxies: list[Proxy]


# -- activity -------------------------------------------------------------------------


class PullHistory(msgspec.Struct):
    repository: str
    tag: str | None  # None: the whole repository
    by_digest: bool  # only pulls by digest
    total: int  # since statistics began, not only the days shown
    last_pull_at: float | None
    days: list[DayPulls]  # oldest first, ending today (UTC)

    @classmethod
    def from_domain(cls, history: DomainPullHistory) -> PullHistory:
        return cls(
            history.repository,
            history.tag,
            history.by_digest,
            history.total,
            history.last_pull_at,
            [DayPulls(d.day, d.pulls) for d in history.days],
        )


class ActivityEvent(msgspec.Struct):
    id: int
    at: float
    action: str  # push, pull, untag, delete, retention, gc
    repository: str
    reference: str | None
    digest: str | None
    actor: str | None
    detail: str | None

    @classmethod
    def from_domain(cls, row: EventRow) -> ActivityEvent:
        assert row.id is not None
        return cls(
            row.id,
            row.at,
            row.kind,
            row.repository,
            row.reference,
            row.digest,
            row.actor,
            row.detail,
        )


class ActivityPage(msgspec.Struct):
    events: list[ActivityEvent]  # newest first
    next_cursor: str | None  # pass as ?cursor= for the next (older) page; None at the end


class RefusedTag(msgspec.Struct):
    repository: str
    tag: str
    current: str
    archive: str


class ImportResult(msgspec.Struct):
    """What ``POST /import`` stored; ``ok`` is false when a protected tag was refused."""

    ok: bool
    dry_run: bool
    repositories: list[str]
    manifests_new: list[str]
    manifests_existing: int
    tags_set: list[str]
    tags_unchanged: list[str]
    tags_refused: list[RefusedTag]
    blobs_new: int
    blobs_existing: int
    bytes_new: int

    @classmethod
    def from_domain(cls, report: ImportReport) -> ImportResult:
        return cls(
            report.ok,
            report.dry_run,
            report.repositories,
            [f"{repository}@{digest}" for repository, digest in report.manifests_new],
            report.manifests_existing,
            [f"{r}:{t}@{d}" for r, t, d in report.tags_set],
            [f"{r}:{t}@{d}" for r, t, d in report.tags_unchanged],
            [RefusedTag(*refused) for refused in report.tags_refused],
            report.blobs_new,
            report.blobs_existing,
            report.bytes_new,
        )


# -- webhooks -------------------------------------------------------------------------


class WebhookRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A new endpoint. ``secret``: omitted, one is generated; either way it is shown once."""

    url: str
    secret: str | None = None
    namespace: str | None = None  # None: registry-wide (admins only)
    events: list[str] = msgspec.field(default_factory=list)  # empty: every kind
    repository_pattern: str = "*"
    media_types: list[str] = msgspec.field(default_factory=list)  # empty: any
    format: str = "cloudevents"  # or "distribution"
    enabled: bool = True


class WebhookUpdate(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool


class Webhook(msgspec.Struct, kw_only=True):
    """An endpoint as listed: never its secret."""

    id: int
    namespace: str | None
    url: str
    events: list[str]
    repository_pattern: str
    media_types: list[str]
    format: str
    enabled: bool
    created_at: float
    source: str  # "api" (added by API or CLI) or "config" (only the config file changes it)

    @classmethod
    def from_domain(cls, row: EndpointRow) -> Webhook:
        return Webhook(
            id=row.id,
            namespace=row.namespace,
            url=row.url,
            events=row.events,
            repository_pattern=row.repository_pattern,
            media_types=row.media_types,
            format=row.format,
            enabled=row.enabled,
            created_at=row.created_at,
            source=row.source,
        )


class WebhookCreated(Webhook, kw_only=True):
    """The answer to adding an endpoint: the one time its secret is shown."""

    secret: str

    @classmethod
    def created(cls, row: EndpointRow, secret: str) -> WebhookCreated:
        return cls(**msgspec.structs.asdict(Webhook.from_domain(row)), secret=secret)


class WebhookList(msgspec.Struct):
    webhooks: list[Webhook]


class DeliveryAttempt(msgspec.Struct):
    at: float
    status: int | None  # the receiver's HTTP status; null when it did not answer
    latency: float  # seconds
    error: str | None

    @classmethod
    def from_domain(cls, row: AttemptRow) -> DeliveryAttempt:
        return cls(row.at, row.status, row.latency, row.error)


class Delivery(msgspec.Struct):
    id: int
    webhook: int
    state: str  # pending | delivered | dead
    event_id: str
    action: str
    repository: str
    tag: str | None
    digest: str | None
    created_at: float
    next_attempt_at: float | None
    finished_at: float | None
    attempts: list[DeliveryAttempt]

    @classmethod
    def from_domain(cls, history: DeliveryHistory) -> Delivery:
        d, e = history.delivery, history.delivery.event
        return cls(
            d.id,
            d.endpoint_id,
            d.state,
            e.uid,
            e.action,
            e.repository,
            e.tag,
            e.digest,
            d.created_at,
            d.next_at if d.state == "pending" else None,
            d.finished_at,
            [DeliveryAttempt.from_domain(a) for a in history.attempts],
        )


class DeliveryList(msgspec.Struct):
    deliveries: list[Delivery]
