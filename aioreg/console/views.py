"""Page models: what each console page shows, read from the domain layer's listings and
management facade (the one /api/v1 uses) under the same access rules.

Reads need pull on the repository (its holder's rights narrowed by the credential's
scope); deletes need delete; registry-wide pages (overview figures, activity of
everything, GC, retention, users) need an admin whose credential is registry-wide.
A repository the viewer may not pull is answered as unknown, so a private name does
not leak. With access control off everyone may do everything, as on /api/v1.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aioreg.api.auth import AUTH_KEY
from aioreg.api.management.handlers import MANAGEMENT_KEY
from aioreg.auth.accounts import ROLES, TokenScope
from aioreg.auth.scopes import ACTIONS
from aioreg.auth.service import AuthError, AuthService, Identity
from aioreg.config import PROXY_NAMESPACE_RE, WEBHOOK_EVENTS, WEBHOOK_FORMATS, WebhookEndpointConfig
from aioreg.console.session import identity_of
from aioreg.domain.activity import DayPulls, FeedQuery
from aioreg.domain.listings import Listings
from aioreg.domain.management import Management
from aioreg.domain.proxies import ProxyDefinition
from aioreg.domain.reference import Digest, validate_name
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index.rows import UserRow
from aioreg.index.webhooks import EndpointRow

REPOSITORIES_PER_PAGE = 50
TAGS_PER_PAGE = 50
ARTIFACTS_PER_PAGE = 20
SEARCH_LIMIT = 100
SUGGESTIONS = 10
EVENTS_PER_PAGE = 100
EVENT_KINDS = ("push", "pull", "untag", "delete", "retention", "gc", "quota_exceeded")
RECENT_EVENTS = 10
CHART_ROWS = 10
DELIVERIES_SHOWN = 50  # an endpoint's latest deliveries on its page
MAX_PASSWORD = 1024
MAX_USER_NAME = 200
MAX_PATTERNS = 100  # immutable tag patterns of a namespace


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
        events=(await management(request).activity.feed(FeedQuery(RECENT_EVENTS), _everything))[0],
        quotas=await listings(request).quotas([ns for ns, _ in namespaces]),
        pull_chart=pull_chart(await listings(request).pulls_by_day(None)),
    )
    return model


async def _everything(repository: str) -> bool:
    """The activity feed's filter for admins: every event, registry-wide ones too."""
    return True


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
    administration = await namespace_administration(request, who, namespace)
    if (only == [] and administration is None) or (
        not names and not await _namespace_exists(request, namespace)
    ):
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
    return {
        "namespace": namespace,
        "page": page,
        "pages": pages(page.total, offset, page.limit),
        "manages_webhooks": administration is not None,
        "administration": administration,
    }


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
    pulls = await found.pull_counts(name)
    tags = await found.tag_page(
        name,
        contains=contains,
        sort=sort,
        descending=descending,
        offset=offset,
        limit=TAGS_PER_PAGE,
        pulls=pulls,
    )
    artifacts = await found.artifact_page(
        name, offset=artifact_offset, limit=ARTIFACTS_PER_PAGE, pulls=pulls
    )
    deprecation = await found.deprecation(name)
    return {
        "name": name,
        "summary": summary,
        "pull_count": pulls.total,
        "pull_chart": pull_chart(await found.pulls_by_day(name)),
        "deprecation": deprecation,
        "tags": tags,
        "tag_pages": pages(tags.total, offset, tags.limit),
        "artifacts": artifacts,
        "artifact_pages": pages(artifacts.total, artifact_offset, artifacts.limit),
        "may_delete": "delete" in await allowed(request, who, name),
        "pull_tag": _pull_tag([t.name for t in tags.items]),
    }


@dataclass(frozen=True)
class PullChart:
    """A day series drawn as bars: each bar's height in percent of the busiest day."""

    days: list[DayPulls]
    total: int
    busiest: int

    def height(self, pulls: int) -> float:
        return round(100 * pulls / self.busiest, 2) if self.busiest else 0.0

    def spoken(self) -> str:
        """The numbers for a screen reader: the total, then every day that had pulls."""
        busy = [f"{d.day}: {d.pulls}" for d in self.days if d.pulls]
        head = f"Pulls over the last {len(self.days)} days: {self.total} in all"
        if not busy:
            return head + "."
        return f"{head}; {'; '.join(busy)}; no pulls on the other days."


def pull_chart(days: list[DayPulls]) -> PullChart:
    return PullChart(days, sum(d.pulls for d in days), max([d.pulls for d in days] + [0]))


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
    request: web.Request,
    who: Viewer,
    repository: str,
    kind: str,
    actor: str,
    since: float | None,
    until: float | None,
    cursor: int | None,
) -> dict[str, Any]:
    """A page of the activity feed (the one /api/v1/activity serves) under the same rule:
    everything for admins, otherwise the repositories the viewer may list."""
    if repository:
        await require(request, who, repository, "pull")
    if kind and kind not in EVENT_KINDS:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"action must be one of {EVENT_KINDS}")
    service = _auth(request)

    async def shown(name: str) -> bool:
        return bool(name) and await service.listable(who.identity, name)  # "" (gc): admins

    query = FeedQuery(
        limit=EVENTS_PER_PAGE,
        before=cursor,
        repository=repository or None,
        kinds=[kind] if kind else None,
        actor=actor or None,
        since=since,
        until=until,
    )
    events, following = await management(request).activity.feed(
        query, _everything if who.admin else shown
    )
    return {"events": events, "next_cursor": following, "kinds": EVENT_KINDS}


async def administration(request: web.Request) -> dict[str, Any]:
    """What the administration page lists besides its forms: the proxies, the webhooks."""
    return {
        "proxies": await administration_proxies(request),
        "webhook_count": len(await management(request).webhooks.all()),
    }


async def administration_proxies(request: web.Request) -> list[tuple[ProxyDefinition, int]]:
    """Each proxy with the bytes its cache holds (against its ``max_bytes``, 0: no cap)."""
    proxies = await management(request).proxies.all()
    used = await listings(request).proxy_cache_bytes([p.config.namespace for p in proxies])
    return [(p, used[p.config.namespace]) for p in proxies]


# -- webhooks: the access rule of /api/v1/webhooks ----------------------------------------


async def require_webhooks(request: web.Request, who: Viewer, namespace: str | None) -> None:
    """Registry-wide endpoints are for admins; a namespace's also for its admins."""
    if namespace is None:
        require_admin(who)
        return
    await require_namespace_admin(request, who, namespace, "the webhooks")


async def require_namespace_admin(
    request: web.Request, who: Viewer, namespace: str, what: str
) -> None:
    """A namespace's administration (its webhooks, members, settings) is for registry
    admins and whoever may delete in it (its admins, its owner). A namespace the viewer
    cannot even pull in is "not known"."""
    if not PROXY_NAMESPACE_RE.fullmatch(namespace):
        raise RegistryError(ErrorCode.BAD_REQUEST, "a namespace is one lowercase path component")
    actions = await allowed(request, who, namespace)
    if "pull" not in actions and not who.signed_in and who.auth_on:
        raise AuthError(f"sign in to manage {what} of {namespace}")
    if "pull" not in actions:
        raise RegistryError(ErrorCode.NAME_UNKNOWN, f"namespace {namespace} is not known")
    if "delete" not in actions:
        raise RegistryError(ErrorCode.DENIED, f"{what} of {namespace} are for its administrators")


async def webhooks(request: web.Request, who: Viewer, namespace: str | None) -> dict[str, Any]:
    """Every endpoint (admins, no namespace given) or one namespace's; never a secret."""
    await require_webhooks(request, who, namespace)
    endpoints = await management(request).webhooks.all()
    if namespace is not None:
        endpoints = [e for e in endpoints if e.namespace == namespace]
    return {
        "namespace": namespace,
        "endpoints": endpoints,
        "event_kinds": WEBHOOK_EVENTS,
        "formats": WEBHOOK_FORMATS,
    }


async def webhook_endpoint(request: web.Request, who: Viewer, endpoint_id: int) -> EndpointRow:
    """The endpoint, once the viewer may manage it."""
    endpoint = await management(request).webhooks.get(endpoint_id)
    await require_webhooks(request, who, endpoint.namespace)
    return endpoint


async def webhook(request: web.Request, who: Viewer, endpoint_id: int) -> dict[str, Any]:
    """One endpoint with its latest deliveries, each with every attempt."""
    endpoint = await webhook_endpoint(request, who, endpoint_id)
    history = await management(request).webhooks.deliveries(endpoint.id, DELIVERIES_SHOWN)
    return {"endpoint": endpoint, "deliveries": history, "shown": DELIVERIES_SHOWN}


async def add_webhook(
    request: web.Request, who: Viewer, spec: WebhookEndpointConfig
) -> tuple[EndpointRow, str]:
    await require_webhooks(request, who, spec.namespace or None)
    return await management(request).webhooks.add(spec)


async def redeliver(request: web.Request, who: Viewer, delivery_id: int) -> int:
    """Queue a delivery again; returns its endpoint's id."""
    hooks = management(request).webhooks
    history = await hooks.delivery(delivery_id)
    await webhook_endpoint(request, who, history.delivery.endpoint_id)
    await hooks.redeliver(delivery_id)
    return history.delivery.endpoint_id


async def tokens(request: web.Request, who: Viewer) -> dict[str, Any]:
    """The viewer's own tokens (users are on their own page, for admins)."""
    service = _auth(request)
    if not who.auth_on or who.identity.user_id is None:
        return {"tokens": [], "may_create": False}
    rows = await service.index.accounts.tokens(who.identity.user_id)
    return {"tokens": rows, "may_create": who.identity.method == "password"}


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


# -- users and namespaces: the operations of `aioreg user|namespace` (auth.accounts) --------


@dataclass(frozen=True)
class UserSummary:
    name: str
    kind: str  # "admin", "robot" or "user"
    memberships: list[tuple[str, str]]  # (namespace, role)
    owned: list[str]  # namespaces created with this user as owner
    tokens: int  # active (neither revoked nor expired)
    created: float | None


def _kind(row: UserRow) -> str:
    return "admin" if row.is_admin else "robot" if row.is_robot else "user"


async def users(request: web.Request) -> list[UserSummary]:
    """Every user with their roles and active tokens (a page for registry admins)."""
    accounts = _auth(request).index.accounts
    created = await accounts.created()
    roles: dict[str, list[tuple[str, str]]] = {}
    owned: dict[str, list[str]] = {}
    for namespace in await accounts.namespaces():
        if namespace.owner is not None:
            owned.setdefault(namespace.owner, []).append(namespace.name)
        for user, role in await accounts.members(namespace.name):
            roles.setdefault(user, []).append((namespace.name, role))
    now = time.time()
    active = Counter(
        t.user_id
        for t in await accounts.tokens()
        if t.revoked_at is None and (t.expires_at is None or t.expires_at > now)
    )
    return [
        UserSummary(
            u.name,
            _kind(u),
            roles.get(u.name, []),
            owned.get(u.name, []),
            active[u.id],
            created.get(u.name),
        )
        for u in await accounts.users()
    ]


async def user(request: web.Request, name: str) -> UserSummary:
    for found in await users(request):
        if found.name == name:
            return found
    raise RegistryError(ErrorCode.NAME_UNKNOWN, f"user {name} is not known")


def new_password(password: str, again: str) -> str:
    """A password typed twice, as ``aioreg user passwd`` asks for it."""
    if not password:
        raise RegistryError(ErrorCode.BAD_REQUEST, "an empty password is not allowed")
    if len(password) > MAX_PASSWORD:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"a password has at most {MAX_PASSWORD} chars")
    if password != again:
        raise RegistryError(ErrorCode.BAD_REQUEST, "the two passwords do not match")
    return password


async def add_user(request: web.Request, name: str, password: str, admin: bool) -> None:
    if len(name) > MAX_USER_NAME:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"a user name has at most {MAX_USER_NAME} chars")
    await _auth(request).accounts.add_user(name, password, admin=admin)


async def reset_password(request: web.Request, name: str, password: str) -> None:
    """A user's new password; their sessions and token logins end with the old one."""
    await _auth(request).accounts.set_password((await user(request, name)).name, password)


async def remove_user(request: web.Request, who: Viewer, name: str) -> None:
    """Delete a user: their tokens and memberships go with them (the index cascades)."""
    if name == who.name:
        raise RegistryError(
            ErrorCode.DENIED, "you cannot delete the account you are signed in with"
        )
    await user(request, name)
    await _auth(request).accounts.remove_user(name)


async def change_own_password(
    request: web.Request, who: Viewer, current: str, password: str
) -> Identity:
    """Set the viewer's password after checking the current one (throttled like any
    sign-in); returns the identity the viewer's own session continues with. The
    credential generation changes, which ends every other session and token login."""
    if not who.auth_on or who.name is None or who.identity.user_id is None:
        raise AuthError("sign in to change your password")
    service = _auth(request)
    client = request.remote or "unknown"
    wrong = RegistryError(ErrorCode.DENIED, "the current password is not right")
    try:
        checked = await service.login(who.name, current, client)
    except AuthError:
        raise wrong from None
    if checked.method != "password" or checked.user_id != who.identity.user_id:
        raise wrong  # an access token is not the password
    await service.accounts.set_password(who.name, password)
    return await service.login(who.name, password, client)


async def namespace_administration(
    request: web.Request, who: Viewer, namespace: str
) -> dict[str, Any] | None:
    """The members panel and settings of a namespace, for those who administer it."""
    if "delete" not in await allowed(request, who, namespace):
        return None
    accounts = _auth(request).index.accounts
    record = await accounts.namespace(namespace)
    members = await accounts.members(namespace) if record is not None else []
    quota = await listings(request).quotas([namespace])
    immutable = record.rules.get("immutable_tags", []) if record is not None else []
    return {
        "record": record,
        "members": members,
        "roles": tuple(ROLES),
        "immutable": ", ".join(str(p) for p in immutable) if isinstance(immutable, list) else "",
        "quota": quota.get(namespace),
        "may_set_quota": who.admin and record is not None,
    }


async def set_member(
    request: web.Request, who: Viewer, namespace: str, name: str, role: str | None
) -> None:
    await require_namespace_admin(request, who, namespace, "the members")
    await _auth(request).accounts.set_member(namespace, name, role)


async def configure_namespace(
    request: web.Request, who: Viewer, namespace: str, visibility: str, immutable: list[str]
) -> None:
    """Visibility and immutable tag patterns, as ``aioreg namespace set`` sets them."""
    await require_namespace_admin(request, who, namespace, "the settings")
    if len(immutable) > MAX_PATTERNS or any(len(p) > 200 for p in immutable):
        raise RegistryError(
            ErrorCode.BAD_REQUEST, f"at most {MAX_PATTERNS} patterns of at most 200 chars"
        )
    await _auth(request).accounts.configure(
        namespace, None, visibility, {"immutable_tags": immutable}
    )


def parse_digest(text: str) -> str:
    return str(Digest.parse(text))
