"""The registry's domain layer: what each distribution-spec operation means.

Handlers in ``aioreg.api`` translate HTTP to these calls; this layer joins the
index (what exists) with the blob store (the bytes). Upload sessions are
``UploadSessions`` (``self.uploads``), quotas ``Quotas`` (``self.quotas``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aioreg.config import Config
from aioreg.domain.manifest import ParsedManifest, parse_manifest
from aioreg.domain.quotas import Quotas
from aioreg.domain.reference import Digest, parse_reference, validate_name, validate_tag
from aioreg.domain.rules import (
    SIGNATURE_ARTIFACT_TYPES,
    PushRules,
    effective_rules,
    namespace_of,
    signature_tag,
)
from aioreg.domain.trash import recover_trash
from aioreg.domain.uploads import UploadSessions
from aioreg.domain.warnings import warn
from aioreg.domain.workers import WorkerIdentity
from aioreg.errors import ErrorCode, RegistryError, TooLargeError
from aioreg.index import (
    BlobRow,
    BlobStillReferenced,
    Event,
    Index,
    ManifestRow,
    MissingReferences,
    Referrer,
    SizeMismatch,
    TagMoveRefused,
)
from aioreg.index.cache import SharedGeneration
from aioreg.index.protocols import IndexProtocol
from aioreg.storage import BlobStorage, BlobStore

log = logging.getLogger("aioreg.registry")
# cosign's own tags (signatures, attestations, SBOMs) are pulled to verify, never gated.
TRUST_EXEMPT_TAG_RE = re.compile(r"sha(256|512)-[0-9a-f]+\.(sig|att|sbom)")


@dataclass(frozen=True, slots=True)
class PushedManifest:
    """A stored manifest and the tags now pointing at it (from this push)."""

    manifest: ParsedManifest
    tags: list[str]


@dataclass(frozen=True, slots=True)
class StoredBlob:
    digest: str
    size: int
    path: Path


class Registry:
    def __init__(self, config: Config, worker: WorkerIdentity | None = None) -> None:
        """``worker``: this process's place among ``server.workers`` (None: the only one)."""
        self.config = config
        self.worker = worker
        root = config.data_path
        self.index: IndexProtocol = Index(
            root / "index.db",
            config.storage.index_busy_timeout,
            read_cache_bytes=config.limits.read_cache_bytes,
            history=config.events,
            shared_generation=None
            if worker is None
            else SharedGeneration(worker.generation_path, worker.number, worker.count),
            webhooks=config.webhooks,
        )
        self.store: BlobStorage = BlobStore(root)
        self.quotas = Quotas(self.index)
        self.uploads = UploadSessions(config, self.index, self.store, self.quotas, worker)

    async def open(self) -> None:
        self.store.open()
        await self.index.open()
        # Before serving: files a killed GC sweep left in trash/ go back (or, if swept, go).
        trash = await recover_trash(self.index, self.store)
        if trash.restored or trash.discarded:
            log.warning(
                "recovered an interrupted GC sweep: %d blobs restored, %d swept ones removed",
                len(trash.restored),
                len(trash.discarded),
            )
        await self.uploads.open()

    async def close(self) -> None:
        await self.uploads.close()
        await self.index.close()

    # -- blobs -----------------------------------------------------------

    async def blob(self, name: str, digest: str) -> StoredBlob:
        validate_name(name)
        parsed = Digest.parse(digest)
        row = await self.index.blobs.in_repository(name, str(parsed))
        if row is None:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {name}")
        return StoredBlob(row.digest, row.size, self.store.path(parsed))

    async def delete_blob(self, name: str, digest: str) -> None:
        validate_name(name)
        parsed = Digest.parse(digest)

        try:
            unlinked = await self.index.blobs.unlink(name, str(parsed), refuse_if_referenced=True)
        except BlobStillReferenced as refused:
            # Unlinking would leave these manifests unpullable; delete them first.
            manifests = refused.manifests
            raise RegistryError(
                ErrorCode.UNSUPPORTED,
                f"blob {digest} is referenced by manifest {manifests[0]} in {name}"
                + (f" and {len(manifests) - 1} more" if len(manifests) > 1 else "")
                + "; delete the manifests first",
                {"manifests": manifests},
            ) from refused
        if not unlinked:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {name}")

    async def mount_blob(
        self, name: str, digest: str, source: str | None, *, adopt: bool = False
    ) -> BlobRow | None:
        """Link a blob already stored into ``name``; None when it cannot be mounted.

        With no ``source`` any stored copy will do, as the spec allows: the bytes
        are content-addressed, so a matching digest is the same blob. Whether it
        is still stored is decided inside the linking transaction (see
        ``BlobQueries.mount``), and the namespace's quota applies as to an upload.
        ``adopt``: see ``BlobQueries.link`` (a proxy's manifests cached before their blobs).
        """
        validate_name(name)
        parsed = Digest.parse(digest)
        if source is not None:
            validate_name(source)
        limit = await self.quotas.limit(name)
        with self.quotas.refusal(name):
            return await self.index.blobs.mount(
                name, str(parsed), source, lambda: self.store.exists(parsed), limit, adopt
            )

    # -- manifests -------------------------------------------------------

    async def put_manifest(
        self,
        name: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        actor: str | None = None,
        tags: Sequence[str] = (),
    ) -> PushedManifest:
        """Store a manifest pushed by tag, or by digest with any number of ``tags``.

        Every tag meets the rules a push by that tag would (valid name, immutable
        tags, overwrite off); one refused tag refuses the push whole, storing nothing.
        """
        validate_name(name)
        limit = self.config.limits.manifest_max_bytes
        if len(body) > limit:
            raise TooLargeError(f"manifest is {len(body)} bytes; the limit is {limit}", limit)
        ref = parse_reference(reference)
        algorithm = ref.algorithm if isinstance(ref, Digest) else "sha256"
        manifest = parse_manifest(body, content_type, algorithm)
        if isinstance(ref, Digest) and ref != manifest.digest:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"manifest digest is {manifest.digest}, not {ref}",
                {"expected": str(ref), "actual": str(manifest.digest)},
            )
        if tags and not isinstance(ref, Digest):
            raise RegistryError(
                ErrorCode.TAG_INVALID,
                "tag parameters are for a push by digest; this push is by tag "
                f"{ref}, so push by digest to give the manifest more tags",
                {"reference": ref, "tags": list(tags)[:20]},
            )
        # One entry per tag, in the order given: a repeated tag is one tag.
        pushed = [ref] if isinstance(ref, str) else list(dict.fromkeys(map(validate_tag, tags)))
        protected: set[str] = set()
        if pushed:
            rules = await self.rules(name)
            protected = {
                t for t in pushed if not rules.allow_tag_overwrite or rules.tag_is_immutable(t)
            }
        now = time.time()
        try:
            await self.index.manifests.put(
                name, manifest, body, pushed, now, protected_tags=protected, actor=actor
            )
        except TagMoveRefused as refused:
            tag, current = refused.tag, refused.current_digest
            raise RegistryError(
                ErrorCode.DENIED,
                f"tag {name}:{tag} already points at {current} and may not be overwritten"
                + ("; nothing was stored" if len(pushed) > 1 else ""),
                {"tag": tag, "current": current},
            ) from refused
        except SizeMismatch as wrong:
            what = "blob" if wrong.kind == "blob" else "child manifest"
            raise RegistryError(
                ErrorCode.MANIFEST_INVALID,
                f"the descriptor of {wrong.digest} says {wrong.declared} bytes; the stored "
                f"{what} in {name} has {wrong.stored}",
                {"digest": wrong.digest, "declared": wrong.declared, "stored": wrong.stored},
            ) from wrong
        except MissingReferences as missing:
            what = "blob" if missing.kind == "blob" else "child manifest"
            raise RegistryError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                f"manifest references {missing.digests[0]}, which is not a {what} in {name}",
                {"missing": missing.digests},
            ) from missing
        digest = str(manifest.digest)
        event_tags: list[str | None] = [*pushed] or [None]
        for event_tag in event_tags:
            self.index.activity.note_event(Event(now, "push", name, event_tag, digest, actor))
        return PushedManifest(manifest, pushed)

    async def put_tags(
        self, tags: Sequence[tuple[str, str, str]], actor: str | None = None
    ) -> list[tuple[str, str, str]]:
        """Move many tags, (repository, tag, digest) each, in one transaction (an import's).

        Each follows its repository's push rules: a tag they protect (immutable, or
        overwrite off) that points at another digest keeps pointing there and is
        returned as (repository, tag, current digest); the others move together.
        """
        protected: set[tuple[str, str]] = set()
        rules: dict[str, PushRules] = {}
        for name, tag, _ in tags:
            validate_name(name)
            validate_tag(tag)
            if name not in rules:
                rules[name] = await self.rules(name)
            if not rules[name].allow_tag_overwrite or rules[name].tag_is_immutable(tag):
                protected.add((name, tag))
        now = time.time()
        try:
            refused = await self.index.manifests.put_tags(tags, now, protected=protected)
        except MissingReferences as missing:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN,
                f"cannot tag {missing.digests[0]}: it is not stored; no tag was moved",
            ) from missing
        kept = {(name, tag) for name, tag, _ in refused}
        for name, tag, digest in tags:
            if (name, tag) not in kept:
                self.index.activity.note_event(Event(now, "push", name, tag, digest, actor))
        return refused

    async def warn_if_deprecated(self, name: str, tag: str | None = None) -> None:
        """A pull from a repository (or of a tag) an admin deprecated tells the client why."""
        message = await self.index.repositories.deprecation(name)
        if message is not None:
            warn(f"{name} is deprecated: {message}")
        if tag is not None:
            message = await self.index.repositories.deprecation(name, tag)
            if message is not None:
                warn(f"{name}:{tag} is deprecated: {message}")

    async def rules(self, name: str) -> PushRules:
        """The push rules in force for a repository (namespace rules, repository overrides)."""
        namespace = await self.index.accounts.namespace(namespace_of(name))
        _, overrides = await self.index.accounts.repository_settings(name)
        return effective_rules(namespace.rules if namespace else {}, overrides)

    async def _require_signature(self, name: str, tag: str, row: ManifestRow) -> None:
        if TRUST_EXEMPT_TAG_RE.fullmatch(tag) or not (await self.rules(name)).require_content_trust:
            return
        for referrer in await self.index.manifests.referrers(row.repository_id, row.digest, None):
            if referrer.artifact_type in SIGNATURE_ARTIFACT_TYPES:
                return
        if await self.index.manifests.by_tag(name, signature_tag(row.digest)) is not None:
            return
        raise RegistryError(
            ErrorCode.DENIED,
            f"{name}:{tag} ({row.digest}) has no signature and {namespace_of(name)} "
            "requires content trust",
        )

    async def manifest(
        self, name: str, reference: str, *, pull: bool, actor: str | None = None
    ) -> ManifestRow:
        validate_name(name)
        try:
            ref: str | Digest | None = parse_reference(reference)
        except RegistryError:
            # The spec lists only 404 for a fetch: a reference that is neither a
            # tag nor a digest names a manifest that cannot exist.
            ref = None
        tag = ref if isinstance(ref, str) else None
        await self.warn_if_deprecated(name, tag)
        if isinstance(ref, Digest):
            row = await self.index.manifests.by_digest(name, str(ref))
        else:
            row = None if tag is None else await self.index.manifests.by_tag(name, tag)
        if row is None:
            await self._repository_id(name)  # NAME_UNKNOWN when there is no such repository
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference[:200]} is not in {name}"
            )
        if tag is not None:
            await self._require_signature(name, tag, row)
        if pull:
            self.index.activity.note_pull(row, tag)
            self.index.activity.note_event(Event(time.time(), "pull", name, tag, row.digest, actor))
        return row

    async def delete_manifest(
        self, name: str, reference: str, actor: str | None = None, *, digest: str | None = None
    ) -> None:
        """Delete by digest, or untag; a tag with ``digest`` only while it points at it."""
        validate_name(name)
        ref = parse_reference(reference)
        rules = await self.rules(name)
        if isinstance(ref, Digest):
            if rules.immutable_tags:
                for tag in await self.index.manifests.tags_of(name, str(ref)):
                    self._refuse_immutable(rules, name, tag)
            deleted = await self.index.manifests.delete(name, str(ref), actor)
        else:
            self._refuse_immutable(rules, name, ref)
            deleted = await self.index.manifests.delete_tag(name, ref, digest, actor)
        if not deleted:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in {name}"
            )
        if isinstance(ref, Digest):
            event = Event(time.time(), "delete", name, None, str(ref), actor)
        else:
            event = Event(time.time(), "untag", name, ref, None, actor)
        self.index.activity.note_event(event)

    @staticmethod
    def _refuse_immutable(rules: PushRules, name: str, tag: str) -> None:
        if rules.tag_is_immutable(tag):
            raise RegistryError(
                ErrorCode.DENIED, f"tag {name}:{tag} is immutable and cannot be deleted"
            )

    # -- listings --------------------------------------------------------

    async def _repository_id(self, name: str) -> int:
        validate_name(name)
        repo_id = await self.index.repositories.id(name)
        if repo_id is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")
        return repo_id

    async def tags(self, name: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        repo_id = await self._repository_id(name)
        await self.warn_if_deprecated(name)
        return await self.index.manifests.tags(repo_id, last, limit)

    async def catalog(self, last: str | None, limit: int) -> tuple[list[str], bool]:
        return await self.index.repositories.catalog(last, limit)

    async def referrers(self, name: str, digest: str, artifact_type: str | None) -> list[Referrer]:
        validate_name(name)
        subject = Digest.parse(digest)
        repo_id = await self.index.repositories.id(name)
        if repo_id is None:
            return []
        return await self.index.manifests.referrers(repo_id, str(subject), artifact_type)
