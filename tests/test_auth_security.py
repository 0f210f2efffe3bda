"""Access-control defects found in review, each over HTTP (or the CLI) against a real server."""

from __future__ import annotations

import asyncio
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from aioreg.api.auth import AUTH_KEY
from tests.conftest import AppFactory, Reg, digest_of, error_codes
from tests.test_auth import (
    ADMIN_PASSWORD,
    accounts,
    basic,
    bearer,
    claims,
    push_image,
    start_auth,
    token,
)

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
async def auth_reg(make_registry: AppFactory) -> Reg:
    return await start_auth(make_registry)


def challenge(header: str) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: Bearer`` challenge (each must appear once)."""
    assert header.startswith("Bearer "), header
    pairs = re.findall(r'(\w+)="([^"]*)"', header)
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), header
    return dict(pairs)


# -- (1) the action a request needs comes from its route ------------------------------


async def test_rights_follow_the_route_not_a_path_substring(auth_reg: Reg) -> None:
    repo = "team/blobs/uploads/x"
    alice = basic("alice", "alice-pw")
    assert (await push_image(auth_reg, repo, "v1", alice))[0] == 201
    await accounts(auth_reg).set_member("team", "bob", "write")
    bob = basic("bob", "bob-pw")
    resp = await auth_reg.client.delete(f"/v2/{repo}/manifests/v1", headers=bob)
    assert resp.status == 403, "delete needs the admin role, not write"
    layer = digest_of(b"layer s" * 50)
    resp = await auth_reg.client.delete(f"/v2/{repo}/blobs/{layer}", headers=bob)
    assert resp.status == 403
    await accounts(auth_reg).set_member("team", "bob", "read")
    resp = await auth_reg.client.get(f"/v2/{repo}/manifests/v1", headers=bob)
    assert resp.status == 200, "a read member pulls"
    resp = await auth_reg.client.get(f"/v2/{repo}/blobs/{layer}", headers=bob)
    assert resp.status == 200
    public = "pub/blobs/uploads/y"
    assert (await push_image(auth_reg, public, "v1", alice))[0] == 201
    resp = await auth_reg.client.get(f"/v2/{public}/manifests/v1")
    assert resp.status == 200, "anonymous users pull public repositories"
    resp = await auth_reg.client.get(f"/v2/{public}/tags/list")
    assert resp.status == 200
    # The upload routes themselves still need push.
    resp = await auth_reg.client.post(f"/v2/{repo}/blobs/uploads/", headers=bob)
    assert resp.status == 403


# -- (2) failed-login throttling ------------------------------------------------------


async def test_concurrent_wrong_passwords_are_checked_at_most_limit_times(
    make_registry: AppFactory,
) -> None:
    reg = await make_registry(auth={"enabled": True, "admin_password": ADMIN_PASSWORD})
    responses = await asyncio.gather(
        *(reg.client.get("/v2/", headers=basic("admin", f"wrong{i}")) for i in range(48))
    )
    statuses = [r.status for r in responses]
    assert set(statuses) <= {401, 429}
    checked = sum(1 for s in statuses if s != 429)
    assert 1 <= checked <= 5, statuses


async def test_concurrent_right_passwords_share_one_check(make_registry: AppFactory) -> None:
    """Counting attempts before the check must not turn a client's parallel requests
    with the right password into 429s."""
    reg = await make_registry(
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD, "failed_login_limit": 2}
    )
    responses = await asyncio.gather(
        *(reg.client.get("/v2/", headers=basic("admin", ADMIN_PASSWORD)) for _ in range(24))
    )
    assert [r.status for r in responses] == [200] * 24


async def test_lockout_is_per_address_with_a_slower_per_user_limit(
    make_registry: AppFactory,
) -> None:
    reg = await make_registry(
        auth={
            "enabled": True,
            "admin_password": ADMIN_PASSWORD,
            "failed_login_limit": 3,
            "failed_login_user_limit": 5,
        }
    )

    async def login(address: str, password: str) -> int:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(reg.server.url, connector=connector) as session:
            resp = await session.get("/v2/", headers=basic("admin", password))
            return resp.status

    for _ in range(3):
        assert await login("127.0.0.1", "wrong") == 401
    assert await login("127.0.0.1", ADMIN_PASSWORD) == 429
    assert await login("127.0.0.2", ADMIN_PASSWORD) == 200, "another address is not locked out"
    assert await login("127.0.0.2", "wrong") == 401
    assert await login("127.0.0.2", "wrong") == 401
    # Five failures for admin across addresses: the per-user limit holds everywhere.
    assert await login("127.0.0.3", "wrong-again") == 429


async def test_throttle_state_is_bounded(make_registry: AppFactory) -> None:
    reg = await make_registry(
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD, "failed_login_tracked_max": 10}
    )
    for _ in range(30):
        # A token-shaped secret for a random user: a cheap failed login.
        fake = f"aioreg_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
        resp = await reg.client.get("/v2/", headers=basic(secrets.token_hex(6), fake))
        assert resp.status == 401
    assert len(reg.app[AUTH_KEY].throttle.failures) <= 10


# -- (3) refresh and access tokens follow the account --------------------------------


async def refresh_with(reg: Reg, refresh_token: str) -> aiohttp.ClientResponse:
    return await reg.client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "service": "aioreg",
            "refresh_token": refresh_token,
            "scope": "repository:ivy/app:pull,push",
        },
    )


async def test_tokens_die_with_password_change_and_user_deletion(auth_reg: Reg) -> None:
    acc = accounts(auth_reg)
    assert (await push_image(auth_reg, "pub/tool", "v1", basic("alice", "alice-pw")))[0] == 201
    form = {
        "grant_type": "password",
        "service": "aioreg",
        "username": "alice",
        "password": "alice-pw",
        "scope": "repository:team/app:pull",
        "access_type": "offline",
    }
    body = await (await auth_reg.client.post("/token", data=form)).json()
    await acc.set_password("alice", "new-pw")
    resp = await refresh_with(auth_reg, body["refresh_token"])
    assert resp.status == 401, "a password change revokes refresh tokens"
    resp = await auth_reg.client.get("/v2/team/app/tags/list", headers=bearer(body["token"]))
    assert resp.status == 401

    await acc.add_user("ivy", "ivy-pw")
    ivy = await token(
        auth_reg, "repository:ivy/app:pull,push", basic("ivy", "ivy-pw"), offline_token="true"
    )
    resp = await auth_reg.client.get(
        "/token",
        params={"service": "aioreg", "scope": "repository:ivy/app:pull", "offline_token": "true"},
        headers=basic("ivy", "ivy-pw"),
    )
    refresh = (await resp.json())["refresh_token"]
    assert (await push_image(auth_reg, "ivy/app", "v1", bearer(ivy)))[0] == 201
    await acc.remove_user("ivy")
    resp = await auth_reg.client.get("/v2/", headers=bearer(ivy))
    assert resp.status == 401
    resp = await auth_reg.client.get("/v2/pub/tool/tags/list", headers=bearer(ivy))
    assert resp.status == 401
    resp = await auth_reg.client.get("/api/v1/repositories/pub/tool", headers=bearer(ivy))
    assert resp.status == 401, "the management API rejects a deleted user's token too"
    await acc.add_user("ivy", "other-pw")
    resp = await refresh_with(auth_reg, refresh)
    assert resp.status == 401, "a new account with the old name is not the old account"
    # The new ivy logs in normally.
    fresh = await token(auth_reg, "repository:ivy/app:pull,push", basic("ivy", "other-pw"))
    assert claims(fresh)["access"][0]["actions"] == ["pull", "push"]
    resp = await auth_reg.client.get("/v2/", headers=bearer(fresh))
    assert resp.status == 200


# -- (4) challenges are not built from untrusted header values --------------------------


async def test_host_header_cannot_inject_into_the_challenge(auth_reg: Reg) -> None:
    evil = 'a.com",realm="http://evil.example/token'
    resp = await auth_reg.client.get("/v2/", headers={"Host": evil})
    assert resp.status == 401
    header = resp.headers["WWW-Authenticate"]
    assert "evil" not in header
    assert challenge(header)["realm"].endswith("/token")
    resp = await auth_reg.client.get("/v2/", headers={"Host": "registry.example:5000"})
    assert challenge(resp.headers["WWW-Authenticate"])["realm"] == (
        "http://registry.example:5000/token"
    )
    # Nor from the repository name in the path.
    resp = await auth_reg.client.get('/v2/a",realm="x/manifests/v1')
    assert resp.status in (400, 401, 404)
    if "WWW-Authenticate" in resp.headers:
        assert challenge(resp.headers["WWW-Authenticate"])["realm"].startswith("http://127.0.0.1")
    else:
        assert error_codes(await resp.json()) == ["NAME_INVALID"]


async def test_configured_realm_is_used_whatever_the_host(make_registry: AppFactory) -> None:
    reg = await start_auth(make_registry, realm="https://auth.example/token")
    resp = await reg.client.get("/v2/", headers={"Host": 'x",realm="y'})
    assert challenge(resp.headers["WWW-Authenticate"])["realm"] == "https://auth.example/token"


# -- (5) docker/containerd compatibility: catalog and mount challenges --------------------


async def test_anonymous_catalog_is_challenged_and_tokens_carry_the_catalog(
    auth_reg: Reg,
) -> None:
    for repo in ("team/app", "pub/tool"):
        assert (await push_image(auth_reg, repo, "v1", basic("alice", "alice-pw")))[0] == 201
    resp = await auth_reg.client.get("/v2/_catalog")
    assert resp.status == 401
    assert challenge(resp.headers["WWW-Authenticate"])["scope"] == "registry:catalog:*"
    anonymous = await token(auth_reg, "registry:catalog:*")
    assert claims(anonymous)["access"] == [{"type": "registry", "name": "catalog", "actions": []}]
    bobs = await token(auth_reg, "registry:catalog:*", basic("bob", "bob-pw"))
    assert claims(bobs)["access"] == [{"type": "registry", "name": "catalog", "actions": ["*"]}]
    resp = await auth_reg.client.get("/v2/_catalog", headers=bearer(bobs))
    assert resp.status == 200
    assert (await resp.json())["repositories"] == ["pub/tool"]
    alices = await token(auth_reg, "registry:catalog:*", basic("alice", "alice-pw"))
    resp = await auth_reg.client.get("/v2/_catalog", headers=bearer(alices))
    assert (await resp.json())["repositories"] == ["pub/tool", "team/app"]
    # A bearer token without the catalog scope is asked to get one.
    pull_only = await token(auth_reg, "repository:pub/tool:pull", basic("bob", "bob-pw"))
    resp = await auth_reg.client.get("/v2/_catalog", headers=bearer(pull_only))
    assert resp.status == 401
    params = challenge(resp.headers["WWW-Authenticate"])
    assert params["scope"] == "registry:catalog:*"
    assert params["error"] == "insufficient_scope"


async def test_mount_challenge_names_the_source_repository(auth_reg: Reg) -> None:
    assert (await push_image(auth_reg, "team/app", "v1", basic("alice", "alice-pw")))[0] == 201
    layer = digest_of(b"layer s" * 50)
    mount = f"/v2/alice/app/blobs/uploads/?mount={layer}&from=team/app"
    resp = await auth_reg.client.post(mount)
    assert resp.status == 401
    scopes = challenge(resp.headers["WWW-Authenticate"])["scope"].split()
    assert "repository:team/app:pull" in scopes
    assert any(s.startswith("repository:alice/app:") and "push" in s for s in scopes)
    value = await token(auth_reg, " ".join(scopes), basic("alice", "alice-pw"))
    resp = await auth_reg.client.post(mount, headers=bearer(value))
    assert resp.status == 201, "the token the challenge leads to lets the mount succeed"
    # A push token lacking the source pull its holder could have: challenged again.
    push_only = await token(
        auth_reg, "repository:alice/other:pull,push", basic("alice", "alice-pw")
    )
    resp = await auth_reg.client.post(
        f"/v2/alice/other/blobs/uploads/?mount={layer}&from=team/app", headers=bearer(push_only)
    )
    assert resp.status == 401
    params = challenge(resp.headers["WWW-Authenticate"])
    assert "repository:team/app:pull" in params["scope"].split()
    assert params["error"] == "insufficient_scope"
    # One who can never pull the source gets a plain upload, as before.
    bobs = await token(
        auth_reg, "repository:bob/app:pull,push repository:team/app:pull", basic("bob", "bob-pw")
    )
    resp = await auth_reg.client.post(
        f"/v2/bob/app/blobs/uploads/?mount={layer}&from=team/app", headers=bearer(bobs)
    )
    assert resp.status == 202


# -- (6) the README's robot-token example works as written ------------------------------


def cli(data: Path, line: str) -> subprocess.CompletedProcess[str]:
    """Run one README line (``[echo 'x' |] aioreg ...``) against ``data``."""
    stdin = None
    if "|" in line:
        feed, line = (part.strip() for part in line.split("|", 1))
        stdin = shlex.split(feed)[1] + "\n"
    args = shlex.split(line)
    assert args[0] == "aioreg"
    if "--data" in args:
        at = args.index("--data")
        del args[at : at + 2]
    return subprocess.run(
        [sys.executable, "-m", "aioreg", *args[1:], "--data", str(data)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def readme_account_lines() -> list[str]:
    """The README's account commands for the robot example, in order (users, namespaces,
    members, tokens; bob's lines left out to keep the test short)."""
    section = README.read_text().split("## Access control", 1)[1].split("**Protocol.**", 1)[0]
    lines = []
    for raw in section.splitlines():
        line = raw.split("  #", 1)[0].strip()
        command = line.split("|")[-1].strip()
        if re.match(r"aioreg (user add|namespace (create|member)|token create) ", command) and (
            "bob" not in command
        ):
            lines.append(line)
    return lines


async def test_readme_robot_token_example_pushes(make_registry: AppFactory, tmp_path: Path) -> None:
    data = tmp_path / "d"
    lines = readme_account_lines()
    assert any("namespace member team ci-robot" in line for line in lines)
    value = None
    for line in lines:
        result = cli(data, line)
        assert result.returncode == 0, (line, result.stderr)
        assert "warning" not in (result.stdout + result.stderr).lower(), (line, result)
        if "token create" in line:
            value = re.search(r"aioreg_[0-9a-f]{16}_\S+", result.stdout)[0]  # type: ignore[index]
    assert value is not None
    reg = await make_registry(data, auth={"enabled": True, "admin_password": ADMIN_PASSWORD})
    status, text = await push_image(reg, "team/app", "v1", basic("ci-robot", value))
    assert status == 201, text


def test_token_create_warns_when_a_scope_exceeds_the_roles(tmp_path: Path) -> None:
    data = tmp_path / "d"
    for line in (
        "aioreg user add ci-robot --robot",
        "aioreg namespace create team",
    ):
        assert cli(data, line).returncode == 0
    result = cli(data, "aioreg token create ci-robot --name deploy --scope team:pull,push")
    assert result.returncode == 0
    assert re.search(r"aioreg_[0-9a-f]{16}_\S+", result.stdout)
    assert "warning" in result.stderr.lower()
    assert "pull" in result.stderr and "push" in result.stderr
    assert "aioreg namespace member team ci-robot write" in result.stderr
    assert cli(data, "aioreg namespace member team ci-robot read").returncode == 0
    result = cli(data, "aioreg token create ci-robot --name rw --scope team:pull,push,delete")
    assert "delete,push in team" in result.stderr
    assert "aioreg namespace member team ci-robot admin" in result.stderr
