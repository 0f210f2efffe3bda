"""Import: an OCI image layout (a tar stream, plain or compressed, or a directory) into the
registry, through the domain layer so a push's rules and a GC's grace apply.

Three steps, so nothing of a bad archive is ever visible:

1. read: every blob entry streams into an upload temp file (``BlobWriter``: hashed
   while written, verified against the digest its name claims, fsynced). Blobs
   the registry already stores (indexed, their file of the right size) are skipped,
   neither hashed (unless ``verify``) nor written again. The writers
   keep their files locked, so the upload janitor and GC leave them alone.
2. plan: ``index.json`` names the top-level manifests, with their repository and
   tag; every manifest they need is parsed and checked (the same validation as a
   push), every blob it references must be in the archive or in the registry.
3. store: manifests are stored children first, each right after its blobs are
   linked into the repository, then every tag moves in one index transaction. A
   tag the repository's rules protect is reported, not moved.

GC sweeps (of any process) are held off from the first step to the last, as a backup
holds them (``BlobStorage.hold_sweeps``): whatever the import found stored or stored
itself stays until its tags reference it.

A failure in 1 or 2 stores nothing; ``dry_run`` stops after 2 and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import msgspec
import zstandard

from aioreg.domain.manifest import INDEX_TYPES, ImageIndex, parse_manifest
from aioreg.domain.reference import TAG_RE, Digest, validate_name
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError, StorageFullError, TooLargeError
from aioreg.storage import UploadWriter, WrittenBlob
from aioreg.storage.errors import BlobInvalidDigest, BlobInvalidLength
from aioreg.transfer.archive import TarReader, decompressed
from aioreg.transfer.layout import (
    INDEX_FILE,
    INDEX_MAX_BYTES,
    LAYOUT_FILE,
    REF_NAME_ANNOTATION,
    REPOSITORY_ANNOTATION,
    LayoutIndex,
    check_marker,
    digest_of_name,
    normalize,
    parse_index,
)

ACTOR = "import"
# Each new blob's locked temp file holds a descriptor until the import is stored:
# at most this share of the process's open-file limit, the rest is the server's.
STAGED_SHARE_OF_FD_LIMIT = 0.5
# What reading an archive raises when it is cut short or its compression is damaged.
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zstandard.ZstdError, OSError)

# A blob's bytes come in blocks this large: one worker-thread hop and one write each.
READ_CHUNK = 4 << 20

Chunks = AsyncIterator[bytes]
T = TypeVar("T")


class ArchiveDamaged(Exception):
    """Reading the archive failed (cut short, bad compression, unreadable): not our disk."""


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a layout: its name in the layout, its size, and its bytes (read once)."""

    name: str
    size: int
    chunks: Chunks
    # Leaves the bytes unread (a tar reader skips them when it moves on; a file closes).
    skip: Callable[[], Awaitable[None]] = _nothing


@dataclass(slots=True)
class _Staged:
    digest: Digest
    size: int
    stored: bool  # the registry had it before the import
    writer: UploadWriter | None = None
    upload_id: str = ""
    written: WrittenBlob | None = None


@dataclass(frozen=True, slots=True)
class _Manifest:
    digest: Digest
    body: bytes
    media_type: str
    blobs: tuple[Digest, ...]


@dataclass
class _RepositoryPlan:
    manifests: dict[str, _Manifest] = field(default_factory=dict)  # children before parents
    blobs: dict[str, Digest] = field(default_factory=dict)


@dataclass
class ImportReport:
    """What an import stored (or, dry, would store); ``refused`` tags make it a failure."""

    dry_run: bool
    repositories: list[str] = field(default_factory=list)
    manifests_new: list[tuple[str, str]] = field(default_factory=list)
    manifests_existing: int = 0
    tags_set: list[tuple[str, str, str]] = field(default_factory=list)
    tags_unchanged: list[tuple[str, str, str]] = field(default_factory=list)
    # (repository, tag, current digest, digest in the archive)
    tags_refused: list[tuple[str, str, str, str]] = field(default_factory=list)
    blobs_new: int = 0
    blobs_existing: int = 0
    bytes_new: int = 0

    @property
    def ok(self) -> bool:
        return not self.tags_refused


def _fail(code: ErrorCode, message: str, detail: object = None) -> RegistryError:
    return RegistryError(code, f"import failed, nothing was stored: {message}", detail)


class Importer:
    def __init__(
        self,
        registry: Registry,
        *,
        repository: str | None = None,
        dry_run: bool = False,
        verify: bool = False,
        max_bytes: int | None = None,
        on_blob: Callable[[int], None] | None = None,
        actor: str | None = None,
    ) -> None:
        self.registry = registry
        self.actor = actor or ACTOR
        self.repository = None if repository is None else validate_name(repository)
        self.dry_run = dry_run
        self.verify = verify  # hash blobs the registry already stores too
        self.max_bytes = max_bytes  # of new blobs written (an API import's bound)
        self._new_bytes = 0
        self.on_blob = on_blob
        self._staged: dict[str, _Staged] = {}
        self._writers_created = 0  # each holds a file descriptor until stored or dropped
        self._index: LayoutIndex | None = None
        self._plans: dict[str, _RepositoryPlan] = {}
        self._tags: list[tuple[str, str, str]] = []
        self.report = ImportReport(dry_run)

    # -- entry points --------------------------------------------------------

    async def run(self, entries: AsyncIterator[Entry]) -> ImportReport:
        try:
            async with contextlib.AsyncExitStack() as hold:
                if not self.dry_run:
                    # GC (any process) removes nothing until the import is stored, as during
                    # a backup: a blob found stored while reading (whose bytes were then
                    # skipped) stays, and so does each manifest, untagged until the end.
                    store = self.registry.store
                    await asyncio.to_thread(hold.enter_context, store.hold_sweeps())
                await self._read(entries)
                await self._plan()
                if not self.dry_run:
                    await self._store()
        finally:
            await self._drop_temp_files()
        return self.report

    # -- 1. read -------------------------------------------------------------

    async def _read(self, entries: AsyncIterator[Entry]) -> None:
        last = "the start"
        try:
            async for entry in entries:
                digest = digest_of_name(entry.name)
                if digest is not None:
                    await self._take_blob(digest, entry)
                    last = f"blob {digest}"
                elif entry.name in (INDEX_FILE, LAYOUT_FILE):
                    body = await _read_small(entry, INDEX_MAX_BYTES)
                    if entry.name == INDEX_FILE:
                        self._index = parse_index(body)
                    else:
                        check_marker(body)
                    last = entry.name
                else:
                    await entry.skip()  # not part of a layout
        except ArchiveDamaged as exc:
            raise _fail(
                ErrorCode.BAD_REQUEST,
                f"the archive is truncated or corrupt after {last}: {exc}",
            ) from exc
        if self._index is None:
            raise _fail(ErrorCode.BAD_REQUEST, "no index.json: this is not an OCI image layout")

    async def _take_blob(self, digest: Digest, entry: Entry) -> None:
        if str(digest) in self._staged:  # the same file twice: the first copy counts
            await entry.skip()
            return
        row = await self.registry.index.blobs.get(str(digest))
        store = self.registry.store
        stored = (
            row is not None
            and row.size == entry.size
            and await asyncio.to_thread(_has_size, store.path(digest), row.size)
        )
        staged = _Staged(digest, entry.size, stored)
        limit = self.registry.config.limits.manifest_max_bytes
        try:
            if stored and not self.verify:
                # Its bytes here would only be hashed to be thrown away: the registry's copy
                # is what gets linked (and what scrub verifies).
                await entry.skip()
            elif stored or (self.dry_run and entry.size > limit):
                # Verified, not written: a dry run keeps only what could be a manifest.
                await _verify(digest, entry)
            else:
                await self._check_room(digest, entry.size)
                self._check_open_files()
                self._writers_created += 1
                staged.upload_id = uuid.uuid4().hex
                writer = store.create_writer(staged.upload_id, digest.algorithm)
                staged.writer = writer
                self._staged[str(digest)] = staged
                await writer.write(
                    entry.chunks, None, self.registry.config.storage.write_buffer_bytes
                )
                staged.written = await writer.commit(digest, entry.size)
        except ArchiveDamaged as exc:
            raise _fail(
                ErrorCode.BAD_REQUEST,
                f"the archive is truncated or damaged inside blob {digest}: {exc}",
                {"digest": str(digest)},
            ) from exc
        except BlobInvalidDigest as exc:
            raise _fail(
                ErrorCode.DIGEST_INVALID,
                f"blob {digest} is corrupt: its bytes hash to {exc.actual}",
                {"digest": str(digest), "actual": exc.actual},
            ) from exc
        except BlobInvalidLength as exc:
            raise _fail(
                ErrorCode.SIZE_INVALID,
                f"blob {digest} has {exc.actual} bytes, its tar header says {exc.declared}",
                {"digest": str(digest)},
            ) from exc
        self._staged[str(digest)] = staged
        if stored:
            self.report.blobs_existing += 1
        if self.on_blob is not None:
            self.on_blob(entry.size)

    async def _check_room(self, digest: Digest, size: int) -> None:
        """Before a byte of a new blob is written: within ``max_bytes`` and the free space
        above the reserve ``/readyz`` keeps (a small zstd bomb declares huge members)."""
        if self.max_bytes is not None and self._new_bytes + size > self.max_bytes:
            raise TooLargeError(
                f"import failed, nothing was stored: blob {digest} ({size} bytes) takes the "
                f"archive's new blobs past transfer.import_max_bytes ({self.max_bytes})",
                self.max_bytes,
            )
        config = self.registry.config
        free = (await asyncio.to_thread(shutil.disk_usage, config.data_path)).free
        room = free - config.health.min_free_bytes
        if size > room:
            raise StorageFullError(
                f"blob {digest} of an import needs {size} bytes, {max(room, 0)} are free "
                "above health.min_free_bytes"
            )
        self._new_bytes += size

    def _check_open_files(self) -> None:
        held = self._writers_created
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and held >= soft * STAGED_SHARE_OF_FD_LIMIT:
            raise _fail(
                ErrorCode.UNSUPPORTED,
                f"the archive holds more than {held} new blobs, each kept open until the "
                f"import is stored, and the open-file limit is {soft}: raise it (ulimit -n) "
                "or split the export",
            )

    # -- 2. plan -------------------------------------------------------------

    async def _plan(self) -> None:
        assert self._index is not None
        for descriptor in self._index.manifests:
            annotations = descriptor.annotations or {}
            repository = annotations.get(REPOSITORY_ANNOTATION) or self.repository
            tag = _tag_of(annotations.get(REF_NAME_ANNOTATION))
            digest = _digest(descriptor.digest)
            if repository is None:
                raise _fail(
                    ErrorCode.NAME_INVALID,
                    f"the layout does not say which repository {descriptor.digest} belongs to; "
                    "name one with --repository (API: ?repository=)",
                )
            validate_name(repository)
            plan = self._plans.setdefault(repository, _RepositoryPlan())
            await self._walk(repository, plan, digest, descriptor.mediaType)
            if tag is not None:
                self._tags.append((repository, tag, str(digest)))
        self.report.repositories = list(self._plans)
        new_blobs: set[str] = set()
        for repository, plan in self._plans.items():
            for key in plan.manifests:
                if await self.registry.index.manifests.by_digest(repository, key) is None:
                    self.report.manifests_new.append((repository, key))
                else:
                    self.report.manifests_existing += 1
            new_blobs.update(d for d in plan.blobs if not self._staged[d].stored)
        self.report.blobs_new = len(new_blobs)
        self.report.bytes_new = sum(self._staged[d].size for d in new_blobs)
        await self._classify_tags()

    async def _walk(
        self, repository: str, plan: _RepositoryPlan, digest: Digest, media_type: str | None
    ) -> None:
        """The manifest and everything it needs, children first (post-order)."""
        if str(digest) in plan.manifests:
            return
        body = await self._manifest_body(digest)
        manifest = parse_manifest(body, media_type, digest.algorithm)
        if manifest.media_type in INDEX_TYPES:
            index = msgspec.json.decode(body, type=ImageIndex)
            for child in index.manifests:
                await self._walk(repository, plan, _digest(child.digest), child.mediaType)
        for blob in manifest.blobs:
            if str(blob) not in self._staged:
                if await self.registry.index.blobs.get(str(blob)) is None:
                    raise _fail(
                        ErrorCode.MANIFEST_BLOB_UNKNOWN,
                        f"blob {blob} (of manifest {digest}) is neither in the archive nor "
                        "in this registry: the archive is incomplete (truncated?)",
                        {"digest": str(blob), "manifest": str(digest)},
                    )
                self._staged[str(blob)] = _Staged(blob, 0, stored=True)
                self.report.blobs_existing += 1
            plan.blobs[str(blob)] = blob
        plan.manifests[str(digest)] = _Manifest(digest, body, manifest.media_type, manifest.blobs)

    async def _manifest_body(self, digest: Digest) -> bytes:
        staged = self._staged.get(str(digest))
        if staged is None:
            raise _fail(
                ErrorCode.MANIFEST_UNKNOWN,
                f"manifest {digest} is not in the archive (truncated?)",
                {"digest": str(digest)},
            )
        limit = self.registry.config.limits.manifest_max_bytes
        if staged.size > limit:
            raise _fail(
                ErrorCode.MANIFEST_INVALID,
                f"manifest {digest} is {staged.size} bytes; the limit is {limit}",
            )
        if staged.writer is not None:
            path = self.registry.store.upload_path(staged.upload_id)
        else:
            path = self.registry.store.path(digest)
        return await asyncio.to_thread(path.read_bytes)

    async def _classify_tags(self) -> None:
        for repository, tag, digest in self._tags:
            current = await self.registry.index.manifests.by_tag(repository, tag)
            if current is None or current.digest != digest:
                if current is not None:
                    rules = await self.registry.rules(repository)
                    if not rules.allow_tag_overwrite or rules.tag_is_immutable(tag):
                        self.report.tags_refused.append((repository, tag, current.digest, digest))
                        continue
                self.report.tags_set.append((repository, tag, digest))
            else:
                self.report.tags_unchanged.append((repository, tag, digest))

    # -- 3. store ------------------------------------------------------------

    async def _store(self) -> None:
        """Each manifest right after linking its blobs (children first), then the tags,
        together."""
        registry = self.registry
        for repository, plan in self._plans.items():
            linked: set[str] = set()
            for manifest in plan.manifests.values():
                for blob in manifest.blobs:
                    if str(blob) not in linked:
                        await self._link(repository, blob)
                        linked.add(str(blob))
                await registry.put_manifest(
                    repository, str(manifest.digest), manifest.body, manifest.media_type, self.actor
                )
        refused = await registry.put_tags(self.report.tags_set, self.actor)
        if refused:  # protected since the plan was made
            kept = {(r, t) for r, t, _ in refused}
            wanted = {(r, t): d for r, t, d in self.report.tags_set}
            self.report.tags_set = [e for e in self.report.tags_set if (e[0], e[1]) not in kept]
            self.report.tags_refused += [(r, t, c, wanted[(r, t)]) for r, t, c in refused]

    async def _link(self, repository: str, blob: Digest) -> None:
        staged = self._staged[str(blob)]
        if staged.writer is not None and staged.written is not None:
            # The first repository to need it takes the verified temp file (within quota).
            await self.registry.uploads.publish(repository, staged.written, staged.writer)
            staged.writer = None
        elif await self.registry.mount_blob(repository, str(blob), None) is None:
            raise RegistryError(
                ErrorCode.BLOB_UNKNOWN,
                f"import failed: blob {blob} left the registry while importing (garbage "
                "collected?); no tag was moved, import again",
            )

    async def _drop_temp_files(self) -> None:
        for staged in self._staged.values():
            if staged.writer is not None:
                writer, staged.writer = staged.writer, None
                await writer.cancel()


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except RegistryError as exc:
        raise _fail(
            ErrorCode.DIGEST_INVALID, f"index.json names a bad digest: {exc.message}"
        ) from None


def _tag_of(ref_name: str | None) -> str | None:
    """The tag in ``org.opencontainers.image.ref.name``: a tag, or the tag of ``name:tag``."""
    if ref_name is None:
        return None
    if TAG_RE.fullmatch(ref_name):
        return ref_name
    _, colon, tag = ref_name.rpartition(":")
    if colon and "/" not in tag and TAG_RE.fullmatch(tag):
        return tag
    raise _fail(ErrorCode.TAG_INVALID, f"index.json names {ref_name[:200]!r}, which is not a tag")


async def _read_small(entry: Entry, limit: int) -> bytes:
    if entry.size > limit:
        raise _fail(ErrorCode.SIZE_INVALID, f"{entry.name} is {entry.size} bytes; at most {limit}")
    parts = [chunk async for chunk in entry.chunks]
    return b"".join(parts)


async def _verify(digest: Digest, entry: Entry) -> None:
    hasher = hashlib.new(digest.algorithm)
    size = 0
    async for chunk in entry.chunks:
        size += len(chunk)
        await asyncio.to_thread(hasher.update, chunk)
    if size != entry.size:
        raise BlobInvalidLength(entry.size, size)
    if hasher.hexdigest() != digest.hex:
        raise BlobInvalidDigest(str(digest), f"{digest.algorithm}:{hasher.hexdigest()}")


# -- sources --------------------------------------------------------------------------


async def tar_entries(source: IO[bytes]) -> AsyncIterator[Entry]:
    """The files of a tar stream (plain, zstd or gzip), read on worker threads, in order."""
    tar = await _reading(lambda: TarReader(decompressed(source)))
    while (member := await _reading(tar.next)) is not None:
        if member.isfile():
            yield Entry(normalize(member.name), member.size, _member_chunks(tar))


async def _member_chunks(tar: TarReader) -> Chunks:
    while chunk := await _reading(tar.read_member, READ_CHUNK):
        yield chunk


async def directory_entries(root: Path) -> AsyncIterator[Entry]:
    """The files of a layout directory: ``oci-layout`` and ``index.json`` first, then blobs."""
    for name in (LAYOUT_FILE, INDEX_FILE):
        path = root / name
        if await asyncio.to_thread(path.is_file):
            yield await _file_entry(path, name)
    blobs = await asyncio.to_thread(lambda: sorted((root / "blobs").glob("*/*")))
    for path in blobs:
        if path.is_file():
            yield await _file_entry(path, path.relative_to(root).as_posix())


async def _file_entry(path: Path, name: str) -> Entry:
    f = await asyncio.to_thread(open, path, "rb")
    size = os.fstat(f.fileno()).st_size

    async def close() -> None:
        f.close()

    return Entry(name, size, _closing_chunks(f), close)


async def _closing_chunks(f: IO[bytes]) -> Chunks:
    try:
        async for chunk in _file_chunks(f):
            yield chunk
    finally:
        f.close()


async def _file_chunks(f: IO[bytes]) -> Chunks:
    while chunk := await _reading(f.read, READ_CHUNK):
        yield chunk


async def _reading(read: Callable[..., T], *args: object) -> T:
    """A blocking read of the archive on a worker thread; its failures are the archive's."""
    try:
        return await asyncio.to_thread(read, *args)
    except ARCHIVE_ERRORS as exc:
        raise ArchiveDamaged(str(exc) or type(exc).__name__) from exc
