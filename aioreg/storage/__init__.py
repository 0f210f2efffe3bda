"""Content on disk: blobs by digest, and the temporary files of open uploads."""

from aioreg.storage.blobstore import BlobStore
from aioreg.storage.upload import BlobWriter

__all__ = ["BlobStore", "BlobWriter"]
