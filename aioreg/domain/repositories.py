"""Changing repositories as wholes: deletes (repository, artifact, namespace),
server-side copies, namespace quotas, deprecation notices. Immutable tags refuse
every delete.
"""

from __future__ import annotations

import time

import msgspec

from aioreg.domain.manifest import INDEX_TYPES, ImageIndex
from aioreg.domain.reference import Digest, validate_name, validate_tag
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index import Event

# Longer notices are refused; a Warning header carries what fits of one (4096 bytes in all).
DEPRECATION_MESSAGE_MAX = 8192


class Repositories:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.index

    async def delete(self, name: str, actor: str | None = None) -> None:
        validate_name(name)
        await self._refuse_if_immutable(
            name, [t.name for t in await self.index.listings.tag_infos(name)]
        )
        if not await self.index.repositories.delete(name, actor):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")
        self.index.activity.note_event(
            Event(time.time(), "delete", name, None, None, actor, "repository")
        )

    async def delete_artifact(self, name: str, digest: str, actor: str | None = None) -> list[str]:
        """Remove one artifact and the tags pointing at it; returns those tags."""
        validate_name(name)
        parsed = str(Digest.parse(digest))
        tags = await self.index.manifests.tags_of(name, parsed)
        await self.registry.delete_manifest(name, parsed, actor)
        return tags

    async def delete_namespace(self, namespace: str, actor: str | None = None) -> list[str]:
        """All of a namespace or nothing: every repository is checked before any goes."""
        repositories = await self.index.repositories.in_namespace(namespace)
        for name in repositories:
            await self._refuse_if_immutable(
                name, [t.name for t in await self.index.listings.tag_infos(name)]
            )
        await self.index.repositories.delete_namespace(namespace, repositories, actor)
        now = time.time()
        for name in repositories:
            self.index.activity.note_event(
                Event(now, "delete", name, None, None, actor, "repository")
            )
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
            existing = await self.index.manifests.by_tag(target, tag)
            protect = not rules.allow_tag_overwrite or rules.tag_is_immutable(tag)
            if protect and existing is not None and existing.digest != row.digest:
                raise RegistryError(ErrorCode.DENIED, f"tag {target}:{tag} may not be overwritten")
        quota = await self.registry.quotas.limit(target)
        with self.registry.quotas.refusal(target):
            # An index's children come first, so an index is never copied without them.
            if row.media_type in INDEX_TYPES:
                for child in msgspec.json.decode(row.body, type=ImageIndex).manifests:
                    await self.index.manifests.copy(
                        source, child.digest, target, None, time.time(), quota, actor
                    )
            copied = await self.index.manifests.copy(
                source, row.digest, target, tag, time.time(), quota, actor
            )
        if not copied:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"{reference} is not in {source}")
        self.index.activity.note_event(
            Event(time.time(), "push", target, tag, row.digest, actor, f"copied from {source}")
        )
        return row.digest

    async def set_quota(self, namespace: str, quota_bytes: int | None) -> None:
        if quota_bytes is not None and quota_bytes < 0:
            raise RegistryError(ErrorCode.BAD_REQUEST, "a quota is a number of bytes >= 0")
        if not await self.index.usage.set_quota(namespace, quota_bytes):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no namespace {namespace}")

    async def set_deprecation(
        self, name: str, message: str | None, tag: str | None = None
    ) -> str | None:
        """Mark a repository (or one tag name in it) deprecated with a notice for its
        pullers, or clear it (None); returns the notice as stored."""
        validate_name(name)
        if tag is not None:
            validate_tag(tag)
        if message is not None:
            message = message.strip()
            if not message or len(message) > DEPRECATION_MESSAGE_MAX:
                raise RegistryError(
                    ErrorCode.BAD_REQUEST,
                    f"a deprecation message has 1 to {DEPRECATION_MESSAGE_MAX} characters",
                )
        if not await self.index.repositories.set_deprecation(name, message, tag):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")
        return message
