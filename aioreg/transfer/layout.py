"""The OCI image layout: ``oci-layout``, ``index.json`` and ``blobs/<algorithm>/<hex>``.

https://github.com/opencontainers/image-spec/blob/main/image-layout.md. The
layout itself names no repository: exports say where each top-level manifest
came from in an annotation of their own (``REPOSITORY_ANNOTATION``), next to the
standard ``org.opencontainers.image.ref.name`` that carries the tag.
"""

from __future__ import annotations

import msgspec

from aioreg.domain.manifest import OCI_INDEX
from aioreg.domain.reference import Digest
from aioreg.errors import ErrorCode, RegistryError

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
LAYOUT_VERSION = "1.0.0"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
REPOSITORY_ANNOTATION = "io.aioreg.repository"
# index.json and oci-layout are read whole; bigger ones are refused, not buffered.
INDEX_MAX_BYTES = 64 << 20


class LayoutDescriptor(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An entry of ``index.json`` (the fields a layout needs; others are kept by skopeo, not us)."""

    mediaType: str
    digest: str
    size: int
    artifactType: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, object] | None = None


class LayoutIndex(msgspec.Struct, kw_only=True, omit_defaults=True):
    schemaVersion: int = 2
    mediaType: str = OCI_INDEX
    manifests: list[LayoutDescriptor] = []


class LayoutMarker(msgspec.Struct):
    imageLayoutVersion: str


def layout_marker() -> bytes:
    return msgspec.json.encode(LayoutMarker(LAYOUT_VERSION))


def blob_name(digest: Digest) -> str:
    """Where a blob sits in a layout (and in its tar)."""
    return f"{BLOBS_DIR}/{digest.algorithm}/{digest.hex}"


def normalize(name: str) -> str:
    """A tar member's name as the layout names it (tars made with ``tar -C dir .`` add ``./``)."""
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def digest_of_name(name: str) -> Digest | None:
    """The digest a ``blobs/<algorithm>/<hex>`` entry claims to hold; None for other names."""
    parts = normalize(name).split("/")
    if len(parts) != 3 or parts[0] != BLOBS_DIR:
        return None
    try:
        digest = Digest.parse(f"{parts[1]}:{parts[2]}")
    except RegistryError:
        return None
    return digest


def parse_index(body: bytes) -> LayoutIndex:
    try:
        return msgspec.json.decode(body, type=LayoutIndex)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RegistryError(
            ErrorCode.BAD_REQUEST, f"the layout's index.json is invalid: {exc}"
        ) from None


def check_marker(body: bytes) -> None:
    try:
        marker = msgspec.json.decode(body, type=LayoutMarker)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RegistryError(
            ErrorCode.BAD_REQUEST, f"the layout's oci-layout is invalid: {exc}"
        ) from None
    if marker.imageLayoutVersion.split(".")[0] != "1":
        raise RegistryError(
            ErrorCode.UNSUPPORTED,
            f"OCI layout version {marker.imageLayoutVersion!r} is not supported (1.x is)",
        )
