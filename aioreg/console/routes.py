"""The web console under ``/``: thin handlers that parse the request, ask ``views`` for a
page model and render it (the registry keeps ``/v2/``, the management API ``/api/v1/``).

Every page goes through ``_handler``: it finds the session, turns typed errors into an
HTML page with the error's status, sends the security headers (a CSP allowing only
this server's own scripts and styles) and reports its server time in ``Server-Timing``.
Every POST carries the session's CSRF token or is refused with 403.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import msgspec
from aiohttp import web
from multidict import MultiDict

from aioreg.api.auth import AUTH_KEY
from aioreg.api.errors import error_status
from aioreg.api.http import query_int, read_form
from aioreg.api.v2.proxied import proxies
from aioreg.auth.service import AuthError
from aioreg.config import WebhookEndpointConfig
from aioreg.console import views
from aioreg.console.session import (
    CSRF_FIELD,
    SESSION,
    SESSIONS_KEY,
    Sessions,
    csrf_ok,
    csrf_token,
    current,
    set_cookie,
    sign_in,
    sign_out,
)
from aioreg.errors import ErrorCode, RegistryError
from aioreg.units import format_size

FORM_MAX_BYTES = 65536
MAX_OFFSET = 1 << 31
MAX_CURSOR = 1 << 62  # an event id
NAME = "{name:(?:(?!/-/).)+}"
ID = "{id:[0-9]{1,18}}"
USER = "{user:[^/]{1,200}}"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
ENV_KEY = web.AppKey("console_templates", jinja2.Environment)
STATIC_URLS_KEY = web.AppKey("console_static_urls", dict[str, str])
STATIC_FILES = ("console.css", "console.js")

Page = Callable[[web.Request, views.Viewer], Awaitable[web.StreamResponse]]


# -- rendering ----------------------------------------------------------------------


def human_size(value: int | None) -> str:
    """Sizes read as the CLI prints them; a dash where there is none."""
    return "—" if value is None else format_size(value)


def when(value: float | None) -> str:
    if not value:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


def short_digest(value: str | None) -> str:
    if not value:
        return ""
    algorithm, _, hexpart = value.partition(":")
    return f"{algorithm}:{hexpart[:12]}"


def kind(artifact_type: str | None, media_type: str) -> str:
    """What an artifact is, in a word where the media types say something common."""
    if media_type.endswith(("image.index.v1+json", "manifest.list.v2+json")):
        return "index"
    if not artifact_type or artifact_type.endswith(
        ("image.config.v1+json", "container.image.v1+json")
    ):
        return "image"
    return artifact_type


def templates() -> jinja2.Environment:
    """Templates from the package; autoescaping on for every template, whatever its name."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aioreg.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(size=human_size, when=when, short=short_digest, kind=kind)
    return env


def render(
    request: web.Request, who: views.Viewer, template: str, status: int = 200, **context: Any
) -> web.Response:
    def link(changes: dict[str, object]) -> str:
        """This page's URL with some query parameters changed (None: removed)."""
        merged: dict[str, object] = {**request.query, **changes}
        kept = {k: v for k, v in merged.items() if v is not None}
        return request.path + ("?" + urlencode(kept) if kept else "")

    html = (
        request.app[ENV_KEY]
        .get_template(template)
        .render(
            who=who,
            csrf=lambda: csrf_token(request),
            csrf_field=CSRF_FIELD,
            path=request.path,
            query=request.query,
            link=link,
            host=request.host,
            static=request.app[STATIC_URLS_KEY].__getitem__,
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _handler(fn: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    @functools.wraps(fn)
    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        session = await current(request, request.app[AUTH_KEY])
        if session is not None:
            request[SESSION] = session
        who = await views.viewer(request)
        try:
            response = await fn(request, who)
        except RegistryError as exc:
            status = error_status(exc)
            if isinstance(exc, AuthError) or status == 401:
                status = 401
            response = render(request, who, "error.html", status, message=exc.message)
        await set_cookie(request, response)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1e3:.2f}"
        return response

    return handle


async def _form(request: web.Request) -> MultiDict[str]:
    """A posted form whose CSRF token matches the session's; 403 otherwise."""
    form = await read_form(request, FORM_MAX_BYTES)
    if not csrf_ok(request, form.get(CSRF_FIELD)):
        raise RegistryError(
            ErrorCode.DENIED,
            "this form is missing its security token or it expired; reload the page and retry",
        )
    return form


def _choice(request: web.Request, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = request.query.get(key, default)
    if value not in allowed:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"{key} must be one of {', '.join(allowed)}")
    return value


def _offset(request: web.Request, key: str, per_page: int) -> int:
    return (max(1, query_int(request, key, 1, MAX_OFFSET // per_page)) - 1) * per_page


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


# -- pages ---------------------------------------------------------------------------


@_handler
async def overview(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    return render(request, who, "overview.html", **await views.overview(request, who))


@_handler
async def sign_in_page(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    return render(request, who, "signin.html", error=None, username="")


@_handler
async def sign_in_post(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    form = await _form(request)
    service = request.app[AUTH_KEY]
    if not service.enabled:
        return _redirect("/")
    username = str(form.get("username", ""))[:200]
    try:
        identity = await service.login(
            username, str(form.get("password", "")), request.remote or "unknown"
        )
    except AuthError as exc:
        return render(request, who, "signin.html", 401, error=exc.message, username=username)
    await sign_in(request, identity)
    return _redirect("/")


@_handler
async def sign_out_post(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    await _form(request)
    response = _redirect("/")
    await sign_out(request, response)
    return response


@_handler
async def namespaces(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    names = await views.visible_namespaces(request, who)
    return render(request, who, "namespaces.html", namespaces=names)


@_handler
async def repositories(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    sort = _choice(request, "sort", "name", ("name", "tags", "size", "last_push", "last_pull"))
    order = _choice(request, "order", "asc", ("asc", "desc"))
    contains = request.query.get("q", "")[:200]
    model = await views.repositories(
        request,
        who,
        request.match_info["namespace"],
        contains,
        sort,
        order == "desc",
        _offset(request, "page", views.REPOSITORIES_PER_PAGE),
    )
    return render(
        request, who, "repositories.html", sort=sort, order=order, contains=contains, **model
    )


@_handler
async def repository(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    sort = _choice(request, "sort", "name", ("name", "pushed", "pulled"))
    order = _choice(request, "order", "asc", ("asc", "desc"))
    contains = request.query.get("q", "")[:200]
    model = await views.repository(
        request,
        who,
        request.match_info["name"],
        contains,
        sort,
        order == "desc",
        _offset(request, "page", views.TAGS_PER_PAGE),
        _offset(request, "apage", views.ARTIFACTS_PER_PAGE),
    )
    return render(
        request, who, "repository.html", sort=sort, order=order, contains=contains, **model
    )


@_handler
async def artifact(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    name, digest = request.match_info["name"], request.match_info["digest"]
    model = await views.artifact(request, who, name, digest)
    return render(request, who, "artifact.html", **model)


@_handler
async def search(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    query = request.query.get("q", "").strip()[:200]
    model = await views.search(request, who, query, views.SEARCH_LIMIT)
    return render(request, who, "search.html", **model)


@_handler
async def suggest(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    query = request.query.get("q", "").strip()[:200]
    found = await views.suggestions(request, who, query)
    return web.Response(body=msgspec.json.encode(found), content_type="application/json")


def _day(request: web.Request, key: str, after: bool = False) -> tuple[str, float | None]:
    """A ``YYYY-MM-DD`` date from the query as given, and the UTC midnight that starts it
    (``after``: the one that ends it, so an "until" day is included)."""
    raw = request.query.get(key, "").strip()[:10]
    if not raw:
        return "", None
    try:
        day = datetime.date.fromisoformat(raw)
    except ValueError:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"{key} must be a date, YYYY-MM-DD") from None
    if after:
        day += datetime.timedelta(days=1)
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return raw, start.timestamp()


@_handler
async def activity(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    repository = request.query.get("repository", "").strip()[:300]
    kind = request.query.get("action", "")
    actor = request.query.get("user", "").strip()[:200]
    since_text, since = _day(request, "since")
    until_text, until = _day(request, "until", after=True)
    cursor = query_int(request, "cursor", 0, MAX_CURSOR) or None
    model = await views.activity(request, who, repository, kind, actor, since, until, cursor)
    return render(
        request,
        who,
        "activity.html",
        repository=repository,
        kind=kind,
        actor=actor,
        since=since_text,
        until=until_text,
        cursor=cursor,
        **model,
    )


# -- deletions: a confirmation page naming what goes, then the POST -------------------


async def _deletion(
    request: web.Request, who: views.Viewer
) -> tuple[str, str, str | None, str | None]:
    """(repository, what, tag, digest) a delete URL names, after checking the right to it."""
    name = request.match_info["name"]
    tag = request.match_info.get("tag")
    digest = request.match_info.get("digest")
    await views.require(request, who, name, "delete")
    proxies(request).refuse_write(name)
    if digest is not None:
        digest = views.parse_digest(digest)
        return name, "artifact", None, digest
    return name, "tag" if tag else "repository", tag, None


@_handler
async def confirm_delete(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    name, what, tag, digest = await _deletion(request, who)
    doomed: list[str] = []
    if what == "artifact" and digest is not None:
        view = await views.listings(request).artifact_view(name, digest)
        doomed = view.tags
        tag_count = view.tag_count
    elif what == "repository":
        summary = await views.listings(request).summary(name)
        tag_count = summary.tag_count
    else:
        tag_count = 1
    return render(
        request,
        who,
        "confirm.html",
        name=name,
        what=what,
        tag=tag,
        digest=digest,
        doomed=doomed,
        tag_count=tag_count,
    )


@_handler
async def delete(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    await _form(request)
    name, what, tag, digest = await _deletion(request, who)
    actor = who.name if who.auth_on else None
    management = views.management(request)
    if what == "repository":
        await management.repositories.delete(name, actor)
        return _redirect(f"/namespaces/{name.partition('/')[0]}" if "/" in name else "/")
    if what == "artifact" and digest is not None:
        await management.repositories.delete_artifact(name, digest, actor)
    elif tag is not None:
        await management.registry.delete_manifest(name, tag, actor)
    return _redirect(f"/r/{name}")


# -- administration ---------------------------------------------------------------------


@_handler
async def admin(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)
    model = await views.administration(request)
    return render(request, who, "admin.html", gc=None, removals=None, **model)


@_handler
async def run_gc(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)
    form = await _form(request)
    report = await views.management(request).gc.run(dry_run=form.get("dry_run") == "on")
    model = await views.administration(request)
    return render(request, who, "admin.html", gc=report, removals=None, **model)


@_handler
async def retention_preview(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)
    await _form(request)
    removals = await views.management(request).retention.preview()
    model = await views.administration(request)
    return render(request, who, "admin.html", gc=None, removals=removals, **model)


@_handler
async def tokens(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    if who.auth_on and not who.signed_in:
        raise AuthError("sign in to see your tokens")
    model = await views.tokens(request, who)
    session = request.get(SESSION)
    created = None
    if session is not None:
        created = await request.app[SESSIONS_KEY].shown_once(session, "token")
    return render(request, who, "tokens.html", created=created, **model)


@_handler
async def create_token(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    form = await _form(request)
    try:
        days = int(str(form.get("days", "0")) or "0")
    except ValueError:
        days = -1
    if not 0 <= days <= 3650:
        raise RegistryError(ErrorCode.BAD_REQUEST, "expiry must be 0 to 3650 days")
    value = await views.create_token(
        request,
        who,
        str(form.get("name", "")).strip(),
        str(form.get("namespace", "")).strip(),
        [str(a) for a in form.getall("actions", [])],
        days,
    )
    # Shown by the page the browser is sent to, once: a reload neither shows it again
    # nor posts the form again.
    await request.app[SESSIONS_KEY].show_once(request[SESSION], "token", value)
    return _redirect("/tokens")


@_handler
async def revoke_token(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    await _form(request)
    await views.revoke_token(request, who, request.match_info["token"])
    return _redirect("/tokens")


# -- users, namespace members and settings, one's own password -------------------------


def _text(form: MultiDict[str], key: str) -> str:
    return str(form.get(key, ""))


@_handler
async def users(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)
    return render(request, who, "users.html", users=await views.users(request))


@_handler
async def add_user(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)
    form = await _form(request)
    password = views.new_password(_text(form, "password"), _text(form, "password_again"))
    await views.add_user(request, _text(form, "name").strip(), password, form.get("admin") == "on")
    return _redirect("/admin/users")


@_handler
async def reset_password(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)
    form = await _form(request)
    password = views.new_password(_text(form, "password"), _text(form, "password_again"))
    await views.reset_password(request, request.match_info["user"], password)
    return _redirect("/admin/users")


@_handler
async def confirm_remove_user(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)
    doomed = await views.user(request, request.match_info["user"])
    personal = await views.listings(request).repository_names(doomed.name)
    return render(request, who, "user_remove.html", user=doomed, personal=personal)


@_handler
async def remove_user(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)
    await _form(request)
    await views.remove_user(request, who, request.match_info["user"])
    return _redirect("/admin/users")


@_handler
async def set_member(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    form = await _form(request)
    namespace = request.match_info["namespace"]
    role = _text(form, "role")
    await views.set_member(
        request, who, namespace, _text(form, "user").strip(), None if role == "remove" else role
    )
    return _redirect(f"/namespaces/{namespace}")


@_handler
async def namespace_settings(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    form = await _form(request)
    namespace = request.match_info["namespace"]
    patterns = [p.strip() for p in _text(form, "immutable_tags").split(",") if p.strip()]
    await views.configure_namespace(request, who, namespace, _text(form, "visibility"), patterns)
    return _redirect(f"/namespaces/{namespace}")


QUOTA_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_quota(text: str) -> int | None:
    """``10 GiB``, ``500MiB`` or a number of bytes; empty: no quota."""
    text = text.strip().lower().replace(" ", "")
    if not text:
        return None
    number = text.rstrip("kmgtib")
    unit = text[len(number) :] or "b"
    if unit not in QUOTA_UNITS or not number.replace(".", "", 1).isdigit() or len(number) > 20:
        raise RegistryError(
            ErrorCode.BAD_REQUEST, "a quota is a size like 500 MiB or 10 GiB (empty: none)"
        )
    return int(float(number) * QUOTA_UNITS[unit])


@_handler
async def namespace_quota(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    views.require_admin(who)  # as PUT /api/v1/namespaces/{namespace}/quota
    form = await _form(request)
    namespace = request.match_info["namespace"]
    await views.management(request).repositories.set_quota(
        namespace, parse_quota(_text(form, "quota"))
    )
    return _redirect(f"/namespaces/{namespace}")


@_handler
async def account(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    if who.auth_on and not who.signed_in:
        raise AuthError("sign in to manage your account")
    return render(request, who, "account.html", changed="changed" in request.query)


@_handler
async def change_password(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    form = await _form(request)
    password = views.new_password(_text(form, "password"), _text(form, "password_again"))
    identity = await views.change_own_password(request, who, _text(form, "current"), password)
    await sign_in(request, identity)  # this session goes on under a new id; the others end
    return _redirect("/account?changed=1")


# -- webhooks: endpoints, their deliveries, redelivery ----------------------------------


def _endpoint_id(request: web.Request, key: str = "id") -> int:
    return int(request.match_info[key])  # the route admits 1 to 18 digits


def _webhooks_of(namespace: str | None) -> str:
    return "/admin/webhooks" + (f"?namespace={namespace}" if namespace else "")


@_handler
async def webhooks(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    namespace = request.query.get("namespace") or None
    model = await views.webhooks(request, who, namespace)
    return render(request, who, "webhooks.html", **model)


@_handler
async def add_webhook(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    form = await _form(request)
    spec = WebhookEndpointConfig(
        url=str(form.get("url", "")).strip(),
        secret=str(form.get("secret", "")),
        namespace=str(form.get("namespace", "")).strip(),
        events=[str(e) for e in form.getall("events", [])],
        repository_pattern=str(form.get("repository_pattern", "")).strip() or "*",
        format=str(form.get("format", "cloudevents")),
        enabled=form.get("enabled") == "on",
    )
    endpoint, secret = await views.add_webhook(request, who, spec)
    # The secret is shown by the endpoint's page, this once (post/redirect/get).
    await request.app[SESSIONS_KEY].show_once(
        request[SESSION], f"webhook secret {endpoint.id}", secret
    )
    return _redirect(f"/admin/webhooks/{endpoint.id}")


@_handler
async def webhook(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    model = await views.webhook(request, who, _endpoint_id(request))
    session = request.get(SESSION)
    secret = None
    if session is not None:
        kind = f"webhook secret {model['endpoint'].id}"
        secret = await request.app[SESSIONS_KEY].shown_once(session, kind)
    return render(request, who, "webhook.html", secret=secret, **model)


@_handler
async def enable_webhook(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    form = await _form(request)
    endpoint = await views.webhook_endpoint(request, who, _endpoint_id(request))
    await views.management(request).webhooks.set_enabled(endpoint.id, form.get("enabled") == "on")
    return _redirect(f"/admin/webhooks/{endpoint.id}")


@_handler
async def confirm_remove_webhook(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    endpoint = await views.webhook_endpoint(request, who, _endpoint_id(request))
    return render(request, who, "webhook_remove.html", endpoint=endpoint)


@_handler
async def remove_webhook(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    await _form(request)
    endpoint = await views.webhook_endpoint(request, who, _endpoint_id(request))
    await views.management(request).webhooks.remove(endpoint.id)
    return _redirect(_webhooks_of(endpoint.namespace))


@_handler
async def redeliver(request: web.Request, who: views.Viewer) -> web.StreamResponse:
    await _form(request)
    endpoint_id = await views.redeliver(request, who, _endpoint_id(request, "delivery"))
    return _redirect(f"/admin/webhooks/{endpoint_id}")


def static_dir() -> Path:
    return Path(str(resources.files("aioreg.console") / "static"))


def add_routes(app: web.Application) -> None:
    app[SESSIONS_KEY] = Sessions(app[AUTH_KEY].index)
    app[ENV_KEY] = templates()
    get, post = app.router.add_get, app.router.add_post
    get("/", overview)
    get("/sign-in", sign_in_page)
    post("/sign-in", sign_in_post)
    post("/sign-out", sign_out_post)
    get("/namespaces", namespaces)
    get("/namespaces/{namespace}", repositories)
    get(f"/r/{NAME}", repository)
    get(f"/r/{NAME}/-/artifacts/{{digest}}", artifact)
    for path in (
        f"/r/{NAME}/-/delete",
        f"/r/{NAME}/-/tags/{{tag}}/delete",
        f"/r/{NAME}/-/artifacts/{{digest}}/delete",
    ):
        get(path, confirm_delete)
        post(path, delete)
    get("/search", search)
    get("/search/suggest", suggest)
    get("/activity", activity)
    get("/admin", admin)
    post("/admin/gc", run_gc)
    post("/admin/retention-preview", retention_preview)
    get("/admin/webhooks", webhooks)
    post("/admin/webhooks", add_webhook)
    get(f"/admin/webhooks/{ID}", webhook)
    post(f"/admin/webhooks/{ID}/enabled", enable_webhook)
    get(f"/admin/webhooks/{ID}/remove", confirm_remove_webhook)
    post(f"/admin/webhooks/{ID}/remove", remove_webhook)
    post("/admin/webhooks/deliveries/{delivery:[0-9]{1,18}}/redeliver", redeliver)
    get("/admin/users", users)
    post("/admin/users", add_user)
    post(f"/admin/users/{USER}/password", reset_password)
    get(f"/admin/users/{USER}/remove", confirm_remove_user)
    post(f"/admin/users/{USER}/remove", remove_user)
    post("/namespaces/{namespace}/members", set_member)
    post("/namespaces/{namespace}/settings", namespace_settings)
    post("/namespaces/{namespace}/quota", namespace_quota)
    get("/account", account)
    post("/account/password", change_password)
    get("/tokens", tokens)
    post("/tokens", create_token)
    post("/tokens/{token}/revoke", revoke_token)
    static = app.router.add_static("/static", static_dir(), append_version=True)
    # Versioned URLs (a hash of each file) computed once, not by reading the files per page.
    app[STATIC_URLS_KEY] = {name: str(static.url_for(filename=name)) for name in STATIC_FILES}
