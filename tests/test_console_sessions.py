"""Console sessions live in the index: every worker of ``aioreg serve --workers 2`` knows
them, a restart keeps them, sign-out ends them everywhere, and the index holds only a
hash of each session id."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import aiohttp

from aioreg.auth.accounts import Accounts
from aioreg.auth.service import ANONYMOUS, Identity
from aioreg.console.session import Session, Sessions
from tests.conftest import OCI_MANIFEST, Reg, digest_of, image_manifest
from tests.process import Server, free_port, start
from tests.test_auth import basic

ADMIN_PASSWORD = "admin-pw-sessions"
ENV = {
    "AIOREG_SERVER_ACCESS_LOG": "false",
    "AIOREG_AUTH": "1",
    "AIOREG_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
}
WORKER = "X-Aioreg-Worker"
COOKIE = "aioreg_session"


def serve(servers: list[Server], data: Path, port: int, workers: int = 2) -> Server:
    args = ["--listen", f"127.0.0.1:{port}", "--data", str(data)]
    return start(servers, [*args, "--workers", str(workers)] if workers > 1 else args, ENV)


class Browser:
    """A cookie-keeping client that opens a new connection per request, so the kernel
    picks the worker each time; remembers which workers answered."""

    def __init__(self, base: str) -> None:
        self.http = aiohttp.ClientSession(
            base,
            connector=aiohttp.TCPConnector(force_close=True),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )
        self.workers: set[str] = set()

    async def get(self, path: str, status: int = 200) -> str:
        resp = await self.http.get(path, allow_redirects=False)
        text = await resp.text()
        self.workers.add(resp.headers.get(WORKER, "-"))
        assert resp.status == status, (path, resp.status, resp.headers.get(WORKER), text[:300])
        return text

    async def post(self, path: str, form: dict[str, str], status: int = 303) -> str:
        resp = await self.http.post(path, data=form, allow_redirects=False)
        text = await resp.text()
        self.workers.add(resp.headers.get(WORKER, "-"))
        assert resp.status == status, (path, resp.status, resp.headers.get(WORKER), text[:300])
        return resp.headers.get("Location", "")

    async def sign_in(self) -> None:
        form = {"csrf": csrf_of(await self.get("/sign-in")), "username": "admin"}
        assert await self.post("/sign-in", {**form, "password": ADMIN_PASSWORD}) == "/"

    def session_id(self) -> str:
        cookies = [c for c in self.http.cookie_jar if c.key == COOKIE]
        assert len(cookies) == 1
        return cookies[0].value

    async def close(self) -> None:
        await self.http.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def push_tags(base: str, tags: list[str]) -> None:
    auth = basic("admin", ADMIN_PASSWORD)
    async with aiohttp.ClientSession(base, headers=auth) as http:
        config = b"{}"
        for tag in tags:
            layer = os.urandom(64)
            for blob in (config, layer):
                url = f"/v2/team/app/blobs/uploads/?digest={digest_of(blob)}"
                resp = await http.post(url, data=blob)
                assert resp.status == 201, await resp.text()
            resp = await http.put(
                f"/v2/team/app/manifests/{tag}",
                data=image_manifest(config, [layer]),
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert resp.status == 201, await resp.text()


async def tag_status(base: str, tag: str) -> int:
    async with aiohttp.ClientSession(base, headers=basic("admin", ADMIN_PASSWORD)) as http:
        resp = await http.head(f"/v2/team/app/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        return resp.status


def index_bytes(data: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in data.iterdir() if p.name.startswith("index.db") and p.is_file()
    )


async def test_a_signed_in_session_and_its_forms_work_on_every_worker(
    servers: list[Server], tmp_path: Path
) -> None:
    port = free_port()
    serve(servers, tmp_path / "d", port)
    base = f"http://127.0.0.1:{port}"
    await push_tags(base, ["v1", "v2"])
    browser = Browser(base)
    try:
        await browser.sign_in()
        for i in range(20):
            page = await browser.get("/tokens" if i % 2 else "/")
            assert "Signed in as <strong>admin</strong>" in page
        # A token created by one worker is shown once by whichever answers the redirect.
        for name in ("ci", "cd"):
            form = {"csrf": csrf_of(await browser.get("/tokens")), "name": name}
            location = await browser.post("/tokens", {**form, "days": "7", "actions": "pull"})
            assert location == "/tokens"
            shown = re.search(r'<code id="token-value">([^<]+)</code>', await browser.get(location))
            assert shown, f"the new token {name} was not shown"
            assert shown.group(1) not in await browser.get("/tokens")  # once
            assert shown.group(1).encode() not in index_bytes(tmp_path / "d")
        # A tag deleted through its confirmation: the form's token works on any worker.
        for tag in ("v1", "v2"):
            confirm = await browser.get(f"/r/team/app/-/tags/{tag}/delete")
            await browser.post(f"/r/team/app/-/tags/{tag}/delete", {"csrf": csrf_of(confirm)})
            assert await tag_status(base, tag) == 404
        assert browser.workers == {"0", "1"}

        session_id = browser.session_id()
        assert session_id.encode() not in index_bytes(tmp_path / "d")
        await browser.post("/sign-out", {"csrf": csrf_of(await browser.get("/"))})
    finally:
        await browser.close()
    # The old cookie is signed out on every worker.
    answered: set[str] = set()
    async with aiohttp.ClientSession(
        base, connector=aiohttp.TCPConnector(force_close=True), cookies={COOKIE: session_id}
    ) as http:
        for _ in range(20):
            resp = await http.get("/tokens", allow_redirects=False)
            assert resp.status == 401, resp.headers.get(WORKER)
            answered.add(resp.headers[WORKER])
    assert answered == {"0", "1"}


async def test_a_session_survives_a_restart(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = serve(servers, tmp_path / "d", port, workers=1)
    base = f"http://127.0.0.1:{port}"
    browser = Browser(base)
    try:
        await browser.sign_in()
        await browser.get("/tokens")
        assert server.stop() == 0, server.output
        serve(servers, tmp_path / "d", port, workers=1)
        page = await browser.get("/tokens")
        assert "Signed in as <strong>admin</strong>" in page
    finally:
        await browser.close()


async def test_anonymous_visitors_evict_only_anonymous_sessions(reg: Reg) -> None:
    """Bounds kept apart: a flood of anonymous sessions never pushes out a signed-in one;
    beyond the bound of its kind, the least recently seen session goes."""
    index = reg.registry.index
    await Accounts(index).add_user("alice", "alice-pw")
    alice = await index.accounts.user("alice")
    assert alice is not None
    identity = Identity("alice", alice.id, False, "password", generation=alice.generation)
    sessions = Sessions(index, max_sessions=3)
    now = time.time()

    async def saved(who: Identity, age: float) -> Session:
        session = sessions.new(who)
        session.seen = now - age
        await sessions.save(session)
        return session

    signed_in = [await saved(identity, 50 - i) for i in range(3)]
    anonymous = [await saved(ANONYMOUS, 40 - i) for i in range(10)]
    for session in signed_in:
        found = await sessions.get(session.id)
        assert found is not None and found.identity.name == "alice"
    kept = [s for s in anonymous if await sessions.get(s.id) is not None]
    assert kept == anonymous[-3:]
    newest = await saved(identity, 0)
    assert await sessions.get(signed_in[0].id) is None  # the least recently seen went
    assert all([await sessions.get(s.id) for s in (*signed_in[1:], newest)])


async def test_last_seen_is_written_at_most_once_a_minute_and_idle_sessions_expire(
    reg: Reg,
) -> None:
    index = reg.registry.index
    sessions = Sessions(index, idle_seconds=3600)
    now = time.time()
    recent, stale, idle, forgotten = (sessions.new(ANONYMOUS) for _ in range(4))
    for session, age in ((recent, 30), (stale, 120), (idle, 4000), (forgotten, 4000)):
        session.seen = now - age
        await sessions.save(session)
    assert await sessions.get(recent.id) is not None
    row = await index.sessions.get(recent.id_hash)
    assert row is not None and row.seen_at == recent.seen  # no write within the minute
    assert await sessions.get(stale.id) is not None
    row = await index.sessions.get(stale.id_hash)
    assert row is not None and row.seen_at >= now  # written: a minute had passed
    assert await sessions.get(idle.id) is None
    assert await index.sessions.get(idle.id_hash) is None
    assert await sessions.expire() == 1  # the idle one nobody came back to
    assert await index.sessions.get(forgotten.id_hash) is None
    assert await index.sessions.get(recent.id_hash) is not None
