"""Content on disk: blobs by digest, and the temporary files of open uploads."""

from aioreg.storage.blobstore import BlobStore
from aioreg.storage.writer import BlobWriter, WrittenBlob

__all__ = ["BlobStore", "BlobWriter", "WrittenBlob"]
