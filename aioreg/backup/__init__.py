"""Online backup and restore of a data directory: ``aioreg backup`` and ``aioreg restore``.

A backup is an index snapshot (SQLite's online backup API), the blob files it
names (hard links when they can be, verified copies otherwise) and a manifest
(``backup.json``); either a directory or, with ``--zstd``, one tar.zst archive.
An incremental backup holds only the blobs its base did not, and names its base.
"""
