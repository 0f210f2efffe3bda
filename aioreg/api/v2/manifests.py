"""``/v2/<name>/manifests/<reference>``: push, fetch, check and delete by tag or digest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDict

from aioreg.api.auth import actor
from aioreg.api.http import read_limited, registry
from aioreg.api.v2.proxied import proxied_name, proxies
from aioreg.errors import TooManyRequestsError

BUDGET_WAIT_SECONDS = 1.0  # how long a PUT waits for room before 429


class ManifestBudget:
    """Bytes of manifest bodies that the PUTs in progress may hold at once.

    Each PUT reserves its Content-Length (or the largest manifest, without
    one) before reading its body and keeps it until it is answered; a PUT
    that finds no room waits briefly for others to finish, then gets 429.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._freed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        async with self._freed:
            try:
                await asyncio.wait_for(
                    self._freed.wait_for(lambda: self.used + size <= self.total),
                    BUDGET_WAIT_SECONDS,
                )
            except TimeoutError:
                raise TooManyRequestsError(
                    f"manifest uploads in progress hold {self.used} of the "
                    f"{self.total} bytes they may use at once",
                    BUDGET_WAIT_SECONDS,
                ) from None
            self.used += size
        try:
            yield
        finally:
            async with self._freed:
                self.used -= size
                self._freed.notify_all()


MANIFEST_BUDGET_KEY = web.AppKey("manifest_budget", ManifestBudget)


async def get_manifest(request: web.Request) -> web.StreamResponse:
    """GET and HEAD; only a GET counts as a pull."""
    is_get = request.method == "GET"
    proxied = proxied_name(request)
    source = registry(request) if proxied is None else proxies(request)
    row = await source.manifest(
        proxied or request.match_info["name"],
        request.match_info["reference"],
        pull=is_get,
        actor=actor(request),
    )
    headers = {
        "Docker-Content-Digest": row.digest,
        "ETag": f'"{row.digest}"',
        "Content-Type": row.media_type,
    }
    if f'"{row.digest}"' in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    # aiohttp sends no body for HEAD but keeps the Content-Length of this one.
    return web.Response(body=row.body, headers=headers)


async def put_manifest(request: web.Request) -> web.StreamResponse:
    reg = registry(request)
    name = request.match_info["name"]
    limit = reg.config.limits.manifest_max_bytes
    # A body over the limit is refused by read_limited; it only ever holds up to the limit.
    size = min(limit, request.content_length if request.content_length is not None else limit)
    async with request.app[MANIFEST_BUDGET_KEY].reserve(size):
        body = await read_limited(request, limit)
        pushed = await reg.put_manifest(
            name,
            request.match_info["reference"],
            body,
            request.headers.get("Content-Type"),
            actor(request),
            # A push by digest may name tags; the URI's length bounds how many
            # (server.client_max_header_bytes, past which the answer is 414).
            tags=request.query.getall("tag", []),
        )
    manifest = pushed.manifest
    digest = str(manifest.digest)
    headers = CIMultiDict(
        {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    )
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject)
    if "tag" in request.query:  # one OCI-Tag per tag parameter accepted
        for tag in pushed.tags:
            headers.add("OCI-Tag", tag)
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.StreamResponse:
    await registry(request).delete_manifest(
        request.match_info["name"], request.match_info["reference"], actor(request)
    )
    return web.Response(status=202)
