"""Access control over the real HTTP API: who may pull, push and delete, and every denial path."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from aioreg.auth.accounts import Accounts, TokenScope
from aioreg.auth.scopes import Access
from aioreg.auth.tokens import TokenSigner, load_or_create_key
from tests.conftest import (
    EMPTY_JSON,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    artifact_manifest,
    digest_of,
    error_codes,
    image_manifest,
)

ADMIN_PASSWORD = "admin-secret-pw"


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def start_auth(make_registry: AppFactory, **auth: object) -> Reg:
    """A registry with auth on, users alice and bob, namespaces team (private) and pub
    (public), both owned by alice."""
    reg = await make_registry(auth={"enabled": True, "admin_password": ADMIN_PASSWORD, **auth})
    accounts = Accounts(reg.registry.index)
    await accounts.add_user("alice", "alice-pw")
    await accounts.add_user("bob", "bob-pw")
    await accounts.create_namespace("team", "alice")
    await accounts.create_namespace("pub", "alice", "public")
    return reg


@pytest.fixture
async def auth_reg(make_registry: AppFactory) -> Reg:
    return await start_auth(make_registry)


def accounts(reg: Reg) -> Accounts:
    return Accounts(reg.registry.index)


async def token(
    reg: Reg, scope: str | None, creds: dict[str, str] | None = None, **query: str
) -> str:
    params = {"service": "aioreg", **query}
    if scope:
        params["scope"] = scope
    resp = await reg.client.get("/token", params=params, headers=creds or {})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token"] == body["access_token"]
    return body["token"]


def claims(token_value: str) -> dict[str, object]:
    return jwt.decode(token_value, options={"verify_signature": False})


async def push_image(
    reg: Reg, repo: str, tag: str, headers: dict[str, str], seed: str = "s"
) -> tuple[int, str]:
    """Push config + layer + manifest with the given credentials; returns the last status."""
    config = json.dumps({"os": "linux", "architecture": "amd64", "seed": seed}).encode()
    layer = f"layer {seed}".encode() * 50
    for blob in (config, layer):
        resp = await reg.client.post(
            f"/v2/{repo}/blobs/uploads/?digest={digest_of(blob)}", data=blob, headers=headers
        )
        if resp.status != 201:
            return resp.status, await resp.text()
    manifest = image_manifest(config, [layer])
    resp = await reg.client.put(
        f"/v2/{repo}/manifests/{tag}",
        data=manifest,
        headers={**headers, "Content-Type": OCI_MANIFEST},
    )
    return resp.status, await resp.text()


async def test_anonymous_base_gets_a_bearer_challenge(auth_reg: Reg) -> None:
    resp = await auth_reg.client.get("/v2/")
    assert resp.status == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="http://127.0.0.1:')
    assert '/token",service="aioreg"' in challenge
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert error_codes(await resp.json()) == ["UNAUTHORIZED"]
    resp = await auth_reg.client.get("/v2/", headers=basic("admin", ADMIN_PASSWORD))
    assert resp.status == 200


async def test_token_flow_push_and_pull(auth_reg: Reg) -> None:
    value = await token(auth_reg, "repository:team/app:pull,push", basic("alice", "alice-pw"))
    access = claims(value)["access"]
    assert access == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    assert claims(value)["aud"] == "aioreg"
    status, text = await push_image(auth_reg, "team/app", "v1", bearer(value))
    assert status == 201, text
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=bearer(value))
    assert resp.status == 200


async def test_anonymous_push_is_challenged_with_the_scope(auth_reg: Reg) -> None:
    resp = await auth_reg.client.post("/v2/team/app/blobs/uploads/")
    assert resp.status == 401
    assert 'scope="repository:team/app:push"' in resp.headers["WWW-Authenticate"]
    anonymous = await token(auth_reg, "repository:team/app:pull,push")
    assert claims(anonymous)["access"] == [
        {"type": "repository", "name": "team/app", "actions": []}
    ]
    resp = await auth_reg.client.post("/v2/team/app/blobs/uploads/", headers=bearer(anonymous))
    assert resp.status == 401


async def test_private_repository_pull_is_denied(auth_reg: Reg) -> None:
    status, _ = await push_image(auth_reg, "team/app", "v1", basic("alice", "alice-pw"))
    assert status == 201
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1")
    assert resp.status == 401  # anonymous: asked to authenticate
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=basic("bob", "bob-pw"))
    assert resp.status == 403
    assert error_codes(await resp.json()) == ["DENIED"]
    bobs = await token(auth_reg, "repository:team/app:pull", basic("bob", "bob-pw"))
    assert claims(bobs)["access"][0]["actions"] == []
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=bearer(bobs))
    assert resp.status == 403
    await accounts(auth_reg).set_member("team", "bob", "read")
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=basic("bob", "bob-pw"))
    assert resp.status == 200
    status, _ = await push_image(auth_reg, "team/app", "v2", basic("bob", "bob-pw"))
    assert status == 403  # read role: pull only


async def test_public_namespace_allows_anonymous_pull_only(auth_reg: Reg) -> None:
    status, _ = await push_image(auth_reg, "pub/tool", "latest", basic("alice", "alice-pw"))
    assert status == 201
    resp = await auth_reg.client.get("/v2/pub/tool/manifests/latest")
    assert resp.status == 200
    anonymous = await token(auth_reg, "repository:pub/tool:pull,push")
    assert claims(anonymous)["access"][0]["actions"] == ["pull"]
    resp = await auth_reg.client.get("/v2/pub/tool/manifests/latest", headers=bearer(anonymous))
    assert resp.status == 200
    status, _ = await push_image(auth_reg, "pub/tool", "evil", {})
    assert status == 401
    status, _ = await push_image(auth_reg, "pub/tool", "evil", basic("bob", "bob-pw"))
    assert status == 403


async def test_push_to_someone_elses_namespace_and_own_namespace(auth_reg: Reg) -> None:
    status, _ = await push_image(auth_reg, "alice/app", "v1", basic("bob", "bob-pw"))
    assert status == 403
    status, _ = await push_image(auth_reg, "nosuchns/app", "v1", basic("bob", "bob-pw"))
    assert status == 403
    status, text = await push_image(auth_reg, "bob/app", "v1", basic("bob", "bob-pw"))
    assert status == 201, text
    namespace = await auth_reg.registry.index.accounts.namespace("bob")
    assert namespace is not None and namespace.owner == "bob"
    status, _ = await push_image(auth_reg, "bob/app", "v2", basic("alice", "alice-pw"))
    assert status == 403


async def test_scope_escalation_is_not_granted(auth_reg: Reg) -> None:
    value = await token(
        auth_reg,
        "repository:team/app:pull,push,delete",
        basic("bob", "bob-pw"),
    )
    assert claims(value)["access"] == [{"type": "repository", "name": "team/app", "actions": []}]
    resp = await auth_reg.client.get(
        "/token",
        params=[
            ("service", "aioreg"),
            ("scope", "repository:bob/x:push"),
            ("scope", "repository:team/app:*"),
        ],
        headers=basic("bob", "bob-pw"),
    )
    access = claims((await resp.json())["token"])["access"]
    assert access == [
        {"type": "repository", "name": "bob/x", "actions": ["push"]},
        {"type": "repository", "name": "team/app", "actions": []},
    ]


async def test_personal_access_tokens_expire_and_revoke(auth_reg: Reg) -> None:
    acc = accounts(auth_reg)
    good = await acc.create_token("alice", "ci", [TokenScope("team", ["pull", "push"])], None)
    expired = await acc.create_token("alice", "old", [TokenScope("team", ["pull"])], -1)
    # Any user name works with a token as the password.
    status, text = await push_image(auth_reg, "team/app", "v1", basic("ci-bot", good.value))
    assert status == 201, text
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=basic("x", expired.value))
    assert resp.status == 401
    resp = await auth_reg.client.get(
        "/token", params={"scope": "repository:team/app:pull"}, headers=basic("x", expired.value)
    )
    assert resp.status == 401
    await acc.revoke_token(good.id)
    resp = await auth_reg.client.get(
        "/v2/team/app/manifests/v1", headers=basic("ci-bot", good.value)
    )
    assert resp.status == 401
    # A token's scopes bound it even where its user could do more.
    narrow = await acc.create_token("alice", "ro", [TokenScope("team", ["pull"])], None)
    status, _ = await push_image(auth_reg, "team/app", "v2", basic("x", narrow.value))
    assert status == 403
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=basic("x", narrow.value))
    assert resp.status == 200


async def test_tampered_and_foreign_tokens_are_rejected(auth_reg: Reg, tmp_path) -> None:
    value = await token(auth_reg, "repository:team/app:pull,push", basic("alice", "alice-pw"))
    header, payload, signature = value.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["access"][0]["name"] = "pub/tool"
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    resp = await auth_reg.client.get(
        "/v2/pub/tool/tags/list", headers=bearer(f"{header}.{forged_payload}.{signature}")
    )
    assert resp.status == 401
    # Signed by the right key for another service (audience): rejected.
    key = load_or_create_key(auth_reg.data_dir / "auth")
    other, _ = TokenSigner(key, "other-service").access_token(
        "alice", [Access("repository", "team/app", frozenset({"pull"}))], "password", 60
    )
    resp = await auth_reg.client.get("/v2/team/app/tags/list", headers=bearer(other))
    assert resp.status == 401
    # Signed by a different key: rejected.
    stranger, _ = TokenSigner(load_or_create_key(tmp_path / "k"), "aioreg").access_token(
        "alice", [Access("repository", "team/app", frozenset({"pull"}))], "password", 60
    )
    resp = await auth_reg.client.get("/v2/team/app/tags/list", headers=bearer(stranger))
    assert resp.status == 401
    resp = await auth_reg.client.get(
        "/token", params={"service": "other"}, headers=basic("alice", "alice-pw")
    )
    assert resp.status == 403
    # Expired.
    old, _ = TokenSigner(key, "aioreg").access_token(
        "alice", [Access("repository", "team/app", frozenset({"pull"}))], "password", -10
    )
    resp = await auth_reg.client.get("/v2/team/app/tags/list", headers=bearer(old))
    assert resp.status == 401


async def test_immutable_tags_and_overwrite_rule(auth_reg: Reg) -> None:
    await accounts(auth_reg).configure("team", None, None, {"immutable_tags": ["v*", "release-*"]})
    creds = basic("alice", "alice-pw")
    assert (await push_image(auth_reg, "team/app", "v1", creds, seed="a"))[0] == 201
    assert (await push_image(auth_reg, "team/app", "v1", creds, seed="a"))[0] == 201  # same digest
    status, text = await push_image(auth_reg, "team/app", "v1", creds, seed="b")
    assert status == 403
    assert "team/app:v1" in text and "DENIED" in text
    assert (await push_image(auth_reg, "team/app", "latest", creds, seed="a"))[0] == 201
    assert (await push_image(auth_reg, "team/app", "latest", creds, seed="b"))[0] == 201
    resp = await auth_reg.client.delete("/v2/team/app/manifests/v1", headers=creds)
    assert resp.status == 403
    # A repository override turns overwrite off entirely.
    await accounts(auth_reg).configure("team", "team/app", None, {"allow_tag_overwrite": False})
    status, _ = await push_image(auth_reg, "team/app", "latest", creds, seed="c")
    assert status == 403


async def test_token_only_push_and_member_only_push(auth_reg: Reg) -> None:
    acc = accounts(auth_reg)
    await acc.configure("team", None, None, {"must_use_auth_token_for_push": True})
    status, text = await push_image(auth_reg, "team/app", "v1", basic("alice", "alice-pw"))
    assert status == 403 and "access token" in text
    pat = await acc.create_token("alice", "ci", [TokenScope("*", ["pull", "push"])], None)
    assert (await push_image(auth_reg, "team/app", "v1", basic("alice", pat.value)))[0] == 201
    resp = await auth_reg.client.get(
        "/v2/team/app/manifests/v1", headers=basic("alice", "alice-pw")
    )
    assert resp.status == 200  # a password still pulls
    password_token = await token(
        auth_reg, "repository:team/app:pull,push", basic("alice", "alice-pw")
    )
    assert claims(password_token)["access"][0]["actions"] == ["pull"]

    await acc.configure(
        "team", None, None, {"must_use_auth_token_for_push": False, "must_be_project_member": True}
    )
    status, _ = await push_image(auth_reg, "team/app", "v2", basic("admin", ADMIN_PASSWORD))
    assert status == 403  # admin, but not a member
    await acc.set_member("team", "bob", "write")
    assert (await push_image(auth_reg, "team/app", "v2", basic("bob", "bob-pw")))[0] == 201


async def test_content_trust_requires_a_signature_referrer(auth_reg: Reg) -> None:
    creds = basic("alice", "alice-pw")
    assert (await push_image(auth_reg, "team/app", "v1", creds))[0] == 201
    await accounts(auth_reg).configure("team", None, None, {"require_content_trust": True})
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=creds)
    assert resp.status == 403
    assert "signature" in (await resp.json())["errors"][0]["message"]
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=creds)
    digest_resp = await auth_reg.client.head("/v2/team/app/manifests/v1", headers=creds)
    assert digest_resp.status == 403
    image = await auth_reg.registry.index.manifests.by_tag("team/app", "v1")
    assert image is not None
    await auth_reg.client.post(
        f"/v2/team/app/blobs/uploads/?digest={digest_of(EMPTY_JSON)}",
        data=EMPTY_JSON,
        headers=creds,
    )
    signature = artifact_manifest(
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        (OCI_MANIFEST, image.digest, image.size),
    )
    resp = await auth_reg.client.put(
        f"/v2/team/app/manifests/{digest_of(signature)}",
        data=signature,
        headers={**creds, "Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201
    resp = await auth_reg.client.get("/v2/team/app/manifests/v1", headers=creds)
    assert resp.status == 200


async def test_catalog_and_tags_show_only_what_the_caller_may_pull(auth_reg: Reg) -> None:
    creds = basic("alice", "alice-pw")
    for repo in ("team/app", "pub/tool", "alice/own"):
        assert (await push_image(auth_reg, repo, "v1", creds))[0] == 201
    resp = await auth_reg.client.get("/v2/_catalog", headers=creds)
    assert (await resp.json())["repositories"] == ["alice/own", "pub/tool", "team/app"]
    resp = await auth_reg.client.get("/v2/_catalog", headers=basic("bob", "bob-pw"))
    assert (await resp.json())["repositories"] == ["pub/tool"]
    resp = await auth_reg.client.get("/v2/_catalog?n=1", headers=basic("bob", "bob-pw"))
    assert (await resp.json())["repositories"] == ["pub/tool"]
    resp = await auth_reg.client.get("/v2/team/app/tags/list", headers=basic("bob", "bob-pw"))
    assert resp.status == 403


async def test_failed_logins_are_throttled(make_registry: AppFactory) -> None:
    reg = await make_registry(
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD, "failed_login_limit": 3}
    )
    for _ in range(3):
        resp = await reg.client.get("/v2/", headers=basic("admin", "wrong"))
        assert resp.status == 401
    resp = await reg.client.get("/v2/", headers=basic("admin", ADMIN_PASSWORD))
    assert resp.status == 429
    assert error_codes(await resp.json()) == ["TOOMANYREQUESTS"]
    assert int(resp.headers["Retry-After"]) >= 1


async def test_push_and_delete_decisions_are_audited(auth_reg: Reg) -> None:
    assert (await push_image(auth_reg, "team/app", "v1", basic("alice", "alice-pw")))[0] == 201
    assert (await push_image(auth_reg, "team/app", "v2", basic("bob", "bob-pw")))[0] == 403
    resp = await auth_reg.client.delete("/v2/team/app/manifests/v1", headers=basic("bob", "bob-pw"))
    assert resp.status == 403
    service = auth_reg.app[__import__("aioreg.api.auth", fromlist=["AUTH_KEY"]).AUTH_KEY]
    await service.flush_audit()
    log = await auth_reg.registry.index.accounts.audit_log(100)
    assert any(e.actor == "alice" and e.action == "push" and e.allowed for e in log)
    assert any(
        e.actor == "bob" and e.action == "push" and not e.allowed and e.client == "127.0.0.1"
        for e in log
    )
    assert any(e.actor == "bob" and e.action == "delete" and not e.allowed for e in log)
    assert all("bob-pw" not in (e.reason or "") for e in log)


async def test_oauth2_post_with_refresh_tokens(auth_reg: Reg) -> None:
    form = {
        "grant_type": "password",
        "service": "aioreg",
        "client_id": "containerd",
        "username": "alice",
        "password": "alice-pw",
        "scope": "repository:team/app:pull,push",
        "access_type": "offline",
    }
    resp = await auth_reg.client.post("/token", data=form)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["refresh_token"] and body["access_token"] and body["expires_in"] > 0
    status, _ = await push_image(auth_reg, "team/app", "v1", bearer(body["access_token"]))
    assert status == 201
    resp = await auth_reg.client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "service": "aioreg",
            "client_id": "containerd",
            "refresh_token": body["refresh_token"],
            "scope": "repository:team/app:pull",
        },
    )
    assert resp.status == 200
    refreshed = await resp.json()
    assert claims(refreshed["access_token"])["access"][0]["actions"] == ["pull"]
    resp = await auth_reg.client.post("/token", data={**form, "password": "wrong"})
    assert resp.status == 401
    resp = await auth_reg.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": "garbage"}
    )
    assert resp.status == 401
    # A refresh token minted from a PAT dies with the PAT.
    pat = await accounts(auth_reg).create_token("alice", "ci", [TokenScope("team", ["pull"])], None)
    resp = await auth_reg.client.post("/token", data={**form, "password": pat.value})
    refresh = (await resp.json())["refresh_token"]
    await accounts(auth_reg).revoke_token(pat.id)
    resp = await auth_reg.client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": refresh}
    )
    assert resp.status == 401


async def test_mount_needs_pull_on_the_source(auth_reg: Reg) -> None:
    assert (await push_image(auth_reg, "team/app", "v1", basic("alice", "alice-pw")))[0] == 201
    layer_digest = digest_of(b"layer s" * 50)
    resp = await auth_reg.client.post(
        f"/v2/bob/app/blobs/uploads/?mount={layer_digest}&from=team/app",
        headers=basic("bob", "bob-pw"),
    )
    assert resp.status == 202  # not mounted: bob cannot pull team/app
    resp = await auth_reg.client.post(
        f"/v2/bob/app/blobs/uploads/?mount={layer_digest}", headers=basic("bob", "bob-pw")
    )
    assert resp.status == 202
    resp = await auth_reg.client.post(
        f"/v2/alice/app/blobs/uploads/?mount={layer_digest}&from=team/app",
        headers=basic("alice", "alice-pw"),
    )
    assert resp.status == 201


async def test_auth_off_keeps_the_registry_open(reg: Reg) -> None:
    resp = await reg.client.get("/v2/")
    assert resp.status == 200
    resp = await reg.client.get("/token")
    assert resp.status == 405 or error_codes(await resp.json()) == ["UNSUPPORTED"]
    _ = time


async def test_management_api_uses_the_same_access_control(auth_reg: Reg) -> None:
    assert (await push_image(auth_reg, "team/app", "v1", basic("alice", "alice-pw")))[0] == 201
    assert (await push_image(auth_reg, "pub/tool", "v1", basic("alice", "alice-pw")))[0] == 201
    resp = await auth_reg.client.get("/api/v1/repositories/team/app")
    assert resp.status == 401
    resp = await auth_reg.client.get(
        "/api/v1/repositories/team/app", headers=basic("bob", "bob-pw")
    )
    assert resp.status == 403
    resp = await auth_reg.client.get(
        "/api/v1/repositories/team/app", headers=basic("alice", "alice-pw")
    )
    assert resp.status == 200
    resp = await auth_reg.client.get("/api/v1/repositories/pub/tool")
    assert resp.status == 200  # public: anonymous read
    resp = await auth_reg.client.delete(
        "/api/v1/repositories/team/app", headers=basic("bob", "bob-pw")
    )
    assert resp.status == 403
    resp = await auth_reg.client.post("/api/v1/gc", headers=basic("alice", "alice-pw"))
    assert resp.status == 403  # registry-wide: admins only
    resp = await auth_reg.client.post("/api/v1/gc", headers=basic("admin", ADMIN_PASSWORD))
    assert resp.status == 200
    resp = await auth_reg.client.get("/api/v1/search?q=app", headers=basic("bob", "bob-pw"))
    assert [h["repository"] for h in (await resp.json())["results"]] == []
    resp = await auth_reg.client.delete(
        "/api/v1/repositories/team/app", headers=basic("alice", "alice-pw")
    )
    assert resp.status == 200
    resp = await auth_reg.client.get("/api/v1/events", headers=basic("admin", ADMIN_PASSWORD))
    events = (await resp.json())["events"]
    assert any(e["kind"] == "delete" and e["actor"] == "alice" for e in events)
    assert any(e["kind"] == "push" and e["actor"] == "alice" for e in events)


async def test_basic_on_registry_endpoints_can_be_switched_off(make_registry: AppFactory) -> None:
    reg = await make_registry(
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD, "allow_basic": False}
    )
    resp = await reg.client.get("/v2/", headers=basic("admin", ADMIN_PASSWORD))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    value = await token(reg, "repository:admin/app:pull,push", basic("admin", ADMIN_PASSWORD))
    resp = await reg.client.get("/v2/", headers=bearer(value))
    assert resp.status == 200
    status, _ = await push_image(reg, "admin/app", "v1", bearer(value))
    assert status == 201


def test_auth_environment_switch() -> None:
    from aioreg.config import load_config

    assert load_config(None, environ={"AIOREG_AUTH": "1"}).auth.enabled is True
    assert load_config(None, environ={}).auth.enabled is False
