"""Page models: what each console page shows, read from the domain layer's listings and
management facade (the one /api/v1 uses) under the same access rules.

Reads need pull on the repository (its holder's rights narrowed by the credential's
scope); deletes need delete; registry-wide pages (overview figures, activity of
everything, GC, retention, users) need an admin whose credential is registry-wide.
A repository the viewer may not pull is answered as unknown, so a private name does
not leak. With access control off everyone may do everything, as on /api/v1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aioreg.api.auth import AUTH_KEY
from aioreg.api.management.handlers import MANAGEMENT_KEY
from aioreg.auth.accounts import TokenScope
from aioreg.auth.scopes import ACTIONS
from aioreg.auth.service import AuthService, Identity
from aioreg.console.session import identity_of
from aioreg.domain.listings import Listings
from aioreg.domain.management import Management
from aioreg.domain.reference import Digest, validate_name
from aioreg.errors import ErrorCode, RegistryError

REPOSITORIES_PER_PAGE = 50
TAGS_PER_PAGE = 50
ARTIFACTS_PER_PAGE = 20
SEARCH_LIMIT = 100
SUGGESTIONS = 10
EVENTS_PER_PAGE = 100
EVENT_KINDS = ("push", "pull", "untag", "delete")
RECENT_EVENTS = 10
CHART_ROWS = 10


@dataclass(frozen=True)
class Viewer:
    """Who is looking, and what the whole console lets them do."""

    identity: Identity
    auth_on: bool
    admin: bool  # registry-wide admin (everyone, with access control off)

    @property
    def name(self) -> str | None:
        return self.identity.name

    @property
    def signed_in(self) -> bool:
        return not self.identity.anonymous


def management(request: web.Request) -> Management:
    return request.app[MANAGEMENT_KEY]


def listings(request: web.Request) -> Listings:
    return management(request).listings


def _auth(request: web.Request) -> AuthService:
    return request.app[AUTH_KEY]


async def viewer(request: web.Request) -> Viewer:
    service = _auth(request)
    identity = identity_of(request)
    if not service.enabled:
        return Viewer(identity, False, True)
    return Viewer(identity, True, await service.registry_admin(identity))


def not_known(name: str) -> RegistryError:
    return RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")


async def allowed(request: web.Request, who: Viewer, repository: str) -> frozenset[str]:
    if not who.auth_on:
        return frozenset(ACTIONS)
    actions, _ = await _auth(request).effective_actions(who.identity, repository)
    return actions


async def require(request: web.Request, who: Viewer, repository: str, action: str) -> None:
    """Pull is needed to see a repository at all (else it is "not known", 404); other
    actions on one the viewer can see are refused as DENIED (403)."""
    validate_name(repository)
    actions = await allowed(request, who, repository)
    if "pull" not in actions:
        raise not_known(repository)
    if action not in actions:
        raise RegistryError(ErrorCode.DENIED, f"you may not {action} in {repository}")


def require_admin(who: Viewer) -> None:
    if not who.admin:
        raise RegistryError(
            ErrorCode.DENIED, "this page is for administrators signed in with a password"
        )


async def visible(request: web.Request, who: Viewer, names: list[str]) -> list[str]:
    """The repositories listings show this viewer (the catalog's rule)."""
    if who.admin:
        return names
    service = _auth(request)
    return [n for n in names if await service.listable(who.identity, n)]


async def visible_namespaces(request: web.Request, who: Viewer) -> list[tuple[str, int]]:
    """(namespace, how many of its repositories the viewer sees), for the namespaces
    where that is at least one (every namespace, for admins)."""
    shown = []
    for namespace in await listings(request).namespaces():
        names = await listings(request).repository_names(namespace)
        count = len(names) if who.admin else len(await visible(request, who, names))
        if count or who.admin:
            shown.append((namespace, count))
    return shown


async def _namespace_exists(request: web.Request, namespace: str) -> bool:
    return namespace in await listings(request).namespaces()


def pages(total: int, offset: int, limit: int) -> dict[str, int]:
    """Where a page sits: its number, the last one, and what it shows."""
    last = max(1, -(-total // limit))
    return {
        "number": offset // limit + 1,
        "last": last,
        "first_item": min(total, offset + 1),
        "last_item": min(total, offset + limit),
        "total": total,
    }


# -- pages -------------------------------------------------------------------------


async def overview(request: web.Request, who: Viewer) -> dict[str, Any]:
    namespaces = await visible_namespaces(request, who)
    model: dict[str, Any] = {"namespaces": namespaces}
    if not who.admin:
        return model
    by_namespace, by_repository, total = await listings(request).usage()
    by_namespace.sort(key=lambda u: u.physical, reverse=True)
    by_repository.sort(key=lambda u: u.physical, reverse=True)
    top = max([u.physical for u in by_namespace[:CHART_ROWS]] + [1])
    top_repository = max([u.physical for u in by_repository[:CHART_ROWS]] + [1])
    model.update(
        total=total,
        namespace_usage=by_namespace[:CHART_ROWS],
        repository_usage=by_repository[:CHART_ROWS],
        scale=top,
        repository_scale=top_repository,
        repository_count=len(by_repository),
        events=await listings(request).events(RECENT_EVENTS),
        quotas=await listings(request).quotas([ns for ns, _ in namespaces]),
    )
    return model


async def repositories(
    request: web.Request,
    who: Viewer,
    namespace: str,
    contains: str,
    sort: str,
    descending: bool,
    offset: int,
) -> dict[str, Any]:
    names = await listings(request).repository_names(namespace)
    only = None if who.admin else await visible(request, who, names)
    if only == [] or (not names and not await _namespace_exists(request, namespace)):
        raise RegistryError(ErrorCode.NAME_UNKNOWN, f"namespace {namespace} is not known")
    page = await listings(request).repository_page(
        namespace,
        contains=contains,
        sort=sort,
        descending=descending,
        offset=offset,
        limit=REPOSITORIES_PER_PAGE,
        only=only,
    )
    return {"namespace": namespace, "page": page, "pages": pages(page.total, offset, page.limit)}


async def repository(
    request: web.Request,
    who: Viewer,
    name: str,
    contains: str,
    sort: str,
    descending: bool,
    offset: int,
    artifact_offset: int,
) -> dict[str, Any]:
    await require(request, who, name, "pull")
    found = listings(request)
    summary = await found.summary(name)
    tags = await found.tag_page(
        name,
        contains=contains,
        sort=sort,
        descending=descending,
        offset=offset,
        limit=TAGS_PER_PAGE,
    )
    artifacts = await found.artifact_page(name, offset=artifact_offset, limit=ARTIFACTS_PER_PAGE)
    deprecation = await found.deprecation(name)
    return {
        "name": name,
        "summary": summary,
        "deprecation": deprecation,
        "tags": tags,
        "tag_pages": pages(tags.total, offset, tags.limit),
        "artifacts": artifacts,
        "artifact_pages": pages(artifacts.total, artifact_offset, artifacts.limit),
        "may_delete": "delete" in await allowed(request, who, name),
        "pull_tag": _pull_tag([t.name for t in tags.items]),
    }


def _pull_tag(shown: list[str]) -> str:
    """The tag the pull commands name: latest when there is one, else the first shown."""
    return "latest" if "latest" in shown or not shown else shown[0]


async def artifact(request: web.Request, who: Viewer, name: str, digest: str) -> dict[str, Any]:
    await require(request, who, name, "pull")
    view = await listings(request).artifact_view(name, digest)
    return {"view": view, "may_delete": "delete" in await allowed(request, who, name)}


async def search(request: web.Request, who: Viewer, query: str, limit: int) -> dict[str, Any]:
    if not query:
        return {"searched": "", "repositories": [], "tags": [], "digests": []}
    hits = await listings(request).search(query, limit)
    shown = set(await visible(request, who, sorted({h[0] for h in hits})))
    hits = [h for h in hits if h[0] in shown]
    return {
        "searched": query,
        "repositories": [h[0] for h in hits if h[1] is None and h[2] is None],
        "tags": [(h[0], h[1], h[2]) for h in hits if h[1] is not None],
        "digests": [(h[0], h[2]) for h in hits if h[1] is None and h[2] is not None],
    }


async def suggestions(request: web.Request, who: Viewer, query: str) -> list[str]:
    """Repository paths and ``path:tag`` for search-as-you-type."""
    if not query:
        return []
    found = await search(request, who, query, SUGGESTIONS * 3)
    items = found["repositories"] + [f"{r}:{t}" for r, t, _ in found["tags"]]
    return list(dict.fromkeys(items))[:SUGGESTIONS]


async def activity(
    request: web.Request, who: Viewer, repository: str, kind: str, actor: str
) -> dict[str, Any]:
    """Everything for admins; otherwise one repository the viewer may pull."""
    if repository:
        await require(request, who, repository, "pull")
    elif not who.admin:
        return {"events": None, "kinds": EVENT_KINDS}
    if kind and kind not in EVENT_KINDS:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"action must be one of {EVENT_KINDS}")
    events = await listings(request).events(
        EVENTS_PER_PAGE, repository or None, [kind] if kind else None, actor or None
    )
    return {"events": events, "kinds": EVENT_KINDS}


async def administration(request: web.Request) -> dict[str, Any]:
    """What the administration page lists besides its forms: the proxies."""
    return {"proxies": await management(request).proxies.all()}


async def tokens(request: web.Request, who: Viewer) -> dict[str, Any]:
    """The viewer's own tokens; every user for an admin."""
    service = _auth(request)
    if not who.auth_on or who.identity.user_id is None:
        return {"tokens": [], "users": [], "may_create": False}
    rows = await service.index.accounts.tokens(who.identity.user_id)
    users = await service.index.accounts.users() if who.admin else []
    return {
        "tokens": rows,
        "users": users,
        "may_create": who.identity.method == "password",
    }


async def create_token(
    request: web.Request, who: Viewer, name: str, namespace: str, actions: list[str], days: int
) -> str:
    """A personal access token for the viewer; only a password sign-in may mint one
    (a token's session must not widen its own scope)."""
    if who.identity.method != "password" or who.name is None:
        raise RegistryError(ErrorCode.DENIED, "sign in with your password to create tokens")
    if not name or len(name) > 100:
        raise RegistryError(ErrorCode.BAD_REQUEST, "a token needs a name of at most 100 chars")
    if not actions or set(actions) - set(ACTIONS):
        raise RegistryError(ErrorCode.BAD_REQUEST, "choose at least one of pull, push, delete")
    new = await _auth(request).accounts.create_token(
        who.name,
        name,
        [TokenScope(namespace or "*", sorted(set(actions)))],
        days * 86400.0 if days else None,
    )
    return new.value


async def revoke_token(request: web.Request, who: Viewer, token_id: str) -> None:
    service = _auth(request)
    row = await service.index.accounts.token(token_id)
    if row is None or (row.user_id != who.identity.user_id and not who.admin):
        raise RegistryError(ErrorCode.NAME_UNKNOWN, "no such token")
    await service.accounts.revoke_token(token_id)


def parse_digest(text: str) -> str:
    return str(Digest.parse(text))
