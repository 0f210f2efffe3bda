"""Namespace storage quotas: the check every path that links blobs into a namespace applies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aioreg.domain.reference import Digest
from aioreg.domain.rules import namespace_of
from aioreg.errors import QuotaExceededError
from aioreg.index import Index
from aioreg.index.db import QuotaCheck


class Quotas:
    def __init__(self, index: Index) -> None:
        self.index = index

    async def check(self, name: str) -> QuotaCheck | None:
        """``name``'s namespace quota as a check of (used, adding); None when it has none.

        Every path that links blobs into a namespace (upload, mount, copy) hands
        this to the index, which runs it on the namespace's usage inside the
        linking transaction.
        """
        namespace = namespace_of(name)
        limit = await self.index.quota(namespace)
        if limit is None:
            return None

        def check(used: int, adding: int) -> None:
            if used + adding > limit:
                raise QuotaExceededError(namespace, limit, used, adding)

        return check

    async def bounded(
        self, name: str, body: AsyncIterator[bytes], offset: int, digest: Digest | None = None
    ) -> AsyncIterator[bytes]:
        """The body, refused as soon as the upload (at ``offset``) would pass the quota.

        Bytes are bounded while they arrive, not only when the blob is linked, so
        a session cannot fill the disk far past its namespace's quota. A blob
        (``digest``) the namespace already counts adds nothing up to its size.
        """
        check = await self.check(name)
        if check is None:
            return body
        namespace = namespace_of(name)
        used = await self.index.namespace_usage(namespace)
        counted = 0 if digest is None else await self.index.counted_size(namespace, str(digest))
        return _checked(body, offset, lambda size: check(used, max(size - counted, 0)))


async def _checked(
    body: AsyncIterator[bytes], offset: int, check: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """``body`` with ``check(size)`` run on the upload's size before each chunk is let through."""
    size = offset
    async for chunk in body:
        size += len(chunk)
        check(size)
        yield chunk
