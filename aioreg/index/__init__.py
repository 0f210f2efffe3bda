"""The index: what repositories, tags, manifests, blob links and accounts exist.

``Index`` (``aioreg.index.sqlite``) is the SQLite implementation of
``IndexProtocol`` (``aioreg.index.protocols``); what its transactions refuse is
raised as the typed facts in ``aioreg.index.errors``.
"""

from aioreg.index.errors import (
    BlobStillReferenced,
    IndexRefusal,
    MissingReferences,
    QuotaWouldExceed,
    SizeMismatch,
    TagMoveRefused,
    UploadCapReached,
)
from aioreg.index.rows import (
    ArtifactRow,
    AuditRow,
    BlobRow,
    Event,
    GcResult,
    ManifestRow,
    NamespaceRow,
    PullCounts,
    Referrer,
    RepositorySummary,
    TagInfo,
    TokenRow,
    UploadRow,
    Usage,
    UserRow,
)
from aioreg.index.sqlite import Index

__all__ = [
    "ArtifactRow",
    "AuditRow",
    "BlobRow",
    "BlobStillReferenced",
    "Event",
    "GcResult",
    "Index",
    "IndexRefusal",
    "ManifestRow",
    "MissingReferences",
    "NamespaceRow",
    "PullCounts",
    "QuotaWouldExceed",
    "Referrer",
    "RepositorySummary",
    "SizeMismatch",
    "TagInfo",
    "TagMoveRefused",
    "TokenRow",
    "UploadCapReached",
    "UploadRow",
    "Usage",
    "UserRow",
]
