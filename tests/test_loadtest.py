"""``python -m benchmarks --target URL``: the load tester run as users run it, as a
subprocess against real ``aioreg serve`` processes (one with access control on, so the
Docker token flow is exercised), at a tiny size. Nothing is asserted about speed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import datetime
import ipaddress
import json
import os
import pty
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.loadreport import have_matplotlib
from benchmarks.servers import DISTRIBUTION_CONFIG
from tests.process import Server, free_port, start

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "alice-load-pw"
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def serve(servers: list[Server], data: Path, env: dict[str, str] | None = None) -> str:
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--data", str(data)]
    start(servers, args + (["--auth"] if env else []), env)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def auth_target(
    servers: list[Server], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """aioreg with access control on, Basic refused on /v2/ (only the token flow works),
    and a user alice who owns the namespace alice/. Tokens live 300 s, or as long as the
    test's indirect parameter says."""
    data = tmp_path / "d"
    url = serve(
        servers,
        data,
        {
            "AIOREG_AUTH_ADMIN_PASSWORD": "admin-pw-x",
            "AIOREG_AUTH_ALLOW_BASIC": "false",
            "AIOREG_AUTH_TOKEN_TTL": str(getattr(request, "param", 300)),
        },
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aioreg",
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--data",
            str(data),
        ],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )
    yield url


def http(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def alice_token(base: str, scope: str) -> str:
    """A token from aioreg's realm for alice, as any Docker client gets one."""
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{base}/token?service=aioreg&scope={scope}",
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return str(json.loads(r.read())["token"])


def test_load_test_with_token_auth_reports_every_op_and_pushes_real_images(
    auth_target: str, tmp_path: Path
) -> None:
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    proc = bench(
        "--target",
        auth_target,
        "--user",
        "alice",
        "--password-env",
        "LOAD_PW",
        "--repo-prefix",
        "alice/lt",
        "--concurrency",
        "1,2",
        "--requests",
        "6",
        "--sizes",
        "16KiB",
        "--layers",
        "2",
        "--mix",
        "pull=50,push=30,head=20",
        "--json",
        str(out_json),
        "--csv",
        str(out_csv),
        env={"LOAD_PW": PASSWORD},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out_json.read_text())
    facts = result["meta"]["targets"][f"127.0.0.1:{auth_target.rsplit(':', 1)[1]}"]
    assert facts["auth"] == "token"
    # One token per repository (push, pull, manifest, mixed), not one per request: a
    # pull,push token serves the pulls too.
    assert facts["tokens_fetched"] == 4, facts
    rows = result["results"]
    assert result["failed"] == []
    seen = {(r["scenario"], r["concurrency"]) for r in rows}
    assert seen == {(s, c) for s in ("push", "pull", "manifest", "mixed") for c in (1, 2)}
    for row in rows:
        assert row["errors"] == 0, row
        assert row["count"] > 0 and row["rps"] > 0, row
        for key in PERCENTILES:
            assert row[key] > 0, row
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
    ops = {(r["scenario"], r["op"]) for r in rows}
    assert {("push", "blob_push"), ("pull", "blob_pull"), ("manifest", "manifest_get")} <= ops
    assert {("mixed", op) for op in ("pull", "push", "pull:blob", "push:manifest")} <= ops
    for row in rows:  # --requests counts operations per level
        if row["scenario"] != "mixed":
            assert row["count"] == 6, row
    for c in (1, 2):
        top = [
            r
            for r in rows
            if r["scenario"] == "mixed" and r["concurrency"] == c and ":" not in r["op"]
        ]
        assert sum(r["count"] for r in top) == 6, top
    blob_rows = [r for r in rows if r["op"] in ("blob_push", "blob_pull")]
    assert all(r["MBps"] > 0 and r["bytes"] == 6 * 16 * 1024 for r in blob_rows)

    with open(out_csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for line in table:
        for key in (*PERCENTILES, "rps", "MBps"):
            assert float(line[key]) >= 0, line
    assert {(line["scenario"], line["op"]) for line in table} == ops

    # The pushed images exist on the target: every tag listed, every manifest and blob there.
    repo = "alice/lt/mixed"
    pushed = facts["images_pushed"][repo]
    assert pushed == 4 + sum(
        r["count"] for r in rows if r["scenario"] == "mixed" and r["op"] == "push"
    )
    assert http(f"{auth_target}/v2/{repo}/tags/list")[0] == 401
    token = alice_token(auth_target, f"repository:{repo}:pull")
    status, body = http(f"{auth_target}/v2/{repo}/tags/list?n=1000", token)
    assert status == 200
    tags = json.loads(body)["tags"]
    assert len(tags) == pushed
    for tag in tags:
        status, body = http(f"{auth_target}/v2/{repo}/manifests/{tag}", token)
        assert status == 200, tag
        manifest = json.loads(body)
        assert len(manifest["layers"]) == 2
        for blob in [manifest["config"], *manifest["layers"]]:
            status, data = http(f"{auth_target}/v2/{repo}/blobs/{blob['digest']}", token)
            assert status == 200 and len(data) == blob["size"]


@pytest.mark.parametrize("auth_target", [2], indirect=True)
def test_load_test_renews_expiring_tokens(auth_target: str, tmp_path: Path) -> None:
    """Tokens live 2 s here: a 3 s run keeps working by fetching new ones before expiry."""
    out_json = tmp_path / "r.json"
    proc = bench(
        "--target",
        auth_target,
        "--user",
        "alice",
        "--password",
        PASSWORD,
        "--repo-prefix",
        "alice/lt",
        "--only",
        "manifest",
        "--concurrency",
        "1",
        "--duration",
        "3",
        "--json",
        str(out_json),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out_json.read_text())
    (facts,) = result["meta"]["targets"].values()
    assert facts["tokens_fetched"] >= 3, facts
    (row,) = result["results"]
    assert row["errors"] == 0 and row["count"] > 3, row


def test_load_test_with_a_fixed_bearer_token(auth_target: str, tmp_path: Path) -> None:
    """--token is sent as is: no token flow, and the registry accepts it."""
    token = alice_token(auth_target, "repository:alice/lt/manifest:pull,push")
    out_json = tmp_path / "r.json"
    proc = bench(
        *("--target", auth_target, "--token", token, "--repo-prefix", "alice/lt"),
        *("--only", "manifest", "--concurrency", "2", "--requests", "4", "--json", str(out_json)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out_json.read_text())
    (facts,) = result["meta"]["targets"].values()
    assert facts["auth"] == "bearer" and facts["tokens_fetched"] == 0
    (row,) = result["results"]
    assert row["count"] == 4 and row["errors"] == 0


def test_load_test_bad_credentials_stop_with_a_message(auth_target: str) -> None:
    proc = bench(
        "--target", auth_target, "--user", "alice", "--password", "wrong", "--requests", "1"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "authentication failed" in proc.stderr and "401" in proc.stderr


def own_address() -> str | None:
    """A non-loopback IPv4 address of this machine (the one a default route would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: nothing is sent
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def test_load_test_refuses_a_host_that_is_not_loopback() -> None:
    t0 = time.monotonic()
    proc = bench("--target", "http://192.0.2.1:5000", "--requests", "1", timeout=60)
    assert proc.returncode == 2
    assert "refusing to load-test http://192.0.2.1:5000" in proc.stderr
    assert "--i-own-this-registry" in proc.stderr
    assert "[load]" not in proc.stderr  # nothing was logged about the target
    assert time.monotonic() - t0 < 9  # and no connect timeout (10 s) was waited for


def test_non_loopback_refusal_makes_no_connection_and_the_flag_lifts_it() -> None:
    """A listener on this machine's own non-loopback address sees no connection from a
    refused run, and one from a run given --i-own-this-registry."""
    address = own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with socket.create_server((address, 0)) as listener:
        listener.setblocking(False)
        url = f"http://{address}:{listener.getsockname()[1]}"
        proc = bench("--target", url, "--requests", "1", timeout=60)
        assert proc.returncode == 2
        assert f"refusing to load-test {url}: {address} is not a loopback address" in proc.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()
        owned = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks",
                "--target",
                url,
                "--requests",
                "1",
                "--i-own-this-registry",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        accepted = 0
        try:
            deadline = time.monotonic() + 60
            # Not a registry: every connection is accepted, then closed unanswered.
            while owned.poll() is None:
                assert time.monotonic() < deadline, "the load test did not give up"
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    time.sleep(0.02)
                    continue
                accepted += 1
                conn.close()
            _, err = owned.communicate(timeout=30)
        finally:
            if owned.poll() is None:
                owned.kill()
                owned.wait()
        assert accepted >= 1
        assert owned.returncode == 2
        assert "cannot reach the registry" in err


def test_load_test_unreachable_target_stops_with_a_message() -> None:
    proc = bench("--target", f"http://127.0.0.1:{free_port()}", "--requests", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot reach the registry" in proc.stderr


@pytest.fixture
def basic_distribution(tmp_path: Path) -> Iterator[str]:
    """CNCF Distribution with htpasswd (Basic) auth: user bob, password pw."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry (CNCF Distribution) is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            pytest.skip("no crypt module to write a bcrypt htpasswd")
        hashed = crypt.crypt("pw", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("crypt has no bcrypt here")
    (tmp_path / "htpasswd").write_text(f"bob:{hashed}\n")
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        DISTRIBUTION_CONFIG.format(data=tmp_path / "data", port=port, max_entries=1000)
        + f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {tmp_path / 'htpasswd'}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):  # refused until it listens
                if http(f"{url}/v2/")[0] == 401:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "no Distribution"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_load_test_basic_auth_against_distribution(basic_distribution: str, tmp_path: Path) -> None:
    """A registry whose challenge is Basic gets Basic credentials on every request; wrong
    ones stop the run before any load."""
    out_json = tmp_path / "r.json"
    args = ["--target", basic_distribution, "--only", "push,mixed", "--concurrency", "2"]
    args += ["--requests", "3", "--sizes", "8KiB", "--layers", "1", "--mix", "pull=1,push=1"]
    proc = bench(*args, "--user", "bob", "--password", "pw", "--json", str(out_json))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out_json.read_text())
    (facts,) = result["meta"]["targets"].values()
    assert facts["auth"] == "basic" and facts["tokens_fetched"] == 0
    assert result["failed"] == [] and {r["scenario"] for r in result["results"]} == {
        "push",
        "mixed",
    }
    proc = bench(*args, "--user", "bob", "--password", "wrong")
    assert proc.returncode == 2
    assert "authentication failed" in proc.stderr and "401" in proc.stderr


def self_signed(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


@pytest.fixture
def tls_target(servers: list[Server], tmp_path: Path) -> Iterator[str]:
    """An aioreg behind a TLS terminator of our own with a self-signed certificate."""
    upstream = serve(servers, tmp_path / "d")
    upstream_port = int(upstream.rsplit(":", 1)[1])
    context = self_signed(tmp_path)
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, ssl=context))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_load_test_tls_is_verified_unless_insecure(tls_target: str, tmp_path: Path) -> None:
    args = ["--target", tls_target, "--only", "manifest", "--concurrency", "1", "--requests", "3"]
    proc = bench(*args)
    assert proc.returncode == 2
    assert "cannot reach the registry" in proc.stderr and "certificate" in proc.stderr
    out_json = tmp_path / "r.json"
    proc = bench(*args, "--insecure", "--json", str(out_json))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out_json.read_text())["results"]
    assert row["count"] == 3 and row["errors"] == 0, row


def test_progress_line_only_on_a_terminal(servers: list[Server], tmp_path: Path) -> None:
    url = serve(servers, tmp_path / "d")
    args = ["--target", url, "--only", "manifest", "--concurrency", "1", "--duration", "1.5"]
    proc = bench(*args)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[K" not in proc.stderr and "\r" not in proc.stderr  # a pipe: log lines only
    assert "[load] 127.0.0.1" in proc.stderr
    main, tty = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=tty,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.close(tty)
    seen = b""
    try:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
    finally:
        os.close(main)
        assert child.wait(60) == 0, seen
    live = [part for part in seen.split(b"\r\x1b[K") if b"ops/s" in part and b"/2s" in part]
    assert live, seen  # the line redrawn in place while the level ran: "... 1/2s: N ops ..."


def test_generated_blobs_are_streamed_not_held(servers: list[Server], tmp_path: Path) -> None:
    """A 160 MiB blob pushed by the tester costs it far less than 160 MiB of memory."""
    url = serve(servers, tmp_path / "d")
    peak_file = tmp_path / "peak"
    # VmHWM is this process image's own peak (ru_maxrss would include the forking pytest).
    wrapper = (
        "import runpy\n"
        "try:\n"
        "    runpy.run_module('benchmarks', run_name='__main__')\n"
        "finally:\n"
        "    status = open('/proc/self/status').read()\n"
        "    peak = next(l for l in status.splitlines() if l.startswith('VmHWM:'))\n"
        f"    open({str(peak_file)!r}, 'w').write(peak.split()[1])\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            wrapper,
            "--target",
            url,
            "--only",
            "push",
            "--sizes",
            "160MiB",
            "--concurrency",
            "1",
            "--requests",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "blob_push" in proc.stdout
    peak_mib = int(peak_file.read_text()) / 1024
    assert peak_mib < 100, f"the load tester peaked at {peak_mib:.0f} MiB"


def test_two_targets_side_by_side_with_chart(servers: list[Server], tmp_path: Path) -> None:
    one = serve(servers, tmp_path / "a")
    two = serve(servers, tmp_path / "b")
    chart = tmp_path / "c.png"
    proc = bench(
        "--target",
        f"first={one}",
        "--target",
        f"second={two}",
        "--only",
        "push,manifest",
        "--concurrency",
        "2",
        "--duration",
        "0.3",
        "--sizes",
        "8KiB",
        "--chart",
        str(chart),
    )
    if not have_matplotlib():
        assert proc.returncode == 2
        assert "--chart needs matplotlib" in proc.stderr
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if " first " in line)
    assert " second " in lines[header]
    assert lines[header + 1].split()[:4] == ["scenario", "size", "clients", "op"]
    assert lines[header + 1].count("p99 ms") == 2
    rows = [line.split() for line in lines[header + 3 :] if line.startswith(("push", "manifest"))]
    assert {r[3] if r[0] == "push" else r[2] for r in rows} == {"blob_push", "manifest_get"}
    for r in rows:
        assert len(r) == (4 if r[0] == "push" else 3) + 12, r
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "bad",
    [
        ["--target", "ftp://127.0.0.1:1"],
        ["--target", "http://127.0.0.1:1/v2/"],
        ["--target", "http://127.0.0.1:1", "--mix", "pull=x"],
        ["--target", "http://127.0.0.1:1", "--mix", "delete=1"],
        ["--target", "http://127.0.0.1:1", "--duration", "1", "--requests", "2"],
        ["--target", "http://127.0.0.1:1", "--only", "tags"],
        ["--target", "http://127.0.0.1:1", "--sizes", "lots"],
        ["--target", "http://127.0.0.1:1", "--concurrency", "0"],
        ["--target", "http://127.0.0.1:1", "--token", "t", "--user", "u"],
        ["--target", "a=http://127.0.0.1:1", "--target", "a=http://127.0.0.1:2"],
    ],
)
def test_bad_load_arguments_are_refused(bad: list[str]) -> None:
    from benchmarks.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(bad)
