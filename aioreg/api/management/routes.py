"""``/api/v1``'s endpoint table: the routes and the OpenAPI document both come from it.

Sub-resources of a repository sit behind a ``/-/`` segment, which no repository
name can contain (each path component starts with a letter or digit), so
``/repositories/a/artifacts/b`` is always the repository ``a/artifacts/b``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from aioreg.api.management.handlers import (
    add_proxy,
    add_webhook,
    copy_artifact,
    delete_artifact,
    delete_deprecation,
    delete_namespace,
    delete_policy,
    delete_repository,
    get_activity,
    get_events,
    get_layers,
    get_policies,
    get_pulls,
    get_repository,
    get_usage,
    get_webhook,
    list_deliveries,
    list_namespaces,
    list_proxies,
    list_repositories,
    list_webhooks,
    purge_proxy,
    put_deprecation,
    put_policy,
    put_quota,
    redeliver,
    remove_proxy,
    remove_webhook,
    retention_run,
    run_gc,
    search,
    test_webhook,
    update_webhook,
)
from aioreg.api.management.openapi import build_openapi
from aioreg.api.management.schemas import (
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
    EventList,
    GcResult,
    ImportResult,
    LayerList,
    NamespaceList,
    PolicyList,
    Proxy,
    ProxyList,
    ProxyRequest,
    PullHistory,
    QuotaRequest,
    RepositoryDetail,
    RepositoryPage,
    RetentionPolicy,
    RetentionResult,
    SearchResult,
    UsageReport,
    Webhook,
    WebhookCreated,
    WebhookList,
    WebhookRequest,
    WebhookUpdate,
)
from aioreg.api.management.transfer import (
    ARCHIVE_GZIP,
    ARCHIVE_TAR,
    ARCHIVE_ZSTD,
    export_archive,
    import_archive,
)

PREFIX = "/api/v1"


@dataclass(frozen=True)
class Endpoint:
    """One operation: how it is routed and how the OpenAPI document describes it."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    response: type[Any] | None
    request: type[Any] | None = None
    status: int = 200
    query: tuple[str, ...] = ()
    operation_id: str | None = None  # default: the handler's name
    # Media types of a binary body (an archive), instead of JSON.
    response_media: tuple[str, ...] = ()
    request_media: tuple[str, ...] = ()


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=OPENAPI_DOCUMENT, content_type="application/json")


# A repository name: anything without a "/-/" segment (no valid name has one).
NAME = "{name:(?:(?!/-/).)+}"
SUB = f"/repositories/{NAME}/-"
WEBHOOK = "{id:[0-9]{1,18}}"
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
        operation_id="delete_artifact_delete",
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
        "PUT",
        f"{SUB}/deprecation",
        put_deprecation,
        "Deprecate a repository: pulls carry the message as a Warning header (delete rights)",
        Deprecation,
        DeprecationRequest,
    ),
    Endpoint(
        "DELETE",
        f"{SUB}/deprecation",
        delete_deprecation,
        "Clear a repository's deprecation (delete rights)",
        Deprecation,
    ),
    Endpoint(
        "PUT",
        f"{SUB}/tags/{{tag}}/deprecation",
        put_deprecation,
        "Deprecate a tag: pulls by it carry the message as a Warning header (delete rights)",
        Deprecation,
        DeprecationRequest,
        operation_id="put_tag_deprecation",
    ),
    Endpoint(
        "DELETE",
        f"{SUB}/tags/{{tag}}/deprecation",
        delete_deprecation,
        "Clear a tag's deprecation (delete rights)",
        Deprecation,
        operation_id="delete_tag_deprecation",
    ),
    Endpoint(
        "GET",
        f"{SUB}/pulls",
        get_pulls,
        "Pull statistics of a repository (or ?tag=, or ?by_digest=true): total, last, per day",
        PullHistory,
        query=("tag", "by_digest", "days"),
    ),
    Endpoint(
        "GET",
        f"{SUB}/tags/{{tag}}/pulls",
        get_pulls,
        "Pull statistics of a tag: total, last pull, pulls per day",
        PullHistory,
        query=("days",),
        operation_id="get_tag_pulls",
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
        "/activity",
        get_activity,
        "Activity feed, newest first, of repositories the caller may pull; cursor pagination",
        ActivityPage,
        query=("repository", "action", "actor", "since", "until", "limit", "cursor"),
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
    Endpoint(
        "GET", "/proxies", list_proxies, "Proxies, without their credentials (admin)", ProxyList
    ),
    Endpoint(
        "POST",
        "/proxies",
        add_proxy,
        "Add a pull-through proxy namespace (admin)",
        Proxy,
        ProxyRequest,
        201,
    ),
    Endpoint(
        "DELETE",
        "/proxies/{namespace}",
        remove_proxy,
        "Remove a proxy added through the API or CLI, and purge its cache (admin)",
        Deleted,
    ),
    Endpoint(
        "POST",
        "/proxies/{namespace}/purge",
        purge_proxy,
        "Delete a proxy's cached repositories; GC then frees their blobs (admin)",
        Deleted,
    ),
    Endpoint(
        "GET",
        "/export",
        export_archive,
        "Stream an OCI image layout tar (zstd unless compress=none) of the refs (admin)",
        None,
        query=("ref", "compress", "level"),
        response_media=(ARCHIVE_ZSTD, ARCHIVE_TAR),
    ),
    Endpoint(
        "POST",
        "/import",
        import_archive,
        "Import an OCI image layout tar (plain, zstd or gzip) sent as the body (admin)",
        ImportResult,
        query=("repository", "dry_run", "verify"),
        request_media=(ARCHIVE_ZSTD, ARCHIVE_TAR, ARCHIVE_GZIP),
    ),
    Endpoint(
        "GET",
        "/webhooks",
        list_webhooks,
        "Webhook endpoints, without their secrets (admin; ?namespace= for its admins)",
        WebhookList,
        query=("namespace",),
    ),
    Endpoint(
        "POST",
        "/webhooks",
        add_webhook,
        "Add a webhook endpoint; the answer shows its secret, this once",
        WebhookCreated,
        WebhookRequest,
        201,
    ),
    Endpoint("GET", f"/webhooks/{WEBHOOK}", get_webhook, "A webhook endpoint", Webhook),
    Endpoint(
        "PATCH",
        f"/webhooks/{WEBHOOK}",
        update_webhook,
        "Enable or pause a webhook endpoint",
        Webhook,
        WebhookUpdate,
    ),
    Endpoint(
        "DELETE",
        f"/webhooks/{WEBHOOK}",
        remove_webhook,
        "Remove a webhook endpoint with its queued deliveries and history",
        Deleted,
    ),
    Endpoint(
        "POST",
        f"/webhooks/{WEBHOOK}/test",
        test_webhook,
        "Send a test event to the endpoint now (outside its queue)",
        DeliveryAttempt,
    ),
    Endpoint(
        "GET",
        f"/webhooks/{WEBHOOK}/deliveries",
        list_deliveries,
        "An endpoint's deliveries, newest first, with every attempt",
        DeliveryList,
        query=("state", "limit"),
    ),
    Endpoint(
        "POST",
        "/webhooks/deliveries/{delivery:[0-9]{1,18}}/redeliver",
        redeliver,
        "Queue a delivery again (dead-lettered or delivered)",
        Delivery,
    ),
    Endpoint("GET", "/openapi.json", openapi, "This document", None),
]


OPENAPI_DOCUMENT = msgspec.json.encode(build_openapi(ENDPOINTS, PREFIX))


def add_routes(app: web.Application) -> None:
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, PREFIX + endpoint.path, endpoint.handler)
