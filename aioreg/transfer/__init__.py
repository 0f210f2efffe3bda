"""Moving repositories in and out of a registry as OCI image layouts (tar, tar.zst, directories).

``export`` plans what to write from the index and streams it as a tar (zstd
compressed or not); ``importer`` reads one back, verifying every blob, and
stores it through the domain layer so the rules of a push apply.
"""
