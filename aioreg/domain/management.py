"""Repository management and lifecycle: what the /api/v1 handlers and the CLI both call.

Listings with sizes and activity, deletes, server-side copies, storage usage,
online garbage collection, retention policies and quotas. Everything here
goes through the index and blob store; nothing knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from aioreg.domain.maintenance import recover_trash
from aioreg.domain.manifest import INDEX_TYPES, ImageIndex, ImageManifest
from aioreg.domain.reference import Digest, validate_name, validate_tag
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index.lifecycle import ArtifactRow, Event, RepositorySummary, Usage

log = logging.getLogger("aioreg.lifecycle")
DAY = 86400.0


# -- what the listings return -------------------------------------------------


class TagDetail(msgspec.Struct):
    name: str
    digest: str
    size: int
    pushed_at: float
    last_pulled_at: float | None


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


class RetentionPolicy(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Which tags a cleanup removes; protected patterns are never removed."""

    keep_last: int | None = None  # keep the N most recently pushed tags
    older_than_days: float | None = None  # remove tags pushed longer ago
    unpulled_days: float | None = None  # remove tags not pulled (or pushed) for that long
    include: list[str] = []  # regexes a tag must match to be considered (default: all)
    exclude: list[str] = []  # regexes that take a tag out of consideration
    protected: list[str] = msgspec.field(default_factory=lambda: ["latest"])  # globs never removed


@dataclass(frozen=True)
class Removal:
    repository: str
    tag: str
    digest: str
    reason: str


@dataclass
class GcReport:
    dry_run: bool
    manifests: list[tuple[str, str]] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    uploads_expired: int = 0
    seconds: float = 0.0


class Management:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.index
        self._gc_lock = asyncio.Lock()

    # -- listings --------------------------------------------------------

    async def namespaces(self) -> list[str]:
        return await self.index.namespace_names()

    async def repository_names(self, namespace: str) -> list[str]:
        """Names of a namespace's repositories, sorted."""
        return await self.index.repositories_in(namespace)

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
        await self.index.flush_pulls()  # last-pull times are batched; show current ones
        summaries = await self.index.repository_summaries(namespace)
        return sorted(summaries, key=keys[sort], reverse=descending)

    async def _summary(self, name: str) -> RepositorySummary:
        validate_name(name)
        await self.index.flush_pulls()
        for summary in await self.index.repository_summaries(name.split("/", 1)[0]):
            if summary.name == name:
                return summary
        raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")

    async def repository(self, name: str) -> RepositoryDetail:
        summary = await self._summary(name)
        artifacts = await self.index.artifacts(name)
        by_digest = {a.digest: a for a in artifacts}
        tags = await self.index.tag_infos(name)
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
            )
            for a in artifacts
        ]
        sizes = {d.digest: d.size for d in details}
        return RepositoryDetail(
            name=name,
            tag_count=summary.tag_count,
            artifact_count=summary.artifact_count,
            size=summary.size,
            last_push_at=summary.last_push_at,
            last_pull_at=summary.last_pull_at,
            tags=[
                TagDetail(t.name, t.digest, sizes.get(t.digest, 0), t.pushed_at, t.last_pull_at)
                for t in tags
            ],
            artifacts=details,
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
        artifact = await self.index.artifact(name, str(Digest.parse(digest)))
        if artifact is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"{digest} is not in {name}")
        if artifact.media_type in INDEX_TYPES:
            return []
        image = msgspec.json.decode(artifact.body, type=ImageManifest)
        return [LayerDetail(layer.digest, layer.mediaType, layer.size) for layer in image.layers]

    async def events(self, limit: int, repository: str | None = None) -> list[Event]:
        await self.index.flush_pulls()
        return await self.index.events(limit, repository)

    async def search(
        self, query: str, limit: int = 100
    ) -> list[tuple[str, str | None, str | None]]:
        if not query:
            raise RegistryError(ErrorCode.BAD_REQUEST, "search needs a query (?q=)")
        return await self.index.search(query, limit)

    async def usage(self, namespace: str | None = None) -> tuple[list[Usage], list[Usage], Usage]:
        """(per namespace, per repository, total); for one namespace the total is its own."""
        namespaces, repositories, whole = await self.index.usage(namespace)
        if namespace is None:
            return namespaces, repositories, whole
        own = next((u for u in namespaces if u.name == namespace), Usage(namespace, 0, 0))
        return namespaces, repositories, Usage("", own.logical, own.physical)

    # -- deletes and copies ----------------------------------------------

    async def delete_repository(self, name: str, actor: str | None = None) -> None:
        validate_name(name)
        await self._refuse_if_immutable(name, [t.name for t in await self.index.tag_infos(name)])
        if not await self.index.delete_repository(name):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")
        self.index.note_event(Event(time.time(), "delete", name, None, None, actor, "repository"))

    async def delete_artifact(self, name: str, digest: str, actor: str | None = None) -> list[str]:
        """Remove one artifact and the tags pointing at it; returns those tags."""
        validate_name(name)
        parsed = str(Digest.parse(digest))
        tags = await self.index.tags_of(name, parsed)
        await self.registry.delete_manifest(name, parsed, actor)
        return tags

    async def delete_namespace(self, namespace: str, actor: str | None = None) -> list[str]:
        """All of a namespace or nothing: every repository is checked before any goes."""
        repositories = await self.index.repositories_in(namespace)
        for name in repositories:
            await self._refuse_if_immutable(
                name, [t.name for t in await self.index.tag_infos(name)]
            )
        await self.index.delete_namespace(namespace, repositories)
        now = time.time()
        for name in repositories:
            self.index.note_event(Event(now, "delete", name, None, None, actor, "repository"))
        return repositories

    async def _refuse_if_immutable(self, name: str, tags: list[str]) -> None:
        rules = await self.registry.rules(name)
        for tag in tags:
            if rules.tag_is_immutable(tag):
                raise RegistryError(ErrorCode.DENIED, f"tag {name}:{tag} is immutable")

    async def copy(
        self, source: str, reference: str, target: str, tag: str | None, actor: str | None = None
    ) -> str:
        """Retag or copy server-side: ``target`` gets the manifest, no bytes move.

        The blobs it links into ``target``'s namespace count against its quota.
        """
        validate_name(target)
        row = await self.registry.manifest(source, reference, pull=False)
        if tag is not None:
            validate_tag(tag)
            rules = await self.registry.rules(target)
            existing = await self.index.manifest_by_tag(target, tag)
            protect = not rules.allow_tag_overwrite or rules.tag_is_immutable(tag)
            if protect and existing is not None and existing.digest != row.digest:
                raise RegistryError(ErrorCode.DENIED, f"tag {target}:{tag} may not be overwritten")
        quota = await self.registry.quotas.check(target)
        # An index's children come first, so an index is never copied without them.
        if row.media_type in INDEX_TYPES:
            for child in msgspec.json.decode(row.body, type=ImageIndex).manifests:
                await self.index.copy_manifest(
                    source, child.digest, target, None, time.time(), quota
                )
        if not await self.index.copy_manifest(source, row.digest, target, tag, time.time(), quota):
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"{reference} is not in {source}")
        self.index.note_event(
            Event(time.time(), "push", target, tag, row.digest, actor, f"copied from {source}")
        )
        return row.digest

    # -- garbage collection ----------------------------------------------

    async def gc(self, *, dry_run: bool = False, untagged: bool | None = None) -> GcReport:
        """Mark and sweep while pushes and pulls go on; see ``Index.collect_garbage``."""
        config = self.registry.config.gc
        untagged = config.delete_untagged if untagged is None else untagged
        started = time.monotonic()
        store = self.registry.store
        async with self._gc_lock:
            await recover_trash(self.index, store)  # what a killed sweep left, first
            run = store.trash_run()
            try:
                result = await self.index.collect_garbage(
                    config.grace_period,
                    untagged,
                    dry_run,
                    lambda digest: store.trash(Digest.parse(digest), run),
                )
            except BaseException:
                # The sweep rolled back: its files go back where they were.
                await recover_trash(self.index, store)
                raise
            # The sweep has committed: cleaning up after it must not turn its answer into a 500.
            expired = 0
            try:
                await asyncio.to_thread(store.empty_trash, run)
                if not dry_run:
                    expired = await self.registry.uploads.expire()
            except Exception:
                log.exception("gc: cleanup after the sweep failed; the next run retries it")
        report = GcReport(
            dry_run=dry_run,
            manifests=result.manifests,
            blobs=len(result.blobs),
            bytes=sum(size for _, size in result.blobs),
            uploads_expired=expired,
            seconds=time.monotonic() - started,
        )
        if not dry_run and (report.blobs or report.manifests):
            self.index.note_event(
                Event(
                    time.time(),
                    "gc",
                    "",
                    None,
                    None,
                    "gc",
                    f"{report.blobs} blobs, {report.bytes} bytes",
                )
            )
        return report

    # -- retention -------------------------------------------------------

    async def set_retention(self, target: str, policy: RetentionPolicy | None) -> None:
        if policy is not None:
            for pattern in (*policy.include, *policy.exclude):
                try:
                    re.compile(pattern)
                except (re.error, RecursionError, OverflowError) as exc:
                    raise RegistryError(
                        ErrorCode.BAD_REQUEST, f"bad regex {pattern[:200]!r}: {exc}"
                    ) from None
        await self.index.set_retention_policy(
            target, None if policy is None else msgspec.to_builtins(policy)
        )

    async def retention_policies(self) -> dict[str, RetentionPolicy]:
        raw = await self.index.retention_policies()
        return {target: msgspec.convert(p, RetentionPolicy) for target, p in raw.items()}

    async def retention_preview(self, now: float | None = None) -> list[Removal]:
        """Exactly what ``retention_apply`` with the same ``now`` will remove."""
        now = time.time() if now is None else now
        policies = await self.retention_policies()
        removals: list[Removal] = []
        for summary in await self.index.repository_summaries(None):
            name = summary.name
            policy = policies.get(name) or policies.get(name.split("/", 1)[0])
            if policy is None:
                continue
            immutable = await self.registry.rules(name)
            candidates = [
                t
                for t in await self.index.tag_infos(name)
                if _considered(t.name, policy) and not immutable.tag_is_immutable(t.name)
            ]
            candidates.sort(key=lambda t: (t.pushed_at, t.name), reverse=True)
            for rank, tag in enumerate(candidates):
                reason = _removal_reason(policy, rank, tag.pushed_at, tag.last_pull_at, now)
                if reason:
                    removals.append(Removal(name, tag.name, tag.digest, reason))
        return removals

    async def retention_apply(
        self,
        now: float | None = None,
        actor: str = "retention",
        on_removal: Callable[[Removal], None] | None = None,
    ) -> list[Removal]:
        """Remove what the preview selects; returns what was removed.

        A tag is removed only while it still points at the digest the preview
        chose: one pushed again since is newer than the policy looked at.
        """
        removed: list[Removal] = []
        for removal in await self.retention_preview(now):
            if on_removal is not None:
                on_removal(removal)
            # RegistryError: removed or pushed again meanwhile, or made immutable.
            with contextlib.suppress(RegistryError):
                await self.registry.delete_manifest(
                    removal.repository, removal.tag, actor, digest=removal.digest
                )
                removed.append(removal)
                self.index.note_event(
                    Event(
                        time.time(),
                        "retention",
                        removal.repository,
                        removal.tag,
                        removal.digest,
                        actor,
                        removal.reason,
                    )
                )
        await self.index.flush_pulls()
        return removed

    async def set_quota(self, namespace: str, quota_bytes: int | None) -> None:
        if quota_bytes is not None and quota_bytes < 0:
            raise RegistryError(ErrorCode.BAD_REQUEST, "a quota is a number of bytes >= 0")
        if not await self.index.set_quota(namespace, quota_bytes):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no namespace {namespace}")


def _considered(tag: str, policy: RetentionPolicy) -> bool:
    if any(fnmatch.fnmatchcase(tag, p) for p in policy.protected):
        return False
    if policy.include and not any(re.fullmatch(p, tag) for p in policy.include):
        return False
    return not any(re.fullmatch(p, tag) for p in policy.exclude)


def _removal_reason(
    policy: RetentionPolicy, rank: int, pushed_at: float, pulled_at: float | None, now: float
) -> str | None:
    if policy.keep_last is not None and rank >= policy.keep_last:
        return f"beyond the {policy.keep_last} most recent"
    if policy.older_than_days is not None and now - pushed_at > policy.older_than_days * DAY:
        return f"pushed more than {policy.older_than_days:g} days ago"
    last_used = pulled_at or pushed_at
    if policy.unpulled_days is not None and now - last_used > policy.unpulled_days * DAY:
        return f"not pulled for {policy.unpulled_days:g} days"
    return None


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
