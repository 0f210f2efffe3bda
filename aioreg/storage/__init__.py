"""Content on disk: blobs by digest, and the temporary files of open uploads."""

from aioreg.storage.blobstore import BlobStore
from aioreg.storage.protocols import BlobStorage, UploadWriter
from aioreg.storage.writer import BlobWriter, WrittenBlob

__all__ = ["BlobStorage", "BlobStore", "BlobWriter", "UploadWriter", "WrittenBlob"]
