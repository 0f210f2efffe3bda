"""Plain records the index hands to the layers above it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlobRow:
    digest: str
    size: int
    xxh3_128: str | None


@dataclass(frozen=True, slots=True)
class ManifestRow:
    id: int
    repository_id: int
    digest: str
    media_type: str
    size: int
    body: bytes
    subject: str | None


@dataclass(frozen=True, slots=True)
class Referrer:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class UploadRow:
    id: str
    repository: str
    started_at: float
    updated_at: float
    committed_bytes: int
    digest_algorithm: str | None = None  # as the POST named it (?digest-algorithm=)
    owner: str | None = None  # the worker incarnation hashing it (server.workers > 1)


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    name: str
    password_hash: str | None
    is_admin: bool
    is_robot: bool
    # Changes whenever the credentials do (random at creation, +1 per password change), so
    # tokens bound to (id, generation) die with a password change, a deletion, or a
    # re-created account that reuses the id.
    generation: int


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: str
    user_id: int
    name: str
    secret_hash: str
    scopes: list[dict[str, object]]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class NamespaceRow:
    id: int
    name: str
    owner: str | None
    visibility: str
    rules: dict[str, object]


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: float
    actor: str
    action: str
    resource: str
    client: str | None
    allowed: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class RepositorySummary:
    name: str
    tag_count: int
    artifact_count: int
    size: int  # distinct bytes the repository references (blobs + manifests)
    last_push_at: float | None
    last_pull_at: float | None


@dataclass(frozen=True, slots=True)
class TagInfo:
    name: str
    digest: str
    pushed_at: float
    last_pull_at: float | None


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    subject: str | None
    body: bytes
    pushed_at: float
    last_pull_at: float | None
    blob_bytes: int  # config + layers (for an index: 0; its children count themselves)


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    kind: str
    repository: str
    reference: str | None
    digest: str | None
    actor: str | None
    detail: str | None = None
    id: int | None = None  # its row, once written: the activity feed's cursor


@dataclass(frozen=True, slots=True)
class Usage:
    name: str
    logical: int  # what every artifact references, shared layers counted per artifact
    physical: int  # distinct bytes, each blob once


@dataclass(frozen=True, slots=True)
class PullCounts:
    """Pulls since the statistics began: of a repository, per tag, per artifact digest."""

    total: int
    tags: dict[str, int]
    artifacts: dict[str, int]


@dataclass(frozen=True, slots=True)
class StoreTotals:
    """What the registry stores, for metrics: counts and bytes (blob bytes per namespace)."""

    blobs: int
    blob_bytes: int  # each blob once, quarantined ones left out
    manifests: int
    repositories: int
    namespace_bytes: dict[str, int]
    upload_sessions: int  # started, not yet finished, cancelled or expired


@dataclass(frozen=True, slots=True)
class GcResult:
    manifests: list[tuple[str, str]]  # (repository, digest) of untagged manifests removed
    blobs: list[tuple[str, int]]  # (digest, size) of blobs removed
