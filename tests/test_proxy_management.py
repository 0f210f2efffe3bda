"""Proxies managed through ``/api/v1`` and ``aioreg proxy``, next to running servers.

The upstream is a second real registry on loopback; the CLI runs as its own
process on the proxying server's data directory while that server runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from aioreg.api.management.routes import PREFIX
from aioreg.api.v2.proxied import PROXIES_KEY
from aioreg.auth.accounts import Accounts, TokenScope
from aioreg.domain.reference import Digest
from tests.conftest import AppFactory, Reg, error_codes
from tests.test_auth import ADMIN_PASSWORD, basic
from tests.test_proxy import proxy_entry, pull_all, push_multiarch

SECRET = "upstream-secret-4711"
ADMIN = basic("admin", ADMIN_PASSWORD)


async def api(
    reg: Reg, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: object
) -> tuple[int, str]:
    async with reg.client.request(method, PREFIX + path, headers=headers, **kwargs) as resp:
        return resp.status, await resp.text()


async def manifest_status(reg: Reg, name: str, tag: str) -> tuple[int, list[str]]:
    async with reg.client.get(f"/v2/{name}/manifests/{tag}") as resp:
        body = await resp.read()
        return resp.status, ([] if resp.status == 200 else error_codes(json.loads(body)))


async def until(
    check: Callable[[], Awaitable[object]], want: object, timeout: float = 20.0
) -> None:
    """Poll ``check()`` until it returns ``want``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = await check()
        if got == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still {got!r}, wanted {want!r}")


async def cli(data: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioreg",
        "proxy",
        *args,
        "--data",
        str(data),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_api_added_proxy_pulls_through_and_never_shows_its_password(
    make_registry: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioreg")
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    await push_multiarch(upstream, "library/busybox", "1")
    proxy = await make_registry(tmp_path / "px", gc={"grace_period": 0})
    assert await manifest_status(proxy, "hub/alpine", "3.20") == (404, ["NAME_UNKNOWN"])

    entry = proxy_entry(upstream, username="puller", password=SECRET)
    status, text = await api(proxy, "POST", "/proxies", json=entry)
    assert status == 201, text
    assert SECRET not in text
    assert json.loads(text)["password_set"] is True
    await pull_all(proxy, "hub/alpine", "3.20", index, children)

    status, text = await api(proxy, "GET", "/proxies")
    assert status == 200 and SECRET not in text
    (listed,) = json.loads(text)["proxies"]
    assert listed["namespace"] == "hub" and listed["source"] == "api"
    assert listed["username"] == "puller" and listed["password_set"] is True
    assert "password" not in listed and "password_env" not in listed

    # Validated like a [[proxy]] entry; a namespace is added once.
    for bad in [
        {**entry, "namespace": "other", "upstream": "https://u:p@example.com"},
        {**entry, "namespace": "Bad/ns"},
        {**entry, "namespace": "other", "revalidate_interval": -1},
        {**entry, "namespace": "other", "surprise": 1},
        {"namespace": "other"},
    ]:
        status, text = await api(proxy, "POST", "/proxies", json=bad)
        assert status == 400, (bad, text)
        assert error_codes(json.loads(text)) == ["BAD_REQUEST"]
    status, text = await api(proxy, "POST", "/proxies", json=entry)
    assert status == 403 and "already a proxy" in text

    # Removed: the namespace is hosted again, and the cache went with the proxy.
    status, text = await api(proxy, "DELETE", "/proxies/hub")
    assert (status, json.loads(text)) == (200, {"deleted": ["hub", "hub/alpine"]})
    assert await manifest_status(proxy, "hub/busybox", "1") == (404, ["NAME_UNKNOWN"])
    assert await manifest_status(proxy, "hub/alpine", "3.20") == (404, ["NAME_UNKNOWN"])
    layers = [json.loads(c)["layers"][0]["digest"] for c in children]
    status, text = await api(proxy, "POST", "/gc")
    assert status == 200, text
    assert [await _stored(proxy, layer) for layer in layers] == [False, False]
    status, text = await api(proxy, "DELETE", "/proxies/hub")
    assert status == 404 and error_codes(json.loads(text)) == ["NAME_UNKNOWN"]
    assert SECRET not in caplog.text


async def test_config_proxies_are_listed_and_cannot_be_removed(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    proxy = await make_registry(tmp_path / "px", proxy=[proxy_entry(upstream)])
    status, text = await api(proxy, "GET", "/proxies")
    (listed,) = json.loads(text)["proxies"]
    assert (listed["namespace"], listed["source"], listed["password_set"]) == (
        "hub",
        "config",
        False,
    )
    status, text = await api(proxy, "DELETE", "/proxies/hub")
    assert status == 403 and "config file" in text
    assert error_codes(json.loads(text)) == ["DENIED"]
    status, text = await api(proxy, "POST", "/proxies", json=proxy_entry(upstream))
    assert status == 403
    await pull_all(proxy, "hub/alpine", "3.20", index, children)  # still proxied
    code, _, err = await cli(proxy.data_dir, "rm", "hub")
    assert code == 1 and "not a proxy" in err  # the CLI does not read that config file


async def test_purge_removes_the_cache_and_gc_frees_its_blobs(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    proxy = await make_registry(
        tmp_path / "px", proxy=[proxy_entry(upstream)], gc={"grace_period": 0}
    )
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    layers = [json.loads(c)["layers"][0]["digest"] for c in children]
    for layer in layers:
        await until(lambda d=layer: _stored(proxy, d), True)
    status, text = await api(proxy, "POST", "/proxies/hub/purge")
    assert (status, json.loads(text)) == (200, {"deleted": ["hub/alpine"]})
    status, text = await api(proxy, "POST", "/gc")
    assert status == 200, text
    for layer in layers:
        assert not proxy.registry.store.exists(Digest.parse(layer))
    # Still a proxy: the next pull fetches it again.
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    status, text = await api(proxy, "POST", "/proxies/nope/purge")
    assert status == 404 and error_codes(json.loads(text)) == ["NAME_UNKNOWN"]


async def _stored(reg: Reg, digest: str) -> bool:
    return reg.registry.store.exists(Digest.parse(digest))


async def test_cli_changes_reach_a_running_server(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    await push_multiarch(upstream, "library/busybox", "1")
    proxy = await make_registry(tmp_path / "px")
    code, out, err = await cli(
        proxy.data_dir,
        "add",
        "hub",
        upstream.server.url,
        "--upstream-prefix",
        "library",
        "--username",
        "puller",
        "--password-stdin",
        stdin=SECRET + "\n",
    )
    assert code == 0, err
    assert SECRET not in out + err
    await until(lambda: manifest_status(proxy, "hub/alpine", "3.20"), (200, []))
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    assert await manifest_status(proxy, "hub/ghost", "1") == (404, ["MANIFEST_UNKNOWN"])
    code, out, _ = await cli(proxy.data_dir, "ls")
    assert code == 0 and "hub" in out and "api" in out and "set" in out
    assert " / no cap" in out and " 0 B / no cap" not in out  # what the cache holds
    assert SECRET not in out
    status, text = await api(proxy, "GET", "/proxies")
    assert status == 200 and SECRET not in text
    assert json.loads(text)["proxies"][0]["password_set"] is True

    code, out, err = await cli(proxy.data_dir, "rm", "hub")
    assert code == 0, err
    assert "purged its 1 cached repositories" in out and "  hub/alpine" in out
    # Proxied, a name upstream lacks is MANIFEST_UNKNOWN; hosted, NAME_UNKNOWN.
    await until(lambda: manifest_status(proxy, "hub/ghost", "1"), (404, ["NAME_UNKNOWN"]))
    assert await manifest_status(proxy, "hub/alpine", "3.20") == (404, ["NAME_UNKNOWN"])
    assert await manifest_status(proxy, "hub/busybox", "1") == (404, ["NAME_UNKNOWN"])
    code, _, err = await cli(proxy.data_dir, "rm", "hub")
    assert code == 1 and "not a proxy" in err
    code, _, err = await cli(proxy.data_dir, "add", "hub", "ftp://nowhere")
    assert code == 1 and "upstream must be" in err


async def test_proxy_management_is_for_registry_wide_admins(
    make_registry: AppFactory, tmp_path: Path
) -> None:
    upstream = await make_registry(tmp_path / "up")
    reg = await make_registry(
        tmp_path / "px",
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD},
        proxy=[proxy_entry(upstream)],
    )
    accounts = Accounts(reg.registry.index)
    await accounts.add_user("alice", "alice-pw")
    scoped = await accounts.create_token("admin", "t-hub", [TokenScope("hub", ["pull"])], None)
    entry = proxy_entry(upstream, namespace="mirror")
    attempts: list[tuple[str, str, dict[str, object]]] = [
        ("GET", "/proxies", {}),
        ("POST", "/proxies", {"json": entry}),
        ("DELETE", "/proxies/hub", {}),
        ("POST", "/proxies/hub/purge", {}),
    ]
    for creds in (basic("alice", "alice-pw"), basic("anyone", scoped.value)):
        for method, path, kwargs in attempts:
            status, text = await api(reg, method, path, creds, **kwargs)
            assert status == 403, (method, path, text)
            assert error_codes(json.loads(text)) == ["DENIED"]
    for method, path, kwargs in attempts:
        status, text = await api(reg, method, path, **kwargs)
        assert status == 401, (method, path, text)
    assert [p.namespace for p in await reg.registry.index.proxies.all()] == []
    status, text = await api(reg, "POST", "/proxies", ADMIN, json=entry)
    assert status == 201, text
    status, text = await api(reg, "GET", "/proxies", ADMIN)
    assert [p["source"] for p in json.loads(text)["proxies"]] == ["config", "api"]


async def test_cli_debug_log_never_carries_the_password(tmp_path: Path) -> None:
    """aiosqlite's DEBUG records hold statement parameters: the CLI keeps them out."""
    code, out, err = await cli(
        tmp_path / "d",
        "add",
        "hub",
        "http://127.0.0.1:9",
        "--password-stdin",
        "--log-level",
        "DEBUG",
        stdin=SECRET + "\n",
    )
    assert code == 0, err
    assert "added proxy hub" in out and "DEBUG" in err
    assert SECRET not in out + err


async def test_an_unreadable_password_file_warns_once_until_it_can_be_read(
    make_registry: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await make_registry(tmp_path / "up")
    index, children = await push_multiarch(upstream, "library/alpine", "3.20")
    proxy = await make_registry(tmp_path / "px")
    secret = tmp_path / "secret"
    entry = proxy_entry(upstream, username="puller", password_file=str(secret))
    caplog.set_level(logging.WARNING, logger="aioreg.proxy")
    status, text = await api(proxy, "POST", "/proxies", json=entry)
    assert status == 201, text
    service = proxy.server.app[PROXIES_KEY]
    for _ in range(5):  # what the periodic re-read does every few seconds
        await service.reload()
    unusable = [r for r in caplog.records if "not usable" in r.getMessage()]
    assert len(unusable) == 1
    assert await manifest_status(proxy, "hub/alpine", "3.20") == (404, ["NAME_UNKNOWN"])
    secret.write_text(SECRET)
    await service.reload()
    await pull_all(proxy, "hub/alpine", "3.20", index, children)
    assert len([r for r in caplog.records if "not usable" in r.getMessage()]) == 1
