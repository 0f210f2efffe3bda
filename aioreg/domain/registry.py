"""The registry's domain layer: what each distribution-spec operation means.

Handlers in ``aioreg.api`` translate HTTP to these calls; this layer joins the
index (what exists) with the blob store (the bytes) and owns every path out of
an upload session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aioreg.config import Config
from aioreg.domain.maintenance import recover_trash
from aioreg.domain.manifest import ParsedManifest, parse_manifest
from aioreg.domain.periodic import PeriodicJob
from aioreg.domain.reference import Digest, parse_reference, validate_name
from aioreg.domain.rules import (
    SIGNATURE_ARTIFACT_TYPES,
    PushRules,
    effective_rules,
    namespace_of,
    signature_tag,
)
from aioreg.errors import (
    ErrorCode,
    QuotaExceededError,
    RegistryError,
    TooLargeError,
    TooManyRequestsError,
)
from aioreg.index import BlobRow, Index, ManifestRow, Referrer
from aioreg.index.db import QuotaCheck
from aioreg.index.lifecycle import Event
from aioreg.storage import BlobStore, BlobWriter

log = logging.getLogger("aioreg.lifecycle")
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
# Failures that end an upload session (besides a quota refusal and DELETE).
SESSION_ENDING = frozenset({ErrorCode.DIGEST_INVALID, ErrorCode.SIZE_INVALID})
# What a client refused a new session is told to wait: sessions end as pushes finish.
SESSION_RETRY_SECONDS = 30.0
# cosign's own tags (signatures, attestations, SBOMs) are pulled to verify, never gated.
TRUST_EXEMPT_TAG_RE = re.compile(r"sha(256|512)-[0-9a-f]+\.(sig|att|sbom)")


@dataclass(frozen=True, slots=True)
class StoredBlob:
    digest: str
    size: int
    path: Path


class Registry:
    def __init__(self, config: Config) -> None:
        self.config = config
        root = config.data_path
        self.index = Index(
            root / "index.db",
            config.storage.index_busy_timeout,
            read_cache_bytes=config.limits.read_cache_bytes,
            history=config.events,
        )
        self.store = BlobStore(root)
        self._writers: dict[str, BlobWriter] = {}
        self._upload_locks: dict[str, asyncio.Lock] = {}
        interval = min(max(config.storage.upload_session_ttl / 4, 1.0), 3600.0)
        self._janitor = PeriodicJob("upload janitor", interval, self.expire_uploads)

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
        await self.expire_uploads()
        self._janitor.start()

    async def close(self) -> None:
        await self._janitor.stop()
        await self.index.close()

    async def expire_uploads(self, now: float | None = None) -> int:
        """End sessions idle past the TTL and remove temp files no session or writer owns.

        A session a request is using is left alone; so is any file a writer
        (in this process or another) holds, and any file younger than the GC
        grace period (``BlobStore.remove_upload_file``).
        """
        now = time.time() if now is None else now
        ttl = self.config.storage.upload_session_ttl
        expired = 0
        sessions = await self.index.uploads()
        for row in sessions:
            lock = self._upload_locks.get(row.id)
            if row.updated_at >= now - ttl or (lock is not None and lock.locked()):
                continue
            writer = self._writers.pop(row.id, None)
            if writer is None:
                path = self.store.upload_path(row.id)
                removed = await asyncio.to_thread(self.store.remove_upload_file, path, 0.0)
                if not removed and await asyncio.to_thread(path.exists):
                    continue  # a writer in another process holds it
            self._upload_locks.pop(row.id, None)
            # Row first: a request arriving now finds the session unknown, not half gone.
            await self.index.delete_upload(row.id)
            if writer is not None:
                await writer.cancel()
            expired += 1
        live = {row.id for row in sessions}
        grace = self.config.gc.grace_period
        await asyncio.to_thread(self._remove_stray_uploads, live, grace, now)
        return expired

    def _remove_stray_uploads(self, live: set[str], grace: float, now: float) -> None:
        # A session created after ``live`` was listed has a writer holding its file.
        for path in self.store.upload_files():
            if path.name not in live:
                self.store.remove_upload_file(path, grace, now)

    # -- blobs -----------------------------------------------------------

    async def blob(self, name: str, digest: str) -> StoredBlob:
        validate_name(name)
        parsed = Digest.parse(digest)
        row = await self.index.repository_blob(name, str(parsed))
        if row is None:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {name}")
        return StoredBlob(row.digest, row.size, self.store.path(parsed))

    async def delete_blob(self, name: str, digest: str) -> None:
        validate_name(name)
        parsed = Digest.parse(digest)

        def refuse(manifests: list[str]) -> None:
            # Unlinking would leave these manifests unpullable; delete them first.
            raise RegistryError(
                ErrorCode.UNSUPPORTED,
                f"blob {digest} is referenced by manifest {manifests[0]} in {name}"
                + (f" and {len(manifests) - 1} more" if len(manifests) > 1 else "")
                + "; delete the manifests first",
                {"manifests": manifests},
            )

        if not await self.index.unlink_blob(name, str(parsed), refuse):
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {name}")

    async def mount_blob(self, name: str, digest: str, source: str | None) -> BlobRow | None:
        """Link a blob already stored into ``name``; None when it cannot be mounted.

        With no ``source`` any stored copy will do, as the spec allows: the bytes
        are content-addressed, so a matching digest is the same blob. Whether it
        is still stored is decided inside the linking transaction (see
        ``Index.mount_blob``), and the namespace's quota applies as to an upload.
        """
        validate_name(name)
        parsed = Digest.parse(digest)
        if source is not None:
            validate_name(source)
        return await self.index.mount_blob(
            name,
            str(parsed),
            source,
            lambda: self.store.exists(parsed),
            await self.quota_check(name),
        )

    async def quota_check(self, name: str) -> QuotaCheck | None:
        """``name``'s namespace quota as a check of (used, adding); None when it has none.

        Every path that links blobs into a namespace (upload, mount, copy) hands
        this to the index, which runs it on the namespace's usage inside the
        linking transaction.
        """
        namespace = namespace_of(name)
        limit = await self.index.quota(namespace)
        if limit is None:
            return None

        def check(used: int, adding: int) -> None:
            if used + adding > limit:
                raise QuotaExceededError(namespace, limit, used, adding)

        return check

    async def _within_quota(
        self, name: str, body: AsyncIterator[bytes], offset: int, digest: Digest | None = None
    ) -> AsyncIterator[bytes]:
        """The body, refused as soon as the upload (at ``offset``) would pass the quota.

        Bytes are bounded while they arrive, not only when the blob is linked, so
        a session cannot fill the disk far past its namespace's quota. A blob
        (``digest``) the namespace already counts adds nothing up to its size.
        """
        check = await self.quota_check(name)
        if check is None:
            return body
        namespace = namespace_of(name)
        used = await self.index.namespace_usage(namespace)
        counted = 0 if digest is None else await self.index.counted_size(namespace, str(digest))
        return _checked(body, offset, lambda size: check(used, max(size - counted, 0)))

    # -- upload sessions -------------------------------------------------

    async def start_upload(self, name: str, client: str | None = None) -> str:
        """Open a session, within the caps on sessions open at once (all, and ``client``'s)."""
        validate_name(name)
        limits = self.config.limits

        def admit(total: int, mine: int) -> None:
            if limits.max_upload_sessions and total >= limits.max_upload_sessions:
                raise TooManyRequestsError(
                    f"{total} upload sessions are open, the most this registry keeps; "
                    "finish or cancel some",
                    SESSION_RETRY_SECONDS,
                )
            if limits.max_upload_sessions_per_client and mine >= (
                limits.max_upload_sessions_per_client
            ):
                raise TooManyRequestsError(
                    f"{mine} upload sessions of {client} are open, the most one client may "
                    "keep; finish or cancel some",
                    SESSION_RETRY_SECONDS,
                )

        upload_id = uuid.uuid4().hex
        await self.index.create_upload(upload_id, name, time.time(), client, admit)
        try:
            self._writers[upload_id] = BlobWriter.create(self.store, upload_id)
        except BaseException:
            await self.index.delete_upload(upload_id)
            raise
        return upload_id

    async def upload_blob(self, name: str, digest: str, body: AsyncIterator[bytes]) -> BlobRow:
        """A whole blob in one request (``POST ?digest=``): no session row, just a temp file."""
        validate_name(name)
        expected = Digest.parse(digest)
        writer = BlobWriter.create(self.store, uuid.uuid4().hex)
        try:
            body = await self._within_quota(name, body, 0, expected)
            await writer.write(body, None, self.config.storage.write_buffer_bytes)
            row = await writer.commit(expected)
            await self._publish(name, row, writer, None)
        except BaseException:
            await writer.cancel()
            raise
        return row

    async def _publish(
        self, name: str, row: BlobRow, writer: BlobWriter, upload_id: str | None
    ) -> None:
        """Index a placed blob and end its session in one transaction, then drop the temp file.

        Until that transaction commits, a crash leaves the session resumable
        (its temp file is still there); after it, the blob is fully recorded.
        """
        digest = Digest.parse(row.digest)
        await self.index.link_blob(
            name,
            row,
            ended_upload=upload_id,
            place=lambda: writer.place(digest),
            quota=await self.quota_check(name),
        )
        if upload_id is not None:
            self._writers.pop(upload_id, None)
            self._upload_locks.pop(upload_id, None)
        await writer.release()

    async def upload_offset(self, name: str, upload_id: str) -> int:
        async with self._upload(name, upload_id) as writer:
            return writer.offset

    async def append_upload(
        self, name: str, upload_id: str, body: AsyncIterator[bytes], start: int | None
    ) -> int:
        async with self._upload(name, upload_id) as writer, self._request(upload_id, writer):
            body = await self._within_quota(name, body, writer.offset)
            offset = await writer.write(body, start, self.config.storage.write_buffer_bytes)
            await self.index.set_upload_offset(upload_id, offset, time.time())
            return offset

    async def finish_upload(
        self,
        name: str,
        upload_id: str,
        digest: str,
        body: AsyncIterator[bytes] | None,
        start: int | None,
    ) -> BlobRow:
        """Take the last bytes (if any), verify, store and link."""
        expected = Digest.parse(digest)
        async with self._upload(name, upload_id) as writer, self._request(upload_id, writer):
            if body is not None:
                body = await self._within_quota(name, body, writer.offset, expected)
                await writer.write(body, start, self.config.storage.write_buffer_bytes)
            row = await writer.commit(expected)
            await self._publish(name, row, writer, upload_id)
            return row

    async def cancel_upload(self, name: str, upload_id: str) -> None:
        async with self._upload(name, upload_id) as writer:
            await self._end_upload(upload_id, writer)

    @contextlib.asynccontextmanager
    async def _request(self, upload_id: str, writer: BlobWriter) -> AsyncIterator[None]:
        """One request's work on a session, and what its failure does to the session.

        A digest or size mismatch or a quota refusal ends the session (as DELETE
        does); any other failure (the client going away mid-body, a stalled body,
        a full disk, a busy index) rolls it back to the last acknowledged byte.
        """
        acknowledged = writer.offset
        try:
            yield
        except RegistryError as exc:
            if isinstance(exc, QuotaExceededError) or exc.code in SESSION_ENDING:
                await self._end_upload(upload_id, writer)
            else:
                self._roll_back(upload_id, writer, acknowledged)
            raise
        except BaseException:
            self._roll_back(upload_id, writer, acknowledged)
            raise

    def _roll_back(self, upload_id: str, writer: BlobWriter, acknowledged: int) -> None:
        # ``write`` undoes its own bytes; past it (the bytes verified, an index write
        # failed), the next request resumes the session from the index's offset.
        if writer.offset != acknowledged:
            self._writers.pop(upload_id, None)

    async def _end_upload(self, upload_id: str, writer: BlobWriter) -> None:
        await writer.cancel()
        self._writers.pop(upload_id, None)
        self._upload_locks.pop(upload_id, None)
        await self.index.delete_upload(upload_id)

    @contextlib.asynccontextmanager
    async def _upload(self, name: str, upload_id: str) -> AsyncIterator[BlobWriter]:
        """The session's writer, with requests on one session taking turns."""
        validate_name(name)
        unknown = RegistryError(
            ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id[:64]!r} is unknown in {name}"
        )
        if not UPLOAD_ID_RE.fullmatch(upload_id):
            raise unknown
        row = await self.index.upload(upload_id)
        if row is None or row.repository != name:
            raise unknown
        async with self._upload_locks.setdefault(upload_id, asyncio.Lock()):
            if upload_id not in self._upload_locks:
                raise unknown  # Ended while this request waited its turn.
            writer = await self._writer_for(upload_id, unknown)
            try:
                yield writer
            except FileNotFoundError:
                # The session's file went away under it (expired meanwhile).
                self._writers.pop(upload_id, None)
                raise unknown from None

    async def _writer_for(self, upload_id: str, unknown: RegistryError) -> BlobWriter:
        writer = self._writers.get(upload_id)
        if writer is None:
            # Read under the session's lock: the offset the last request acknowledged.
            row = await self.index.upload(upload_id)
            if row is None:
                raise unknown
            try:
                writer = await BlobWriter.resume(self.store, upload_id, row.committed_bytes)
            except FileNotFoundError:
                await self.index.delete_upload(upload_id)
                raise unknown from None
            self._writers[upload_id] = writer
        return writer

    # -- manifests -------------------------------------------------------

    async def put_manifest(
        self,
        name: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        actor: str | None = None,
    ) -> ParsedManifest:
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
        tag = None if isinstance(ref, Digest) else ref
        protect = False
        if tag is not None:
            rules = await self.rules(name)
            protect = not rules.allow_tag_overwrite or rules.tag_is_immutable(tag)
        now = time.time()
        await self.index.put_manifest(name, manifest, body, tag, now, protect_existing_tag=protect)
        digest = str(manifest.digest)
        self.index.note_event(Event(now, "push", name, tag, digest, actor))
        return manifest

    async def rules(self, name: str) -> PushRules:
        """The push rules in force for a repository (namespace rules, repository overrides)."""
        namespace = await self.index.namespace(namespace_of(name))
        _, overrides = await self.index.repository_settings(name)
        return effective_rules(namespace.rules if namespace else {}, overrides)

    async def _require_signature(self, name: str, tag: str, row: ManifestRow) -> None:
        if TRUST_EXEMPT_TAG_RE.fullmatch(tag) or not (await self.rules(name)).require_content_trust:
            return
        for referrer in await self.index.referrers(row.repository_id, row.digest, None):
            if referrer.artifact_type in SIGNATURE_ARTIFACT_TYPES:
                return
        if await self.index.manifest_by_tag(name, signature_tag(row.digest)) is not None:
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
        if isinstance(ref, Digest):
            row = await self.index.manifest_by_digest(name, str(ref))
        else:
            row = None if tag is None else await self.index.manifest_by_tag(name, tag)
        if row is None:
            if await self.index.repository_id(name) is None:
                raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference[:200]} is not in {name}"
            )
        if tag is not None:
            await self._require_signature(name, tag, row)
        if pull:
            self.index.note_pull(row, tag)
            self.index.note_event(Event(time.time(), "pull", name, tag, row.digest, actor))
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
                for tag in await self.index.tags_of(name, str(ref)):
                    self._refuse_immutable(rules, name, tag)
            deleted = await self.index.delete_manifest(name, str(ref))
        else:
            self._refuse_immutable(rules, name, ref)
            deleted = await self.index.delete_tag(name, ref, digest)
        if not deleted:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in {name}"
            )
        kind, tag, digest = (
            ("delete", None, str(ref)) if isinstance(ref, Digest) else ("untag", ref, None)
        )
        self.index.note_event(Event(time.time(), kind, name, tag, digest, actor))

    @staticmethod
    def _refuse_immutable(rules: PushRules, name: str, tag: str) -> None:
        if rules.tag_is_immutable(tag):
            raise RegistryError(
                ErrorCode.DENIED, f"tag {name}:{tag} is immutable and cannot be deleted"
            )

    # -- listings --------------------------------------------------------

    async def _repository_id(self, name: str) -> int:
        validate_name(name)
        repo_id = await self.index.repository_id(name)
        if repo_id is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")
        return repo_id

    async def tags(self, name: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        repo_id = await self._repository_id(name)
        return await self.index.tags(repo_id, last, limit)

    async def catalog(self, last: str | None, limit: int) -> tuple[list[str], bool]:
        return await self.index.catalog(last, limit)

    async def referrers(self, name: str, digest: str, artifact_type: str | None) -> list[Referrer]:
        validate_name(name)
        subject = Digest.parse(digest)
        repo_id = await self.index.repository_id(name)
        if repo_id is None:
            return []
        return await self.index.referrers(repo_id, str(subject), artifact_type)


async def _checked(
    body: AsyncIterator[bytes], offset: int, check: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """``body`` with ``check(size)`` run on the upload's size before each chunk is let through."""
    size = offset
    async for chunk in body:
        size += len(chunk)
        check(size)
        yield chunk
