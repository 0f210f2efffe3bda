"""``/healthz`` and ``/readyz`` on a real server: unauthenticated, 200/503, leaking nothing."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AppFactory, Reg
from tests.process import Server
from tests.test_auth import ADMIN_PASSWORD
from tests.test_workers import WORKER, fresh, start_workers


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make ``directory`` read-only for everyone, root included: a read-only bind mount of
    itself (chmod means nothing to root). Skips where mounts are not allowed."""

    def run(*args: str) -> bool:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0

    if os.geteuid() != 0 or not run("--bind", str(directory), str(directory)):
        pytest.skip(
            "making a directory read-only for root needs a bind mount (root, CAP_SYS_ADMIN)"
        )
    try:
        if not run("-o", "remount,ro,bind", str(directory)):
            pytest.skip("a read-only remount is not allowed here")
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


async def readyz(reg: Reg) -> tuple[int, dict[str, object]]:
    resp = await reg.client.get("/readyz")
    return resp.status, await resp.json()


async def test_healthz_answers_without_credentials(make_registry: AppFactory) -> None:
    reg = await make_registry(auth={"enabled": True, "admin_password": ADMIN_PASSWORD})
    resp = await reg.client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    status, body = await readyz(reg)
    assert status == 200
    assert body == {
        "status": "ready",
        "checks": {"index": "ok", "storage": "ok", "free_space": "ok"},
    }


async def test_readyz_is_unready_while_the_data_dir_is_read_only(reg: Reg) -> None:
    assert (await readyz(reg))[0] == 200
    with read_only(reg.data_dir):
        status, body = await readyz(reg)
        assert status == 503
        assert body == {
            "status": "unready",
            "checks": {"index": "ok", "storage": "fail", "free_space": "ok"},
        }
        assert str(reg.data_dir) not in str(body)
    status, body = await readyz(reg)
    assert status == 200, body
    assert not [p.name for p in reg.data_dir.iterdir() if p.name.startswith(".readyz")]


async def test_readyz_is_unready_below_the_free_space_floor(make_registry: AppFactory) -> None:
    reg = await make_registry(sections={"health": {"min_free_bytes": 1 << 62}})
    status, body = await readyz(reg)
    assert status == 503
    assert body == {
        "status": "unready",
        "checks": {"index": "ok", "storage": "ok", "free_space": "fail"},
    }
    assert (await reg.client.get("/healthz")).status == 200


async def test_free_space_check_can_be_turned_off(make_registry: AppFactory) -> None:
    reg = await make_registry(sections={"health": {"min_free_bytes": 0}})
    assert await readyz(reg) == (
        200,
        {"status": "ready", "checks": {"index": "ok", "storage": "ok"}},
    )


async def test_every_worker_answers_healthz_and_readyz(
    servers: list[Server], tmp_path: Path
) -> None:
    _, base = start_workers(servers, tmp_path / "d")
    answered: dict[str, set[str]] = {"/healthz": set(), "/readyz": set()}
    async with fresh(base) as http:
        for _ in range(200):
            for path, workers in answered.items():
                resp = await http.get(path)
                assert resp.status == 200, await resp.text()
                body = await resp.json()
                assert body["status"] == ("ok" if path == "/healthz" else "ready"), body
                workers.add(resp.headers[WORKER])
            if all(w == {"0", "1"} for w in answered.values()):
                break
    assert answered == {"/healthz": {"0", "1"}, "/readyz": {"0", "1"}}
