"""Content discovery: ``/v2/``, tag lists, the catalog and the referrers API."""

from __future__ import annotations

import msgspec
from aiohttp import web

from aioreg.api.auth import may_list
from aioreg.api.http import json_response, next_link, page_params, registry
from aioreg.api.v2.proxied import proxied_name, proxies
from aioreg.domain.manifest import OCI_INDEX
from aioreg.index import Referrer


class TagList(msgspec.Struct):
    name: str
    tags: list[str]


class Catalog(msgspec.Struct):
    repositories: list[str]


class ReferrerDescriptor(msgspec.Struct, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    artifactType: str | None = None
    annotations: dict[str, str] | None = None


class ReferrerIndex(msgspec.Struct):
    manifests: list[ReferrerDescriptor]
    schemaVersion: int = 2
    mediaType: str = OCI_INDEX


async def base(request: web.Request) -> web.StreamResponse:
    return json_response({})


def _paged(
    request: web.Request, payload: object, names: list[str], limit: int, more: bool
) -> web.Response:
    response = json_response(payload)
    if more and limit > 0 and names:
        ns = {"ns": request.query["ns"]} if "ns" in request.query else None
        response.headers["Link"] = next_link(request.path, limit, names[-1], ns)
    return response


async def tags_list(request: web.Request) -> web.StreamResponse:
    """A hosted repository's tags, or a proxied one's as its upstream lists them."""
    reg = registry(request)
    name = request.match_info["name"]
    last, limit = page_params(request, reg.config.limits.page_size_max)
    proxied = proxied_name(request)
    source = reg if proxied is None else proxies(request)
    tags, more = await source.tags(proxied or name, last, limit)
    return _paged(request, TagList(name, tags), tags, limit, more)


async def catalog(request: web.Request) -> web.StreamResponse:
    """Repositories the caller may pull, a page at a time."""
    reg = registry(request)
    last, limit = page_params(request, reg.config.limits.page_size_max)
    names: list[str] = []
    more = True
    cursor = last
    while more and len(names) < limit:
        page, more = await reg.catalog(cursor, limit)
        if not page:
            break
        cursor = page[-1]
        for name in page:
            if len(names) == limit:
                more = True
                break
            if await may_list(request, name):
                names.append(name)
    return _paged(request, Catalog(names), names, limit, more)


def _descriptor(referrer: Referrer) -> ReferrerDescriptor:
    return ReferrerDescriptor(
        mediaType=referrer.media_type,
        digest=referrer.digest,
        size=referrer.size,
        artifactType=referrer.artifact_type,
        annotations=referrer.annotations,
    )


async def referrers(request: web.Request) -> web.StreamResponse:
    artifact_type = request.query.get("artifactType") or None
    proxied = proxied_name(request)
    source = registry(request) if proxied is None else proxies(request)
    found = await source.referrers(
        proxied or request.match_info["name"], request.match_info["digest"], artifact_type
    )
    response = json_response(ReferrerIndex([_descriptor(r) for r in found]), content_type=OCI_INDEX)
    if artifact_type is not None:
        response.headers["OCI-Filters-Applied"] = "artifactType"
    return response
