"""``aioreg serve --log-format json``: every line one JSON object, one per request with its facts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp

from tests.conftest import digest_of
from tests.process import Server, free_port, start
from tests.test_auth import ADMIN_PASSWORD, basic
from tests.test_request_id import await_output


def records(server: Server) -> list[dict[str, object]]:
    """Every line of the server's output, each of which must be a JSON object."""
    return [json.loads(line) for line in server.output.splitlines() if line.strip()]


async def test_json_log_has_one_object_per_request(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = start(
        servers,
        [
            "--listen",
            f"127.0.0.1:{port}",
            "--data",
            str(tmp_path / "d"),
            "--auth",
            "--log-format",
            "json",
        ],
        env={"AIOREG_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    data = os.urandom(3000)
    admin = basic("admin", ADMIN_PASSWORD)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        resp = await http.post(
            f"/v2/team/app/blobs/uploads/?digest={digest_of(data)}",
            data=data,
            headers={**admin, "X-Request-Id": "push-1"},
        )
        assert resp.status == 201
        resp = await http.post(
            "/v2/team/app/blobs/uploads/", headers={**admin, "X-Request-Id": "start-1"}
        )
        assert resp.status == 202
        upload_id = resp.headers["Docker-Upload-UUID"]
        resp = await http.get(
            f"/v2/team/app/blobs/{digest_of(data)}", headers={**admin, "X-Request-Id": "pull-1"}
        )
        assert await resp.read() == data
        resp = await http.get("/v2/team/app/manifests/v1", headers={"X-Request-Id": "anon-1"})
        assert resp.status == 401
    assert await_output(server, '"request_id":"anon-1"')
    lines = records(server)
    assert any("listening on" in str(r["message"]) for r in lines)
    access = {r["request_id"]: r for r in lines if r["logger"] == "aioreg.access"}
    push = access["push-1"]
    assert push["method"] == "POST"
    assert push["route"] == "/v2/{name}/blobs/uploads/"
    assert push["status"] == 201
    assert push["bytes_received"] == len(data)
    assert push["user"] == "admin"
    assert push["repository"] == "team/app"
    assert isinstance(push["duration"], float) and push["duration"] >= 0
    assert isinstance(push["bytes"], int)
    pull = access["pull-1"]
    assert (pull["route"], pull["status"], pull["bytes"]) == (
        "/v2/{name}/blobs/{digest}",
        200,
        len(data),
    )
    anon = access["anon-1"]
    assert (anon["status"], anon["user"], anon["repository"]) == (401, "<anonymous>", "team/app")
    # Lines the request causes inside the app carry its ids too.
    started = [
        r for r in lines if r.get("request_id") == "start-1" and r["logger"] != "aioreg.access"
    ]
    assert started and started[0]["upload_id"] == upload_id
    assert all(r["time"] and r["level"] for r in lines)


def test_auto_is_json_when_not_on_a_terminal(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = start(
        servers,
        ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")],
        env={"AIOREG_LOG_FORMAT": "auto"},
    )
    assert records(server)  # every line parses: the output is a file, not a terminal


def test_plain_stays_the_default(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")])
    assert " INFO aioreg: aioreg " in server.output
    assert not server.output.lstrip().startswith("{")


def test_json_lines_of_several_workers_name_the_worker(
    servers: list[Server], tmp_path: Path
) -> None:
    port = free_port()
    server = start(
        servers,
        [
            "--listen",
            f"127.0.0.1:{port}",
            "--data",
            str(tmp_path / "d"),
            "--workers",
            "2",
            "--log-format",
            "json",
        ],
    )
    lines = records(server)
    serving = [r for r in lines if str(r["message"]).startswith("worker ")]
    assert sorted(r.get("worker") for r in serving) == ["w0", "w1"], serving
