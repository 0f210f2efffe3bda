"""Manifest formats the registry accepts, decoded and checked with msgspec.

Docker schema2 and manifest lists, OCI image manifests and indexes, and OCI 1.1
artifacts (``artifactType``, any config media type, ``subject``). The bytes are
kept exactly as pushed; these types only read them to learn what they reference.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aioreg.domain.reference import Digest
from aioreg.errors import ErrorCode, RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MAX_SIZE = (1 << 63) - 1
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES

# Layers a client pulls from elsewhere; a registry does not hold them.
NONDISTRIBUTABLE_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


class Platform(msgspec.Struct, kw_only=True):
    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = msgspec.field(default=None, name="os.version")
    os_features: list[str] | None = msgspec.field(default=None, name="os.features")
    features: list[str] | None = None


class Descriptor(msgspec.Struct, kw_only=True, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    artifactType: str | None = None
    platform: Platform | None = None
    data: str | None = None


class ImageManifest(msgspec.Struct, kw_only=True):
    schemaVersion: int
    mediaType: str | None = None
    artifactType: str | None = None
    config: Descriptor
    layers: list[Descriptor] = []
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class ImageIndex(msgspec.Struct, kw_only=True):
    schemaVersion: int
    mediaType: str | None = None
    artifactType: str | None = None
    manifests: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class _Probe(msgspec.Struct):
    """Just enough to tell which format a body claims to be, and whether it mixes them."""

    mediaType: str | None = None
    schemaVersion: int | None = None
    manifests: msgspec.Raw = msgspec.Raw()  # empty unless present
    config: msgspec.Raw = msgspec.Raw()
    layers: msgspec.Raw = msgspec.Raw()


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """What the index needs to know about a pushed manifest."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None
    subject: Digest | None
    blobs: tuple[Digest, ...]
    children: tuple[Digest, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    # Declared size of each referenced blob and child, checked against what is stored.
    sizes: dict[str, int] = field(default_factory=dict)


def _invalid(message: str, detail: object = None) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, message, detail)


def _fields(*types: type[msgspec.Struct]) -> dict[str, str]:
    """Each field's JSON name by its case-folded spelling."""
    return {name.casefold(): name for t in types for name in t.__struct_encode_fields__}


# The objects whose field names Go clients match case-insensitively, and where they nest.
_TOP_FIELDS = _fields(ImageManifest, ImageIndex)
_DESCRIPTOR_FIELDS = _fields(Descriptor)
_PLATFORM_FIELDS = _fields(Platform)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook: a repeated key is refused (clients differ on which one counts)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        duplicate = next(key for key, n in counts.items() if n > 1)
        raise _invalid(f"manifest repeats the key {duplicate[:100]!r}")
    return obj


def _check_spelling(obj: object, fields: dict[str, str], where: str) -> None:
    """Refuse a case variant (``LAYERS``) of a known field: Go clients would read it."""
    if not isinstance(obj, dict):
        return
    for key in obj:
        known = fields.get(key.casefold())
        if known is not None and key != known:
            raise _invalid(f"{where}: {key[:100]!r} is a case variant of the field {known!r}")


def _check_descriptor(obj: object, where: str) -> None:
    _check_spelling(obj, _DESCRIPTOR_FIELDS, where)
    if isinstance(obj, dict):
        _check_spelling(obj.get("platform"), _PLATFORM_FIELDS, f"{where}.platform")


def _check_unambiguous(body: bytes) -> None:
    """The body reads the same to every client: UTF-8, no repeated keys, no case variants.

    msgspec (like Go) lets the last of two equal keys win and skips unknown
    spellings, while Go clients match field names case-insensitively; either
    would let a registry and a client see different manifests in the same bytes.
    """
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as exc:
        raise _invalid(f"manifest is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    except ValueError as exc:  # not JSON, or an integer too long to read
        raise _invalid(f"manifest is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise _invalid("manifest is not a JSON object")
    _check_spelling(document, _TOP_FIELDS, "manifest")
    for name in ("config", "subject"):
        _check_descriptor(document.get(name), name)
    for name in ("layers", "manifests"):
        entries = document.get(name)
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                _check_descriptor(entry, f"{name}[{i}]")


def _declared_sizes(entries: list[tuple[Digest, Descriptor]]) -> dict[str, int]:
    """Digest → declared size; one digest declared with two sizes cannot be right."""
    sizes: dict[str, int] = {}
    for digest, descriptor in entries:
        previous = sizes.setdefault(str(digest), descriptor.size)
        if previous != descriptor.size:
            raise _invalid(f"{digest} is declared with sizes {previous} and {descriptor.size}")
    return sizes


def _descriptor_digest(descriptor: Descriptor, where: str) -> Digest:
    if not 0 <= descriptor.size <= MAX_SIZE:
        raise _invalid(f"{where}: size {descriptor.size} is out of range")
    try:
        return Digest.parse(descriptor.digest)
    except RegistryError as exc:
        raise _invalid(f"{where}: {exc.message}") from None


def _media_type(body: bytes, content_type: str | None) -> str:
    """Decide the format from the body's ``mediaType`` and the request's Content-Type."""
    try:
        probe = msgspec.json.decode(body, type=_Probe)
    except msgspec.DecodeError as exc:
        raise _invalid(f"manifest is not a JSON object: {exc}") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    declared = probe.mediaType
    if declared in DOCKER_SCHEMA1 or (probe.schemaVersion == 1 and declared is None):
        raise RegistryError(
            ErrorCode.MANIFEST_INVALID,
            "Docker schema1 manifests are not supported; push schema2 or OCI",
        )
    if probe.schemaVersion != 2:
        raise _invalid(f"schemaVersion must be 2, got {probe.schemaVersion!r}")
    # A document that is both an image manifest and an index is ambiguous
    # (CVE-2021-41190): clients could read it either way.
    if probe.manifests and (probe.config or probe.layers):
        raise _invalid("a manifest cannot have both 'manifests' and 'config'/'layers'")
    declared_kind = probe.mediaType
    if declared_kind in IMAGE_TYPES and probe.manifests:
        raise _invalid(f"a {declared_kind} cannot have a 'manifests' field")
    if declared_kind in INDEX_TYPES and (probe.config or probe.layers):
        raise _invalid(f"a {declared_kind} cannot have 'config' or 'layers'")
    if declared is not None:
        if declared not in MANIFEST_TYPES:
            raise _invalid(f"unsupported manifest mediaType {declared!r}")
        if content_type and content_type in MANIFEST_TYPES and content_type != declared:
            raise _invalid(
                f"Content-Type {content_type!r} does not match the manifest's "
                f"mediaType {declared!r}"
            )
        return declared
    if content_type in (OCI_MANIFEST, OCI_INDEX):
        return content_type
    if content_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST):
        raise _invalid(f"a {content_type} manifest must carry its mediaType field")
    raise _invalid(
        "manifest has no mediaType and the Content-Type does not name an OCI manifest type",
        {"content_type": content_type},
    )


def parse_manifest(
    body: bytes, content_type: str | None, algorithm: str = "sha256"
) -> ParsedManifest:
    """Decode and check a manifest body; the digest is of these exact bytes."""
    if content_type:
        content_type = content_type.split(";", 1)[0].strip() or None
    _check_unambiguous(body)
    media_type = _media_type(body, content_type)
    digest = Digest.of(body, algorithm)
    try:
        if media_type in IMAGE_TYPES:
            image = msgspec.json.decode(body, type=ImageManifest)
            config = _descriptor_digest(image.config, "config")
            layers = [
                (_descriptor_digest(layer, f"layers[{i}]"), layer)
                for i, layer in enumerate(image.layers)
                if not _is_foreign(layer)
            ]
            if media_type == DOCKER_MANIFEST and image.subject is not None:
                raise _invalid("Docker schema2 manifests cannot carry a subject")
            return ParsedManifest(
                media_type=media_type,
                digest=digest,
                size=len(body),
                artifact_type=image.artifactType or image.config.mediaType,
                subject=_subject(image.subject),
                blobs=(config, *(d for d, _ in layers)),
                children=(),
                annotations=image.annotations or {},
                sizes=_declared_sizes([(config, image.config), *layers]),
            )
        index = msgspec.json.decode(body, type=ImageIndex)
        children = [
            (_descriptor_digest(child, f"manifests[{i}]"), child)
            for i, child in enumerate(index.manifests)
        ]
        return ParsedManifest(
            media_type=media_type,
            digest=digest,
            size=len(body),
            artifact_type=index.artifactType,
            subject=_subject(index.subject),
            blobs=(),
            children=tuple(d for d, _ in children),
            annotations=index.annotations or {},
            sizes=_declared_sizes(children),
        )
    except msgspec.ValidationError as exc:
        raise _invalid(f"malformed {media_type}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None


def _is_foreign(layer: Descriptor) -> bool:
    return layer.mediaType in NONDISTRIBUTABLE_TYPES or bool(layer.urls)


def _subject(subject: Descriptor | None) -> Digest | None:
    return None if subject is None else _descriptor_digest(subject, "subject")
