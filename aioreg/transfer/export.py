"""Export: what a list of selectors names, as one OCI image layout in a tar stream.

Planning reads the index (tags, manifests, their children and referrers) and
settles every file the archive will hold before a byte is written; writing
then streams blob files from the blob store, each once however many
repositories share it. Manifest bodies (bounded by ``limits.manifest_max_bytes``)
are the only content held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from aioreg.domain.manifest import parse_manifest
from aioreg.domain.reference import Digest, validate_name, validate_tag
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index import ManifestRow
from aioreg.transfer.archive import Sink, TarWriter, compressed, output_fd
from aioreg.transfer.layout import (
    BLOBS_DIR,
    INDEX_FILE,
    LAYOUT_FILE,
    REF_NAME_ANNOTATION,
    REPOSITORY_ANNOTATION,
    LayoutDescriptor,
    LayoutIndex,
    blob_name,
    layout_marker,
)

PAGE = 1000
# cosign's tag-based companions of a manifest, exported with it.
COMPANION_SUFFIXES = ("sig", "att", "sbom")


@dataclass(frozen=True, slots=True)
class Selector:
    """``NAMESPACE`` or ``REPO`` (every tag of every repository at or under it),
    ``REPO:TAG`` or ``REPO@DIGEST``."""

    name: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Selector:
        name, at, digest = text.partition("@")
        if at:
            return cls(validate_name(name), digest=str(Digest.parse(digest)))
        head, slash, last = name.rpartition("/")
        base, colon, tag = last.partition(":")
        if colon:
            return cls(validate_name(head + slash + base), tag=validate_tag(tag))
        return cls(validate_name(name))


@dataclass(frozen=True, slots=True)
class ExportBlob:
    digest: Digest
    path: Path
    size: int


@dataclass
class ExportPlan:
    index: LayoutIndex = field(default_factory=LayoutIndex)
    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, ExportBlob] = field(default_factory=dict)
    repositories: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return len(self.manifests) + len(self.blobs)

    @property
    def bytes(self) -> int:
        return sum(map(len, self.manifests.values())) + sum(b.size for b in self.blobs.values())


class _Planner:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.index
        self.plan = ExportPlan()
        self._entries: set[tuple[str, str, str | None]] = set()
        self._listed: set[tuple[str, str]] = set()  # (repository, digest) with an entry
        self._repositories: set[str] = set()
        self._walked: set[tuple[str, str]] = set()

    async def select(self, selector: Selector) -> None:
        if selector.tag is not None or selector.digest is not None:
            row = await self._row(selector)
            await self._root(selector.name, row, selector.tag)
            for suffix in COMPANION_SUFFIXES:  # cosign's signature tags ride along
                algorithm, _, hex_ = row.digest.partition(":")
                companion = f"{algorithm}-{hex_}.{suffix}"
                found = await self.index.manifests.by_tag(selector.name, companion)
                if found is not None:
                    await self._root(selector.name, found, companion)
            return
        repositories = [
            n
            for n in await _all_repositories(self.registry)
            if n == selector.name or n.startswith(selector.name + "/")
        ]
        if not repositories:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, f"no repository is named {selector.name} or under it"
            )
        for name in repositories:
            repo_id = await self.index.repositories.id(name)
            if repo_id is None:
                continue
            last: str | None = None
            while True:
                tags, more = await self.index.manifests.tags(repo_id, last, PAGE)
                for tag in tags:
                    tagged = await self.index.manifests.by_tag(name, tag)
                    if tagged is not None:  # untagged meanwhile
                        await self._root(name, tagged, tag)
                if not more or not tags:
                    break
                last = tags[-1]

    async def _row(self, selector: Selector) -> ManifestRow:
        name = selector.name
        if selector.digest is not None:
            row = await self.index.manifests.by_digest(name, selector.digest)
        else:
            assert selector.tag is not None
            row = await self.index.manifests.by_tag(name, selector.tag)
        if row is None:
            shown = f"{name}@{selector.digest}" if selector.digest else f"{name}:{selector.tag}"
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"{shown} is not in the registry")
        return row

    async def _root(self, name: str, row: ManifestRow, tag: str | None) -> None:
        """An ``index.json`` entry (one per repository and tag; untagged ones once)."""
        key = (name, row.digest, tag)
        if key in self._entries or (tag is None and (name, row.digest) in self._listed):
            return
        self._entries.add(key)
        self._listed.add((name, row.digest))
        if name not in self._repositories:
            self._repositories.add(name)
            self.plan.repositories.append(name)
        annotations = {REPOSITORY_ANNOTATION: name}
        if tag is not None:
            annotations[REF_NAME_ANNOTATION] = tag
        parsed = parse_manifest(row.body, row.media_type, Digest.parse(row.digest).algorithm)
        self.plan.index.manifests.append(
            LayoutDescriptor(
                mediaType=row.media_type,
                digest=row.digest,
                size=row.size,
                artifactType=parsed.artifact_type if row.subject is not None else None,
                annotations=annotations,
            )
        )
        await self._walk(name, row)

    async def _walk(self, name: str, row: ManifestRow) -> None:
        """The manifest, its blobs, its children and its referrers (recursively)."""
        if (name, row.digest) in self._walked:
            return
        self._walked.add((name, row.digest))
        digest = Digest.parse(row.digest)
        parsed = parse_manifest(row.body, row.media_type, digest.algorithm)
        self.plan.manifests.setdefault(row.digest, row.body)
        for blob in parsed.blobs:
            if str(blob) in self.plan.blobs or str(blob) in self.plan.manifests:
                continue
            stored = await self.index.blobs.in_repository(name, str(blob))
            if stored is None:
                raise RegistryError(
                    ErrorCode.BLOB_UNKNOWN,
                    f"blob {blob} of {name}@{row.digest} is not servable (quarantined or "
                    "missing); run 'aioreg scrub' and push it again",
                )
            self.plan.blobs[str(blob)] = ExportBlob(
                blob, self.registry.store.path(blob), stored.size
            )
        for child in parsed.children:
            child_row = await self.index.manifests.by_digest(name, str(child))
            if child_row is None:
                raise RegistryError(
                    ErrorCode.MANIFEST_UNKNOWN,
                    f"child manifest {child} of {name}@{row.digest} is not stored",
                )
            await self._walk(name, child_row)
        repo_id = await self.index.repositories.id(name)
        if repo_id is None:
            return
        for referrer in await self.index.manifests.referrers(repo_id, row.digest, None):
            referrer_row = await self.index.manifests.by_digest(name, referrer.digest)
            if referrer_row is not None:
                await self._root(name, referrer_row, None)


async def plan_export(registry: Registry, selectors: Sequence[str]) -> ExportPlan:
    """Everything the selectors name (every repository when there are none)."""
    planner = _Planner(registry)
    parsed = [Selector.parse(s) for s in selectors]
    if not parsed:
        parsed = [Selector(name) for name in await _all_repositories(registry)]
    for selector in parsed:
        await planner.select(selector)
    return planner.plan


async def _all_repositories(registry: Registry) -> list[str]:
    found: list[str] = []
    last: str | None = None
    while True:
        names, more = await registry.index.repositories.catalog(last, PAGE)
        found += names
        if not more or not names:
            return found
        last = names[-1]


def write_export(
    plan: ExportPlan,
    out: Sink,
    *,
    level: int | None,
    threads: int = 0,
    on_file: Callable[[int], None] | None = None,
) -> None:
    """Stream the planned layout into ``out`` (blocking: run it on a worker thread).

    ``oci-layout`` and ``index.json`` come first, then manifests, then blobs, so
    an importer reading a cut archive knows what is missing. ``level`` None
    writes a plain tar.
    """
    with compressed(out, level, threads) as stream:
        # Never the compressor's descriptor: that is the compressed file's.
        tar = TarWriter(stream, output_fd(out) if level is None else None)
        tar.add_bytes(LAYOUT_FILE, layout_marker())
        tar.add_bytes(INDEX_FILE, msgspec.json.encode(plan.index))
        tar.directory(BLOBS_DIR)
        algorithms = {d.partition(":")[0] for d in [*plan.manifests, *plan.blobs]}
        for algorithm in sorted(algorithms):
            tar.directory(f"{BLOBS_DIR}/{algorithm}")
        for digest, body in plan.manifests.items():
            tar.add_bytes(blob_name(Digest.parse(digest)), body)
            if on_file is not None:
                on_file(len(body))
        for blob in plan.blobs.values():
            try:
                tar.add_file(blob_name(blob.digest), blob.path, blob.size)
            except OSError as exc:
                raise RegistryError(
                    ErrorCode.BLOB_UNKNOWN,
                    f"blob {blob.digest} could not be read from the blob store: {exc}",
                ) from exc
            if on_file is not None:
                on_file(blob.size)
        tar.close()
