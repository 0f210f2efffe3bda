"""What the registry holds, for people: namespaces, repositories with sizes and activity,
one repository's tags and artifacts, search, storage usage and the event history.

Index rows become these detail types here, at the domain's edge; the API maps
them to its own schemas.
"""

from __future__ import annotations

import contextlib
import time

import msgspec

from aioreg.domain.activity import HISTORY_DAYS, DayPulls, day_series
from aioreg.domain.manifest import INDEX_TYPES, ImageIndex, ImageManifest
from aioreg.domain.reference import Digest, validate_name
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index import ArtifactRow, Event, PullCounts, RepositorySummary, Usage
from aioreg.index.pull_stats import day_of


class TagDetail(msgspec.Struct):
    name: str
    digest: str
    size: int
    pushed_at: float
    last_pulled_at: float | None
    deprecation: str | None = None
    pull_count: int = 0  # pulls by this tag


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


class LayerDetail(msgspec.Struct):
    digest: str
    media_type: str
    size: int


class RepositoryDetail(msgspec.Struct):
    name: str
    tag_count: int
    artifact_count: int
    size: int
    last_push_at: float | None
    last_pull_at: float | None
    tags: list[TagDetail]
    artifacts: list[ArtifactDetail]
    deprecation: str | None = None  # an admin's notice; pulls carry it as a warning
    pull_count: int = 0  # pulls by tag and by digest since statistics began
    pulls_by_day: list[DayPulls] = msgspec.field(default_factory=list)  # HISTORY_DAYS, UTC


class Listings:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.index

    async def namespaces(self) -> list[str]:
        return await self.index.repositories.namespace_names()

    async def repository_names(self, namespace: str) -> list[str]:
        """Names of a namespace's repositories, sorted."""
        return await self.index.repositories.in_namespace(namespace)

    async def repositories(
        self, namespace: str | None, sort: str = "name", descending: bool = False
    ) -> list[RepositorySummary]:
        keys = {
            "name": lambda r: r.name,
            "size": lambda r: (r.size, r.name),
            "last_push": lambda r: (r.last_push_at or 0.0, r.name),
            "last_pull": lambda r: (r.last_pull_at or 0.0, r.name),
        }
        if sort not in keys:
            raise RegistryError(
                ErrorCode.BAD_REQUEST, f"sort must be one of {', '.join(sorted(keys))}"
            )
        await self.index.activity.flush()  # last-pull times are batched; show current ones
        summaries = await self.index.listings.repository_summaries(namespace)
        return sorted(summaries, key=keys[sort], reverse=descending)

    async def _summary(self, name: str) -> RepositorySummary:
        validate_name(name)
        await self.index.activity.flush()
        summary = await self.index.listings.repository_summary(name)
        if summary is not None:
            return summary
        raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")

    async def repository(self, name: str) -> RepositoryDetail:
        summary = await self._summary(name)
        pulls = await self.index.activity.pull_counts(name) or PullCounts(0, {}, {})
        days = await self.index.activity.pull_days(
            name, None, day_of(time.time()) - HISTORY_DAYS + 1
        )
        artifacts = await self.index.listings.artifacts(name)
        by_digest = {a.digest: a for a in artifacts}
        tags = await self.index.listings.tag_infos(name)
        tags_of: dict[str, list[str]] = {}
        for tag in tags:
            tags_of.setdefault(tag.digest, []).append(tag.name)
        referrers: dict[str, list[str]] = {}
        for artifact in artifacts:
            if artifact.subject:
                referrers.setdefault(artifact.subject, []).append(artifact.digest)
        details = [
            ArtifactDetail(
                digest=a.digest,
                media_type=a.media_type,
                artifact_type=a.artifact_type,
                size=self._total_size(a, by_digest),
                tags=sorted(tags_of.get(a.digest, [])),
                platforms=_platforms(a),
                referrers=sorted(referrers.get(a.digest, [])),
                subject=a.subject,
                pushed_at=a.pushed_at,
                last_pulled_at=a.last_pull_at,
                pull_count=pulls.artifacts.get(a.digest, 0),
            )
            for a in artifacts
        ]
        sizes = {d.digest: d.size for d in details}
        deprecated = await self.index.repositories.tag_deprecations(name)
        return RepositoryDetail(
            name=name,
            tag_count=summary.tag_count,
            artifact_count=summary.artifact_count,
            size=summary.size,
            last_push_at=summary.last_push_at,
            last_pull_at=summary.last_pull_at,
            tags=[
                TagDetail(
                    t.name,
                    t.digest,
                    sizes.get(t.digest, 0),
                    t.pushed_at,
                    t.last_pull_at,
                    deprecated.get(t.name),
                    pulls.tags.get(t.name, 0),
                )
                for t in tags
            ],
            artifacts=details,
            deprecation=await self.index.repositories.deprecation(name),
            pull_count=pulls.total,
            pulls_by_day=day_series(days, HISTORY_DAYS),
        )

    @staticmethod
    def _total_size(artifact: ArtifactRow, by_digest: dict[str, ArtifactRow]) -> int:
        if artifact.media_type not in INDEX_TYPES:
            return artifact.size + artifact.blob_bytes
        total = artifact.size
        for child in _children(artifact):
            row = by_digest.get(child)
            if row is not None:
                total += row.size + row.blob_bytes
        return total

    async def layers(self, name: str, digest: str) -> list[LayerDetail]:
        validate_name(name)
        artifact = await self.index.listings.artifact(name, str(Digest.parse(digest)))
        if artifact is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"{digest} is not in {name}")
        if artifact.media_type in INDEX_TYPES:
            return []
        image = msgspec.json.decode(artifact.body, type=ImageManifest)
        return [LayerDetail(layer.digest, layer.mediaType, layer.size) for layer in image.layers]

    async def events(self, limit: int, repository: str | None = None) -> list[Event]:
        await self.index.activity.flush()
        return await self.index.activity.events(limit, repository)

    async def search(
        self, query: str, limit: int = 100
    ) -> list[tuple[str, str | None, str | None]]:
        if not query:
            raise RegistryError(ErrorCode.BAD_REQUEST, "search needs a query (?q=)")
        return await self.index.listings.search(query, limit)

    async def usage(self, namespace: str | None = None) -> tuple[list[Usage], list[Usage], Usage]:
        """(per namespace, per repository, total); for one namespace the total is its own."""
        namespaces, repositories, whole = await self.index.usage.report(namespace)
        if namespace is None:
            return namespaces, repositories, whole
        own = next((u for u in namespaces if u.name == namespace), Usage(namespace, 0, 0))
        return namespaces, repositories, Usage("", own.logical, own.physical)


def _children(artifact: ArtifactRow) -> list[str]:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        return [m.digest for m in msgspec.json.decode(artifact.body, type=ImageIndex).manifests]
    return []


def _platforms(artifact: ArtifactRow) -> list[str]:
    if artifact.media_type not in INDEX_TYPES:
        return []
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        index = msgspec.json.decode(artifact.body, type=ImageIndex)
        return [
            "/".join(filter(None, (m.platform.os, m.platform.architecture, m.platform.variant)))
            for m in index.manifests
            if m.platform is not None
        ]
    return []
