"""The web console, end to end: the production server with access control on, driven by
headless Chromium (Debian's ``chromium`` through Playwright, never a downloaded browser)
and, for what a browser would hide (cookies' flags, a forged POST), by plain HTTP.

Every page the browser visits is saved as a screenshot under ``$TEST_SCREENSHOTS``
(default ``artifacts/screenshots`` at the repository's root), kept by CI as artifacts.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aioreg.auth.accounts import Accounts, TokenScope
from tests.conftest import (
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    AppFactory,
    Reg,
    artifact_manifest,
    digest_of,
)
from tests.test_auth import ADMIN_PASSWORD, basic
from tests.test_proxy import proxy_entry
from tests.test_proxy_cache import pull_image, push_image
from tests.test_webhooks import FAST, Receiver, verify

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(
    os.environ.get("TEST_SCREENSHOTS")
    or Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
)
ADMIN = basic("admin", ADMIN_PASSWORD)
XSS = "<script>alert(1)</script>"

needs_chromium = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() or shutil.which("chromium")),
    reason="Debian's chromium is not installed (apt-get install -y chromium; CI installs it)",
)


async def push(
    reg: Reg,
    repo: str,
    tag: str,
    seed: str,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """An image pushed by the admin; returns its digest."""
    config = json.dumps(
        {"os": "linux", "architecture": "amd64", "config": {"Labels": labels or {}}, "s": seed}
    ).encode()
    layer = f"layer {seed}".encode() * 40
    for blob in (config, layer):
        resp = await reg.client.post(
            f"/v2/{repo}/blobs/uploads/?digest={digest_of(blob)}", data=blob, headers=ADMIN
        )
        assert resp.status == 201, await resp.text()
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
    }
    if annotations:
        manifest["annotations"] = annotations
    resp = await reg.client.put(
        f"/v2/{repo}/manifests/{tag}",
        data=json.dumps(manifest).encode(),
        headers={**ADMIN, "Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()
    return str(resp.headers["Docker-Content-Digest"])


@pytest.fixture
async def creg(make_registry: AppFactory) -> Reg:
    return await console_registry(make_registry)


async def console_registry(make_registry: AppFactory, **sections: dict[str, object]) -> Reg:
    """Auth on; alice owns team (private) and pub (public); bob has no role in team;
    carol is a member of team who may only read."""
    reg = await make_registry(
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD}, sections=sections
    )
    accounts = Accounts(reg.registry.index)
    await accounts.add_user("carol", "carol-pw")
    await accounts.add_user("alice", "alice-pw")
    await accounts.add_user("bob", "bob-pw")
    await accounts.create_namespace("team", "alice")
    await accounts.create_namespace("pub", "alice", "public")
    await push(reg, "team/app", "v1", "a1", {"org.example.note": XSS}, {"maintainer": XSS})
    await push(reg, "team/app", "v2", "a2")
    await push(reg, "pub/web", "latest", "w1")
    await accounts.set_member("team", "carol", "read")
    return reg


class Visitor:
    """A cookie-keeping HTTP client (aiohttp's default jar ignores cookies of IP hosts)."""

    def __init__(self, reg: Reg) -> None:
        self.session = aiohttp.ClientSession(
            reg.server.url, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )

    async def page(self, path: str, status: int = 200) -> str:
        resp = await self.session.get(path, allow_redirects=False)
        text = await resp.text()
        assert resp.status == status, (path, resp.status, text[:500])
        return text

    async def post(self, path: str, form: dict[str, str], **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.session.post(path, data=form, allow_redirects=False, **kwargs)

    async def sign_in(self, user: str, password: str) -> aiohttp.ClientResponse:
        token = csrf_of(await self.page("/sign-in"))
        return await self.post("/sign-in", {"csrf": token, "username": user, "password": password})


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


@pytest.fixture
async def visitor(creg: Reg) -> AsyncIterator[Visitor]:
    v = Visitor(creg)
    yield v
    await v.session.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


class Tab:
    """A browser page that records dialogs and screenshots what it shows."""

    def __init__(self, page: Any, base: str, prefix: str) -> None:
        self.page = page
        self.base = base
        self.prefix = prefix
        self.dialogs: list[str] = []
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.accept()

    async def goto(self, path: str) -> Any:
        return await self.page.goto(self.base + path)

    async def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(
            path=str(SCREENSHOTS / f"{self.prefix}-{name}.png"), full_page=True
        )

    async def sign_in(self, user: str, password: str) -> None:
        await self.goto("/sign-in")
        await self.page.get_by_label("User name").fill(user)
        await self.page.get_by_label("Password or access token").fill(password)
        await self.page.get_by_role("button", name="Sign in").click()
        await self.page.wait_for_url(self.base + "/")


async def open_tab(browser: Any, reg: Reg, prefix: str) -> Tab:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    return Tab(await context.new_page(), reg.server.url.rstrip("/"), prefix)


# -- in the browser --------------------------------------------------------------------


@needs_chromium
async def test_browse_search_and_delete_a_tag_through_the_confirmation(
    creg: Reg, browser: Any
) -> None:
    tab = await open_tab(browser, creg, "alice")
    page = tab.page
    await tab.sign_in("alice", "alice-pw")
    await page.get_by_text("Signed in as").wait_for()
    await tab.shot("overview")

    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Namespaces").click()
    await page.get_by_role("link", name="team", exact=True).click()
    await page.wait_for_url(tab.base + "/namespaces/team")
    await tab.shot("namespace")
    assert await page.get_by_role("link", name="team/app").count() == 1

    await page.get_by_role("link", name="team/app").click()
    await page.wait_for_url(tab.base + "/r/team/app")
    host = creg.server.url.removeprefix("http://").rstrip("/")
    assert await page.get_by_text(f"podman pull {host}/team/app:v1").count() == 1
    assert await page.get_by_role("row").filter(has_text="v2").count() >= 1
    await tab.shot("repository")
    copy = page.get_by_role("button", name="Copy podman pull command")
    await copy.click()
    await (
        page.get_by_role("button", name="Copy podman pull command")
        .filter(has_text="Copied")
        .wait_for()
    )

    await page.get_by_role("link", name="v1", exact=True).click()
    await page.get_by_role("heading", name="Manifest").wait_for()
    assert "/r/team/app/-/artifacts/sha256:" in page.url
    assert await page.get_by_role("heading", name="Layers").count() == 1
    await tab.shot("artifact")

    search = page.get_by_label("Search repositories, tags and digests")
    await search.press_sequentially("app")  # search as you type: suggestions arrive
    await page.locator('#site-search-suggestions option[value="team/app"]').wait_for(
        state="attached"
    )
    await search.fill("v2")
    await search.press("Enter")
    await page.wait_for_url(re.compile(r".*/search\?q=v2$"))
    assert await page.get_by_role("link", name="team/app:v2").count() == 1
    await tab.shot("search")

    await tab.goto("/r/team/app")
    await page.get_by_role("link", name="Delete tag v1").click()
    await page.get_by_text("The tag team/app:v1 will be removed").wait_for()
    await tab.shot("confirm")
    await page.get_by_role("button", name="Delete tag").click()
    await page.wait_for_url(tab.base + "/r/team/app")
    assert await page.get_by_role("link", name="v1", exact=True).count() == 0
    assert await page.get_by_role("link", name="v2", exact=True).count() == 1

    await tab.goto("/activity?repository=team/app")
    row = page.get_by_role("row").filter(has_text="untag").filter(has_text="alice")
    assert await row.count() == 1
    assert "v1" in await row.inner_text()
    await tab.shot("activity")
    assert await creg.registry.index.manifests.by_tag("team/app", "v1") is None


@needs_chromium
async def test_anonymous_visitor_sees_only_public_repositories(creg: Reg, browser: Any) -> None:
    tab = await open_tab(browser, creg, "anonymous")
    await tab.goto("/namespaces")
    await tab.page.keyboard.press("Tab")  # the first stop skips the navigation
    focused = await tab.page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    await tab.shot("namespaces")
    main = tab.page.get_by_role("main")
    assert await main.get_by_role("link", name="pub").count() == 1
    assert await main.get_by_role("link", name="team").count() == 0
    await tab.goto("/search?q=e")
    assert await tab.page.get_by_role("link", name="pub/web", exact=True).count() == 1
    assert "team/app" not in await main.inner_text()
    response = await tab.goto("/r/team/app")
    assert response.status == 404
    response = await tab.goto("/r/pub/web")
    assert response.status == 200


@needs_chromium
async def test_private_repository_is_not_found_for_a_user_without_access(
    creg: Reg, browser: Any
) -> None:
    tab = await open_tab(browser, creg, "bob")
    await tab.sign_in("bob", "bob-pw")
    response = await tab.goto("/r/team/app")
    assert response.status == 404
    await tab.shot("private-404")
    digest = await push(creg, "team/app", "v3", "a3")
    for path in (f"/r/team/app/-/artifacts/{digest}", "/namespaces/team", "/r/team/app/-/delete"):
        response = await tab.goto(path)
        assert response.status == 404, path


@needs_chromium
async def test_an_annotation_script_renders_as_text(creg: Reg, browser: Any) -> None:
    tab = await open_tab(browser, creg, "xss")
    await tab.sign_in("admin", ADMIN_PASSWORD)
    digest = (await creg.registry.index.manifests.by_tag("team/app", "v1")).digest  # type: ignore[union-attr]
    await tab.goto(f"/r/team/app/-/artifacts/{digest}")
    annotations = tab.page.get_by_role("region", name="Annotations")
    assert XSS in await annotations.inner_text()
    assert XSS in await tab.page.get_by_role("region", name="Labels").inner_text()
    assert await tab.page.locator("main script").count() == 0
    await tab.shot("artifact-annotations")
    assert tab.dialogs == []


# -- over plain HTTP -------------------------------------------------------------------


async def test_a_post_without_the_csrf_token_is_refused(creg: Reg, visitor: Visitor) -> None:
    resp = await visitor.sign_in("alice", "alice-pw")
    assert resp.status == 303
    page = await visitor.page("/r/team/app/-/tags/v2/delete")
    for form in ({}, {"csrf": "forged"}):
        resp = await visitor.post("/r/team/app/-/tags/v2/delete", form)
        assert resp.status == 403, await resp.text()
    assert await creg.registry.index.manifests.by_tag("team/app", "v2") is not None
    resp = await visitor.post("/r/team/app/-/tags/v2/delete", {"csrf": csrf_of(page)})
    assert resp.status == 303
    assert await creg.registry.index.manifests.by_tag("team/app", "v2") is None


async def test_sign_in_without_the_csrf_token_is_refused(visitor: Visitor) -> None:
    resp = await visitor.post("/sign-in", {"username": "alice", "password": "alice-pw"})
    assert resp.status == 403
    assert "aioreg_session" not in resp.cookies


async def test_session_cookie_flags_and_sign_out(creg: Reg, visitor: Visitor) -> None:
    resp = await visitor.sign_in("alice", "alice-pw")
    cookie = resp.cookies["aioreg_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
    assert "Signed in as" in await visitor.page("/")
    old = cookie.value
    resp = await visitor.post("/sign-out", {"csrf": csrf_of(await visitor.page("/"))})
    assert resp.status == 303
    async with aiohttp.ClientSession(creg.server.url) as replay:
        resp = await replay.get("/r/team/app", headers={"Cookie": f"aioreg_session={old}"})
        assert resp.status == 404  # the signed-out session is gone, not just its cookie
    async with aiohttp.ClientSession(
        creg.server.url, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as tls:
        resp = await tls.get("/sign-in", headers={"X-Forwarded-Proto": "https"})
        assert resp.cookies["aioreg_session"]["secure"]


async def test_wrong_password_and_changed_password(creg: Reg, visitor: Visitor) -> None:
    resp = await visitor.sign_in("alice", "nope")
    assert resp.status == 401
    assert "invalid username, password or token" in await resp.text()
    resp = await visitor.sign_in("alice", "alice-pw")
    assert resp.status == 303
    await visitor.page("/r/team/app")
    await Accounts(creg.registry.index).set_password("alice", "new-pw")
    await visitor.page("/r/team/app", 404)  # the session ended with the old password


async def test_pages_of_tags_and_repositories_sort_and_filter(creg: Reg, visitor: Visitor) -> None:
    await visitor.sign_in("admin", ADMIN_PASSWORD)
    digest = await push(creg, "team/many", "t000", "m")
    manifest = await creg.registry.index.manifests.by_digest("team/many", digest)
    assert manifest is not None
    for i in range(1, 120):
        resp = await creg.client.put(
            f"/v2/team/many/manifests/t{i:03d}",
            data=manifest.body,
            headers={**ADMIN, "Content-Type": OCI_MANIFEST},
        )
        assert resp.status == 201
    tag_rows = re.compile(r'<th scope="row"><a href="/r/team/many/-/artifacts/[^"]+">(t\d+)</a>')
    first = tag_rows.findall(await visitor.page("/r/team/many"))
    assert first == [f"t{i:03d}" for i in range(50)]
    last = tag_rows.findall(await visitor.page("/r/team/many?page=3"))
    assert last == [f"t{i:03d}" for i in range(100, 120)]
    desc = tag_rows.findall(await visitor.page("/r/team/many?sort=name&order=desc"))
    assert desc[:2] == ["t119", "t118"]
    assert tag_rows.findall(await visitor.page("/r/team/many?q=t11")) == [
        f"t{i:03d}" for i in range(110, 120)
    ]
    await visitor.page("/r/team/many?sort=bogus", 400)

    for i in range(52):
        resp = await creg.client.post(
            f"/api/v1/repositories/team/r{i:02d}/-/copy",
            json={"source": "team/many", "reference": "t000", "tag": "v1"},
            headers=ADMIN,
        )
        assert resp.status == 201, await resp.text()
    repo_rows = re.compile(r'<th scope="row"><a href="/r/(team/[^"]+)">')
    names = repo_rows.findall(await visitor.page("/namespaces/team"))
    assert len(names) == 50 and names[:2] == ["team/app", "team/many"]
    assert repo_rows.findall(await visitor.page("/namespaces/team?page=2")) == [
        "team/r48",
        "team/r49",
        "team/r50",
        "team/r51",
    ]
    by_tags = repo_rows.findall(await visitor.page("/namespaces/team?sort=tags&order=desc"))
    assert by_tags[0] == "team/many"
    assert repo_rows.findall(await visitor.page("/namespaces/team?q=r5")) == [
        "team/r50",
        "team/r51",
    ]


async def test_admin_runs_gc_previews_retention_and_creates_a_token_shown_once(
    creg: Reg, visitor: Visitor
) -> None:
    await visitor.sign_in("alice", "alice-pw")
    await visitor.page("/admin", 403)
    resp = await visitor.post("/admin/gc", {"csrf": csrf_of(await visitor.page("/tokens"))})
    assert resp.status == 403
    tokens = await visitor.page("/tokens")
    resp = await visitor.post(
        "/tokens",
        {
            "csrf": csrf_of(tokens),
            "name": "ci",
            "namespace": "team",
            "actions": "pull",
            "days": "7",
        },
    )
    assert resp.status == 303 and resp.headers["Location"] == "/tokens"
    value = re.search(r'<code id="token-value">([^<]+)</code>', await visitor.page("/tokens"))
    assert value
    assert value.group(1) not in await visitor.page("/tokens")  # shown once
    resp = await creg.client.get("/v2/team/app/tags/list", headers=basic("x", value.group(1)))
    assert resp.status == 200

    admin = Visitor(creg)
    try:
        await admin.sign_in("admin", ADMIN_PASSWORD)
        page = await admin.page("/admin")
        resp = await admin.post("/admin/gc", {"csrf": csrf_of(page), "dry_run": "on"})
        assert resp.status == 200
        assert "Dry run: would remove" in await resp.text()
        resp = await admin.post("/admin/retention-preview", {"csrf": csrf_of(page)})
        assert "would remove nothing" in await resp.text()
        assert "Physical storage by namespace" in await admin.page("/")
    finally:
        await admin.session.close()


async def test_an_index_shows_its_platforms_and_referrers(creg: Reg, visitor: Visitor) -> None:
    children = []
    for arch in ("amd64", "arm64"):
        digest = await push(creg, "pub/multi", f"only-{arch}", arch)
        manifest = await creg.registry.index.manifests.by_digest("pub/multi", digest)
        assert manifest is not None
        children.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(manifest.body),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    resp = await creg.client.put(
        "/v2/pub/multi/manifests/multi",
        data=index,
        headers={**ADMIN, "Content-Type": OCI_INDEX},
    )
    assert resp.status == 201, await resp.text()
    index_digest = resp.headers["Docker-Content-Digest"]
    resp = await creg.client.post(
        f"/v2/pub/multi/blobs/uploads/?digest={digest_of(EMPTY_JSON)}",
        data=EMPTY_JSON,
        headers=ADMIN,
    )
    assert resp.status == 201
    signature = artifact_manifest(
        "application/vnd.example.signature", (OCI_INDEX, index_digest, len(index))
    )
    resp = await creg.client.put(
        f"/v2/pub/multi/manifests/{digest_of(signature)}",
        data=signature,
        headers={**ADMIN, "Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()

    page = await visitor.page(f"/r/pub/multi/-/artifacts/{index_digest}")  # anonymous: public
    assert "linux/amd64" in page and "linux/arm64" in page
    for child in children:
        assert f'href="/r/pub/multi/-/artifacts/{child["digest"]}"' in page
    assert "application/vnd.example.signature" in page
    assert f'href="/r/pub/multi/-/artifacts/{digest_of(signature)}"' in page
    repository = await visitor.page("/r/pub/multi")
    assert "linux/amd64, linux/arm64" in repository
    signed = await visitor.page(f"/r/pub/multi/-/artifacts/{digest_of(signature)}")
    assert f'href="/r/pub/multi/-/artifacts/{index_digest}"' in signed  # its subject
    assert "Delete this artifact" not in page  # anonymous may not delete


async def test_delete_an_artifact_and_a_repository_through_their_confirmations(
    creg: Reg, visitor: Visitor
) -> None:
    await visitor.sign_in("alice", "alice-pw")
    v1 = await creg.registry.index.manifests.by_tag("team/app", "v1")
    assert v1 is not None
    confirm = await visitor.page(f"/r/team/app/-/artifacts/{v1.digest}/delete")
    assert f"team/app@{v1.digest}" in confirm and "<strong>v1</strong>" in confirm
    resp = await visitor.post(
        f"/r/team/app/-/artifacts/{v1.digest}/delete", {"csrf": csrf_of(confirm)}
    )
    assert resp.status == 303 and resp.headers["Location"] == "/r/team/app"
    assert await creg.registry.index.manifests.by_digest("team/app", v1.digest) is None

    confirm = await visitor.page("/r/team/app/-/delete")
    assert "The repository <strong>team/app</strong> will be removed with all its 1 tag" in confirm
    resp = await visitor.post("/r/team/app/-/delete", {"csrf": csrf_of(confirm)})
    assert resp.status == 303 and resp.headers["Location"] == "/namespaces/team"
    await visitor.page("/r/team/app", 404)
    activity = await visitor.page("/activity?repository=team/app&action=delete&user=alice")
    assert activity.count("badge-delete") == 2  # the artifact, then the repository

    await visitor.page("/r/pub/web/-/delete", 200)  # alice owns pub
    bob = Visitor(creg)
    try:
        await bob.sign_in("bob", "bob-pw")
        page = await bob.page("/r/pub/web")  # public: bob may look, not delete
        assert "/r/pub/web/-/delete" not in page
        await bob.page("/r/pub/web/-/delete", 403)
    finally:
        await bob.session.close()


async def test_without_access_control_everyone_manages_but_forms_still_need_csrf(
    reg: Reg,
) -> None:
    await reg.push_image("team/app", "v1")
    visitor = Visitor(reg)
    try:
        overview = await visitor.page("/")
        assert "Physical storage by namespace" in overview and "Sign in" not in overview
        confirm = await visitor.page("/r/team/app/-/tags/v1/delete")
        resp = await visitor.post("/r/team/app/-/tags/v1/delete", {})
        assert resp.status == 403
        resp = await visitor.post("/r/team/app/-/tags/v1/delete", {"csrf": csrf_of(confirm)})
        assert resp.status == 303
        assert await reg.registry.index.manifests.by_tag("team/app", "v1") is None
        assert "Access control is off" in await visitor.page("/tokens")
    finally:
        await visitor.session.close()


@needs_chromium
async def test_administration_in_the_browser(creg: Reg, browser: Any) -> None:
    tab = await open_tab(browser, creg, "admin")
    page = tab.page
    await tab.sign_in("admin", ADMIN_PASSWORD)
    await page.get_by_text("Physical storage by namespace").wait_for()
    assert await page.get_by_role("link", name="team/app").count() >= 1  # in the chart
    await tab.shot("overview")

    await page.get_by_role("link", name="Administration").click()
    await page.get_by_label("Dry run (report what would go)").check()
    await page.get_by_role("button", name="Run GC").click()  # confirmed in a dialog
    await page.get_by_text("Dry run: would remove").wait_for()
    assert tab.dialogs == ["Run garbage collection now?"]
    await page.get_by_role("button", name="Preview retention").click()
    await page.get_by_text("The retention policies would remove nothing.").wait_for()
    await tab.shot("administration")

    await page.get_by_role("link", name="Tokens", exact=True).click()
    await page.get_by_label("Name", exact=True).fill("laptop")
    await page.get_by_role("button", name="Create token").click()
    value = await page.locator("#token-value").inner_text()
    await tab.shot("tokens")
    resp = await creg.client.get("/v2/team/app/tags/list", headers=basic("admin", value))
    assert resp.status == 200
    await page.reload()
    assert await page.locator("#token-value").count() == 0  # shown once
    assert await page.get_by_role("row").filter(has_text="laptop").count() == 1


async def test_proxies_and_quotas_are_shown_and_proxy_namespaces_refuse_deletes(
    make_registry: AppFactory,
) -> None:
    reg = await make_registry(proxy=[{"namespace": "px", "upstream": "http://127.0.0.1:9"}])
    await Accounts(reg.registry.index).create_namespace("team", None)
    await reg.push_image("team/app", "v1")
    resp = await reg.client.put("/api/v1/namespaces/team/quota", json={"quota_bytes": 1 << 20})
    assert resp.status == 200, await resp.text()
    visitor = Visitor(reg)
    try:
        overview = await visitor.page("/")
        assert '<meter min="0" max="1048576"' in overview
        admin = await visitor.page("/admin")
        assert '<a href="/namespaces/px">px</a></td><td>http://127.0.0.1:9' in admin
        await visitor.page("/r/px/library/x/-/delete", 405)
        resp = await visitor.post("/r/px/library/x/-/delete", {"csrf": csrf_of(admin)})
        assert resp.status == 405
    finally:
        await visitor.session.close()


# -- pull statistics, the activity feed ----------------------------------------------------


async def pull(reg: Reg, repo: str, reference: str, times: int) -> None:
    for _ in range(times):
        resp = await reg.client.get(
            f"/v2/{repo}/manifests/{reference}", headers={**ADMIN, "Accept": OCI_MANIFEST}
        )
        assert resp.status == 200
        await resp.read()


def today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


@needs_chromium
async def test_pull_counts_and_30_day_charts_on_the_repository_page_and_overview(
    creg: Reg, browser: Any
) -> None:
    v1 = await creg.registry.index.manifests.by_tag("team/app", "v1")
    assert v1 is not None
    await pull(creg, "team/app", "v1", 3)
    await pull(creg, "team/app", v1.digest, 2)  # by digest: the artifact's count, not the tag's
    tab = await open_tab(browser, creg, "alice")
    page = tab.page
    await tab.sign_in("alice", "alice-pw")
    await tab.goto("/r/team/app")
    tags = page.get_by_role("table", name="Tags of team/app")
    header = [c.strip() for c in await tags.locator("thead th").all_inner_texts()]
    pulls_at = header.index("Pulls")
    cells = tags.get_by_role("row").filter(has_text="v1").locator("th, td")
    assert (await cells.all_inner_texts())[pulls_at] == "3"
    assert (
        await tags.get_by_role("row").filter(has_text="v2").locator("th, td").all_inner_texts()
    )[pulls_at] == "0"
    assert await tags.get_by_role("row").filter(has_text="v1").get_by_text("never").count() == 0
    artifacts = page.get_by_role("table", name="Artifacts of team/app, newest first")
    row = artifacts.get_by_role("row").filter(has=page.locator(f'a[href$="{v1.digest}"]'))
    assert (await row.locator("td").all_inner_texts())[-1] == "5"
    chart = page.get_by_role("img", name=re.compile("^Pulls over the last 30 days"))
    label = await chart.get_attribute("aria-label")
    assert label == (
        f"Pulls over the last 30 days: 5 in all; {today()}: 5; no pulls on the other days."
    )
    assert await chart.locator("rect").count() == 30
    await tab.shot("repository-pulls")
    await pull(creg, "pub/web", "latest", 1)
    await tab.goto("/")
    assert await page.get_by_role("img", name=re.compile("^Pulls over the last")).count() == 0
    admin = await open_tab(browser, creg, "admin")
    await admin.sign_in("admin", ADMIN_PASSWORD)  # the registry's pulls are for admins
    chart = admin.page.get_by_role("img", name=re.compile("^Pulls over the last"))
    assert await chart.get_attribute("aria-label") == (
        f"Pulls over the last 30 days: 6 in all; {today()}: 6; no pulls on the other days."
    )
    await admin.shot("overview-pulls")


async def test_activity_pages_by_cursor_and_filters_by_time_range(
    creg: Reg, visitor: Visitor
) -> None:
    v1 = await creg.registry.index.manifests.by_tag("team/app", "v1")
    assert v1 is not None
    for i in range(105):
        resp = await creg.client.put(
            f"/v2/team/app/manifests/t{i:03d}",
            data=v1.body,
            headers={**ADMIN, "Content-Type": OCI_MANIFEST},
        )
        assert resp.status == 201
    await visitor.sign_in("admin", ADMIN_PASSWORD)
    tags = re.compile(
        r'<span class="badge badge-push">push</span></td>\s*<td><a href="/r/team/app">'
        r"team/app</a></td>\s*<td><code>(\w+)</code>"
    )
    first = await visitor.page("/activity?repository=team/app")
    assert tags.findall(first) == [f"t{i:03d}" for i in range(104, 4, -1)]
    older = re.search(r'<a rel="next" href="([^"]+)">Older</a>', first)
    assert older, first[-2000:]
    rest = await visitor.page(older.group(1).replace("&amp;", "&"))
    assert tags.findall(rest) == ["t004", "t003", "t002", "t001", "t000", "v2", "v1"]
    assert 'rel="next"' not in rest
    rows = re.compile(r'<span class="badge badge-(\w+)">')
    day = datetime.date.fromisoformat(today())
    yesterday = (day - datetime.timedelta(days=1)).isoformat()
    assert rows.findall(await visitor.page(f"/activity?action=push&until={yesterday}")) == []
    assert rows.findall(await visitor.page(f"/activity?since={today()}&until={today()}"))
    pushes = await visitor.page(f"/activity?repository=pub/web&since={today()}&until={today()}")
    assert rows.findall(pushes) == ["push"]
    await visitor.page("/activity?since=yesterday", 400)

    bob = Visitor(creg)  # no role in team: sees pub's events only, not team's
    try:
        await bob.sign_in("bob", "bob-pw")
        page = await bob.page("/activity?action=push")
        assert "pub/web" in page and "team/app" not in page
        await bob.page("/activity?repository=team/app", 404)
    finally:
        await bob.session.close()


# -- administration: webhooks, proxies ------------------------------------------------------


@needs_chromium
async def test_webhook_added_in_the_browser_delivers_and_is_redelivered_from_its_page(
    make_registry: AppFactory, browser: Any
) -> None:
    receiver = Receiver(status=400)  # refused: dead-lettered after its one attempt
    await receiver.start()
    try:
        reg = await console_registry(make_registry, webhooks={**FAST, "max_attempts": 3})
        tab = await open_tab(browser, reg, "webhooks")
        page = tab.page
        await tab.sign_in("admin", ADMIN_PASSWORD)
        await page.get_by_role("link", name="Administration").click()
        await page.get_by_role("link", name="Webhook endpoints and their deliveries").click()
        await page.get_by_text("No webhook endpoints yet.").wait_for()
        await tab.shot("webhooks")
        await page.get_by_label("Receiver URL").fill(receiver.url)
        await page.get_by_label("push", exact=True).check()
        await page.get_by_role("button", name="Add endpoint").click()
        secret = await page.locator("#secret-value").inner_text()
        assert len(secret) >= 32
        await tab.shot("webhook-added")
        await page.reload()
        assert await page.locator("#secret-value").count() == 0  # shown once
        assert secret not in await page.content()
        [endpoint] = await reg.registry.index.webhooks.endpoints()
        assert (endpoint.url, endpoint.events, endpoint.secret) == (receiver.url, ["push"], secret)

        await push(reg, "team/app", "v9", "a9")
        deliveries = page.get_by_role("table", name=re.compile("deliveries"))
        dead = deliveries.get_by_role("row").filter(has_text="dead")
        deadline = time.monotonic() + 20
        while await dead.count() == 0:
            assert time.monotonic() < deadline, await page.content()
            await asyncio.sleep(0.1)
            await page.reload()
        assert "HTTP 400" in await dead.inner_text()
        assert "team/app:v9" in await dead.inner_text()
        await tab.shot("webhook-dead")

        receiver.status = 204
        await dead.get_by_role("button", name=re.compile("^Redeliver")).click()
        await receiver.wait_for(lambda: len(receiver.accepted) == 1)
        assert verify(*receiver.accepted[0], secret=secret)
        delivered = deliveries.get_by_role("row").filter(has_text="delivered")
        deadline = time.monotonic() + 20
        while await delivered.count() == 0:
            assert time.monotonic() < deadline, await page.content()
            await asyncio.sleep(0.1)
            await page.reload()
        attempts = await delivered.locator("ol.attempts li").all_inner_texts()
        assert [re.search(r"HTTP (\d+)", a).group(1) for a in attempts] == ["400", "204"]  # type: ignore[union-attr]
        await tab.shot("webhook-redelivered")

        await page.get_by_role("button", name="Pause").click()
        await page.get_by_role("button", name="Enable").wait_for()
        assert not (await reg.registry.index.webhooks.endpoints())[0].enabled
        await page.get_by_role("link", name="Remove this endpoint").click()
        await page.get_by_text(
            f"The endpoint {receiver.url} (registry-wide) will be removed"
        ).wait_for()
        await page.get_by_role("button", name="Remove endpoint").click()
        await page.get_by_text("No webhook endpoints yet.").wait_for()
        assert await reg.registry.index.webhooks.endpoints() == []
    finally:
        await receiver.stop()


async def test_webhooks_admin_follows_the_api_rules_and_needs_csrf(
    creg: Reg, visitor: Visitor
) -> None:
    resp = await creg.client.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/wide"}, headers=ADMIN
    )
    assert resp.status == 201
    wide = (await resp.json())["id"]
    await visitor.page("/admin/webhooks", 403)  # anonymous
    await visitor.sign_in("alice", "alice-pw")  # owns team: its webhooks, not the registry's
    await visitor.page("/admin/webhooks", 403)
    await visitor.page(f"/admin/webhooks/{wide}", 403)
    page = await visitor.page("/admin/webhooks?namespace=team")
    assert "Webhooks of team" in page and "/wide" not in page
    assert 'href="/admin/webhooks?namespace=team"' in await visitor.page("/namespaces/team")
    form = {"url": "http://127.0.0.1:9/hook", "namespace": "team", "enabled": "on"}
    for forged in ({}, {"csrf": "forged"}):
        resp = await visitor.post("/admin/webhooks", {**form, **forged})
        assert resp.status == 403
    assert [e.id for e in await creg.registry.index.webhooks.endpoints()] == [wide]
    form["csrf"] = csrf_of(page)
    resp = await visitor.post("/admin/webhooks", {**form, "namespace": ""})  # registry-wide
    assert resp.status == 403
    resp = await visitor.post("/admin/webhooks", {**form, "namespace": "other"})
    assert resp.status == 404
    resp = await visitor.post("/admin/webhooks", form)
    assert resp.status == 303
    mine = next(e for e in await creg.registry.index.webhooks.endpoints() if e.id != wide)
    assert mine.namespace == "team" and resp.headers["Location"] == f"/admin/webhooks/{mine.id}"
    assert mine.secret in await visitor.page(f"/admin/webhooks/{mine.id}")
    for path in (
        f"/admin/webhooks/{mine.id}/enabled",
        f"/admin/webhooks/{mine.id}/remove",
        "/admin/webhooks/deliveries/1/redeliver",
    ):
        resp = await visitor.post(path, {})
        assert resp.status == 403, path
    assert all(e.enabled for e in await creg.registry.index.webhooks.endpoints())

    for user, status in (("carol", 403), ("bob", 404)):  # a reader of team; no role in it
        other = Visitor(creg)
        try:
            await other.sign_in(user, f"{user}-pw")
            for path in (
                "/admin/webhooks?namespace=team",
                f"/admin/webhooks/{mine.id}",
                f"/admin/webhooks/{mine.id}/remove",
            ):
                await other.page(path, status)
            token = csrf_of(await other.page("/tokens"))
            resp = await other.post(f"/admin/webhooks/{mine.id}/remove", {"csrf": token})
            assert resp.status == status
        finally:
            await other.session.close()
    assert len(await creg.registry.index.webhooks.endpoints()) == 2
    confirm = await visitor.page(f"/admin/webhooks/{mine.id}/remove")
    resp = await visitor.post(f"/admin/webhooks/{mine.id}/remove", {"csrf": csrf_of(confirm)})
    assert resp.status == 303 and resp.headers["Location"] == "/admin/webhooks?namespace=team"
    assert [e.id for e in await creg.registry.index.webhooks.endpoints()] == [wide]


async def test_proxies_show_their_cache_use_against_the_cap(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    manifest = await push_image(upstream, "a", "a")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream, max_bytes=1_000_000)])
    visitor = Visitor(proxy)
    try:
        assert '<meter min="0" max="1000000" value="0"' in await visitor.page("/admin")
        await pull_image(proxy, "a", manifest)
        used = await proxy.registry.index.proxies.cached_bytes("hub")
        assert used > 100_000
        admin = await visitor.page("/admin")
        assert f'<meter min="0" max="1000000" value="{used}"' in admin
        assert f"{100 * used / 1_000_000:.1f}%" in admin
    finally:
        await visitor.session.close()


# -- users, namespace members and settings, one's own password ------------------------

IMG_XSS = "<img src=x onerror=alert(1)>"


async def push_as(reg: Reg, user: str, password: str, tag: str) -> int:
    """Tag team/app's v2 manifest as ``tag`` with the user's credentials; the status."""
    resp = await reg.client.get(
        "/v2/team/app/manifests/v2", headers={**ADMIN, "Accept": OCI_MANIFEST}
    )
    assert resp.status == 200
    resp = await reg.client.put(
        f"/v2/team/app/manifests/{tag}",
        data=await resp.read(),
        headers={**basic(user, password), "Content-Type": OCI_MANIFEST},
    )
    return resp.status


@needs_chromium
async def test_admin_adds_a_user_gives_roles_resets_and_deletes_them_in_the_browser(
    creg: Reg, browser: Any
) -> None:
    tab = await open_tab(browser, creg, "admin")
    page = tab.page
    await tab.sign_in("admin", ADMIN_PASSWORD)
    await page.get_by_role("link", name="Administration").click()
    await page.get_by_role("link", name="Users", exact=True).click()
    await page.wait_for_url(tab.base + "/admin/users")

    # A name with markup is refused by validation and shown as text, never run.
    await page.get_by_label("User name").fill(IMG_XSS)
    await page.get_by_label("Password", exact=True).fill("pw")
    await page.get_by_label("Password again", exact=True).fill("pw")
    await page.get_by_role("button", name="Add user").click()
    await page.get_by_text(f"user name '{IMG_XSS}' must be lower-case").wait_for()
    assert tab.dialogs == [] and await page.locator("main img").count() == 0

    await tab.goto("/admin/users")
    await page.get_by_label("User name").fill("dave")
    await page.get_by_label("Password", exact=True).fill("dave-pw")
    await page.get_by_label("Password again", exact=True).fill("dave-pw")
    await page.get_by_role("button", name="Add user").click()
    await page.wait_for_url(tab.base + "/admin/users")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="dave"))
    assert "user" in await row.inner_text()
    alice = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="alice"))
    assert "team: admin" in await alice.inner_text()
    await tab.shot("users")

    # dave signs in and sees only what his (no) role allows: pub, not team.
    dave = await open_tab(browser, creg, "dave")
    await dave.sign_in("dave", "dave-pw")
    assert (await dave.goto("/r/team/app")).status == 404
    assert (await dave.goto("/admin/users")).status == 403
    assert (await dave.goto("/r/pub/web")).status == 200
    assert await push_as(creg, "dave", "dave-pw", "by-dave") in (401, 403)

    # The admin makes him a writer of team: he may push, still not delete.
    await tab.goto("/namespaces/team")
    await page.get_by_label("User name").fill("dave")
    await page.get_by_label("Role", exact=True).select_option("write")
    await page.get_by_role("button", name="Add member").click()
    await page.wait_for_url(tab.base + "/namespaces/team")
    await page.get_by_role("rowheader", name="dave").wait_for()
    await tab.shot("members")
    assert (await dave.goto("/r/team/app")).status == 200
    assert await dave.page.get_by_role("link", name="Delete tag v1").count() == 0
    assert await push_as(creg, "dave", "dave-pw", "by-dave") == 201
    assert (await dave.goto("/r/team/app/-/tags/v1/delete")).status == 403

    # Read only, then out.
    await page.get_by_label("Role of dave").select_option("read")
    await page.get_by_role("button", name="Change role of dave").click()
    await page.wait_for_url(tab.base + "/namespaces/team")
    assert await creg.registry.index.accounts.members("team") == [
        ("alice", "admin"),
        ("carol", "read"),
        ("dave", "read"),
    ]
    assert await push_as(creg, "dave", "dave-pw", "by-dave-2") in (401, 403)
    await page.get_by_role("button", name="Remove dave").click()  # confirmed in a dialog
    await page.wait_for_url(tab.base + "/namespaces/team")
    assert tab.dialogs == ["Remove dave from team?"]
    assert (await dave.goto("/r/team/app")).status == 404

    # A reset password ends dave's session.
    await tab.goto("/admin/users")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="dave"))
    await row.get_by_text("Reset password").click()
    await row.get_by_label("New password for dave", exact=True).fill("dave-new")
    await row.get_by_label("New password for dave again").fill("dave-new")
    await row.get_by_role("button", name="Set password of dave").click()
    await page.wait_for_url(tab.base + "/admin/users")
    await dave.goto("/")
    assert await dave.page.get_by_text("Signed in as").count() == 0
    await dave.sign_in("dave", "dave-new")

    # Deleting him goes through a confirmation naming what goes with him.
    await Accounts(creg.registry.index).create_token(
        "dave", "ci", [TokenScope("*", ["pull"])], None
    )
    await tab.goto("/admin/users")
    await page.get_by_role("link", name="Delete dave").click()
    await page.get_by_text("their access tokens (1 active)").wait_for()
    assert await page.get_by_text("Their personal namespace dave is not deleted").count() == 1
    await tab.shot("user-remove")
    await page.get_by_role("button", name="Delete user dave").click()
    await page.wait_for_url(tab.base + "/admin/users")
    assert await page.get_by_role("rowheader", name="dave").count() == 0
    assert await creg.registry.index.accounts.user("dave") is None
    await dave.goto("/")
    assert await dave.page.get_by_text("Signed in as").count() == 0


async def test_user_and_member_administration_follows_the_rules_and_needs_csrf(
    creg: Reg, visitor: Visitor
) -> None:
    accounts = creg.registry.index.accounts
    await visitor.page("/admin/users", 403)  # anonymous: the admin pages' refusal
    for path in ("/admin/users", "/admin/users/bob/password", "/admin/users/bob/remove"):
        resp = await visitor.post(path, {"csrf": csrf_of(await visitor.page("/sign-in"))})
        assert resp.status == 403, path
    resp = await visitor.post("/namespaces/team/members", {"user": "bob", "role": "read"})
    assert resp.status == 403

    await visitor.sign_in("alice", "alice-pw")  # owns team; not a registry admin
    token = csrf_of(await visitor.page("/account"))
    await visitor.page("/admin/users", 403)
    await visitor.page("/admin/users/bob/remove", 403)
    for path, form in (
        ("/admin/users", {"name": "eve", "password": "x", "password_again": "x"}),
        ("/admin/users/bob/password", {"password": "x", "password_again": "x"}),
        ("/admin/users/bob/remove", {}),
        ("/namespaces/team/quota", {"quota": "1 GiB"}),  # as the API: registry admins only
    ):
        resp = await visitor.post(path, {**form, "csrf": token})
        assert resp.status == 403, path
    assert await accounts.user("eve") is None and await accounts.user("bob") is not None
    assert await creg.registry.index.usage.quota("team") is None

    # alice administers team: members and settings, each POST with its token only.
    page = await visitor.page("/namespaces/team")
    assert "Members of team" in page and "Storage quota" not in page
    posts = (
        ("/namespaces/team/members", {"user": "bob", "role": "write"}),
        ("/namespaces/team/settings", {"visibility": "public", "immutable_tags": "v*, rel-*"}),
    )
    for path, form in posts:
        for forged in ({}, {"csrf": "forged"}):
            resp = await visitor.post(path, {**form, **forged})
            assert resp.status == 403, path
    assert await accounts.role("team", (await accounts.user("bob")).id) is None  # type: ignore[union-attr]
    for path, form in posts:
        resp = await visitor.post(path, {**form, "csrf": token})
        assert resp.status == 303, (path, await resp.text())
    assert ("bob", "write") in await accounts.members("team")
    team = await accounts.namespace("team")
    assert team is not None and team.visibility == "public"
    assert team.rules["immutable_tags"] == ["v*", "rel-*"]
    resp = await visitor.post(
        "/namespaces/team/members", {"user": IMG_XSS, "role": "read", "csrf": token}
    )
    assert resp.status == 403
    text = await resp.text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "<img src=x" not in text

    # carol reads team: refused (403); bob may pull the public pub: refused (403); bob
    # has no role in the private priv: it is not known to him (404).
    await Accounts(creg.registry.index).create_namespace("priv", "alice")
    await push(creg, "priv/x", "v1", "p1")
    for user, namespace, status in (
        ("carol", "team", 403),
        ("bob", "pub", 403),
        ("bob", "priv", 404),
    ):
        other = Visitor(creg)
        try:
            await other.sign_in(user, f"{user}-pw")
            page = await other.page(f"/namespaces/{namespace}", 200 if status == 403 else 404)
            assert "Members of" not in page
            token = csrf_of(await other.page("/account"))
            for path, form in posts:
                resp = await other.post(
                    path.replace("team", namespace), {**form, "user": user, "csrf": token}
                )
                assert resp.status == status, (user, path)
        finally:
            await other.session.close()
    assert ("carol", "read") in await accounts.members("team")

    # The admin: every POST refused without the token, done with it.
    admin = Visitor(creg)
    bob = Visitor(creg)
    try:
        await admin.sign_in("admin", ADMIN_PASSWORD)
        await bob.sign_in("bob", "bob-pw")
        await bob.page("/tokens")
        listing = await admin.page("/admin/users")
        assert "Users of this registry" in listing
        admin_token = csrf_of(listing)
        posts = (
            ("/admin/users", {"name": "eve", "password": "e", "password_again": "e"}),
            ("/admin/users/bob/password", {"password": "b2", "password_again": "b2"}),
            ("/namespaces/team/quota", {"quota": "2 MiB"}),
            ("/admin/users/eve/remove", {}),
        )
        for path, form in posts:
            for forged in ({}, {"csrf": "forged"}):
                resp = await admin.post(path, {**form, **forged})
                assert resp.status == 403, path
        assert await accounts.user("eve") is None
        resp = await admin.post(
            "/admin/users",
            {"name": "eve", "password": "e", "password_again": "x", "csrf": admin_token},
        )
        assert resp.status == 400 and await accounts.user("eve") is None
        resp = await admin.post(
            "/admin/users",
            {"name": IMG_XSS, "password": "e", "password_again": "e", "csrf": admin_token},
        )
        assert resp.status == 403
        text = await resp.text()
        assert "&lt;img src=x onerror=alert(1)&gt;" in text and "<img src=x" not in text
        for path, form in posts:
            resp = await admin.post(path, {**form, "csrf": admin_token})
            assert resp.status == 303, (path, await resp.text())
        assert await accounts.user("eve") is None  # added, then removed
        assert await creg.registry.index.usage.quota("team") == 2 << 20
        assert "Storage quota" in await admin.page("/namespaces/team")
        await bob.page("/tokens", 401)  # the reset password ended bob's session
        assert (await bob.sign_in("bob", "b2")).status == 303
        resp = await admin.post("/admin/users/admin/remove", {"csrf": admin_token})
        assert resp.status == 403  # not the account one is signed in with
        await admin.page("/admin/users/nobody/remove", 404)
    finally:
        await admin.session.close()
        await bob.session.close()


async def test_changing_ones_own_password_ends_the_other_sessions(
    creg: Reg, visitor: Visitor
) -> None:
    await visitor.page("/account", 401)
    other = Visitor(creg)
    try:
        await visitor.sign_in("alice", "alice-pw")
        await other.sign_in("alice", "alice-pw")
        token = csrf_of(await visitor.page("/account"))
        pat = await Accounts(creg.registry.index).create_token(
            "alice", "t", [TokenScope("*", ["pull", "push", "delete"])], None
        )
        change = {"password": "alice-2", "password_again": "alice-2", "csrf": token}
        for current, status in (("wrong", 403), (pat.value, 403)):
            resp = await visitor.post("/account/password", {**change, "current": current})
            assert resp.status == status, await resp.text()
        resp = await visitor.post(
            "/account/password", {**change, "current": "alice-pw", "password_again": "other"}
        )
        assert resp.status == 400
        unsigned = {"password": "alice-2", "password_again": "alice-2", "current": "alice-pw"}
        resp = await visitor.post("/account/password", unsigned)
        assert resp.status == 403  # without its token
        resp = await visitor.post(
            "/account/password", {**change, "current": "alice-pw", "csrf": token}
        )
        assert resp.status == 303 and resp.headers["Location"] == "/account?changed=1"
        page = await visitor.page("/account?changed=1")
        assert "Signed in as <strong>alice</strong>" in page and "other console sessions" in page
        await visitor.page("/r/team/app")  # this session goes on
        await other.page("/r/team/app", 404)  # the other one ended
        assert (await other.sign_in("alice", "alice-pw")).status == 401
        assert (await other.sign_in("alice", "alice-2")).status == 303
    finally:
        await other.session.close()
