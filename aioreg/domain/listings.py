"""What the registry holds, for people: namespaces, repositories with sizes and activity,
one repository's tags and artifacts, search, storage usage and the event history.

Index rows become these detail types here, at the domain's edge; the API maps
them to its own schemas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from aioreg.domain.activity import HISTORY_DAYS, DayPulls, day_series
from aioreg.domain.manifest import INDEX_TYPES, Descriptor, ImageIndex, ImageManifest
from aioreg.domain.reference import Digest, validate_name
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index import ArtifactRow, Event, PullCounts, RepositorySummary, TagInfo, Usage
from aioreg.index.listings import REPOSITORY_SORTS, TAG_SORTS
from aioreg.index.pull_stats import day_of
from aioreg.index.rows import Referrer

T = TypeVar("T")
# A config blob bigger than this is not shown whole (a page must stay small).
CONFIG_SHOWN_MAX_BYTES = 256 * 1024
TAGS_PER_ARTIFACT = 10


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
    tag_count: int = 0  # all its tags, when ``tags`` lists only the first few


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a long listing and where it sits in the whole."""

    items: list[T]
    total: int
    offset: int
    limit: int


class ArtifactView(msgspec.Struct):
    """Everything the console shows about one artifact."""

    repository: str
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    manifest_json: str  # pretty-printed
    config: Descriptor | None
    config_json: str | None  # pretty-printed, when small enough to show
    labels: dict[str, str]
    layers: list[Descriptor]
    manifests: list[Descriptor]  # an index's children, with their platforms
    present: list[str]  # which of those children this repository holds
    annotations: dict[str, str]
    referrers: list[Referrer]
    subject: str | None
    tags: list[str]
    tag_count: int
    pushed_at: float
    last_pulled_at: float | None


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

    async def repository_page(
        self,
        namespace: str | None,
        *,
        contains: str = "",
        sort: str = "name",
        descending: bool = False,
        offset: int = 0,
        limit: int = 50,
        only: list[str] | None = None,
    ) -> Page[RepositorySummary]:
        """A page of repositories, sorted and filtered by the index (``only``: just these)."""
        _check_sort(sort, REPOSITORY_SORTS)
        await self.index.activity.flush()
        total, items = await self.index.listings.repository_page(
            namespace, contains, only, sort, descending, offset, limit
        )
        return Page(items, total, offset, limit)

    async def tag_page(
        self,
        name: str,
        *,
        contains: str = "",
        sort: str = "name",
        descending: bool = False,
        offset: int = 0,
        limit: int = 50,
        pulls: PullCounts | None = None,
    ) -> Page[TagDetail]:
        """A page of a repository's tags with each one's artifact size and pull count
        (``pulls``: the repository's counts, when the caller has read them already)."""
        _check_sort(sort, TAG_SORTS)
        await self._summary(name)
        total, tags = await self.index.listings.tag_page(
            name, contains, sort, descending, offset, limit
        )
        sizes = await self._sizes(name, sorted({t.digest for t in tags}))
        deprecated = await self.index.repositories.tag_deprecations(name)
        pulls = pulls or await self.pull_counts(name)
        return Page(_tag_details(tags, sizes, deprecated, pulls), total, offset, limit)

    async def artifact_page(
        self, name: str, *, offset: int = 0, limit: int = 20, pulls: PullCounts | None = None
    ) -> Page[ArtifactDetail]:
        """A page of a repository's artifacts, newest first, with a few tags each and their
        pull counts."""
        await self._summary(name)
        total, rows = await self.index.listings.artifact_page(name, offset, limit)
        digests = [a.digest for a in rows]
        sizes = await self._sizes(name, digests, rows)
        tags = await self.index.listings.tags_by_digest(name, digests, TAGS_PER_ARTIFACT)
        referrers = await self.index.listings.referrer_digests(name, digests)
        pulls = pulls or await self.pull_counts(name)
        items = [
            ArtifactDetail(
                digest=a.digest,
                media_type=a.media_type,
                artifact_type=a.artifact_type,
                size=sizes.get(a.digest, 0),
                tags=tags.get(a.digest, (0, []))[1],
                platforms=_platforms(a),
                referrers=referrers.get(a.digest, []),
                subject=a.subject,
                pushed_at=a.pushed_at,
                last_pulled_at=a.last_pull_at,
                pull_count=pulls.artifacts.get(a.digest, 0),
                tag_count=tags.get(a.digest, (0, []))[0],
            )
            for a in rows
        ]
        return Page(items, total, offset, limit)

    async def _sizes(
        self, name: str, digests: list[str], rows: list[ArtifactRow] | None = None
    ) -> dict[str, int]:
        """Total size of each artifact: an index's children are fetched to count them."""
        if rows is None:
            rows = await self.index.listings.artifacts_by_digest(name, digests)
        by_digest = {a.digest: a for a in rows}
        children = sorted(
            {c for a in rows if a.media_type in INDEX_TYPES for c in _children(a)} - set(by_digest)
        )
        if children:
            for child in await self.index.listings.artifacts_by_digest(name, children):
                by_digest[child.digest] = child
        return {a.digest: self._total_size(a, by_digest) for a in rows}

    async def artifact_view(self, name: str, digest: str) -> ArtifactView:
        """One artifact: its manifest and config pretty-printed, layers, children,
        annotations, labels, tags and referrers."""
        validate_name(name)
        digest = str(Digest.parse(digest))
        await self.index.activity.flush()
        rows = await self.index.listings.artifacts_by_digest(name, [digest])
        if not rows:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"{digest} is not in {name}")
        row = rows[0]
        size = (await self._sizes(name, [digest], rows))[digest]
        config: Descriptor | None = None
        layers: list[Descriptor] = []
        manifests: list[Descriptor] = []
        annotations: dict[str, str] = {}
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            if row.media_type in INDEX_TYPES:
                index = msgspec.json.decode(row.body, type=ImageIndex)
                manifests, annotations = index.manifests, index.annotations or {}
            else:
                image = msgspec.json.decode(row.body, type=ImageManifest)
                config, layers = image.config, image.layers
                annotations = image.annotations or {}
        config_json, labels = await self._config(name, config)
        present = [
            a.digest
            for a in await self.index.listings.artifacts_by_digest(
                name, [m.digest for m in manifests]
            )
        ]
        tag_count, tags = (await self.index.listings.tags_by_digest(name, [digest], 100)).get(
            digest, (0, [])
        )
        return ArtifactView(
            repository=name,
            digest=digest,
            media_type=row.media_type,
            artifact_type=row.artifact_type,
            size=size,
            manifest_json=_pretty(row.body),
            config=config,
            config_json=config_json,
            labels=labels,
            layers=layers,
            manifests=manifests,
            present=present,
            annotations=annotations,
            referrers=await self.registry.referrers(name, digest, None),
            subject=row.subject,
            tags=tags,
            tag_count=tag_count,
            pushed_at=row.pushed_at,
            last_pulled_at=row.last_pull_at,
        )

    async def _config(
        self, name: str, config: Descriptor | None
    ) -> tuple[str | None, dict[str, str]]:
        """A small config blob pretty-printed, and its image labels."""
        if config is None or config.size > CONFIG_SHOWN_MAX_BYTES:
            return None, {}
        try:
            blob = await self.registry.blob(name, config.digest)
            data = await asyncio.to_thread(blob.path.read_bytes)
        except (RegistryError, OSError):
            return None, {}
        labels: dict[str, str] = {}
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            found = json.loads(data).get("config", {}).get("Labels") or {}
            labels = {str(k): str(v) for k, v in found.items()}
        return _pretty(data), labels

    async def pull_counts(self, name: str) -> PullCounts:
        """Pulls of a repository, of each tag and of each artifact (including every pull
        answered so far); zeros for a repository not there."""
        return await self.index.activity.pull_counts(name) or PullCounts(0, {}, {})

    async def pulls_by_day(self, name: str | None, days: int = HISTORY_DAYS) -> list[DayPulls]:
        """Pulls per UTC day over the last ``days`` days, oldest first: of a repository,
        or (``name`` None) of the whole registry."""
        since = day_of(time.time()) - days + 1
        if name is None:
            counts = await self.index.activity.registry_pull_days(since)
        else:
            counts = await self.index.activity.pull_days(name, None, since)
        return day_series(counts, days)

    async def proxy_cache_bytes(self, namespaces: list[str]) -> dict[str, int]:
        """Bytes each proxy namespace's cache holds (what its ``max_bytes`` caps)."""
        return {ns: await self.index.proxies.cached_bytes(ns) for ns in namespaces}

    async def deprecation(self, name: str) -> str | None:
        """A repository's deprecation notice, if an admin set one."""
        return await self.index.repositories.deprecation(name)

    async def summary(self, name: str) -> RepositorySummary:
        """One repository's counts, size and activity; NAME_UNKNOWN when it is not there."""
        return await self._summary(name)

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
            tags=_tag_details(tags, sizes, deprecated, pulls),
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

    async def events(
        self,
        limit: int,
        repository: str | None = None,
        kinds: list[str] | None = None,
        actor: str | None = None,
    ) -> list[Event]:
        await self.index.activity.flush()
        return await self.index.activity.events(limit, repository, kinds, actor)

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

    async def quotas(self, namespaces: list[str]) -> dict[str, tuple[int, int]]:
        """namespace -> (bytes its quota counts, the quota), for those that have one."""
        found: dict[str, tuple[int, int]] = {}
        for namespace in namespaces:
            quota = await self.index.usage.quota(namespace)
            if quota is not None:
                found[namespace] = (await self.index.usage.namespace(namespace), quota)
        return found


def _check_sort(sort: str, allowed: dict[str, str]) -> None:
    if sort not in allowed:
        raise RegistryError(
            ErrorCode.BAD_REQUEST, f"sort must be one of {', '.join(sorted(allowed))}"
        )


def _pretty(body: bytes) -> str:
    """JSON indented for reading; anything else as text."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", errors="replace")


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


def _tag_details(
    tags: list[TagInfo], sizes: dict[str, int], deprecated: dict[str, str], pulls: PullCounts
) -> list[TagDetail]:
    """Tags as listed, with their artifact's size, deprecation and pull count."""
    return [
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
    ]
