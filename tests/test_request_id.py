"""Every request has an id: the client's X-Request-Id or one of ours, returned and logged."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import aiohttp

from tests.conftest import Reg, digest_of
from tests.process import Server, free_port, start


async def test_request_id_is_echoed_or_generated(reg: Reg) -> None:
    resp = await reg.client.get("/v2/", headers={"X-Request-Id": "build-42.step:7"})
    assert resp.headers["X-Request-Id"] == "build-42.step:7"
    generated = (await reg.client.get("/v2/")).headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # Anything that could forge a log line is replaced, not copied.
    resp = await reg.client.get("/v2/nope/tags/list", headers={"X-Request-Id": "a b\tc" * 50})
    assert resp.status == 404
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])
    # Streamed blob bodies carry it too.
    data = os.urandom(10_000)
    await reg.push_blob("app", data)
    resp = await reg.client.get(
        f"/v2/app/blobs/{digest_of(data)}", headers={"X-Request-Id": "pull-1"}
    )
    assert await resp.read() == data
    assert resp.headers["X-Request-Id"] == "pull-1"


async def test_log_lines_carry_the_request_id(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")])
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        resp = await http.get("/v2/team/app/tags/list", headers={"X-Request-Id": "trace-abc"})
        assert resp.status == 404
    assert await_output(server, "req=trace-abc")


def await_output(server: Server, text: str, timeout: float = 10.0) -> bool:
    """True once ``text`` shows in the server's log (access lines are written after the
    response)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.output:
            return True
        time.sleep(0.05)
    return False


async def test_upload_log_lines_carry_the_upload_id(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")])
    data = os.urandom(5000)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        resp = await http.post("/v2/app/blobs/uploads/", headers={"X-Request-Id": "start-1"})
        upload_id = resp.headers["Docker-Upload-UUID"]
        resp = await http.put(
            f"{resp.headers['Location']}?digest={digest_of(data)}",
            data=data,
            headers={"X-Request-Id": "finish-1"},
        )
        assert resp.status == 201
    assert await_output(server, f"[req=start-1 upload={upload_id}]: upload started in app")
    assert await_output(
        server, f"[req=finish-1 upload={upload_id}]: upload finished: {digest_of(data)}"
    )
