"""A small OCI distribution client on aiohttp that checks every answer it gets.

Any unexpected status, digest, size or header raises :class:`VerifyError`, so a
registry that answers fast but wrong fails the scenario instead of winning it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from aiohttp.client_middlewares import ClientMiddlewareType
from yarl import URL

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
READ_CHUNK = 4 << 20
LINK_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class VerifyError(AssertionError):
    """The registry's answer was wrong: the scenario fails."""


def sha256_digest(data: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_chunks(
    path: Path, offset: int, length: int, chunk: int = READ_CHUNK
) -> Callable[[], AsyncIterator[bytes]]:
    """A factory of async generators streaming ``length`` bytes of ``path`` from ``offset``.

    Only one chunk is in memory at a time; reads come from the page cache.
    """

    async def gen() -> AsyncIterator[bytes]:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            left = length
            while left > 0:
                data = f.read(min(chunk, left))
                if not data:
                    raise VerifyError(f"{path} ended {left} bytes early")
                left -= len(data)
                yield data

    return gen


@dataclass
class Blob:
    digest: str
    size: int


def new_session(
    connections: int = 100,
    *,
    verify_tls: bool = True,
    middlewares: Sequence[ClientMiddlewareType] = (),
) -> aiohttp.ClientSession:
    """``verify_tls=False`` is ``--insecure``; ``middlewares`` add credentials (benchmarks.auth)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=connections, limit_per_host=connections, ssl=verify_tls
        ),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
        read_bufsize=1 << 20,
        auto_decompress=False,
        middlewares=middlewares,
    )


async def _fail(response: aiohttp.ClientResponse, what: str, expected: int) -> VerifyError:
    try:
        body = (await response.read())[:300]
    except aiohttp.ClientError:
        body = b"?"
    return VerifyError(
        f"{what}: expected {expected}, got {response.status} {response.reason}: {body!r}"
    )


def expect_header(response: aiohttp.ClientResponse, name: str, value: str, what: str) -> None:
    got = response.headers.get(name)
    if got != value:
        raise VerifyError(f"{what}: header {name} is {got!r}, expected {value!r}")


class Client:
    """One registry at ``base`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.post_digest: bool | None = None  # does POST ?digest= finish in one request?

    def url(self, path_or_location: str) -> URL:
        # Locations may be relative (aioreg) or absolute with an opaque _state (Distribution).
        return URL(urljoin(self.base + "/", path_or_location), encoded=True)

    @staticmethod
    def with_digest(location: URL, digest: str) -> URL:
        sep = "&" if location.raw_query_string else "?"
        return URL(str(location) + f"{sep}digest={digest}", encoded=True)

    # -- uploads ----------------------------------------------------------

    async def start_upload(self, repo: str) -> URL:
        async with self.session.post(self.url(f"/v2/{repo}/blobs/uploads/")) as r:
            if r.status != 202:
                raise await _fail(r, f"POST upload {repo}", 202)
            location = r.headers.get("Location")
            if not location:
                raise VerifyError(f"POST upload {repo}: no Location")
            return self.url(location)

    async def probe_post_digest(self, repo: str) -> bool:
        """Whether ``POST ?digest=`` with a body completes an upload (optional in the spec)."""
        if self.post_digest is None:
            body = b"aioreg-bench probe " + repo.encode()
            digest = sha256_digest(body)
            url = self.url(f"/v2/{repo}/blobs/uploads/?digest={digest}")
            headers = {"Content-Type": "application/octet-stream"}
            async with self.session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status == 201:
                    self.post_digest = True
                elif r.status == 202:
                    self.post_digest = False
                    location = r.headers.get("Location")
                    if location:  # close the session it opened
                        async with self.session.delete(self.url(location)) as d:
                            await d.read()
                else:
                    raise await _fail(r, "POST ?digest= probe", 201)
        return self.post_digest

    async def push_monolithic(
        self,
        repo: str,
        digest: str,
        size: int,
        body: bytes | Callable[[], AsyncIterator[bytes]],
    ) -> None:
        """One request carries the whole blob: ``POST ?digest=``, or ``POST`` + ``PUT ?digest=``
        where the registry does not finish uploads on POST (Distribution 2.8)."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        data = body if isinstance(body, bytes) else body()
        if await self.probe_post_digest(repo):
            url = self.url(f"/v2/{repo}/blobs/uploads/?digest={digest}")
            async with self.session.post(url, data=data, headers=headers) as r:
                if r.status != 201:
                    raise await _fail(r, f"POST ?digest= {repo}", 201)
                expect_header(r, "Docker-Content-Digest", digest, "monolithic push")
        else:
            location = await self.start_upload(repo)
            async with self.session.put(
                self.with_digest(location, digest), data=data, headers=headers
            ) as r:
                if r.status != 201:
                    raise await _fail(r, f"PUT ?digest= {repo}", 201)
                expect_header(r, "Docker-Content-Digest", digest, "monolithic push")

    async def push_chunked(self, repo: str, digest: str, path: Path, size: int, chunk: int) -> int:
        """``POST``, ``PATCH`` chunks with ``Content-Range``, then ``PUT ?digest=``; returns
        the number of PATCH requests."""
        location = await self.start_upload(repo)
        offset = 0
        patches = 0
        while offset < size:
            length = min(chunk, size - offset)
            end = offset + length - 1
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                "Content-Range": f"{offset}-{end}",
            }
            data = file_chunks(path, offset, length)()
            async with self.session.patch(location, data=data, headers=headers) as r:
                if r.status != 202:
                    raise await _fail(r, f"PATCH {offset}-{end}", 202)
                expect_header(r, "Range", f"0-{end}", f"PATCH {offset}-{end}")
                location = self.url(r.headers.get("Location") or str(location))
            offset += length
            patches += 1
        async with self.session.put(
            self.with_digest(location, digest), headers={"Content-Length": "0"}
        ) as r:
            if r.status != 201:
                raise await _fail(r, "PUT ?digest= after chunks", 201)
            expect_header(r, "Docker-Content-Digest", digest, "chunked push")
        return patches

    async def push_stream(self, repo: str, size: int, chunks: Iterable[bytes]) -> str:
        """The flow docker and containerd use: ``POST``, one ``PATCH`` streaming the whole
        body (hashed as it goes, so the digest need not be known first), ``PUT ?digest=``.
        Returns the digest, checked against the registry's ``Docker-Content-Digest``."""
        location = await self.start_upload(repo)
        h = hashlib.sha256()
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            for chunk in chunks:
                h.update(chunk)
                sent += len(chunk)
                yield chunk

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        async with self.session.patch(location, data=body(), headers=headers) as r:
            if r.status != 202:
                raise await _fail(r, f"PATCH upload {repo}", 202)
            expect_header(r, "Range", f"0-{size - 1}", f"PATCH upload {repo}")
            location = self.url(r.headers.get("Location") or str(location))
        if sent != size:
            raise VerifyError(f"push {repo}: generated {sent} bytes, expected {size}")
        digest = "sha256:" + h.hexdigest()
        async with self.session.put(
            self.with_digest(location, digest), headers={"Content-Length": "0"}
        ) as r:
            if r.status != 201:
                raise await _fail(r, f"PUT ?digest= {repo}", 201)
            expect_header(r, "Docker-Content-Digest", digest, f"push {repo}")
        return digest

    # -- reads ------------------------------------------------------------

    async def head_blob(self, repo: str, digest: str, size: int) -> None:
        async with self.session.head(self.url(f"/v2/{repo}/blobs/{digest}")) as r:
            if r.status != 200:
                raise await _fail(r, f"HEAD blob {digest[:19]}", 200)
            expect_header(r, "Content-Length", str(size), "HEAD blob")
            expect_header(r, "Docker-Content-Digest", digest, "HEAD blob")

    async def pull_blob(self, repo: str, digest: str, size: int) -> None:
        """GET a blob, hashing it as it streams in; raises unless size and sha256 match."""
        h = hashlib.sha256()
        got = 0
        async with self.session.get(self.url(f"/v2/{repo}/blobs/{digest}")) as r:
            if r.status != 200:
                raise await _fail(r, f"GET blob {digest[:19]}", 200)
            expect_header(r, "Content-Length", str(size), "GET blob")
            async for data in r.content.iter_chunked(READ_CHUNK):
                h.update(data)
                got += len(data)
        if got != size:
            raise VerifyError(f"GET blob {digest[:19]}: {got} bytes, expected {size}")
        if "sha256:" + h.hexdigest() != digest:
            raise VerifyError(f"GET blob {digest[:19]}: content hashes to sha256:{h.hexdigest()}")

    async def pull_range(
        self, repo: str, digest: str, size: int, start: int, length: int, expect_sha: str
    ) -> None:
        end = start + length - 1
        h = hashlib.sha256()
        got = 0
        headers = {"Range": f"bytes={start}-{end}"}
        async with self.session.get(self.url(f"/v2/{repo}/blobs/{digest}"), headers=headers) as r:
            if r.status != 206:
                raise await _fail(r, f"GET Range {start}-{end}", 206)
            expect_header(r, "Content-Range", f"bytes {start}-{end}/{size}", "Range read")
            async for data in r.content.iter_chunked(READ_CHUNK):
                h.update(data)
                got += len(data)
        if got != length:
            raise VerifyError(f"Range read: {got} bytes, expected {length}")
        if h.hexdigest() != expect_sha:
            raise VerifyError(f"Range read {start}-{end}: wrong bytes")

    # -- manifests --------------------------------------------------------

    async def put_manifest(self, repo: str, reference: str, body: bytes, digest: str) -> None:
        headers = {"Content-Type": OCI_MANIFEST}
        async with self.session.put(
            self.url(f"/v2/{repo}/manifests/{reference}"), data=body, headers=headers
        ) as r:
            if r.status != 201:
                raise await _fail(r, f"PUT manifest {repo}:{reference}", 201)
            expect_header(r, "Docker-Content-Digest", digest, "PUT manifest")

    async def get_manifest(self, repo: str, reference: str, body: bytes, digest: str) -> None:
        headers = {"Accept": OCI_MANIFEST}
        async with self.session.get(
            self.url(f"/v2/{repo}/manifests/{reference}"), headers=headers
        ) as r:
            if r.status != 200:
                raise await _fail(r, f"GET manifest {repo}:{reference}", 200)
            got = await r.read()
            expect_header(r, "Docker-Content-Digest", digest, "GET manifest")
        if got != body:
            raise VerifyError(f"GET manifest {repo}:{reference}: body differs from the one pushed")

    async def head_manifest(self, repo: str, reference: str, size: int, digest: str) -> None:
        headers = {"Accept": OCI_MANIFEST}
        async with self.session.head(
            self.url(f"/v2/{repo}/manifests/{reference}"), headers=headers
        ) as r:
            if r.status != 200:
                raise await _fail(r, f"HEAD manifest {repo}:{reference}", 200)
            expect_header(r, "Docker-Content-Digest", digest, "HEAD manifest")
            expect_header(r, "Content-Length", str(size), "HEAD manifest")

    # -- listings ---------------------------------------------------------

    async def list_pages(self, path: str, key: str) -> tuple[list[str], int]:
        """Follow ``Link: <...>; rel="next"`` from ``path``; every name and the page count."""
        names: list[str] = []
        pages = 0
        url: str | None = path
        while url is not None:
            pages += 1
            if pages > 100_000:
                raise VerifyError(f"{path}: more than 100,000 pages; Link loop?")
            async with self.session.get(self.url(url)) as r:
                if r.status != 200:
                    raise await _fail(r, f"GET {url}", 200)
                payload = json.loads(await r.read())
                link = r.headers.get("Link")
            page = payload.get(key)
            if not isinstance(page, list):
                raise VerifyError(f"GET {url}: no {key!r} list in {str(payload)[:200]}")
            names.extend(page)
            url = None
            if link:
                match = LINK_RE.search(link)
                if match is None:
                    raise VerifyError(f"GET {path}: unreadable Link header {link!r}")
                url = match[1]
        return names, pages


# -- images -------------------------------------------------------------------


def config_blob(label: str) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"bench": label}},
            "rootfs": {"type": "layers", "diff_ids": []},
        },
        sort_keys=True,
    ).encode()


def image_manifest(config: Blob, layers: list[Blob]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        },
        indent=2,
    ).encode()


async def push_small_image(client: Client, repo: str, label: str) -> tuple[bytes, str]:
    """Push a config blob, one small layer and a manifest (not tagged); returns its bytes
    and digest."""
    config = config_blob(label)
    layer = b"layer of " + label.encode() + b"\n" * 1000
    blobs = [Blob(sha256_digest(config), len(config)), Blob(sha256_digest(layer), len(layer))]
    for blob, data in zip(blobs, (config, layer), strict=True):
        await client.push_monolithic(repo, blob.digest, blob.size, data)
    manifest = image_manifest(blobs[0], blobs[1:])
    return manifest, sha256_digest(manifest)
