"""``/api/v1`` with access control on: a credential's scope bounds it on every route.

Every test runs a real server with auth on and talks to it over HTTP with
Basic passwords, personal access tokens (as Basic passwords) and JWTs from
``/token``; rights are the holder's roles narrowed by the credential's scope.
"""

from __future__ import annotations

import pytest

from aioreg.api.management.routes import PREFIX
from aioreg.auth.accounts import Accounts, TokenScope
from tests.conftest import AppFactory, Reg, error_codes
from tests.test_auth import ADMIN_PASSWORD, basic, bearer, push_image, token

ADMIN = basic("admin", ADMIN_PASSWORD)
ALICE = basic("alice", "alice-pw")
ALL = ["delete", "pull", "push"]


@pytest.fixture
async def areg(make_registry: AppFactory) -> Reg:
    """alice owns team and pub (public); carol reads team; images pushed by the admin."""
    reg = await make_registry(auth={"enabled": True, "admin_password": ADMIN_PASSWORD})
    accounts = Accounts(reg.registry.index)
    for user in ("alice", "bob", "carol"):
        await accounts.add_user(user, f"{user}-pw")
    await accounts.create_namespace("team", "alice")
    await accounts.create_namespace("pub", "alice", "public")
    await accounts.set_member("team", "carol", "read")
    for repo in ("team/app", "team/tool", "pub/web", "alice/own", "carol/mine", "other/x"):
        status, text = await push_image(reg, repo, "v1", ADMIN, seed=repo)
        assert status == 201, text
    return reg


async def pat(reg: Reg, user: str, namespace: str, actions: list[str]) -> dict[str, str]:
    """Basic credentials carrying a new personal access token of ``user``."""
    new = await Accounts(reg.registry.index).create_token(
        user, f"t-{namespace}-{len(actions)}", [TokenScope(namespace, actions)], None
    )
    return basic("anyone", new.value)


async def jwt(reg: Reg, creds: dict[str, str], *scopes: str) -> dict[str, str]:
    return bearer(await token(reg, " ".join(scopes), creds))


async def call(
    reg: Reg, method: str, path: str, headers: dict[str, str], **kwargs: object
) -> tuple[int, dict]:
    resp = await reg.client.request(method, PREFIX + path, headers=headers, **kwargs)
    body = await resp.json()
    return resp.status, body


async def assert_refused_everything_registry_wide(reg: Reg, creds: dict[str, str]) -> None:
    """No registry-wide operation nor a delete in team goes through with these credentials."""
    attempts = [
        ("DELETE", "/repositories/team/app", {}),
        ("POST", "/gc?dry_run=true", {}),
        ("POST", "/retention/preview", {}),
        ("POST", "/retention/apply", {}),
        ("PUT", "/retention/policies/team", {"json": {"keep_last": 0, "protected": []}}),
        ("DELETE", "/retention/policies/team", {}),
        ("PUT", "/namespaces/team/quota", {"json": {"quota_bytes": 1}}),
        ("DELETE", "/namespaces/team", {}),
        ("GET", "/usage", {}),
        ("GET", "/events", {}),
    ]
    for method, path, kwargs in attempts:
        status, body = await call(reg, method, path, creds, **kwargs)
        assert status == 403, (method, path, status, body)
        assert error_codes(body) == ["DENIED"]
    status, _ = await call(reg, "GET", "/repositories/team/app", ADMIN)
    assert status == 200
    assert (await reg.registry.index.retention.policies()) == {}


async def test_scoped_personal_access_tokens_cannot_delete_nor_administer(areg: Reg) -> None:
    alice_pull = await pat(areg, "alice", "team", ["pull"])
    status, _ = await call(areg, "GET", "/repositories/team/app", alice_pull)
    assert status == 200
    status, body = await call(areg, "DELETE", "/repositories/team/app", alice_pull)
    assert status == 403, body
    # An admin's token scoped to one namespace is not an admin credential.
    await assert_refused_everything_registry_wide(areg, await pat(areg, "admin", "team", ["pull"]))
    await assert_refused_everything_registry_wide(areg, await pat(areg, "admin", "other", ALL))
    # Unscoped (every namespace, every action) it is.
    status, body = await call(areg, "POST", "/gc?dry_run=true", await pat(areg, "admin", "*", ALL))
    assert status == 200, body


async def test_scoped_jwts_cannot_delete_nor_administer(areg: Reg) -> None:
    alice_pull = await jwt(areg, ALICE, "repository:team/app:pull")
    status, _ = await call(areg, "GET", "/repositories/team/app", alice_pull)
    assert status == 200
    status, _ = await call(areg, "GET", "/repositories/team/tool", alice_pull)
    assert status == 403
    status, body = await call(areg, "DELETE", "/repositories/team/app", alice_pull)
    assert status == 403, body
    admin_pull = await jwt(areg, ADMIN, "repository:team/app:pull")
    await assert_refused_everything_registry_wide(areg, admin_pull)
    # A JWT exchanged for a scoped PAT stays scoped, whatever registry scope it asked for.
    admin_pat = await pat(areg, "admin", "team", ["pull"])
    from_pat = await jwt(areg, admin_pat, "registry:catalog:*", "repository:team/app:pull")
    await assert_refused_everything_registry_wide(areg, from_pat)
    # The registry scope on a password login is registry-wide: an admin's own registry
    # operations, but no repository actions (as on /v2), and nothing for a non-admin.
    whole = await jwt(areg, ADMIN, "registry:catalog:*")
    status, body = await call(areg, "POST", "/gc?dry_run=true", whole)
    assert status == 200, body
    status, body = await call(areg, "DELETE", "/repositories/team/app", whole)
    assert status == 403, body
    status, body = await call(
        areg, "POST", "/gc?dry_run=true", await jwt(areg, ALICE, "registry:catalog:*")
    )
    assert status == 403, body
    alice_delete = await jwt(areg, ALICE, "repository:team/app:pull,delete")
    status, body = await call(areg, "DELETE", "/repositories/team/app", alice_delete)
    assert status == 200, body


async def test_namespace_usage_reports_that_namespace_only(areg: Reg) -> None:
    status, whole = await call(areg, "GET", "/usage", ADMIN)
    assert status == 200
    status, team = await call(areg, "GET", "/usage?namespace=team", ADMIN)
    assert status == 200
    (team_usage,) = team["namespaces"]
    assert {r["name"] for r in team["repositories"]} == {"team/app", "team/tool"}
    assert team["total"]["logical"] == team_usage["logical"]
    assert team["total"]["physical"] == team_usage["physical"]
    assert team["total"]["physical"] < whole["total"]["physical"]
    status, none = await call(areg, "GET", "/usage?namespace=nosuch", ADMIN)
    assert status == 200 and none["total"]["physical"] == 0 and none["namespaces"] == []


async def test_usage_of_a_namespace_needs_a_credential_that_reaches_it(areg: Reg) -> None:
    carol = basic("carol", "carol-pw")
    status, _ = await call(areg, "GET", "/usage?namespace=team", carol)
    assert status == 200  # a member, with her password
    for creds in (
        await pat(areg, "carol", "carol", ALL),
        await jwt(areg, carol, "repository:carol/mine:pull"),
        await pat(areg, "admin", "carol", ALL),
    ):
        status, body = await call(areg, "GET", "/usage?namespace=team", creds)
        assert status == 403, body
        status, body = await call(areg, "GET", "/usage?namespace=other", creds)
        assert status == 403, body
    status, body = await call(
        areg, "GET", "/usage?namespace=carol", await pat(areg, "carol", "carol", ALL)
    )
    assert status == 200, body
    status, body = await call(
        areg, "GET", "/usage?namespace=team", await pat(areg, "carol", "team", ["pull"])
    )
    assert status == 200, body


async def test_catalog_and_search_follow_a_bearer_tokens_scope(areg: Reg) -> None:
    everything = ["alice/own", "pub/web", "team/app", "team/tool"]
    resp = await areg.client.get("/v2/_catalog", headers=ALICE)
    assert (await resp.json())["repositories"] == everything
    narrow = await jwt(areg, ALICE, "repository:team/app:pull")
    # The catalog needs the registry scope in a bearer token, as with Distribution.
    resp = await areg.client.get("/v2/_catalog", headers=narrow)
    assert resp.status == 401
    assert 'scope="registry:catalog:*"' in resp.headers["WWW-Authenticate"]
    resp = await areg.client.get(
        "/v2/_catalog", headers=await jwt(areg, ALICE, "registry:catalog:*")
    )
    assert (await resp.json())["repositories"] == everything
    resp = await areg.client.get("/v2/_catalog", headers=await pat(areg, "alice", "team", ["pull"]))
    assert (await resp.json())["repositories"] == ["team/app", "team/tool"]
    status, body = await call(areg, "GET", "/search?q=v1", narrow)
    assert status == 200 and {h["repository"] for h in body["results"]} == {"team/app"}
    status, body = await call(areg, "GET", "/search?q=/", narrow)
    assert {h["repository"] for h in body["results"]} == {"team/app"}
    status, body = await call(areg, "GET", "/namespaces", narrow)
    assert body["namespaces"] == ["team"]
    status, body = await call(areg, "GET", "/namespaces/team/repositories", narrow)
    assert [r["name"] for r in body["repositories"]] == ["team/app"]


async def test_repositories_named_like_sub_resources_can_be_managed(areg: Reg) -> None:
    for repo in ("team/x/artifacts/y", "team/x/copy", "team/x/delete-request"):
        status, text = await push_image(areg, repo, "v1", ADMIN, seed=repo)
        assert status == 201, text
    for repo in ("team/x/artifacts/y", "team/x/copy", "team/x/delete-request"):
        status, body = await call(areg, "GET", f"/repositories/{repo}", ADMIN)
        assert status == 200, body
        assert body["name"] == repo
        digest = body["tags"][0]["digest"]
        status, body = await call(
            areg, "GET", f"/repositories/{repo}/-/artifacts/{digest}/layers", ADMIN
        )
        assert status == 200 and len(body["layers"]) == 1, body
        status, body = await call(areg, "DELETE", f"/repositories/{repo}", ADMIN)
        assert status == 200 and body["deleted"] == [repo], body
        status, body = await call(areg, "GET", f"/repositories/{repo}", ADMIN)
        assert status == 404, body
    status, body = await call(areg, "GET", "/repositories/team/app", ADMIN)
    digest = body["tags"][0]["digest"]
    status, body = await call(areg, "DELETE", f"/repositories/team/app/-/artifacts/{digest}", ADMIN)
    assert status == 200 and body["deleted"] == [digest, "v1"], body
    status, body = await call(
        areg,
        "POST",
        "/repositories/team/copied/-/copy",
        ADMIN,
        json={"source": "team/tool", "reference": "v1", "tag": "v2"},
    )
    assert status == 201, body


BAD = [
    ("GET", "/namespaces/team/repositories?limit=%C2%B2", None),
    ("GET", "/namespaces/team/repositories?offset=%C2%B9", None),
    ("GET", "/namespaces/team/repositories?limit=-1", None),
    ("GET", "/namespaces/team/repositories?sort=bogus", None),
    ("GET", "/namespaces/team/repositories?order=sideways", None),
    ("GET", "/events?limit=%C2%B2", None),
    ("GET", "/search?q=app&limit=%C2%B2", None),
    ("GET", "/search", None),
    ("PUT", "/namespaces/team/quota", b"{not json"),
    ("PUT", "/namespaces/team/quota", b'{"quota_bytes": "lots"}'),
    ("PUT", "/namespaces/team/quota", b'{"quota_bytes": -1}'),
    ("PUT", "/namespaces/team/quota", b'{"quota_bytes": 1e400}'),
    ("PUT", "/namespaces/team/quota", b'{"quota_bytes": 99999999999999999999999999}'),
    ("PUT", "/retention/policies/team", b"[1,"),
    ("PUT", "/retention/policies/team", b'{"include": ["(unclosed"]}'),
    ("PUT", "/retention/policies/team", b'{"exclude": ["*star"]}'),
    pytest.param(
        "PUT",
        "/retention/policies/team",
        b'{"include": ["' + b"(" * 2000 + b'"]}',
        id="deeply-nested-regex",
    ),
    ("POST", "/gc?dry_run=yes", None),
    ("POST", "/repositories/team/app/-/copy", b"\xff\xfe"),
    ("POST", "/repositories/team/app/-/copy", b'{"source": 1}'),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD)
async def test_bad_parameters_and_bodies_are_400(
    areg: Reg, method: str, path: str, body: bytes | None
) -> None:
    status, answer = await call(areg, method, path, ADMIN, data=body)
    assert status == 400, answer
    assert error_codes(answer)[0] in ("BAD_REQUEST", "PAGINATION_NUMBER_INVALID")
    assert answer["errors"][0]["message"]


async def test_numbers_past_pythons_digit_limit_are_capped(areg: Reg) -> None:
    for huge in ("9" * 5000, "0" * 5000 + "1"):
        for path in (
            f"/namespaces/team/repositories?limit={huge}",
            f"/namespaces/team/repositories?offset={huge}",
            f"/events?limit={huge}",
            f"/search?q=app&limit={huge}",
        ):
            status, body = await call(areg, "GET", path, ADMIN)
            assert status == 200, body
        resp = await areg.client.get(f"/v2/_catalog?n={huge}", headers=ADMIN)
        assert resp.status == 200, await resp.text()
    status, body = await call(
        areg, "GET", f"/namespaces/team/repositories?limit={'0' * 5000}1", ADMIN
    )
    assert len(body["repositories"]) == 1 and body["next_offset"] == 1
