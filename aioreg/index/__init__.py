"""The SQLite index: what repositories, tags, manifests and blob links exist."""

from aioreg.index.db import Index
from aioreg.index.rows import BlobRow, ManifestRow, Referrer, UploadRow

__all__ = ["BlobRow", "Index", "ManifestRow", "Referrer", "UploadRow"]
