"""Docker token authentication over the registry API, and the ``/token`` endpoint.

Without credentials a request gets what anonymous users may do (pulls of
public repositories); otherwise 401 with a ``WWW-Authenticate: Bearer`` challenge
naming the scope it needs, so clients fetch a token and retry. A bearer token
that lacks a scope its holder could have gets the same challenge; one its
holder can never have gets 403 ``DENIED``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import re
from typing import Any

import msgspec
from aiohttp import web

from aioreg.api.errors import Handler, error_response, registry_error_response
from aioreg.api.http import read_form
from aioreg.api.v2.proxied import authorised_name
from aioreg.auth.scopes import ACTIONS, Access, parse_scopes
from aioreg.auth.service import ANONYMOUS, CATALOG_ACTIONS, AuthError, AuthService, Identity
from aioreg.domain.reference import validate_name
from aioreg.errors import ErrorCode, RegistryError

AUTH_KEY = web.AppKey("auth", AuthService)
IDENTITY = web.RequestKey("identity", Identity)
MOUNT_ALLOWED = web.RequestKey("mount_allowed", bool)


PULL = frozenset({"pull"})
CATALOG = Access("registry", "catalog", CATALOG_ACTIONS)
CATALOG_ROUTE = "/v2/_catalog"
# What each repository route needs, by method and the route's pattern after the name.
# Decided from the matched route, never from the request path: a repository may well
# be called ``team/blobs/uploads/x``. A route missing here needs every action.
ROUTE_ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/blobs/uploads/"): "push",
    ("POST", "/blobs/uploads"): "push",
    **{(m, "/blobs/uploads/{upload_id}"): "push" for m in ("GET", "PATCH", "PUT", "DELETE")},
    **{(m, "/blobs/{digest}"): "pull" for m in ("GET", "HEAD")},
    ("DELETE", "/blobs/{digest}"): "delete",
    **{(m, "/manifests/{reference}"): "pull" for m in ("GET", "HEAD")},
    ("PUT", "/manifests/{reference}"): "push",
    ("DELETE", "/manifests/{reference}"): "delete",
    **{(m, "/tags/list"): "pull" for m in ("GET", "HEAD")},
    **{(m, "/referrers/{digest}"): "pull" for m in ("GET", "HEAD")},
}
# A Host header fit to appear in a challenge: a DNS name or IP literal and a port.
_PLAIN_HOST = re.compile(
    r"(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?"
)


def _route_pattern(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "" if resource is None else resource.canonical


def _local_address(request: web.Request) -> str:
    """host:port this connection reached (for a realm when the Host header is unusable)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return "localhost"
    host, port = str(sockname[0]), int(sockname[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _realm(request: web.Request, service: AuthService) -> str:
    """The configured realm, else /token on the requested host when that is a plain
    host[:port]; a Host header is never copied into the challenge otherwise."""
    if service.config.realm:
        return service.config.realm
    host = request.host
    if not _PLAIN_HOST.fullmatch(host):
        host = _local_address(request)
    return f"{request.scheme}://{host}/token"


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string, so no value can end its parameter early."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _challenge(
    request: web.Request, service: AuthService, scope: list[Access], error: str | None = None
) -> str:
    parts = [f"Bearer realm={_quoted(_realm(request, service))}"]
    parts.append(f"service={_quoted(service.config.service)}")
    if scope:
        parts.append(f"scope={_quoted(' '.join(str(a) for a in scope))}")
    if error:
        parts.append(f"error={_quoted(error)}")
    return ",".join(parts)


def _unauthorized(
    request: web.Request,
    service: AuthService,
    message: str,
    scope: list[Access],
    error: str | None = None,
) -> web.Response:
    response = error_response(ErrorCode.UNAUTHORIZED, message, [str(a) for a in scope] or None)
    response.headers["WWW-Authenticate"] = _challenge(request, service, scope, error)
    return response


def _basic(header: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(header, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, secret = decoded.partition(":")
    return (user, secret) if sep else None


async def identify(
    request: web.Request, service: AuthService, *, basic_allowed: bool | None = None
) -> tuple[Identity, str]:
    """The caller and how it proved it: "bearer", "basic" or "none".

    Basic credentials are always good at ``/token``; elsewhere only with
    ``auth.allow_basic`` (otherwise clients must go through the token flow).
    """
    if basic_allowed is None:
        basic_allowed = service.config.allow_basic
    header = request.headers.get("Authorization", "")
    kind, _, value = header.partition(" ")
    kind = kind.lower()
    if kind == "bearer" and value:
        return await service.bearer(value.strip()), "bearer"
    if kind == "basic" and value:
        if not basic_allowed:
            raise AuthError("Basic credentials are not accepted here; get a token from the realm")
        creds = _basic(value.strip())
        if creds is None:
            raise AuthError("malformed Basic credentials")
        return await service.login(creds[0], creds[1], request.remote or "unknown"), "basic"
    return ANONYMOUS, "none"


def _needed(request: web.Request) -> tuple[str | None, frozenset[str]]:
    """(repository, actions) a registry request needs; no repository for /v2/ and _catalog."""
    name = request.match_info.get("name")
    if name is None:
        return None, frozenset()
    tail = _route_pattern(request).partition("/{name}")[2]
    action = ROUTE_ACTIONS.get((request.method, tail))
    return authorised_name(request, name), frozenset({action}) if action else frozenset(ACTIONS)


def _mount_source(request: web.Request) -> str | None:
    """The repository a cross-repository mount would take the blob from (if well formed)."""
    source = request.query.get("from")
    if "mount" not in request.query or source is None:
        return None
    try:
        return validate_name(source)
    except RegistryError:
        return None


def _scope(repository: str, actions: frozenset[str], source: str | None) -> list[Access]:
    """A push's challenge scope, naming the mount source's pull too (as Distribution does),
    so the token a client fetches lets the mount succeed."""
    if source is None:
        return [Access("repository", repository, actions)]
    if source == repository:
        return [Access("repository", repository, actions | PULL)]
    return [Access("repository", repository, actions), Access("repository", source, PULL)]


async def _granted(service: AuthService, identity: Identity, repository: str) -> frozenset[str]:
    if identity.granted is not None:
        return identity.granted_on(repository)
    allowed, _ = await service.permitted(identity, repository)
    return allowed


def actor(request: web.Request) -> str | None:
    """Who the events of this request are attributed to (None with access control off)."""
    identity: Identity | None = request.get(IDENTITY)
    if identity is None:
        return None
    return identity.name or "<anonymous>"


def _holder(identity: Identity) -> Identity:
    """A token's holder, with what it may do now rather than what the token grants."""
    return dataclasses.replace(identity, granted=None)


async def may_list(request: web.Request, repository: str) -> bool:
    """Whether listings show a repository to the caller: its holder's rights narrowed
    by its credential's scope (a bearer token's grants, a personal token's namespaces)."""
    service = request.app[AUTH_KEY]
    if not service.enabled:
        return True
    identity: Identity = request.get(IDENTITY, ANONYMOUS)
    return await service.listable(identity, repository)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    service = request.app[AUTH_KEY]
    if not service.enabled or not request.path.startswith("/v2"):
        return await handler(request)
    try:
        identity, how = await identify(request, service)
    except AuthError as exc:
        return _unauthorized(request, service, exc.message, [])
    except RegistryError as exc:
        return registry_error_response(exc)
    request[IDENTITY] = identity
    repository, needed = _needed(request)
    if repository is None:
        return await _registry_wide(request, handler, service, identity, how)
    try:
        validate_name(repository)  # before the name goes into a challenge or the audit
    except RegistryError as exc:
        return registry_error_response(exc)
    allowed = await _granted(service, identity, repository)
    missing = needed - allowed
    client = request.remote
    audited = needed & {"push", "delete"}
    source = _mount_source(request) if "push" in needed else None
    if missing:
        _, why = await service.permitted(identity, repository)
        for action in sorted(audited):
            service.audit(identity, action, repository, client, False, why)
        if how == "none" or (
            how == "bearer" and await _could_have(service, identity, repository, needed)
        ):
            error = "insufficient_scope" if how == "bearer" else None
            return _unauthorized(
                request,
                service,
                f"{'/'.join(sorted(missing))} on {repository} needs a token with that scope",
                _scope(repository, needed | allowed, source),
                error,
            )
        return error_response(ErrorCode.DENIED, f"access denied: {why}", {"needed": sorted(needed)})
    mount_ok = source is not None and "pull" in await _granted(service, identity, source)
    if (
        source is not None
        and not mount_ok
        and how == "bearer"
        and await _could_have(service, identity, source, PULL)
    ):
        return _unauthorized(
            request,
            service,
            f"mounting from {source} needs a token with pull on it",
            _scope(repository, needed | allowed, source),
            "insufficient_scope",
        )
    for action in sorted(audited):
        service.audit(identity, action, repository, client, True, None)
    if "push" in needed:
        await service.ensure_namespace(identity, repository)
        request[MOUNT_ALLOWED] = mount_ok
    return await handler(request)


async def _registry_wide(
    request: web.Request, handler: Handler, service: AuthService, identity: Identity, how: str
) -> web.StreamResponse:
    """/v2/ needs any user; the catalog a user, or a token with ``registry:catalog:*``
    (it then lists what the holder may pull), and challenges for it as Distribution does."""
    if _route_pattern(request) == CATALOG_ROUTE:
        if identity.granted is not None:
            listed = any(
                a.type == CATALOG.type and a.name == CATALOG.name and a.actions >= CATALOG.actions
                for a in identity.granted
            )
        else:
            listed = not identity.anonymous
        if not listed:
            error = "insufficient_scope" if how == "bearer" else None
            message = "listing the catalog needs a token with that scope"
            return _unauthorized(request, service, message, [CATALOG], error)
    elif identity.anonymous and request.path in ("/v2/", "/v2"):
        return _unauthorized(request, service, "authentication required", [])
    return await handler(request)


async def _could_have(
    service: AuthService, identity: Identity, repository: str, needed: frozenset[str]
) -> bool:
    if identity.anonymous:
        return True
    allowed, _ = await service.permitted(_holder(identity), repository)
    return needed <= allowed


# -- the token endpoint ------------------------------------------------------


class TokenResponse(msgspec.Struct, omit_defaults=True):
    token: str
    access_token: str
    expires_in: int
    issued_at: str
    refresh_token: str | None = None
    scope: str | None = None


def _token_response(
    service: AuthService, identity: Identity, granted: list[Access], refresh: bool
) -> web.Response:
    token, issued = service.issue(identity, granted)
    body = TokenResponse(
        token=token,
        access_token=token,
        expires_in=int(service.config.token_ttl),
        issued_at=datetime.datetime.fromtimestamp(issued, datetime.UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        refresh_token=service.issue_refresh(identity)
        if refresh and not identity.anonymous
        else None,
        scope=" ".join(str(a) for a in granted) or None,
    )
    return web.Response(
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _check_service(service: AuthService, requested: str | None) -> None:
    if requested and requested != service.config.service:
        raise RegistryError(
            ErrorCode.DENIED, f"this token service is {service.config.service!r}, not {requested!r}"
        )


async def token_get(request: web.Request) -> web.StreamResponse:
    """Docker's token flow: GET with optional Basic credentials and ``scope`` parameters."""
    service = request.app[AUTH_KEY]
    if not service.enabled:
        raise RegistryError(ErrorCode.UNSUPPORTED, "authentication is not enabled on this registry")
    _check_service(service, request.query.get("service"))
    try:
        identity, how = await identify(request, service, basic_allowed=True)
    except AuthError as exc:
        response = error_response(ErrorCode.UNAUTHORIZED, exc.message)
        response.headers["WWW-Authenticate"] = f'Basic realm="{service.config.service}"'
        return response
    if how == "bearer":
        raise RegistryError(
            ErrorCode.UNAUTHORIZED, "send Basic credentials (or none) to get a token"
        )
    granted = await service.grant(identity, parse_scopes(request.query.getall("scope", [])))
    offline = request.query.get("offline_token", "").lower() == "true"
    return _token_response(service, identity, granted, offline)


TOKEN_FORM_MAX_BYTES = 65536


async def token_post(request: web.Request) -> web.StreamResponse:
    """The OAuth2 form containerd uses: password and refresh_token grants."""
    service = request.app[AUTH_KEY]
    if not service.enabled:
        raise RegistryError(ErrorCode.UNSUPPORTED, "authentication is not enabled on this registry")
    form: Any = await read_form(request, TOKEN_FORM_MAX_BYTES)
    _check_service(service, form.get("service"))
    grant_type = form.get("grant_type")
    try:
        if grant_type == "password":
            identity = await service.login(
                str(form.get("username", "")),
                str(form.get("password", "")),
                request.remote or "unknown",
            )
        elif grant_type == "refresh_token":
            identity = await service.refresh(str(form.get("refresh_token", "")))
        else:
            raise RegistryError(
                ErrorCode.UNSUPPORTED, f"grant_type {grant_type!r} is not supported"
            )
    except AuthError as exc:
        return error_response(ErrorCode.UNAUTHORIZED, exc.message)
    granted = await service.grant(identity, parse_scopes(form.getall("scope", [])))
    offline = grant_type == "refresh_token" or form.get("access_type") == "offline"
    return _token_response(service, identity, granted, offline)
