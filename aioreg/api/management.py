"""``/api/v1``: repository management over HTTP, described by an OpenAPI document.

Thin handlers over ``aioreg.management``; with access control on, reads need
pull access to the repository, deletes need delete access, and registry-wide
operations (usage of everything, GC, retention, quotas, namespace removal)
need an admin whose credential's scope is registry-wide. Every right is the
holder's roles intersected with the credential's scope
(``AuthService.effective_actions``).

Sub-resources of a repository sit behind a ``/-/`` segment, which no repository
name can contain (each path component starts with a letter or digit), so
``/repositories/a/artifacts/b`` is always the repository ``a/artifacts/b``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from aiohttp import web

from aioreg import __version__
from aioreg.api.auth import AUTH_KEY, IDENTITY, AuthError, identify
from aioreg.api.http import query_int, read_limited, registry
from aioreg.api.listing import may_list
from aioreg.auth.service import Identity
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index.lifecycle import Event, RepositorySummary, Usage
from aioreg.management import (
    LayerDetail,
    Management,
    RepositoryDetail,
    RetentionPolicy,
)

MANAGEMENT_KEY = web.AppKey("management", Management)
PREFIX = "/api/v1"


# -- response bodies --------------------------------------------------------------


class NamespaceList(msgspec.Struct):
    namespaces: list[str]


class RepositoryPage(msgspec.Struct):
    repositories: list[RepositorySummary]
    total: int
    next_offset: int | None


class LayerList(msgspec.Struct):
    digest: str
    layers: list[LayerDetail]


class Deleted(msgspec.Struct):
    deleted: list[str]


class CopyRequest(msgspec.Struct, forbid_unknown_fields=True):
    source: str  # repository to copy from
    reference: str  # tag or digest there
    tag: str | None = None  # tag to set in the target repository


class Copied(msgspec.Struct):
    repository: str
    digest: str
    tag: str | None


class UsageReport(msgspec.Struct):
    total: Usage
    namespaces: list[Usage]
    repositories: list[Usage]


class EventList(msgspec.Struct):
    events: list[Event]


class SearchHit(msgspec.Struct):
    repository: str
    tag: str | None
    digest: str | None


class SearchResult(msgspec.Struct):
    results: list[SearchHit]


class GcResult(msgspec.Struct):
    dry_run: bool
    blobs_removed: int
    bytes_freed: int
    manifests_removed: list[str]
    uploads_expired: int
    seconds: float


class RemovalItem(msgspec.Struct):
    repository: str
    tag: str
    digest: str
    reason: str


class RetentionResult(msgspec.Struct):
    applied: bool
    removals: list[RemovalItem]


class PolicyList(msgspec.Struct):
    policies: dict[str, RetentionPolicy]


class QuotaRequest(msgspec.Struct, forbid_unknown_fields=True):
    quota_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None


class Empty(msgspec.Struct):
    pass


# -- helpers ------------------------------------------------------------------------


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type="application/json"
    )


def _management(request: web.Request) -> Management:
    return request.app[MANAGEMENT_KEY]


async def _identity(request: web.Request) -> Identity:
    service = request.app[AUTH_KEY]
    identity, _ = await identify(request, service)
    request[IDENTITY] = identity
    return identity


async def _require(request: web.Request, repository: str | None, action: str) -> str | None:
    """Check access; returns the actor name for the activity log."""
    service = request.app[AUTH_KEY]
    if not service.enabled:
        return None
    identity = await _identity(request)
    if repository is None:  # registry-wide: admins with a registry-wide credential
        if await service.registry_admin(identity):
            return identity.name
        if identity.anonymous:
            raise AuthError("this operation needs an admin's credentials")
        raise RegistryError(
            ErrorCode.DENIED,
            "this operation needs an admin with a registry-wide credential (a password, "
            "a token scoped *:pull,push,delete, or a JWT with registry:catalog:*)",
        )
    allowed, why = await service.effective_actions(identity, repository)
    if action not in allowed:
        if identity.anonymous:
            raise AuthError(f"{action} on {repository} needs credentials")
        raise RegistryError(ErrorCode.DENIED, f"access denied: {why}")
    return identity.name


async def _body(request: web.Request, kind: type[Any]) -> Any:
    try:
        body = await read_limited(request, registry(request).config.limits.manifest_max_bytes)
        return msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"bad request body: {exc}") from None


def _choice(request: web.Request, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = request.query.get(key, default)
    if value not in allowed:
        raise RegistryError(
            ErrorCode.BAD_REQUEST, f"{key} must be one of {', '.join(allowed)}", {key: value[:100]}
        )
    return value


# -- handlers -------------------------------------------------------------------------


async def list_namespaces(request: web.Request) -> web.StreamResponse:
    """Namespaces holding at least one repository the caller may pull (all, for admins)."""
    names = await _management(request).namespaces()
    if not request.app[AUTH_KEY].enabled:
        return _json(NamespaceList(names))
    await _identity(request)
    if await _is_admin(request):
        return _json(NamespaceList(names))
    visible = []
    for name in names:
        for repository in await _management(request).index.repositories_in(name):
            if await may_list(request, repository):
                visible.append(name)
                break
    return _json(NamespaceList(visible))


async def _is_admin(request: web.Request) -> bool:
    service = request.app[AUTH_KEY]
    identity: Identity | None = request.get(IDENTITY)
    if identity is None:
        return False
    return await service.registry_admin(identity)


async def list_repositories(request: web.Request) -> web.StreamResponse:
    namespace = request.match_info["namespace"]
    if request.app[AUTH_KEY].enabled:
        await _identity(request)
    offset = query_int(request, "offset", 0, 1 << 31)
    limit = query_int(request, "limit", 100, 1000)
    descending = _choice(request, "order", "asc", ("asc", "desc")) == "desc"
    summaries = await _management(request).repositories(
        namespace, request.query.get("sort", "name"), descending
    )
    visible = [s for s in summaries if await may_list(request, s.name)]
    next_offset = offset + limit if offset + limit < len(visible) else None
    return _json(RepositoryPage(visible[offset : offset + limit], len(visible), next_offset))


async def get_repository(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    await _require(request, name, "pull")
    return _json(await _management(request).repository(name))


async def get_layers(request: web.Request) -> web.StreamResponse:
    name, digest = request.match_info["name"], request.match_info["digest"]
    await _require(request, name, "pull")
    return _json(LayerList(digest, await _management(request).layers(name, digest)))


async def delete_repository(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    actor = await _require(request, name, "delete")
    await _management(request).delete_repository(name, actor)
    return _json(Deleted([name]))


async def delete_artifact(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    digest = request.match_info.get("digest") or request.query.get("digest", "")
    actor = await _require(request, name, "delete")
    tags = await _management(request).delete_artifact(name, digest, actor)
    return _json(Deleted([digest, *tags]))


async def delete_namespace(request: web.Request) -> web.StreamResponse:
    actor = await _require(request, None, "delete")
    removed = await _management(request).delete_namespace(request.match_info["namespace"], actor)
    return _json(Deleted(removed))


async def copy_artifact(request: web.Request) -> web.StreamResponse:
    target = request.match_info["name"]
    body: CopyRequest = await _body(request, CopyRequest)
    actor = await _require(request, target, "push")
    await _require(request, body.source, "pull")
    digest = await _management(request).copy(body.source, body.reference, target, body.tag, actor)
    return _json(Copied(target, digest, body.tag), status=201)


async def get_usage(request: web.Request) -> web.StreamResponse:
    namespace = request.query.get("namespace")
    if namespace is None:
        await _require(request, None, "pull")
    else:
        await _require_namespace_read(request, namespace)
    namespaces, repositories, total = await _management(request).usage(namespace)
    return _json(UsageReport(total=total, namespaces=namespaces, repositories=repositories))


async def _require_namespace_read(request: web.Request, namespace: str) -> None:
    service = request.app[AUTH_KEY]
    if not service.enabled:
        return
    identity = await _identity(request)
    if await service.reaches_namespace(identity, namespace):
        return
    if identity.anonymous:
        raise AuthError(f"usage of {namespace} needs credentials")
    raise RegistryError(
        ErrorCode.DENIED,
        f"usage of {namespace} is for its members, with a credential scoped to reach it",
    )


async def get_events(request: web.Request) -> web.StreamResponse:
    repository = request.query.get("repository")
    if repository is not None:
        await _require(request, repository, "pull")
    else:
        await _require(request, None, "pull")
    events = await _management(request).events(query_int(request, "limit", 100, 10000), repository)
    return _json(EventList(events))


async def search(request: web.Request) -> web.StreamResponse:
    if request.app[AUTH_KEY].enabled:
        await _identity(request)
    hits = await _management(request).search(
        request.query.get("q", ""), query_int(request, "limit", 100, 1000)
    )
    visible = [SearchHit(*hit) for hit in hits if await may_list(request, hit[0])]
    return _json(SearchResult(visible))


async def run_gc(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    untagged = None
    if "untagged" in request.query:
        untagged = _choice(request, "untagged", "", ("true", "false")) == "true"
    report = await _management(request).gc(
        dry_run=_choice(request, "dry_run", "false", ("true", "false")) == "true",
        untagged=untagged,
    )
    return _json(
        GcResult(
            report.dry_run,
            report.blobs,
            report.bytes,
            [f"{r}@{d}" for r, d in report.manifests],
            report.uploads_expired,
            report.seconds,
        )
    )


async def retention_run(request: web.Request) -> web.StreamResponse:
    actor = await _require(request, None, "delete")
    apply = request.match_info["mode"] == "apply"
    management = _management(request)
    removals = await (
        management.retention_apply(actor=actor or "retention")
        if apply
        else management.retention_preview()
    )
    return _json(
        RetentionResult(
            apply, [RemovalItem(r.repository, r.tag, r.digest, r.reason) for r in removals]
        )
    )


async def get_policies(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "pull")
    return _json(PolicyList(await _management(request).retention_policies()))


async def put_policy(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    policy: RetentionPolicy = await _body(request, RetentionPolicy)
    await _management(request).set_retention(request.match_info["target"], policy)
    return _json(policy)


async def delete_policy(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    await _management(request).set_retention(request.match_info["target"], None)
    return _json(Empty())


async def put_quota(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    body: QuotaRequest = await _body(request, QuotaRequest)
    await _management(request).set_quota(request.match_info["namespace"], body.quota_bytes)
    return _json(body)


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=OPENAPI_DOCUMENT, content_type="application/json")


# -- the endpoint table: routes and the OpenAPI document come from here -------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    response: type[Any] | None
    request: type[Any] | None = None
    status: int = 200
    query: tuple[str, ...] = ()


# A repository name: anything without a "/-/" segment (no valid name has one).
NAME = "{name:(?:(?!/-/).)+}"
SUB = f"/repositories/{NAME}/-"
ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/namespaces", list_namespaces, "List namespaces", NamespaceList),
    Endpoint(
        "DELETE",
        "/namespaces/{namespace}",
        delete_namespace,
        "Delete a namespace and all its repositories (admin)",
        Deleted,
    ),
    Endpoint(
        "GET",
        "/namespaces/{namespace}/repositories",
        list_repositories,
        "List a namespace's repositories with tag/artifact counts, size and activity",
        RepositoryPage,
        query=("sort", "order", "offset", "limit"),
    ),
    Endpoint(
        "PUT",
        "/namespaces/{namespace}/quota",
        put_quota,
        "Set or clear a namespace's storage quota (admin)",
        QuotaRequest,
        QuotaRequest,
    ),
    Endpoint(
        "GET",
        f"{SUB}/artifacts/{{digest}}/layers",
        get_layers,
        "Layers of an artifact",
        LayerList,
    ),
    Endpoint(
        "DELETE",
        f"{SUB}/artifacts/{{digest}}",
        delete_artifact,
        "Delete an artifact and the tags pointing at it",
        Deleted,
    ),
    Endpoint(
        "DELETE",
        f"{SUB}/delete-request",
        delete_artifact,
        "Delete an artifact by ?digest= (seed form)",
        Deleted,
        query=("digest",),
    ),
    Endpoint(
        "POST",
        f"{SUB}/copy",
        copy_artifact,
        "Copy or retag an artifact server-side (no bytes move)",
        Copied,
        CopyRequest,
        201,
    ),
    Endpoint(
        "GET",
        f"/repositories/{NAME}",
        get_repository,
        "A repository: tags, artifacts, sizes, referrers",
        RepositoryDetail,
    ),
    Endpoint(
        "DELETE",
        f"/repositories/{NAME}",
        delete_repository,
        "Delete a repository with all tags and artifacts",
        Deleted,
    ),
    Endpoint(
        "GET",
        "/usage",
        get_usage,
        "Logical and physical storage per namespace and repository",
        UsageReport,
        query=("namespace",),
    ),
    Endpoint(
        "GET",
        "/events",
        get_events,
        "Recent activity: pushes, pulls, tag changes, deletes",
        EventList,
        query=("repository", "limit"),
    ),
    Endpoint(
        "GET",
        "/search",
        search,
        "Search repository paths, tags and digests",
        SearchResult,
        query=("q", "limit"),
    ),
    Endpoint(
        "POST",
        "/gc",
        run_gc,
        "Run online garbage collection (admin)",
        GcResult,
        query=("dry_run", "untagged"),
    ),
    Endpoint("GET", "/retention/policies", get_policies, "Stored retention policies", PolicyList),
    Endpoint(
        "PUT",
        "/retention/policies/{target:.+}",
        put_policy,
        "Set the retention policy of a namespace or repository (admin)",
        RetentionPolicy,
        RetentionPolicy,
    ),
    Endpoint(
        "DELETE",
        "/retention/policies/{target:.+}",
        delete_policy,
        "Remove a retention policy (admin)",
        Empty,
    ),
    Endpoint(
        "POST",
        "/retention/{mode:preview|apply}",
        retention_run,
        "Preview or apply retention (admin)",
        RetentionResult,
    ),
    Endpoint("GET", "/openapi.json", openapi, "This document", None),
]


def _openapi_path(path: str) -> str:
    """aiohttp's ``{name:regex}`` to OpenAPI's ``{name}``."""
    out, depth, skipping = [], 0, False
    for ch in path:
        if ch == "{":
            depth += 1
            if depth == 1:
                out.append(ch)
                skipping = False
                continue
        if ch == "}":
            depth -= 1
            if depth == 0:
                skipping = False
                out.append(ch)
                continue
        if depth == 1 and ch == ":":
            skipping = True
            continue
        if not skipping:
            out.append(ch)
    return "".join(out)


def build_openapi() -> dict[str, Any]:
    types = [t for e in ENDPOINTS for t in (e.response, e.request) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        path = PREFIX + _openapi_path(endpoint.path)
        params = [
            {"name": p.split(":")[0], "in": "path", "required": True, "schema": {"type": "string"}}
            for p in _path_params(endpoint.path)
        ] + [
            {"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
            for q in endpoint.query
        ]
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": endpoint.handler.__name__
            + (
                "_" + endpoint.method.lower()
                if endpoint.handler is delete_artifact and "delete-request" in endpoint.path
                else ""
            ),
            "parameters": params,
            "responses": {
                str(endpoint.status): {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": refs[endpoint.response]
                            if endpoint.response
                            else {"type": "object"}
                        }
                    },
                },
                "default": {
                    "description": "OCI error body",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}
                    },
                },
            },
        }
        if endpoint.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[endpoint.request]}},
            }
        paths.setdefault(path, {})[endpoint.method.lower()] = operation
    components["Errors"] = {
        "type": "object",
        "properties": {
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "detail": {},
                    },
                    "required": ["code", "message"],
                },
            }
        },
        "required": ["errors"],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "aioreg management API", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


def _path_params(path: str) -> list[str]:
    return [
        segment.strip("{}") for segment in _openapi_path(path).split("/") if segment.startswith("{")
    ]


OPENAPI_DOCUMENT = msgspec.json.encode(build_openapi())


def add_routes(app: web.Application) -> None:
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, PREFIX + endpoint.path, endpoint.handler)
