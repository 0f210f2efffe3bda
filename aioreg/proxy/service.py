"""Pull-through proxy namespaces: what a pull of a proxied repository means.

A proxy namespace (``hub``) stands for an upstream registry; ``hub/alpine`` is
upstream's ``alpine`` (``library/alpine`` with the prefix ``library``). What is
fetched is stored byte for byte in the same index and blob store as hosted
content, in the local repository, so usage, last-pull times, GC and retention
see it like anything pushed. Tags are revalidated with an upstream HEAD once
``revalidate_interval`` has passed; digests are content-addressed and never
revalidated. Blobs are fetched once per digest however many clients ask at
once (``BlobFill``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
import msgspec

from aioreg.config import ProxyConfig
from aioreg.domain.manifest import parse_manifest
from aioreg.domain.reference import TAG_RE, Digest, parse_reference, validate_name
from aioreg.domain.registry import Registry, StoredBlob
from aioreg.domain.warnings import warn
from aioreg.errors import ErrorCode, QuotaExceededError, RegistryError, TooLargeError
from aioreg.index import Event, ManifestRow, Referrer
from aioreg.index.proxies import Evicted
from aioreg.proxy.fill import BlobFill
from aioreg.proxy.upstream import Upstream, UpstreamError
from aioreg.storage import UploadWriter, WrittenBlob

log = logging.getLogger("aioreg.proxy")
# An upstream tag page may hold this many bytes per tag asked for (a tag is up to 128).
TAG_BYTES = 160
LISTING_SLACK = 4096
WARNED_MAX = 4096  # digests and namespaces a once-only warning is remembered for

# Every manifest type a registry may hold; the upstream picks what it has.
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ]
)


@dataclass(frozen=True, slots=True)
class Proxy:
    """One configured proxy and its upstream client."""

    config: ProxyConfig
    upstream: Upstream

    def upstream_name(self, name: str) -> str:
        """The upstream repository of local ``name`` (``hub/alpine`` → ``library/alpine``)."""
        return self.upstream.repository(name.split("/", 1)[1])


class Proxies:
    """Every configured proxy; the API asks ``route`` first, then the pull verbs."""

    def __init__(self, registry: Registry, configs: list[ProxyConfig]) -> None:
        self.registry = registry
        self._configured = configs
        self._by_namespace = {c.namespace: Proxy(c, Upstream(c)) for c in configs}
        self._by_host = {p.config.upstream_host: p for p in self._by_namespace.values()}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._fills: dict[str, BlobFill] = {}
        self._fills_ended = 0  # transfers over so far: tells a lookup one ended meanwhile
        self._tasks: set[asyncio.Task[None]] = set()
        self._reserved: dict[str, int] = {}  # namespace -> bytes of cached fills in progress
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._warned: set[str] = set()

    async def open(self) -> None:
        for proxy in self._by_namespace.values():
            await proxy.upstream.open()

    async def reload(self) -> None:
        """Take up the proxies stored in the index (``/api/v1``, the CLI) beside the config's.

        Run after this process changes them, and every few seconds for other
        processes' changes. A changed or removed definition's upstream client is
        closed (a transfer through it fails and caches nothing); the rest are kept.
        """
        taken = {c.namespace for c in self._configured}
        stored = [c for c in await self.registry.index.proxies.all() if c.namespace not in taken]
        wanted = {c.namespace: c for c in [*self._configured, *stored]}
        current = self._by_namespace
        if {n: p.config for n, p in current.items()} == wanted:
            return
        kept = {n: p for n, p in current.items() if wanted.get(n) == p.config}
        added: dict[str, Proxy] = {}
        for namespace, config in wanted.items():
            if namespace not in kept:
                proxy = Proxy(config, Upstream(config))
                try:
                    await proxy.upstream.open()
                except OSError as exc:  # its password_file: unreadable, tried again next time
                    self._warn_once(
                        f"unusable:{namespace}",
                        f"proxy {namespace} is not usable until its password file can be "
                        f"read: {exc.strerror}",
                    )
                    continue
                self._warned.discard(f"unusable:{namespace}")
                added[namespace] = proxy
        self._by_namespace = {**kept, **added}
        self._by_host = {p.config.upstream_host: p for p in self._by_namespace.values()}
        for namespace, proxy in current.items():
            if namespace not in kept:
                log.info("proxy %s is no longer defined as it was; closing its upstream", namespace)
                await proxy.upstream.close()
        for namespace in added:
            log.info("proxy %s -> %s is defined", namespace, wanted[namespace].upstream)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for proxy in self._by_namespace.values():
            await proxy.upstream.close()

    # -- routing -----------------------------------------------------------

    def proxy_of(self, name: str) -> Proxy | None:
        """The proxy whose namespace ``name`` is under, if any."""
        namespace, sep, _ = name.partition("/")
        return self._by_namespace.get(namespace) if sep else None

    def route(self, name: str, ns: str | None) -> str | None:
        """The local name a pull of ``name`` (with containerd's ``?ns=``) reads, if proxied.

        ``hub/alpine`` is proxied as it is; ``library/alpine?ns=docker.io`` is
        ``hub/library/alpine`` when ``hub``'s upstream is docker.io.
        """
        if self.proxy_of(name) is not None:
            return name
        if ns:
            proxy = self._by_host.get(ns) or self._by_host.get(_hub_alias(ns))
            if proxy is not None:
                return f"{proxy.config.namespace}/{name}"
        return None

    def refuse_write(self, name: str) -> None:
        """Proxy namespaces are read-only: writes get UNSUPPORTED (405)."""
        if self.proxy_of(name) is not None:
            raise RegistryError(
                ErrorCode.UNSUPPORTED,
                f"{name} is in proxy namespace {name.partition('/')[0]}, which is read-only",
            )

    def _proxy(self, name: str) -> Proxy:
        validate_name(name)
        proxy = self.proxy_of(name)
        assert proxy is not None, "route() first"
        return proxy

    # -- manifests ---------------------------------------------------------

    async def manifest(
        self, name: str, reference: str, *, pull: bool, actor: str | None = None
    ) -> ManifestRow:
        """The manifest from cache while fresh, else from upstream (then cached)."""
        proxy = self._proxy(name)
        try:
            ref: str | Digest = parse_reference(reference)
        except RegistryError as invalid:
            # 404 as for a hosted repository (the spec's only answer to a fetch), never
            # asked upstream: a name outside the grammar is never stored as a tag.
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN,
                f"{reference[:200]!r} is neither a valid tag nor a digest; proxy "
                f"{proxy.config.namespace} does not ask its upstream for it",
                invalid.detail,
            ) from invalid
        async with self._lock(name, str(ref)):
            if isinstance(ref, Digest):
                if await self.registry.index.manifests.by_digest(name, str(ref)) is None:
                    await self._fetch_manifest(proxy, name, str(ref), None, None)
            else:
                await self._refresh_tag(proxy, name, ref)
        return await self.registry.manifest(name, reference, pull=pull, actor=actor)

    async def _refresh_tag(self, proxy: Proxy, name: str, tag: str) -> None:
        manifests = self.registry.index.manifests
        cached = await manifests.by_tag(name, tag)
        if cached is not None:
            checked = await manifests.tag_validated_at(name, tag)
            # A clock set back (checked in the future) rechecks rather than trusts it.
            if (
                checked is not None
                and 0 <= time.time() - checked < proxy.config.revalidate_interval
            ):
                return
        try:
            digest = await self._upstream_digest(proxy, name, tag)
            if cached is None or digest != cached.digest:
                await self._fetch_manifest(proxy, name, digest or tag, tag, digest)
        except UpstreamError as exc:
            if cached is None or exc.not_found or not proxy.config.serve_stale:
                raise _client_error(exc, f"manifest {tag} of {name}") from exc
            log.warning("serving cached %s:%s: %s", name, tag, exc.error.message)
            warn(f"{name}:{tag} is served from cache; the upstream failed: {exc.error.message}")
            return
        await manifests.set_tag_validated(name, tag, time.time())

    async def _upstream_digest(self, proxy: Proxy, name: str, tag: str) -> str | None:
        repository = proxy.upstream_name(name)
        async with proxy.upstream.request(
            "HEAD", repository, f"manifests/{tag}", MANIFEST_ACCEPT
        ) as response:
            sent = response.headers.get("Docker-Content-Digest")
        if sent is None:
            return None
        try:
            return str(Digest.parse(sent))
        except RegistryError:  # not a digest: fetch by tag and let the bytes say
            log.warning(
                "upstream %s sent a malformed digest for %s:%s", proxy.upstream.base, name, tag
            )
            return None

    async def _fetch_manifest(
        self, proxy: Proxy, name: str, reference: str, tag: str | None, expected: str | None
    ) -> None:
        """GET a manifest upstream and store its exact bytes (``tag`` moved to it)."""
        repository = proxy.upstream_name(name)
        limit = self.registry.config.limits.manifest_max_bytes
        try:
            async with proxy.upstream.request(
                "GET", repository, f"manifests/{reference}", MANIFEST_ACCEPT
            ) as response:
                if (response.content_length or 0) > limit:
                    raise TooLargeError(f"upstream manifest is over {limit} bytes", limit)
                body = await response.content.read(limit + 1)
                content_type = response.content_type
        except UpstreamError as exc:
            if exc.not_found and tag is None:
                raise _client_error(exc, f"manifest {reference} of {name}") from exc
            raise
        if len(body) > limit:
            raise TooLargeError(f"upstream manifest is over {limit} bytes", limit)
        wanted = expected or (reference if tag is None else None)
        algorithm = Digest.parse(wanted).algorithm if wanted else "sha256"
        manifest = parse_manifest(body, content_type, algorithm)
        if wanted is not None and str(manifest.digest) != wanted:
            raise RegistryError(
                ErrorCode.UNAVAILABLE,
                f"upstream sent a manifest of digest {manifest.digest} for {wanted}",
            )
        async with self._room_lock(proxy.config.namespace):
            # Stored even without room: a pull needs it, and it is small beside its blobs.
            reserved = self._reserved.get(proxy.config.namespace, 0)
            await self._evict_for(proxy, reserved + len(body), str(manifest.digest))
        await self.registry.index.manifests.put(
            name, manifest, body, [tag] if tag else [], time.time(), require_references=False
        )

    # -- listings ------------------------------------------------------------

    async def tags(self, name: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        """The upstream's tags a page at a time (``n``/``last`` passed on); the cached
        tags when the upstream fails and ``serve_stale`` allows it."""
        proxy = self._proxy(name)
        query = urlencode({"n": str(limit), **({"last": last} if last else {})})
        try:
            async with proxy.upstream.request(
                "GET", proxy.upstream_name(name), f"tags/list?{query}"
            ) as response:
                body = await _bounded_body(response, limit * TAG_BYTES + LISTING_SLACK)
                more = 'rel="next"' in response.headers.get("Link", "")
            tags = msgspec.json.decode(body, type=_UpstreamTags).tags or []
        except (UpstreamError, msgspec.DecodeError) as exc:
            error = _listing_failure(exc, f"tags of {name}")
            if isinstance(exc, UpstreamError) and exc.not_found:
                raise RegistryError(ErrorCode.NAME_UNKNOWN, f"{name} is not upstream") from exc
            if not proxy.config.serve_stale:
                raise error from exc
            try:
                cached, more = await self.registry.tags(name, last, limit)
            except RegistryError:  # nothing cached of it: the upstream's failure says why
                raise error from exc
            self._stale(f"the tags of {name}", error)
            return cached, more
        valid = [t for t in tags if TAG_RE.fullmatch(t)]
        if len(valid) < len(tags):
            self._warn_once(
                f"tags:{name}",
                f"upstream of {name} lists {len(tags) - len(valid)} tags outside the OCI tag "
                "grammar; they are left out",
            )
        return valid[:limit], more or len(tags) > limit

    async def referrers(self, name: str, digest: str, artifact_type: str | None) -> list[Referrer]:
        """The upstream's referrers of ``digest``; the cached ones when the upstream fails
        (or has no referrers API) and ``serve_stale`` allows it."""
        proxy = self._proxy(name)
        subject = Digest.parse(digest)
        query = f"?{urlencode({'artifactType': artifact_type})}" if artifact_type else ""
        limit = self.registry.config.limits.manifest_max_bytes
        try:
            async with proxy.upstream.request(
                "GET", proxy.upstream_name(name), f"referrers/{subject}{query}"
            ) as response:
                body = await _bounded_body(response, limit)
            found = msgspec.json.decode(body, type=_UpstreamReferrers).manifests
        except (UpstreamError, msgspec.DecodeError) as exc:
            error = _listing_failure(exc, f"referrers of {name}@{subject}")
            if isinstance(exc, UpstreamError) and exc.not_found:  # no referrers API upstream
                return await self.registry.referrers(name, digest, artifact_type)
            if not proxy.config.serve_stale:
                raise error from exc
            self._stale(f"the referrers of {name}@{subject}", error)
            return await self.registry.referrers(name, digest, artifact_type)
        return [
            Referrer(r.digest, r.mediaType, r.size, r.artifactType, r.annotations)
            for r in found
            if artifact_type is None or r.artifactType == artifact_type
        ]

    def _stale(self, what: str, error: RegistryError) -> None:
        log.warning("serving cached %s: %s", what, error.message)
        warn(f"{what} are served from cache; the upstream failed: {error.message}")

    # -- blobs ---------------------------------------------------------------

    async def blob(self, name: str, digest: str) -> StoredBlob | BlobFill:
        """The cached blob, or the (shared) transfer bringing it, once its size is known.

        A transfer that has ended is not joined (its file may be gone): a new one starts.
        """
        proxy = self._proxy(name)
        parsed = Digest.parse(digest)
        key = str(parsed)
        for _ in range(3):
            if (fill := self._running(key)) is not None:
                return await _joined(fill)
            ended = self._fills_ended
            stored = await self._cached(proxy, name, parsed)
            if stored is not None:
                return stored
            if (fill := self._running(key)) is not None:
                return await _joined(fill)
            if self._fills_ended == ended:
                break
            # A transfer ended while the cache was looked at: it may have cached the blob.
        return await _joined(self._start_fill(proxy, name, parsed))

    def _running(self, key: str) -> BlobFill | None:
        fill = self._fills.get(key)
        return None if fill is None or fill.finished.is_set() else fill

    async def _cached(self, proxy: Proxy, name: str, digest: Digest) -> StoredBlob | None:
        """The blob from this repository's cache, or linked from elsewhere in the store
        when the namespace has room for it (else it is fetched and streamed)."""
        with contextlib.suppress(RegistryError):
            return await self.registry.blob(name, str(digest))
        row = await self.registry.index.blobs.get(str(digest))
        if row is None:
            return None
        # Knowing a digest is no right to bytes stored for another namespace: link
        # them only once the upstream shows it has this blob too.
        if await self._upstream_size(proxy, name, digest) != row.size:
            return None
        if not await self._make_room(proxy, name, digest, row.size):
            return None
        try:
            mounted = await self.registry.mount_blob(name, str(digest), None, adopt=True)
        except QuotaExceededError:
            return None
        finally:
            self._release(proxy, row.size)
        return None if mounted is None else await self.registry.blob(name, str(digest))

    async def blob_head(self, name: str, digest: str) -> StoredBlob | BlobFill | int:
        """What a HEAD needs: the cached blob, the transfer already bringing it, or else
        the size an upstream HEAD gives; nothing is downloaded for a HEAD."""
        proxy = self._proxy(name)
        parsed = Digest.parse(digest)
        with contextlib.suppress(RegistryError):
            return await self.registry.blob(name, str(parsed))
        if (fill := self._running(str(parsed))) is not None:
            return await _joined(fill)
        return await self._upstream_size(proxy, name, parsed)

    async def _upstream_size(self, proxy: Proxy, name: str, digest: Digest) -> int:
        """The blob's size by an upstream HEAD (nothing downloaded); BLOB_UNKNOWN when the
        upstream lacks it, whatever is stored locally for other namespaces."""
        repository = proxy.upstream_name(name)
        try:
            async with proxy.upstream.request("HEAD", repository, f"blobs/{digest}") as response:
                size, sent = response.content_length, response.headers.get("Docker-Content-Digest")
        except UpstreamError as exc:
            if exc.not_found:
                raise RegistryError(
                    ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not upstream"
                ) from exc
            raise exc.error from exc
        if size is None or (sent is not None and sent != str(digest)):
            raise RegistryError(
                ErrorCode.UNAVAILABLE, f"upstream answered a HEAD of blob {digest} without its size"
            )
        return size

    # -- the cache's size ----------------------------------------------------

    async def _make_room(self, proxy: Proxy, name: str, digest: Digest, size: int) -> bool:
        """Whether a blob of ``size`` may be cached in ``name``'s proxy namespace; if so,
        its bytes are reserved until ``_release``.

        Under ``max_bytes`` the least recently pulled cached content goes first
        (``evict_oldest``), never what a transfer in progress belongs to; a blob
        larger than the cap, or one that still does not fit, is only streamed. A
        namespace quota is never made room under: past it, blobs are streamed uncached.
        """
        config = proxy.config
        namespace = config.namespace
        if config.max_bytes and size > config.max_bytes:
            self._warn_once(
                str(digest),
                f"blob {digest} of {name} is {size} bytes, over proxy {namespace}'s cap of "
                f"{config.max_bytes}: streamed, not cached",
            )
            return False
        index = self.registry.index
        async with self._room_lock(namespace):
            reserved = self._reserved.get(namespace, 0)
            if not await self._evict_for(proxy, reserved + size, str(digest)):
                log.warning(
                    "proxy %s: no room for blob %s (%d bytes) under its cap of %d beside "
                    "transfers in progress: streamed, not cached",
                    namespace,
                    digest,
                    size,
                    config.max_bytes,
                )
                return False
            quota = await self.registry.quotas.limit(name)
            if quota is not None:
                used = await index.usage.namespace(namespace)
                if used + reserved + size > quota:
                    log.warning(
                        "proxy %s: blob %s (%d bytes) would pass the namespace's quota "
                        "(%d of %d bytes used): streamed, not cached",
                        namespace,
                        digest,
                        size,
                        used,
                        quota,
                    )
                    return False
            self._reserved[namespace] = reserved + size
            return True

    def _room_lock(self, namespace: str) -> asyncio.Lock:
        """Held while room is made and reserved: concurrent fills cannot both take it."""
        return self._room_locks.setdefault(namespace, asyncio.Lock())

    async def _evict_for(self, proxy: Proxy, adding: int, digest: str) -> bool:
        """Evict least recently pulled content until ``adding`` more bytes fit under the
        cap (under ``_room_lock``); False when what may go is not enough.

        What transfers in progress belong to stays, and so does whatever names
        ``digest`` (the index whose child manifest is being fetched).
        """
        cap, namespace = proxy.config.max_bytes, proxy.config.namespace
        if not cap:
            return True
        index = self.registry.index
        await index.activity.flush()  # pull times decide what goes first
        keep = {str(f.digest) for f in self._fills.values() if f.namespace == namespace}
        keep.add(digest)
        while await index.proxies.cached_bytes(namespace) + adding > cap:
            evicted = await index.proxies.evict_oldest(namespace, keep)
            if evicted is None:
                return False
            self._note_eviction(evicted)
        return True

    def _release(self, proxy: Proxy, size: int) -> None:
        namespace = proxy.config.namespace
        self._reserved[namespace] = max(self._reserved.get(namespace, 0) - size, 0)

    def _note_eviction(self, evicted: Evicted) -> None:
        log.info(
            "proxy cache: evicted %s@%s (%d manifests, %d blobs unlinked), least recently pulled",
            evicted.repository,
            evicted.digest,
            len(evicted.manifests),
            len(evicted.blobs),
        )
        self.registry.index.activity.note_event(
            Event(
                time.time(),
                "delete",
                evicted.repository,
                None,
                evicted.digest,
                "proxy-cache",
                "evicted from the proxy cache: least recently pulled, over its max_bytes",
            )
        )

    def _warn_once(self, key: str, message: str) -> None:
        """A warning logged once per ``key`` in this process (a bounded memory of them)."""
        if key in self._warned:
            return
        if len(self._warned) >= WARNED_MAX:
            self._warned.clear()
        self._warned.add(key)
        log.warning("%s", message)

    def _start_fill(self, proxy: Proxy, name: str, digest: Digest) -> BlobFill:
        fill = BlobFill(digest, proxy.upstream_name(name), proxy.config.namespace)
        key = str(digest)
        admitted = 0

        async def admit(size: int) -> bool:
            nonlocal admitted
            if await self._make_room(proxy, name, digest, size):
                admitted = size
                return True
            return False

        async def publish(blob: WrittenBlob, writer: UploadWriter) -> bool:
            try:
                await self.registry.uploads.publish(name, blob, writer)
            except QuotaExceededError as exc:  # another process took the room meanwhile
                log.warning("proxy blob %s of %s streamed, not cached: %s", digest, name, exc)
                return False
            return True

        async def run() -> None:
            try:
                await fill.run(
                    proxy.upstream,
                    self.registry.store,
                    admit,
                    publish,
                    self.registry.config.storage.write_buffer_bytes,
                )
            finally:
                self._release(proxy, admitted)
                self._fills_ended += 1
                if self._fills.get(key) is fill:
                    del self._fills[key]

        self._fills[key] = fill
        task = asyncio.get_running_loop().create_task(run(), name=f"proxy fill {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    @contextlib.asynccontextmanager
    async def _lock(self, name: str, reference: str) -> AsyncIterator[None]:
        """Concurrent pulls of one manifest ask upstream once."""
        key = (name, reference)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]


class _UpstreamTags(msgspec.Struct):
    tags: list[str] | None = None


class _UpstreamReferrer(msgspec.Struct):
    mediaType: str
    digest: str
    size: int
    artifactType: str | None = None
    annotations: dict[str, str] | None = None


class _UpstreamReferrers(msgspec.Struct):
    manifests: list[_UpstreamReferrer] = msgspec.field(default_factory=list)


async def _bounded_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """A listing's body, refused (as an upstream failure) past ``limit`` bytes."""
    body = await response.content.read(limit + 1)
    if len(body) > limit:
        raise UpstreamError(
            RegistryError(ErrorCode.UNAVAILABLE, f"upstream listing is over {limit} bytes")
        )
    return body


def _listing_failure(exc: UpstreamError | msgspec.DecodeError, what: str) -> RegistryError:
    if isinstance(exc, UpstreamError):
        return exc.error
    return RegistryError(ErrorCode.UNAVAILABLE, f"upstream sent unreadable {what}")


def _client_error(exc: UpstreamError, what: str) -> RegistryError:
    if exc.not_found:
        return RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"{what} is not upstream")
    return exc.error


def _hub_alias(host: str) -> str:
    """containerd says ``docker.io`` for Docker Hub, whose registry is registry-1.docker.io."""
    return "registry-1.docker.io" if host == "docker.io" else host


async def _joined(fill: BlobFill) -> BlobFill:
    """A transfer once its size is known, or its error if it has already failed."""
    await fill.started.wait()
    if fill.finished.is_set() and not fill.succeeded:
        raise fill.failure()
    return fill
