"""Namespace storage quotas: the check every path that links blobs into a namespace applies."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import msgspec

from aioreg.domain.reference import Digest
from aioreg.domain.rules import namespace_of
from aioreg.errors import QuotaExceededError
from aioreg.index import Event, QuotaWouldExceed
from aioreg.index.protocols import IndexProtocol


class Quotas:
    def __init__(self, index: IndexProtocol) -> None:
        self.index = index

    async def limit(self, name: str) -> int | None:
        """``name``'s namespace quota in bytes; None when it has none.

        Every path that links blobs into a namespace (upload, mount, copy) hands
        it to the index, which checks the namespace's usage against it inside the
        linking transaction; ``refusal`` turns the index's answer into the error.
        """
        return await self.index.usage.quota(namespace_of(name))

    @contextlib.contextmanager
    def refusal(self, name: str) -> Iterator[None]:
        """``refusal`` for a link into ``name``, announcing it (``quota_exceeded``)."""
        try:
            with refusal():
                yield
        except QuotaExceededError as exc:
            self.note_exceeded(name, exc)
            raise

    def note_exceeded(self, name: str, exc: QuotaExceededError) -> None:
        """A push refused by the quota: in the activity log and to webhooks (batched, as the
        refused change itself left nothing to write it with)."""
        detail = msgspec.json.encode(exc.detail).decode()
        self.index.activity.note_event(
            Event(time.time(), "quota_exceeded", name, None, None, None, detail)
        )

    async def bounded(
        self, name: str, body: AsyncIterator[bytes], offset: int, digest: Digest | None = None
    ) -> AsyncIterator[bytes]:
        """The body, refused as soon as the upload (at ``offset``) would pass the quota.

        Bytes are bounded while they arrive, not only when the blob is linked, so
        a session cannot fill the disk far past its namespace's quota. A blob
        (``digest``) the namespace already counts adds nothing up to its size.
        """
        limit = await self.limit(name)
        if limit is None:
            return body
        namespace = namespace_of(name)
        used = await self.index.usage.namespace(namespace)
        counted = (
            0 if digest is None else await self.index.usage.counted_size(namespace, str(digest))
        )

        def check(size: int) -> None:
            adding = max(size - counted, 0)
            if used + adding > limit:
                exc = QuotaExceededError(namespace, limit, used, adding)
                self.note_exceeded(name, exc)
                raise exc

        return _checked(body, offset, check)


@contextlib.contextmanager
def refusal() -> Iterator[None]:
    """The index's ``QuotaWouldExceed`` as the error a client gets, for every linking path."""
    try:
        yield
    except QuotaWouldExceed as over:
        raise QuotaExceededError(over.namespace, over.limit, over.used, over.adding) from over


async def _checked(
    body: AsyncIterator[bytes], offset: int, check: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """``body`` with ``check(size)`` run on the upload's size before each chunk is let through."""
    size = offset
    async for chunk in body:
        size += len(chunk)
        check(size)
        yield chunk
