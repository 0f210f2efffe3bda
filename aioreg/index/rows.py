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
