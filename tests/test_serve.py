"""``aioreg serve`` as a real process: flags, environment, config file, SIGTERM, restart."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import OCI_MANIFEST, digest_of, image_manifest
from tests.process import Server, free_port, start


async def push_image(base: str, name: str, tag: str) -> tuple[str, bytes, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = os.urandom(300_000)
    async with aiohttp.ClientSession(base) as http:
        for blob in (config, layer):
            resp = await http.post(f"/v2/{name}/blobs/uploads/?digest={digest_of(blob)}", data=blob)
            assert resp.status == 201, await resp.text()
        manifest = image_manifest(config, [layer])
        resp = await http.put(
            f"/v2/{name}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
        )
        assert resp.status == 201, await resp.text()
    return digest_of(manifest), manifest, layer


async def test_flags_log_and_restart_keep_everything(servers: list[Server], tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    server = start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(data)])
    assert f"listening on http://127.0.0.1:{port}" in server.output
    assert str(data) in server.output
    base = f"http://127.0.0.1:{port}"
    digest, manifest, layer = await push_image(base, "team/app", "v1")
    async with aiohttp.ClientSession(base) as http:
        resp = await http.post("/v2/team/app/blobs/uploads/")
        upload = resp.headers["Location"]
        resp = await http.patch(upload, data=b"partial", headers={"Content-Range": "0-6"})
        assert resp.status == 202
    assert server.stop() == 0
    assert "stopped" in server.output

    server = start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(data)])
    async with aiohttp.ClientSession(base) as http:
        resp = await http.get("/v2/team/app/manifests/v1")
        assert resp.status == 200
        assert await resp.read() == manifest
        resp = await http.get(f"/v2/team/app/blobs/{digest_of(layer)}")
        assert await resp.read() == layer
        resp = await http.get("/v2/team/app/tags/list")
        assert (await resp.json())["tags"] == ["v1"]
        resp = await http.get(upload)
        assert resp.status == 204
        assert resp.headers["Range"] == "0-6"
        resp = await http.get(f"/v2/team/app/manifests/{digest}")
        assert resp.status == 200


async def test_environment_and_config_file(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    env = {"AIOREG_LISTEN": f"127.0.0.1:{port}", "AIOREG_DATA_DIR": str(tmp_path / "envdata")}
    server = start(servers, [], env)
    assert f"127.0.0.1:{port}" in server.output
    await push_image(f"http://127.0.0.1:{port}", "envrepo", "latest")
    assert (tmp_path / "envdata" / "index.db").exists()
    assert server.stop() == 0

    config = tmp_path / "custom.toml"
    file_port, flag_port = free_port(), free_port()
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{file_port}"\n'
        f'[storage]\ndata_dir = "{tmp_path / "filedata"}"\n'
        "[limits]\nmanifest_max_bytes = 100\n"
    )
    server = start(servers, ["--config", str(config)])
    assert f"127.0.0.1:{file_port}" in server.output
    async with aiohttp.ClientSession(f"http://127.0.0.1:{file_port}") as http:
        resp = await http.put(
            "/v2/a/manifests/t",
            data=b"{" + b" " * 200 + b"}",
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert resp.status == 413
    assert server.stop() == 0
    # A flag wins over the file; AIOREG_CONFIG names the file.
    server = start(servers, ["--listen", f"127.0.0.1:{flag_port}"], {"AIOREG_CONFIG": str(config)})
    assert f"127.0.0.1:{flag_port}" in server.output
    assert str(tmp_path / "filedata") in server.output


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nlisten = 5000\nbogus = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "aioreg", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_drains_in_flight_upload(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")])
    data = os.urandom(2_000_000)
    base = f"http://127.0.0.1:{port}"
    sent_first = asyncio.Event()

    async def slow_body():
        for i in range(0, len(data), 200_000):
            yield data[i : i + 200_000]
            sent_first.set()
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(base) as http:
        resp = await http.post("/v2/slow/blobs/uploads/")
        location = resp.headers["Location"]

        async def upload() -> int:
            resp = await http.patch(location, data=slow_body())
            return resp.status

        task = asyncio.create_task(upload())
        await sent_first.wait()
        # The server is inside the PATCH handler once the session's file has bytes.
        upload_file = tmp_path / "d" / "uploads" / location.rsplit("/", 1)[1]
        deadline = time.monotonic() + 20
        while not (upload_file.exists() and upload_file.stat().st_size > 0):
            assert time.monotonic() < deadline, "the PATCH never reached the server's disk"
            await asyncio.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        assert await task == 202
    assert await asyncio.to_thread(server.stop) == 0
    assert "draining" in server.output


def test_first_start_with_auth_creates_admin_once(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d"), "--auth"]
    server = start(servers, args)
    output = server.output
    assert "created admin user 'admin' with password: " in output
    password = output.split("with password: ", 1)[1].split()[0]
    assert len(password) >= 16
    assert output.count(password) == 1  # printed once, in no log line
    assert server.stop() == 0
    server = start(servers, args)
    assert "created admin user" not in server.output
    assert password not in server.output


def test_open_registry_on_a_public_address_warns_loudly(
    servers: list[Server], tmp_path: Path
) -> None:
    port = free_port()
    server = start(servers, ["--listen", f"0.0.0.0:{port}", "--data", str(tmp_path / "d")])
    assert "AUTHENTICATION IS OFF" in server.output
    assert server.stop() == 0
    server = start(servers, ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")])
    assert "AUTHENTICATION IS OFF" not in server.output


def serve_fails(args: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run ``aioreg serve`` expecting it to give up: (exit status, stderr lines)."""
    result = subprocess.run(
        [sys.executable, "-m", "aioreg", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr.strip().splitlines()


def test_taken_port_exits_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = serve_fails(["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d")])
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"aioreg: cannot listen on 127.0.0.1:{port}: ")
    assert lines[0].endswith("address already in use")


def test_unresolvable_host_exits_with_one_line(tmp_path: Path) -> None:
    code, lines = serve_fails(["--listen", "no-such-host.invalid:0", "--data", str(tmp_path / "d")])
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(
        "aioreg: cannot listen on no-such-host.invalid:0: host name does not resolve"
    ), lines


@pytest.mark.parametrize("listen", ["127.0.0.1:70000", "127.0.0.1:65536", "127.0.0.1:99999999"])
def test_port_out_of_range_is_refused(tmp_path: Path, listen: str) -> None:
    code, lines = serve_fails(["--listen", listen, "--data", str(tmp_path / "d")])
    assert code == 2
    assert lines == [f"aioreg: listen port must be 0-65535 (0: any free port), got {listen!r}"]


async def test_port_zero_logs_the_port_actually_bound(
    servers: list[Server], tmp_path: Path
) -> None:
    server = start(servers, ["--listen", "127.0.0.1:0", "--data", str(tmp_path / "d")])
    match = re.search(r"listening on http://127\.0\.0\.1:(\d+) ", server.output)
    assert match is not None, server.output
    port = int(match.group(1))
    assert port != 0
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/v2/")).status == 200


def test_negative_size_in_the_environment_is_refused(tmp_path: Path) -> None:
    code, lines = serve_fails(
        ["--listen", "127.0.0.1:0", "--data", str(tmp_path / "d")],
        {"AIOREG_LIMITS_MANIFEST_MAX_BYTES": "-1"},
    )
    assert code == 2
    assert len(lines) == 1 and "limits.manifest_max_bytes" in lines[0], lines


def test_unknown_aioreg_variable_is_warned_about(servers: list[Server], tmp_path: Path) -> None:
    server = start(
        servers,
        ["--listen", "127.0.0.1:0", "--data", str(tmp_path / "d")],
        {"AIOREG_STORAGE_DATADIR": "/elsewhere"},
    )
    assert (
        "ignoring unknown environment variable AIOREG_STORAGE_DATADIR "
        "(did you mean AIOREG_STORAGE_DATA_DIR" in server.output
    )


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    for data in (tmp_path / "file", tmp_path / "file" / "below"):
        code, lines = serve_fails(["--listen", "127.0.0.1:0", "--data", str(data)])
        assert code == 2
        assert len(lines) == 1 and lines[0].startswith("aioreg: ") and str(data) in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand a directory to another user")
@pytest.mark.parametrize("entry", [".", "index.db", "blobs"])
def test_data_dir_owned_by_another_user_is_refused(tmp_path: Path, entry: str) -> None:
    """Root could write there, but what it creates would then be root's, not the owner's."""
    data = tmp_path / "d"
    server = Server(["--listen", "127.0.0.1:0", "--data", str(data)])
    server.wait_ready()
    assert server.stop() == 0
    server.log_path.unlink()
    os.chown(data / entry, 65534, 65534)
    code, lines = serve_fails(["--listen", "127.0.0.1:0", "--data", str(data)])
    assert code == 2
    assert len(lines) == 1, lines
    assert str((data / entry).resolve()).rstrip("/.") in lines[0] and "uid 65534" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_unwritable_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    data.chmod(0o500)
    try:
        code, lines = serve_fails(["--listen", "127.0.0.1:0", "--data", str(data)])
    finally:
        data.chmod(0o700)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"aioreg: data directory entry {data} is not writable")
