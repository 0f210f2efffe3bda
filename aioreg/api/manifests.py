"""``/v2/<name>/manifests/<reference>``: push, fetch, check and delete by tag or digest."""

from __future__ import annotations

from aiohttp import web

from aioreg.api.auth import actor
from aioreg.api.http import read_limited, registry


async def get_manifest(request: web.Request) -> web.StreamResponse:
    """GET and HEAD; only a GET counts as a pull."""
    is_get = request.method == "GET"
    row = await registry(request).manifest(
        request.match_info["name"],
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
    body = await read_limited(request, reg.config.limits.manifest_max_bytes)
    manifest = await reg.put_manifest(
        name,
        request.match_info["reference"],
        body,
        request.headers.get("Content-Type"),
        actor(request),
    )
    digest = str(manifest.digest)
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject)
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.StreamResponse:
    await registry(request).delete_manifest(
        request.match_info["name"], request.match_info["reference"], actor(request)
    )
    return web.Response(status=202)
