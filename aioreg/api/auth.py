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
import datetime
from typing import Any

import msgspec
from aiohttp import web

from aioreg.api.errors import Handler, error_response, registry_error_response
from aioreg.api.http import read_form
from aioreg.auth.scopes import Access, parse_scopes
from aioreg.auth.service import ANONYMOUS, AuthError, AuthService, Identity
from aioreg.errors import ErrorCode, RegistryError

AUTH_KEY = web.AppKey("auth", AuthService)
IDENTITY = "aioreg.identity"
MOUNT_ALLOWED = "aioreg.mount_allowed"


def _realm(request: web.Request, service: AuthService) -> str:
    return service.config.realm or f"{request.scheme}://{request.host}/token"


def _challenge(
    request: web.Request, service: AuthService, scope: list[Access], error: str | None = None
) -> str:
    parts = [f'Bearer realm="{_realm(request, service)}"', f'service="{service.config.service}"']
    if scope:
        parts.append(f'scope="{" ".join(str(a) for a in scope)}"')
    if error:
        parts.append(f'error="{error}"')
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
        return service.bearer(value.strip()), "bearer"
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
    method = request.method
    if method in ("GET", "HEAD") and "/blobs/uploads/" not in request.path:
        return name, frozenset({"pull"})
    if method == "DELETE" and "/blobs/uploads/" not in request.path:
        return name, frozenset({"delete"})
    return name, frozenset({"push"})


async def _granted(service: AuthService, identity: Identity, repository: str) -> frozenset[str]:
    if identity.granted is not None:
        actions: set[str] = set()
        for access in identity.granted:
            if access.type == "repository" and access.name == repository:
                actions |= access.actions
        return frozenset(actions)
    allowed, _ = await service.permitted(identity, repository)
    return allowed


def actor(request: web.Request) -> str | None:
    """Who the events of this request are attributed to (None with access control off)."""
    identity: Identity | None = request.get(IDENTITY)
    if identity is None:
        return None
    return identity.name or "<anonymous>"


async def can_pull(request: web.Request, repository: str) -> bool:
    service = request.app[AUTH_KEY]
    if not service.enabled:
        return True
    identity: Identity = request.get(IDENTITY, ANONYMOUS)
    if identity.granted is not None:  # a token: what its holder may pull now
        identity = Identity(identity.name, method=identity.method)
    allowed, _ = await service.permitted(identity, repository)
    return "pull" in allowed


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
        if identity.anonymous and request.path in ("/v2/", "/v2"):
            return _unauthorized(request, service, "authentication required", [])
        return await handler(request)
    allowed = await _granted(service, identity, repository)
    missing = needed - allowed
    client = request.remote
    audited = needed & {"push", "delete"}
    if missing:
        scope = [Access("repository", repository, needed | allowed)]
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
                scope,
                error,
            )
        return error_response(ErrorCode.DENIED, f"access denied: {why}", {"needed": sorted(needed)})
    for action in sorted(audited):
        service.audit(identity, action, repository, client, True, None)
    if "push" in needed:
        await service.ensure_namespace(identity, repository)
        source = request.query.get("from")
        mount_ok = source is not None and "pull" in await _granted(service, identity, source)
        request[MOUNT_ALLOWED] = mount_ok
    return await handler(request)


async def _could_have(
    service: AuthService, identity: Identity, repository: str, needed: frozenset[str]
) -> bool:
    if identity.anonymous:
        return True
    holder = Identity(identity.name, method=identity.method)
    allowed, _ = await service.permitted(holder, repository)
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
