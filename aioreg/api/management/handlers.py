"""``/api/v1`` handlers: parse and check the request, call ``Management``, map to schemas.

With access control on, reads need pull access to the repository, deletes need
delete access, and registry-wide operations (usage of everything, GC, retention,
quotas, namespace removal) need an admin whose credential's scope is
registry-wide. Every right is the holder's roles intersected with the
credential's scope (``AuthService.effective_actions``).
"""

from __future__ import annotations

import datetime
import math
from typing import TypeVar

import msgspec
from aiohttp import web

from aioreg.api.auth import AUTH_KEY, IDENTITY, identify, may_list
from aioreg.api.http import query_int, read_limited, registry
from aioreg.api.management.schemas import (
    ActivityEvent,
    ActivityPage,
    Copied,
    CopyRequest,
    Deleted,
    Delivery,
    DeliveryAttempt,
    DeliveryList,
    Deprecation,
    DeprecationRequest,
    Empty,
    Event,
    EventList,
    GcResult,
    LayerDetail,
    LayerList,
    NamespaceList,
    PolicyList,
    Proxy,
    ProxyList,
    ProxyRequest,
    PullHistory,
    QuotaRequest,
    RemovalItem,
    RepositoryDetail,
    RepositoryPage,
    RepositorySummary,
    RetentionPolicy,
    RetentionResult,
    SearchHit,
    SearchResult,
    Usage,
    UsageReport,
    Webhook,
    WebhookCreated,
    WebhookList,
    WebhookRequest,
    WebhookUpdate,
)
from aioreg.api.v2.proxied import proxies
from aioreg.auth.service import AuthError, Identity
from aioreg.config import WebhookEndpointConfig
from aioreg.domain.activity import HISTORY_DAYS, MAX_DAYS, FeedQuery
from aioreg.domain.management import Management
from aioreg.domain.reference import validate_name
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index.webhooks import EndpointRow

MANAGEMENT_KEY = web.AppKey("management", Management)
Body = TypeVar("Body")


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


async def _body(request: web.Request, kind: type[Body]) -> Body:
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
    names = await _management(request).listings.namespaces()
    if not request.app[AUTH_KEY].enabled:
        return _json(NamespaceList(names))
    await _identity(request)
    if await _is_admin(request):
        return _json(NamespaceList(names))
    visible = []
    for name in names:
        for repository in await _management(request).listings.repository_names(name):
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
    summaries = await _management(request).listings.repositories(
        namespace, request.query.get("sort", "name"), descending
    )
    visible = [s for s in summaries if await may_list(request, s.name)]
    next_offset = offset + limit if offset + limit < len(visible) else None
    page = [RepositorySummary.from_domain(s) for s in visible[offset : offset + limit]]
    return _json(RepositoryPage(page, len(visible), next_offset))


async def get_repository(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    await _require(request, name, "pull")
    return _json(RepositoryDetail.from_domain(await _management(request).listings.repository(name)))


async def get_layers(request: web.Request) -> web.StreamResponse:
    name, digest = request.match_info["name"], request.match_info["digest"]
    await _require(request, name, "pull")
    layers = await _management(request).listings.layers(name, digest)
    return _json(LayerList(digest, [LayerDetail.from_domain(layer) for layer in layers]))


async def delete_repository(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    actor = await _require(request, name, "delete")
    await _management(request).repositories.delete(name, actor)
    return _json(Deleted([name]))


async def delete_artifact(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    digest = request.match_info.get("digest") or request.query.get("digest", "")
    actor = await _require(request, name, "delete")
    tags = await _management(request).repositories.delete_artifact(name, digest, actor)
    return _json(Deleted([digest, *tags]))


async def delete_namespace(request: web.Request) -> web.StreamResponse:
    actor = await _require(request, None, "delete")
    removed = await _management(request).repositories.delete_namespace(
        request.match_info["namespace"], actor
    )
    return _json(Deleted(removed))


async def copy_artifact(request: web.Request) -> web.StreamResponse:
    target = request.match_info["name"]
    body = await _body(request, CopyRequest)
    actor = await _require(request, target, "push")
    await _require(request, body.source, "pull")
    digest = await _management(request).repositories.copy(
        body.source, body.reference, target, body.tag, actor
    )
    return _json(Copied(target, digest, body.tag), status=201)


async def get_usage(request: web.Request) -> web.StreamResponse:
    namespace = request.query.get("namespace")
    if namespace is None:
        await _require(request, None, "pull")
    else:
        await _require_namespace_read(request, namespace)
    namespaces, repositories, total = await _management(request).listings.usage(namespace)
    return _json(
        UsageReport(
            total=Usage.from_domain(total),
            namespaces=[Usage.from_domain(u) for u in namespaces],
            repositories=[Usage.from_domain(u) for u in repositories],
        )
    )


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
    events = await _management(request).listings.events(
        query_int(request, "limit", 100, 10000), repository
    )
    return _json(EventList([Event.from_domain(e) for e in events]))


async def search(request: web.Request) -> web.StreamResponse:
    if request.app[AUTH_KEY].enabled:
        await _identity(request)
    hits = await _management(request).listings.search(
        request.query.get("q", ""), query_int(request, "limit", 100, 1000)
    )
    visible = [SearchHit(*hit) for hit in hits if await may_list(request, hit[0])]
    return _json(SearchResult(visible))


async def run_gc(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    untagged = None
    if "untagged" in request.query:
        untagged = _choice(request, "untagged", "", ("true", "false")) == "true"
    report = await _management(request).gc.run(
        dry_run=_choice(request, "dry_run", "false", ("true", "false")) == "true",
        untagged=untagged,
    )
    return _json(GcResult.from_domain(report))


async def retention_run(request: web.Request) -> web.StreamResponse:
    actor = await _require(request, None, "delete")
    apply = request.match_info["mode"] == "apply"
    management = _management(request)
    removals = await (
        management.retention.apply(actor=actor or "retention")
        if apply
        else management.retention.preview()
    )
    return _json(RetentionResult(apply, [RemovalItem.from_domain(r) for r in removals]))


async def get_policies(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "pull")
    policies = await _management(request).retention.policies()
    return _json(
        PolicyList({target: RetentionPolicy.from_domain(p) for target, p in policies.items()})
    )


async def put_policy(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    policy = await _body(request, RetentionPolicy)
    await _management(request).retention.set_policy(
        request.match_info["target"], policy.to_domain()
    )
    return _json(policy)


async def delete_policy(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    await _management(request).retention.set_policy(request.match_info["target"], None)
    return _json(Empty())


async def put_quota(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    body = await _body(request, QuotaRequest)
    await _management(request).repositories.set_quota(
        request.match_info["namespace"], body.quota_bytes
    )
    return _json(body)


async def put_deprecation(request: web.Request) -> web.StreamResponse:
    """Deprecate a repository or a tag: pulls of it carry the message as a ``Warning``."""
    name, tag = request.match_info["name"], request.match_info.get("tag")
    await _require(request, name, "delete")
    body = await _body(request, DeprecationRequest)
    stored = await _management(request).repositories.set_deprecation(name, body.message, tag)
    return _json(Deprecation(name, stored, tag))


async def delete_deprecation(request: web.Request) -> web.StreamResponse:
    name, tag = request.match_info["name"], request.match_info.get("tag")
    await _require(request, name, "delete")
    await _management(request).repositories.set_deprecation(name, None, tag)
    return _json(Deprecation(name, None, tag))


async def list_proxies(request: web.Request) -> web.StreamResponse:
    """Every proxy, the config file's and the added ones; credentials never leave."""
    await _require(request, None, "pull")
    definitions = await _management(request).proxies.all()
    return _json(ProxyList([Proxy.from_domain(d) for d in definitions]))


async def add_proxy(request: web.Request) -> web.StreamResponse:
    await _require(request, None, "delete")
    body = await _body(request, ProxyRequest)
    definition = await _management(request).proxies.add(body)
    await proxies(request).reload()
    return _json(Proxy.from_domain(definition), status=201)


async def remove_proxy(request: web.Request) -> web.StreamResponse:
    """Remove an added proxy and purge its cache: the namespace, then its repositories."""
    actor = await _require(request, None, "delete")
    namespace = request.match_info["namespace"]
    purged = await _management(request).proxies.remove(namespace, actor)
    await proxies(request).reload()
    return _json(Deleted([namespace, *purged]))


async def purge_proxy(request: web.Request) -> web.StreamResponse:
    """Drop a proxy's cached repositories from the index; GC frees their blobs."""
    actor = await _require(request, None, "delete")
    removed = await _management(request).proxies.purge(request.match_info["namespace"], actor)
    return _json(Deleted(removed))


# -- activity -------------------------------------------------------------------------

ACTIVITY_FILTER_MAX = 20  # actions one feed request may name


async def get_pulls(request: web.Request) -> web.StreamResponse:
    """Pull statistics of a repository, a tag (``/tags/{tag}/pulls`` or ``?tag=``), or of
    the pulls by digest (``?by_digest=true``): total, last pull, per day."""
    name = request.match_info["name"]
    tag = request.match_info.get("tag") or request.query.get("tag") or None
    by_digest = _choice(request, "by_digest", "false", ("true", "false")) == "true"
    if by_digest and tag is not None:
        raise RegistryError(ErrorCode.BAD_REQUEST, "give a tag or by_digest, not both")
    await _require(request, name, "pull")
    history = await _management(request).activity.pulls(
        name, tag, query_int(request, "days", HISTORY_DAYS, MAX_DAYS), by_digest
    )
    return _json(PullHistory.from_domain(history))


def _time(request: web.Request, key: str) -> float | None:
    """A point in time: Unix seconds, or RFC 3339 (``2026-11-26T18:00:00Z``)."""
    raw = request.query.get(key)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = datetime.datetime.fromisoformat(raw)
        except ValueError:
            raise RegistryError(
                ErrorCode.BAD_REQUEST,
                f"{key} must be Unix seconds or an RFC 3339 time",
                {key: raw[:100]},
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp()
    if not math.isfinite(value):
        raise RegistryError(ErrorCode.BAD_REQUEST, f"{key} must be finite", {key: raw[:100]})
    return value


async def get_activity(request: web.Request) -> web.StreamResponse:
    """What happened, newest first, in repositories the caller may pull (everything for
    an admin), filtered by repository, action, actor and time; one page per cursor."""
    repository = request.query.get("repository") or None
    if repository is not None:
        validate_name(repository)
        await _require(request, repository, "pull")
    kinds = [k for raw in request.query.getall("action", []) for k in raw.split(",") if k]
    if len(kinds) > ACTIVITY_FILTER_MAX:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"name at most {ACTIVITY_FILTER_MAX} actions")
    service = request.app[AUTH_KEY]
    everything = not service.enabled
    if service.enabled:
        await _identity(request)
        everything = await _is_admin(request)

    async def visible(name: str) -> bool:
        if everything:
            return True
        return bool(name) and await may_list(request, name)  # "" (gc) is for admins

    query = FeedQuery(
        limit=query_int(request, "limit", 100, 1000) or 1,
        before=query_int(request, "cursor", 0, 1 << 62) or None,
        repository=repository,
        kinds=kinds or None,
        actor=request.query.get("actor") or None,
        since=_time(request, "since"),
        until=_time(request, "until"),
    )
    events, cursor = await _management(request).activity.feed(query, visible)
    return _json(
        ActivityPage(
            [ActivityEvent.from_domain(e) for e in events],
            None if cursor is None else str(cursor),
        )
    )


# -- webhooks ---------------------------------------------------------------------------


async def _require_webhooks(request: web.Request, namespace: str | None) -> None:
    """Registry-wide endpoints are for admins; a namespace's also for whoever may delete in
    it (its admins), with a credential scoped to it."""
    await _require(request, namespace, "delete")


async def _webhook(request: web.Request) -> EndpointRow:
    """The endpoint named in the path, once the caller may manage it."""
    endpoint = await _management(request).webhooks.get(int(request.match_info["id"]))
    await _require_webhooks(request, endpoint.namespace)
    return endpoint


async def list_webhooks(request: web.Request) -> web.StreamResponse:
    """Every endpoint (admins), or one namespace's (``?namespace=``); never their secrets."""
    namespace = request.query.get("namespace")
    await _require_webhooks(request, namespace)
    endpoints = await _management(request).webhooks.all()
    if namespace is not None:
        endpoints = [e for e in endpoints if e.namespace == namespace]
    return _json(WebhookList([Webhook.from_domain(e) for e in endpoints]))


async def add_webhook(request: web.Request) -> web.StreamResponse:
    body = await _body(request, WebhookRequest)
    await _require_webhooks(request, body.namespace)
    endpoint, secret = await _management(request).webhooks.add(
        WebhookEndpointConfig(
            url=body.url,
            secret=body.secret or "",
            namespace=body.namespace or "",
            events=body.events,
            repository_pattern=body.repository_pattern,
            media_types=body.media_types,
            format=body.format,
            enabled=body.enabled,
        )
    )
    return _json(WebhookCreated.created(endpoint, secret), status=201)


async def get_webhook(request: web.Request) -> web.StreamResponse:
    return _json(Webhook.from_domain(await _webhook(request)))


async def update_webhook(request: web.Request) -> web.StreamResponse:
    endpoint = await _webhook(request)
    body = await _body(request, WebhookUpdate)
    updated = await _management(request).webhooks.set_enabled(endpoint.id, body.enabled)
    return _json(Webhook.from_domain(updated))


async def remove_webhook(request: web.Request) -> web.StreamResponse:
    endpoint = await _webhook(request)
    await _management(request).webhooks.remove(endpoint.id)
    return _json(Deleted([str(endpoint.id)]))


async def test_webhook(request: web.Request) -> web.StreamResponse:
    endpoint = await _webhook(request)
    attempt = await _management(request).webhooks.test(endpoint.id)
    return _json(DeliveryAttempt.from_domain(attempt))


async def list_deliveries(request: web.Request) -> web.StreamResponse:
    endpoint = await _webhook(request)
    history = await _management(request).webhooks.deliveries(
        endpoint.id, query_int(request, "limit", 100, 1000), request.query.get("state")
    )
    return _json(DeliveryList([Delivery.from_domain(h) for h in history]))


async def redeliver(request: web.Request) -> web.StreamResponse:
    webhooks = _management(request).webhooks
    history = await webhooks.delivery(int(request.match_info["delivery"]))
    endpoint = await webhooks.get(history.delivery.endpoint_id)
    await _require_webhooks(request, endpoint.namespace)
    return _json(Delivery.from_domain(await webhooks.redeliver(history.delivery.id)))
