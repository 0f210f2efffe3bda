"""Upload sessions: every way into and out of one, in one place.

A session is a row in the index (repository, acknowledged offset, last use)
plus an ``UploadWriter`` on its temp file. Its lifecycle verbs:

- ``start``: open a session (within the caps on open sessions);
- ``append``: take a chunk; the offset advances only once the bytes are written;
- ``finish``: take the last bytes, verify, place and link the blob, end the session;
- ``cancel``: the client ends it (DELETE);
- ``expire``: the janitor ends sessions idle past the TTL and removes stray temp files.

Besides those, a request's failure either ends the session (digest or size
mismatch, quota refusal: see ``_request``) or rolls it back to the last
acknowledged byte. ``put`` stores a whole blob in one request, with no session.

With ``server.workers`` > 1 the writer (its running sha256/xxh3 state, which
cannot be serialised) lives in the worker that opened the session, recorded in
the row (``owner``). Any other worker's request on the session raises
``SessionElsewhere`` before touching the body; the API layer streams it to the
owner (``aioreg.api.forward``), so the owner goes on hashing where it stopped.
Only when the owner is gone (its life lock is free) does another worker
``adopt`` the session: it claims the row, and its writer is rebuilt from disk
(re-hashing the acknowledged bytes once, as after a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator

from aioreg.config import Config
from aioreg.domain.errors import registry_error, storage_errors
from aioreg.domain.periodic import PeriodicJob
from aioreg.domain.quotas import Quotas
from aioreg.domain.reference import Digest, supported_algorithm, validate_name
from aioreg.domain.workers import WorkerIdentity
from aioreg.errors import (
    ErrorCode,
    QuotaExceededError,
    RegistryError,
    SessionElsewhere,
    TooManyRequestsError,
    UnavailableError,
)
from aioreg.index import BlobRow, UploadCapReached, UploadRow
from aioreg.index.protocols import IndexProtocol
from aioreg.storage import BlobStorage, UploadWriter, WrittenBlob
from aioreg.storage.errors import StorageError

log = logging.getLogger("aioreg.uploads")
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
# Failures that end an upload session (besides a quota refusal and DELETE).
SESSION_ENDING = frozenset({ErrorCode.DIGEST_INVALID, ErrorCode.SIZE_INVALID})
# What a client refused a new session is told to wait: sessions end as pushes finish.
SESSION_RETRY_SECONDS = 30.0


class UploadSessions:
    def __init__(
        self,
        config: Config,
        index: IndexProtocol,
        store: BlobStorage,
        quotas: Quotas,
        worker: WorkerIdentity | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.index = index
        self.store = store
        self.quotas = quotas
        self._writers: dict[str, UploadWriter] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        interval = min(max(config.storage.upload_session_ttl / 4, 1.0), 3600.0)
        self._janitor = PeriodicJob("upload janitor", interval, self.expire)

    async def open(self) -> None:
        """Settle what the last run left, then expire idle sessions on a schedule."""
        await self.expire()
        self._janitor.start()

    async def close(self) -> None:
        await self._janitor.stop()

    # -- lifecycle verbs ---------------------------------------------------

    async def start(
        self, name: str, client: str | None = None, digest_algorithm: str | None = None
    ) -> str:
        """Open a session, within the caps on sessions open at once (all, and ``client``'s).

        ``digest_algorithm`` (the POST's ``?digest-algorithm=``) is what the session
        hashes with while the bytes stream in, and again if it is resumed after a restart.
        """
        validate_name(name)
        if digest_algorithm is not None:
            supported_algorithm(digest_algorithm)
        limits = self.config.limits

        upload_id = uuid.uuid4().hex
        # The file first: a crash before the row commits leaves a stray file the
        # janitor removes, never a session whose file is missing.
        writer = self.store.create_writer(upload_id, digest_algorithm or "sha256")
        try:
            await self.index.uploads.create(
                upload_id,
                name,
                time.time(),
                client,
                max_open=limits.max_upload_sessions,
                max_open_per_client=limits.max_upload_sessions_per_client,
                digest_algorithm=digest_algorithm,
                owner=None if self.worker is None else self.worker.token,
            )
        except BaseException as exc:
            await writer.cancel()
            if not isinstance(exc, UploadCapReached):
                raise
            cap = exc
            if cap.per_client:
                raise TooManyRequestsError(
                    f"{cap.open_sessions} upload sessions of {client} are open, the most one "
                    "client may keep; finish or cancel some",
                    SESSION_RETRY_SECONDS,
                ) from cap
            raise TooManyRequestsError(
                f"{cap.open_sessions} upload sessions are open, the most this registry keeps; "
                "finish or cancel some",
                SESSION_RETRY_SECONDS,
            ) from cap
        self._writers[upload_id] = writer
        return upload_id

    async def offset(self, name: str, upload_id: str) -> int:
        async with self._session(name, upload_id) as (_, writer):
            return writer.offset

    async def append(
        self, name: str, upload_id: str, body: AsyncIterator[bytes], start: int | None
    ) -> int:
        async with (
            self._session(name, upload_id) as (_, writer),
            self._request(upload_id, writer),
        ):
            body = await self.quotas.bounded(name, body, writer.offset)
            offset = await writer.write(body, start, self.config.storage.write_buffer_bytes)
            await self.index.uploads.set_offset(upload_id, offset, time.time())
            return offset

    async def finish(
        self,
        name: str,
        upload_id: str,
        digest: str,
        body: AsyncIterator[bytes] | None,
        start: int | None,
    ) -> WrittenBlob:
        """Take the last bytes (if any), verify, store and link."""
        expected = Digest.parse(digest)
        async with (
            self._session(name, upload_id) as (session, writer),
            self._request(upload_id, writer),
        ):
            _require_session_algorithm(session, expected)
            if body is not None:
                body = await self.quotas.bounded(name, body, writer.offset, expected)
                await writer.write(body, start, self.config.storage.write_buffer_bytes)
            blob = await writer.commit(expected)
            await self._publish(name, blob, writer, upload_id)
            return blob

    async def cancel(self, name: str, upload_id: str) -> None:
        async with self._session(name, upload_id) as (_, writer):
            await self._end(upload_id, writer)

    async def adopt(self, name: str, upload_id: str, owner: str | None) -> None:
        """Take over a session whose owning worker is gone (``server.workers`` > 1).

        Never from a live owner: one that cannot be reached but lives (it is
        shutting down) gets the client a 503 to retry. If another worker adopted
        it first, ``SessionElsewhere`` names that one. The next request here
        rebuilds the writer from disk: the one re-hash, of the acknowledged bytes.
        """
        assert self.worker is not None, "only workers adopt"
        if owner is not None and self.worker.alive(owner):
            raise UnavailableError(
                f"the worker holding upload {upload_id} is not answering; retry shortly"
            )
        if await self.index.uploads.claim(upload_id, owner, self.worker.token):
            log.warning("adopted upload %s from worker %s, which is gone", upload_id, owner)
            return
        row = await self.index.uploads.get(upload_id)
        if row is None or row.repository != name:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id!r} is unknown in {name}"
            )
        if row.owner != self.worker.token:
            raise SessionElsewhere(upload_id, row.owner)

    async def expire(self, now: float | None = None) -> int:
        """End sessions idle past the TTL and remove temp files no session or writer owns.

        A session a request is using is left alone; so is any file a writer
        (in this process or another) holds, and any file younger than the GC
        grace period (``BlobStore.remove_upload_file``).
        """
        now = time.time() if now is None else now
        ttl = self.config.storage.upload_session_ttl
        expired = 0
        sessions = await self.index.uploads.all()
        for row in sessions:
            lock = self._locks.get(row.id)
            if row.updated_at >= now - ttl or (lock is not None and lock.locked()):
                continue
            writer = self._writers.pop(row.id, None)
            if writer is None:
                path = self.store.upload_path(row.id)
                removed = await asyncio.to_thread(self.store.remove_upload_file, path, 0.0)
                if not removed and await asyncio.to_thread(path.exists):
                    continue  # a writer in another process holds it
            self._locks.pop(row.id, None)
            # Row first: a request arriving now finds the session unknown, not half gone.
            await self.index.uploads.delete(row.id)
            if writer is not None:
                await writer.cancel()
            expired += 1
        live = {row.id for row in sessions}
        grace = self.config.gc.grace_period
        await asyncio.to_thread(self._remove_stray_files, live, grace, now)
        return expired

    async def put(self, name: str, digest: str, body: AsyncIterator[bytes]) -> WrittenBlob:
        """A whole blob in one request (``POST ?digest=``): no session row, just a temp file."""
        validate_name(name)
        expected = Digest.parse(digest)
        writer = self.store.create_writer(uuid.uuid4().hex, expected.algorithm)
        try:
            with storage_errors():
                body = await self.quotas.bounded(name, body, 0, expected)
                await writer.write(body, None, self.config.storage.write_buffer_bytes)
                blob = await writer.commit(expected)
            await self._publish(name, blob, writer, None)
        except BaseException:
            await writer.cancel()
            raise
        return blob

    async def publish(self, name: str, blob: WrittenBlob, writer: UploadWriter) -> None:
        """Index a verified blob written outside any session (a proxy's fill), within quota.

        The repository's manifests already naming it (cached before it) reference it.
        """
        await self._publish(name, blob, writer, None, adopt=True)

    # -- how a request ends ------------------------------------------------

    async def _publish(
        self,
        name: str,
        blob: WrittenBlob,
        writer: UploadWriter,
        upload_id: str | None,
        *,
        adopt: bool = False,
    ) -> None:
        """Index a placed blob and end its session in one transaction, then drop the temp file.

        Until that transaction commits, a crash leaves the session resumable
        (its temp file is still there); after it, the blob is fully recorded.
        """
        digest = Digest.parse(blob.digest)
        row = BlobRow(blob.digest, blob.size, blob.xxh3)
        limit = await self.quotas.limit(name)
        if limit is None:
            # No quota can refuse it: the file takes its final name (and its directory
            # is fsynced) before the index's write lock, not while every upload waits.
            await writer.place_early(digest)
        try:
            with self.quotas.refusal(name):
                await self.index.blobs.link(
                    name,
                    row,
                    ended_upload=upload_id,
                    place_file=lambda: writer.place(digest),
                    quota_limit=limit,
                    adopt=adopt,
                )
        except asyncio.CancelledError:
            # Links commit in batches that a cancelled caller does not stop: the link
            # may have committed, ending the session (the index says so by now). Then
            # its writer and temp file go as after success; else it stays resumable.
            # Whatever this finds, the caller still sees its cancellation.
            if upload_id is not None:
                try:
                    if await self.index.uploads.get(upload_id) is None:
                        await self._published(upload_id, writer)
                except Exception:
                    log.exception("upload %s: cleaning up after a cancelled link failed", upload_id)
            raise
        await self._published(upload_id, writer)

    async def _published(self, upload_id: str | None, writer: UploadWriter) -> None:
        """The blob is indexed (its session ended with it): drop the writer and temp copy."""
        if upload_id is not None:
            self._writers.pop(upload_id, None)
            self._locks.pop(upload_id, None)
        await writer.release()

    @contextlib.asynccontextmanager
    async def _request(self, upload_id: str, writer: UploadWriter) -> AsyncIterator[None]:
        """One request's work on a session, and what its failure does to the session.

        A digest or size mismatch or a quota refusal ends the session (as DELETE
        does); any other failure (the client going away mid-body, a stalled body,
        a full disk, a busy index) rolls it back to the last acknowledged byte.
        Storage failures leave here as the spec's errors (``registry_error``).
        """
        acknowledged = writer.offset
        try:
            yield
        except (RegistryError, StorageError) as exc:
            error = exc if isinstance(exc, RegistryError) else registry_error(exc)
            if isinstance(error, QuotaExceededError) or error.code in SESSION_ENDING:
                await self._end(upload_id, writer)
            else:
                self._roll_back(upload_id, writer, acknowledged)
            if error is exc:
                raise
            raise error from exc
        except BaseException:
            self._roll_back(upload_id, writer, acknowledged)
            raise

    def _roll_back(self, upload_id: str, writer: UploadWriter, acknowledged: int) -> None:
        # ``write`` undoes its own bytes; past it (the bytes verified, an index write
        # failed), the next request resumes the session from the index's offset.
        if writer.offset != acknowledged:
            self._writers.pop(upload_id, None)

    async def _end(self, upload_id: str, writer: UploadWriter) -> None:
        await writer.cancel()
        self._writers.pop(upload_id, None)
        self._locks.pop(upload_id, None)
        await self.index.uploads.delete(upload_id)

    # -- finding a session ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def _session(
        self, name: str, upload_id: str
    ) -> AsyncIterator[tuple[UploadRow, UploadWriter]]:
        """The session's row (as read before its turn) and writer, with requests on one
        session taking turns."""
        validate_name(name)
        unknown = RegistryError(
            ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id[:64]!r} is unknown in {name}"
        )
        if not UPLOAD_ID_RE.fullmatch(upload_id):
            raise unknown
        row = await self.index.uploads.get(upload_id)
        if row is None or row.repository != name:
            raise unknown
        if self.worker is not None and row.owner != self.worker.token:
            raise SessionElsewhere(upload_id, row.owner)
        async with self._locks.setdefault(upload_id, asyncio.Lock()):
            if upload_id not in self._locks:
                raise unknown  # Ended while this request waited its turn.
            writer = await self._writer_for(upload_id, unknown)
            try:
                yield row, writer
            except FileNotFoundError:
                # The session's file went away under it (expired meanwhile).
                self._writers.pop(upload_id, None)
                raise unknown from None

    async def _writer_for(self, upload_id: str, unknown: RegistryError) -> UploadWriter:
        writer = self._writers.get(upload_id)
        if writer is None:
            # Read under the session's lock: the offset the last request acknowledged.
            row = await self.index.uploads.get(upload_id)
            if row is None:
                raise unknown
            try:
                with storage_errors():
                    writer = await self.store.resume_writer(
                        upload_id, row.committed_bytes, row.digest_algorithm or "sha256"
                    )
            except FileNotFoundError:
                await self.index.uploads.delete(upload_id)
                raise unknown from None
            # After a restart, a failed index write, or adopting a dead worker's session.
            log.info("resumed from disk: re-hashed %d acknowledged bytes", row.committed_bytes)
            self._writers[upload_id] = writer
        return writer

    def _remove_stray_files(self, live: set[str], grace: float, now: float) -> None:
        # A session created after ``live`` was listed has a writer holding its file.
        for path in self.store.upload_files():
            if path.name not in live:
                self.store.remove_upload_file(path, grace, now)


def _require_session_algorithm(session: UploadRow, expected: Digest) -> None:
    """A session whose POST named its algorithm closes with a digest in it."""
    named = session.digest_algorithm
    if named is not None and expected.algorithm != named:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"this upload was started with digest-algorithm={named}; "
            f"close it with a {named} digest, not {expected.algorithm}",
            {"digest_algorithm": named, "digest": str(expected)},
        )
