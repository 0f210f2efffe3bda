"""Webhooks against real servers: an aioreg server (in process, or ``aioreg serve`` killed
with SIGKILL) and a real aiohttp receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aioreg.api.server import RegistryServer
from aioreg.auth.accounts import Accounts
from aioreg.cli import main
from aioreg.config import ConfigError, load_config
from tests.conftest import AppFactory, HttpClient, Reg, digest_of, error_codes, image_manifest
from tests.process import Server, free_port, start
from tests.test_auth import ADMIN_PASSWORD, basic
from tests.test_metrics import Samples, scrape, value
from tests.test_proxy import proxy_entry

SECRET = "s3cret-for-the-webhook-tests"
# Retries within a test's patience: 50 ms doubling to at most 200 ms.
FAST = {"backoff_base": 0.05, "backoff_max": 0.2, "poll_interval": 0.2, "timeout": 5.0}


class Receiver:
    """An HTTP receiver that refuses its first ``refuse`` requests (503), then answers
    ``status``; keeps what it accepted."""

    def __init__(self, refuse: int = 0, status: int = 204) -> None:
        self.refuse = refuse
        self.status = status
        self.requests = 0
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self.hold: asyncio.Event | None = None  # set: answer; until then each request hangs
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.requests <= self.refuse:
            return web.Response(status=503, text="not yet")
        if not 200 <= self.status < 300:
            return web.Response(status=self.status, text="refused")
        self.accepted.append((dict(request.headers), body))
        return web.Response(status=self.status)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[dict[str, Any]]:
        """The CloudEvents accepted, in arrival order."""
        return [json.loads(body) for _, body in self.accepted]

    async def wait_for(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"receiver got {self.events()}"
            await asyncio.sleep(0.02)


def verify(headers: dict[str, str], body: bytes, secret: str = SECRET) -> bool:
    """The README's recipe: HMAC-SHA256 over timestamp + "." + body."""
    timestamp = headers["X-Aioreg-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + expected.hexdigest(), headers["X-Aioreg-Signature"])


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r
    await r.stop()


Start = Callable[..., Awaitable[Reg]]


@pytest.fixture
async def start_registry(tmp_path: Path) -> AsyncIterator[Start]:
    """A registry as ``aioreg serve`` builds it, with fast webhook retries."""
    started: list[Reg] = []

    async def start_one(
        gc: dict[str, object] | None = None,
        proxy: list[dict[str, object]] | None = None,
        webhook: list[dict[str, object]] | None = None,
        **webhooks: object,
    ) -> Reg:
        config = load_config(
            None,
            environ={},
            overrides={
                "storage": {"data_dir": str(tmp_path / "data")},
                "server": {"listen": "127.0.0.1:0", "access_log": False},
                "webhooks": {**FAST, **webhooks},
                "gc": gc or {},
                "proxy": proxy or [],
                "webhook": webhook or [],
            },
        )
        server = RegistryServer(config)
        await server.start()
        reg = Reg(HttpClient(server), server)
        started.append(reg)
        return reg

    yield start_one
    for reg in started:
        await reg.client.close()
        await reg.server.stop()


async def api(reg: Reg, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    resp = await reg.client.request(method, "/api/v1" + path, **kwargs)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def add_endpoint(reg: Reg, url: str, **fields: object) -> dict[str, Any]:
    return await api(reg, "POST", "/webhooks", 201, json={"url": url, "secret": SECRET, **fields})


def actions(events: list[dict[str, Any]], repository: str | None = None) -> list[tuple]:
    return [
        (e["type"].removeprefix("io.aioreg."), e["data"].get("tag"))
        for e in events
        if repository is None or e["data"].get("repository") == repository
    ]


async def test_every_event_of_a_sequence_arrives_signed_once_despite_refusals(
    start_registry: Start, receiver: Receiver
) -> None:
    receiver.refuse = 3  # the first three attempts fail: retries must make up for them
    await receiver.start()
    reg = await start_registry()
    endpoint = await add_endpoint(reg, receiver.url)
    assert endpoint["secret"] == SECRET

    digest, manifest = await reg.push_image("team/app", "v1")
    await reg.push_manifest("team/app", "v2", manifest)
    assert (await reg.client.get(f"/v2/team/app/manifests/{digest}")).status == 200
    assert (await reg.client.delete("/v2/team/app/manifests/v2")).status == 202
    assert (await reg.client.delete(f"/v2/team/app/manifests/{digest}")).status == 202
    await api(reg, "DELETE", "/repositories/team/app")

    expected = [
        ("repository_created", None),
        ("push", "v1"),
        ("tag_created", "v1"),
        ("push", "v2"),
        ("tag_created", "v2"),
        ("tag_deleted", "v2"),
        ("tag_deleted", "v1"),
        ("delete", None),
        ("repository_deleted", None),
    ]
    # The pull is batched (it enters the outbox at the next flush), so it may come
    # anywhere after the pushes; everything else arrives in the order it happened.
    await receiver.wait_for(lambda: len(receiver.accepted) == len(expected) + 1)
    got = actions(receiver.events())
    assert [a for a in got if a[0] != "pull"] == expected
    assert got.count(("pull", None)) == 1
    assert got.index(("pull", None)) > got.index(("push", "v2"))
    assert receiver.requests == len(expected) + 1 + 3
    for headers, body in receiver.accepted:
        assert verify(headers, body)
        assert headers["Content-Type"] == "application/cloudevents+json"
        assert headers["X-Aioreg-Event-Id"] == json.loads(body)["id"]
    ids = [e["id"] for e in receiver.events()]
    assert len(set(ids)) == len(ids)
    pushed = receiver.events()[1]
    assert pushed["specversion"] == "1.0"
    assert pushed["data"]["digest"] == digest
    assert pushed["data"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert pushed["subject"] == "team/app:v1"

    # Every attempt is in the delivery history: the refused ones with their status.
    history = await api(reg, "GET", f"/webhooks/{endpoint['id']}/deliveries?limit=1000")
    deliveries = history["deliveries"]
    assert len(deliveries) == len(expected) + 1
    assert all(d["state"] == "delivered" for d in deliveries)
    statuses = [a["status"] for d in reversed(deliveries) for a in d["attempts"]]
    assert statuses[:4] == [503, 503, 503, 204]
    assert sum(len(d["attempts"]) for d in deliveries) == len(expected) + 1 + 3


async def test_the_secret_is_shown_once_and_input_is_checked(
    start_registry: Start, receiver: Receiver
) -> None:
    reg = await start_registry()
    created = await api(reg, "POST", "/webhooks", 201, json={"url": "http://127.0.0.1:9/x"})
    assert len(created["secret"]) >= 32  # generated
    listed = await api(reg, "GET", "/webhooks")
    assert [w["id"] for w in listed["webhooks"]] == [created["id"]]
    assert "secret" not in listed["webhooks"][0]
    assert "secret" not in await api(reg, "GET", f"/webhooks/{created['id']}")
    for bad in (
        {"url": "ftp://x"},
        {"url": "http://user:pw@host/x"},
        {"url": "http://h/x", "events": ["push", "nope"]},
        {"url": "http://h/x", "format": "xml"},
        {"url": "http://h/x", "secret": "short"},
    ):
        resp = await reg.client.post("/api/v1/webhooks", json=bad)
        assert resp.status == 400, bad
        assert error_codes(await resp.json()) == ["BAD_REQUEST"]
    resp = await reg.client.get("/api/v1/webhooks/12345")
    assert resp.status == 404
    await api(reg, "DELETE", f"/webhooks/{created['id']}")
    assert (await api(reg, "GET", "/webhooks"))["webhooks"] == []


async def test_rolled_back_changes_are_not_announced(
    start_registry: Start, receiver: Receiver
) -> None:
    await receiver.start()
    reg = await start_registry()
    await add_endpoint(reg, receiver.url)
    # A manifest whose blobs are missing: its repository row is rolled back with it.
    resp = await reg.client.put(
        "/v2/ghost/app/manifests/v1",
        data=image_manifest(b"{}", [b"missing layer"]),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status == 400
    # A copy refused by the target namespace's quota: nothing of it is kept.
    await reg.push_image("big/app", "v1", seed="big" * 1000)
    with contextlib.suppress(Exception):
        await Accounts(reg.registry.index).create_namespace("small", None)
    await api(reg, "PUT", "/namespaces/small/quota", json={"quota_bytes": 10})
    resp = await reg.client.post(
        "/api/v1/repositories/small/app/-/copy",
        json={"source": "big/app", "reference": "v1", "tag": "v1"},
    )
    assert resp.status == 403, await resp.text()
    # Deliveries are in order: once the marker arrives, everything before it has.
    await reg.push_image("marker/app", "done")
    # The refusal itself is news (batched like pulls, so it may come after the marker).
    await receiver.wait_for(
        lambda: (
            {("tag_created", "done"), ("quota_exceeded", None)} <= set(actions(receiver.events()))
        )
    )
    repositories = {e["data"]["repository"] for e in receiver.events()}
    assert repositories == {"big/app", "marker/app", "small/app"}
    assert actions(receiver.events(), "small/app") == [("quota_exceeded", None)]


async def test_quota_warning_and_exceeded(start_registry: Start, receiver: Receiver) -> None:
    await receiver.start()
    reg = await start_registry()
    await add_endpoint(reg, receiver.url, events=["quota_warning", "quota_exceeded"])
    with contextlib.suppress(Exception):
        await Accounts(reg.registry.index).create_namespace("small", None)
    await api(reg, "PUT", "/namespaces/small/quota", json={"quota_bytes": 10000})
    await reg.push_blob("small/app", os.urandom(5000))  # 50%: nothing yet
    await reg.push_blob("small/app", os.urandom(4500))  # 95%: past the 90% warning
    await reg.push_blob("small/app", os.urandom(100))  # still over 90%: no second warning
    resp = await reg.client.post("/v2/small/app/blobs/uploads/", data=b"")
    assert resp.status == 202
    data = os.urandom(1000)
    resp = await reg.client.put(
        f"{resp.headers['Location']}&digest={digest_of(data)}"
        if "?" in resp.headers["Location"]
        else f"{resp.headers['Location']}?digest={digest_of(data)}",
        data=data,
    )
    assert resp.status == 403
    await receiver.wait_for(lambda: len(receiver.accepted) == 2)
    warning, exceeded = receiver.events()
    assert warning["type"] == "io.aioreg.quota_warning"
    assert warning["data"].pop("requestId")
    assert warning["data"] == {
        "repository": "small/app",
        "namespace": "small",
        "used": 9500,
        "quota": 10000,
        "percent": 90,
    }
    assert exceeded["type"] == "io.aioreg.quota_exceeded"
    assert exceeded["data"]["namespace"] == "small"
    assert exceeded["data"]["needed"] == 1000


async def test_a_400_is_dead_lettered_after_one_attempt_and_redeliverable(
    start_registry: Start, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.status = 400
    await receiver.start()
    reg = await start_registry(max_attempts=5)
    endpoint = await add_endpoint(reg, receiver.url, events=["push"])
    await reg.push_image("team/app", "v1")
    path = f"/webhooks/{endpoint['id']}/deliveries?state=dead"
    deadline = time.monotonic() + 20
    while not (dead := (await api(reg, "GET", path))["deliveries"]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert receiver.requests == 1
    stats = reg.server.webhooks.stats
    assert (stats.attempts, stats.delivered, stats.failed, stats.dead_lettered) == (1, 0, 1, 1)
    [delivery] = dead
    assert [a["status"] for a in delivery["attempts"]] == [400]
    assert delivery["attempts"][0]["error"].startswith("HTTP 400")

    # Fixed receiver; redelivered from the CLI next to the running server.
    receiver.status = 204
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aioreg",
            "webhook",
            "redeliver",
            str(delivery["id"]),
            "--data",
            str(reg.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    await receiver.wait_for(lambda: len(receiver.accepted) == 1)
    assert verify(*receiver.accepted[0])
    assert json.loads(receiver.accepted[0][1])["id"] == delivery["event_id"]
    deadline = time.monotonic() + 20
    while (again := await api(reg, "GET", path.replace("dead", "delivered")))["deliveries"] == []:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert [a["status"] for a in again["deliveries"][0]["attempts"]] == [400, 204]

    # And once more through the API: delivered again, same event id (idempotency key).
    redelivered = await api(reg, "POST", f"/webhooks/deliveries/{delivery['id']}/redeliver")
    assert redelivered["state"] == "pending"
    await receiver.wait_for(lambda: len(receiver.accepted) == 2)
    assert receiver.accepted[1][0]["X-Aioreg-Event-Id"] == delivery["event_id"]


async def test_retries_stop_at_max_attempts(start_registry: Start, receiver: Receiver) -> None:
    receiver.status = 503
    await receiver.start()
    reg = await start_registry(max_attempts=3)
    endpoint = await add_endpoint(reg, receiver.url, events=["push"])
    await reg.push_image("team/app", "v1")
    path = f"/webhooks/{endpoint['id']}/deliveries?state=dead"
    deadline = time.monotonic() + 20
    while not (dead := (await api(reg, "GET", path))["deliveries"]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert [a["status"] for a in dead[0]["attempts"]] == [503, 503, 503]
    assert receiver.requests == 3


async def test_a_hung_receiver_holds_up_neither_pushes_nor_pulls(
    start_registry: Start, receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()
    await receiver.start()
    reg = await start_registry(concurrency=1, timeout=60)
    await add_endpoint(reg, receiver.url)
    await reg.push_image("team/app", "v1")
    await receiver.wait_for(lambda: receiver.requests == 1)  # the first send hangs there
    for i in range(3):
        await reg.push_image("team/app", f"w{i}", seed=str(i))
    assert (await reg.client.get("/v2/team/app/manifests/w2")).status == 200
    assert receiver.requests == 1  # in order: the next waits for the first
    receiver.hold.set()
    await receiver.wait_for(lambda: len(receiver.accepted) == 3 + 3 * 2 + 1)
    assert receiver.requests == 10


async def test_distribution_envelope(start_registry: Start, receiver: Receiver) -> None:
    await receiver.start()
    reg = await start_registry(public_url="https://registry.example.com")
    await add_endpoint(reg, receiver.url, format="distribution", events=["push", "pull"])
    digest, body = await reg.push_image("team/app", "v1")
    assert (await reg.client.get("/v2/team/app/manifests/v1")).status == 200
    await receiver.wait_for(lambda: len(receiver.accepted) == 2)
    for headers, raw in receiver.accepted:
        assert headers["Content-Type"] == "application/vnd.docker.distribution.events.v2+json"
        assert verify(headers, raw)
    push, pull = (json.loads(raw)["events"] for _, raw in receiver.accepted)
    [event] = push
    assert event["action"] == "push"
    assert set(event) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
    assert event["target"] == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "size": len(body),
        "digest": digest,
        "length": len(body),
        "repository": "team/app",
        "url": f"https://registry.example.com/v2/team/app/manifests/{digest}",
        "tag": "v1",
    }
    assert event["request"]["method"] == "PUT"
    assert event["request"]["id"]
    assert set(event["source"]) == {"addr", "instanceID"}
    assert event["timestamp"].endswith("Z")
    assert pull[0]["action"] == "pull"
    assert pull[0]["target"]["tag"] == "v1"


async def test_filters_and_namespaces(start_registry: Start, receiver: Receiver) -> None:
    await receiver.start()
    reg = await start_registry()
    await add_endpoint(reg, receiver.url, namespace="team", events=["push"])
    await add_endpoint(
        reg, receiver.url, events=["push"], repository_pattern="other/*", media_types=["x/none"]
    )
    await add_endpoint(reg, receiver.url, events=["push"], enabled=False)
    await reg.push_image("other/app", "v1")
    await reg.push_image("team/app", "v1")
    await receiver.wait_for(lambda: len(receiver.accepted) >= 1)
    await reg.push_image("team/app", "v2")
    await receiver.wait_for(lambda: len(receiver.accepted) >= 2)
    assert actions(receiver.events()) == [("push", "v1"), ("push", "v2")]
    assert {e["data"]["repository"] for e in receiver.events()} == {"team/app"}


async def test_outbox_is_bounded_with_a_log_line(
    start_registry: Start, caplog: pytest.LogCaptureFixture
) -> None:
    reg = await start_registry(outbox_max_rows=5)
    await add_endpoint(reg, f"http://127.0.0.1:{free_port()}/hook", events=["push"])
    with caplog.at_level(logging.WARNING, "aioreg.webhooks"):
        for i in range(4):
            await reg.push_image("team/app", f"v{i}", seed=str(i))
    assert any("webhook outbox full" in r.getMessage() for r in caplog.records)
    with sqlite3.connect(reg.data_dir / "index.db") as db:
        (rows,) = db.execute("SELECT count(*) FROM webhook_events").fetchone()
    assert rows <= 5


async def test_events_queued_when_killed_are_delivered_after_restart(
    servers: list[Server], tmp_path: Path
) -> None:
    port, hook_port = free_port(), free_port()
    config = tmp_path / "aioreg.toml"
    config.write_text(
        "[server]\naccess_log = false\n[webhooks]\n"
        + "".join(f"{k} = {v}\n" for k, v in FAST.items())
        + "max_attempts = 1000\n"
    )
    args = ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d"), "--config", str(config)]
    server = start(servers, args)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(base) as client:
        resp = await client.post(
            "/api/v1/webhooks",
            json={"url": f"http://127.0.0.1:{hook_port}/hook", "secret": SECRET},
        )
        assert resp.status == 201
        layer = os.urandom(1000)
        for data in (b"{}", layer):
            resp = await client.post(
                f"/v2/team/app/blobs/uploads/?digest={digest_of(data)}", data=data
            )
            assert resp.status == 201
        manifest = image_manifest(b"{}", [layer])
        resp = await client.put(
            "/v2/team/app/manifests/v1",
            data=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert resp.status == 201
    # The receiver is down: the events are queued (and retried) when the server dies.
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(20)
    receiver = Receiver()
    await receiver.start(hook_port)
    try:
        start(servers, args)
        await receiver.wait_for(lambda: len(receiver.accepted) >= 3)
        assert actions(receiver.events()) == [
            ("repository_created", None),
            ("push", "v1"),
            ("tag_created", "v1"),
        ]
        assert all(verify(h, b) for h, b in receiver.accepted)
    finally:
        await receiver.stop()


async def test_gc_of_untagged_manifests_is_announced(
    start_registry: Start, receiver: Receiver
) -> None:
    await receiver.start()
    reg = await start_registry(gc={"grace_period": 0})
    await add_endpoint(reg, receiver.url, events=["delete"])
    digest, _ = await reg.push_image("team/app", None)
    report = await api(reg, "POST", "/gc?untagged=true")
    assert len(report["manifests_removed"]) == 1
    await receiver.wait_for(lambda: len(receiver.accepted) == 1)
    [event] = receiver.events()
    assert event["type"] == "io.aioreg.delete"
    assert event["data"]["digest"] == digest
    assert event["data"]["actor"] == "gc"


async def test_a_proxy_caching_upstream_content_announces_pulls_not_pushes(
    start_registry: Start, make_registry: AppFactory, receiver: Receiver, tmp_path: Path
) -> None:
    await receiver.start()
    upstream = await make_registry(tmp_path / "up")
    digest, _ = await upstream.push_image("library/alpine", "3.20")
    reg = await start_registry(proxy=[proxy_entry(upstream)])
    await add_endpoint(reg, receiver.url)
    assert (await reg.client.get("/v2/hub/alpine/manifests/3.20")).status == 200
    await reg.push_image("local/app", "done")
    await receiver.wait_for(
        lambda: {("pull", "3.20"), ("tag_created", "done")} <= set(actions(receiver.events()))
    )
    assert actions(receiver.events(), "hub/alpine") == [("pull", "3.20")]
    [pull] = [e for e in receiver.events() if e["data"]["repository"] == "hub/alpine"]
    assert pull["data"]["digest"] == digest


async def test_namespace_admins_manage_their_namespace_endpoints_only(
    make_registry: AppFactory, receiver: Receiver
) -> None:
    reg = await make_registry(auth={"enabled": True, "admin_password": ADMIN_PASSWORD})
    accounts = Accounts(reg.registry.index)
    for user in ("alice", "carol"):
        await accounts.add_user(user, f"{user}-pw")
    await accounts.create_namespace("team", "alice")
    await accounts.set_member("team", "carol", "read")
    alice, carol = basic("alice", "alice-pw"), basic("carol", "carol-pw")
    admin = basic("admin", ADMIN_PASSWORD)

    async def call(method: str, path: str, creds: dict[str, str] | None, **kw: Any) -> int:
        resp = await reg.client.request(method, "/api/v1" + path, headers=creds or {}, **kw)
        return resp.status

    hook = {"url": "http://127.0.0.1:9/hook"}
    assert await call("POST", "/webhooks", None, json=hook) == 401
    assert await call("POST", "/webhooks", alice, json=hook) == 403  # registry-wide
    assert await call("POST", "/webhooks", alice, json={**hook, "namespace": "other"}) == 403
    assert await call("POST", "/webhooks", carol, json={**hook, "namespace": "team"}) == 403
    resp = await reg.client.post(
        "/api/v1/webhooks", headers=alice, json={**hook, "namespace": "team"}
    )
    assert resp.status == 201
    mine = (await resp.json())["id"]
    resp = await reg.client.post("/api/v1/webhooks", headers=admin, json=hook)
    assert resp.status == 201
    wide = (await resp.json())["id"]
    assert await call("GET", "/webhooks", alice) == 403
    resp = await reg.client.get("/api/v1/webhooks?namespace=team", headers=alice)
    assert [w["id"] for w in (await resp.json())["webhooks"]] == [mine]
    for method, path in (("GET", ""), ("GET", "/deliveries"), ("DELETE", "")):
        assert await call(method, f"/webhooks/{wide}{path}", alice) == 403
        assert await call(method, f"/webhooks/{mine}{path}", carol) == 403
    assert await call("DELETE", f"/webhooks/{mine}", alice) == 200
    resp = await reg.client.get("/api/v1/webhooks", headers=admin)
    assert [w["id"] for w in (await resp.json())["webhooks"]] == [wide]


def test_cli_add_ls_test_rm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI (its entry point, in process) on a data dir: the secret is printed once;
    ``test`` reports a refusal."""
    data = str(tmp_path / "d")

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["webhook", *args, "--data", data])
        out, err = capsys.readouterr()
        return code, out, err

    url = f"http://127.0.0.1:{free_port()}/hook"
    code, out, _ = cli("add", url, "--event", "push", "--namespace", "team")
    assert code == 0
    assert "secret (shown once" in out
    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET + "\n"))
    code, out, _ = cli("add", url, "--secret-stdin", "--format", "distribution")
    assert code == 0 and SECRET not in out
    code, out, _ = cli("ls")
    assert code == 0
    assert url in out and "distribution" in out
    assert SECRET not in out and "secret" not in out.lower()
    code, _, err = cli("test", "1")  # nobody listens there
    assert code == 1
    assert "not accepted" in err
    assert cli("rm", "1")[0] == 0
    assert "team" not in cli("ls")[1]
    assert cli("rm", "1")[0] == 1
    code, _, err = cli("add", "http://u:p@h/x")
    assert code == 1 and "credentials" in err


def test_config_file_endpoints_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"url": "https://ci.example.com/hook", "secret": SECRET}
    config = load_config(None, environ={}, overrides={"webhook": [good]})
    assert SECRET not in repr(config)
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    from_env = {"url": good["url"], "secret_env": "HOOK_SECRET"}
    assert load_config(None, environ={}, overrides={"webhook": [from_env]}).webhook
    for bad, why in [
        ({"url": good["url"]}, "secret"),
        ({**good, "secret": "short"}, "16 to 256"),
        ({**good, "secret_env": "HOOK_SECRET"}, "one of"),
        ({**good, "url": "http://me:pw@host/x"}, "credentials"),
        ({**good, "events": ["push", "pushed"]}, "unknown events pushed"),
        ({**good, "format": "xml"}, "format"),
        ({**good, "namespace": "Team/x"}, "namespace"),
        ({**good, "extra": 1}, "extra"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_config(None, environ={}, overrides={"webhook": [bad]})
    with pytest.raises(ConfigError, match="twice"):
        load_config(None, environ={}, overrides={"webhook": [good, good]})


async def test_config_file_endpoints_are_stored_at_start_and_changed_only_there(
    start_registry: Start, receiver: Receiver
) -> None:
    await receiver.start()
    entry = {"url": receiver.url, "secret": SECRET, "events": ["push"]}
    reg = await start_registry(webhook=[entry])
    [listed] = (await api(reg, "GET", "/webhooks"))["webhooks"]
    assert listed["source"] == "config" and "secret" not in listed
    await reg.push_image("team/app", "v1")
    await receiver.wait_for(lambda: len(receiver.accepted) == 1)
    assert verify(*receiver.accepted[0])
    for method, path, body in (
        ("DELETE", f"/webhooks/{listed['id']}", None),
        ("PATCH", f"/webhooks/{listed['id']}", {"enabled": False}),
    ):
        resp = await reg.client.request(method, "/api/v1" + path, json=body)
        assert resp.status == 403
        assert "config file" in (await resp.json())["errors"][0]["message"]
    await reg.client.close()
    await reg.server.stop()
    # Restarted with the entry changed: the same endpoint (its history kept), new filters.
    reg = await start_registry(webhook=[{**entry, "events": ["push", "tag_created"]}])
    [again] = (await api(reg, "GET", "/webhooks"))["webhooks"]
    assert again["id"] == listed["id"] and again["events"] == ["push", "tag_created"]
    history = await api(reg, "GET", f"/webhooks/{again['id']}/deliveries")
    assert [d["state"] for d in history["deliveries"]] == ["delivered"]
    await reg.client.close()
    await reg.server.stop()
    # Removed from the file: gone.
    reg = await start_registry()
    assert (await api(reg, "GET", "/webhooks"))["webhooks"] == []


async def test_metrics_count_attempts_deliveries_failures_and_dead_letters(
    start_registry: Start, receiver: Receiver
) -> None:
    receiver.refuse = 3
    await receiver.start()
    refusing = Receiver(status=400)
    await refusing.start()
    try:
        # A timeout longer than the test: the held request below is answered, never retried.
        reg = await start_registry(max_attempts=10, timeout=120)
        await add_endpoint(reg, receiver.url)  # hears the 3 events of a first push
        await add_endpoint(reg, refusing.url, events=["push"])  # dead-letters each push
        await reg.push_image("team/app", "v1")
        # 3 refused + 3 delivered to the first endpoint, 1 refused for good by the second.
        samples = await settled(reg, deliveries=3, dead_letters=1)
        assert value(samples, "aioreg_webhook_attempts_total") == 7
        assert value(samples, "aioreg_webhook_failures_total") == 4
        assert value(samples, "aioreg_webhook_queue_depth") == 0
        assert receiver.requests == 6 and refusing.requests == 1

        # A hanging first endpoint: its deliveries of the next pushes wait in the queue.
        receiver.hold = asyncio.Event()
        await reg.push_image("team/x", "v0")
        await reg.push_image("team/app", "v2", seed="2")
        await receiver.wait_for(lambda: receiver.requests == 6 + 1)
        samples = await settled(reg, deliveries=3, dead_letters=3)
        # team/x: repository_created, push, tag_created; team/app v2: push, tag_created.
        # The first of those five is being sent (pending until answered).
        assert value(samples, "aioreg_webhook_queue_depth") == 5
        receiver.hold.set()
        samples = await settled(reg, deliveries=8, dead_letters=3)
        assert value(samples, "aioreg_webhook_attempts_total") == 7 + 5 + 2
        assert value(samples, "aioreg_webhook_failures_total") == 4 + 2
        assert value(samples, "aioreg_webhook_queue_depth") == 0
        assert len(receiver.accepted) == 8
    finally:
        if receiver.hold is not None:
            receiver.hold.set()  # never leave a request hanging at teardown
        await refusing.stop()


async def settled(reg: Reg, **counters: float) -> Samples:
    """Scrape until the given ``aioreg_webhook_<name>_total`` counters read as given (the
    worker counts an attempt once it is recorded, a moment after the receiver saw it)."""
    deadline = time.monotonic() + 20
    while True:
        samples = await scrape(reg)
        got = {name: value(samples, f"aioreg_webhook_{name}_total") for name in counters}
        if got == counters:
            return samples
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.02)
