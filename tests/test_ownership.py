"""Nothing removes a file an in-flight request owns: a slow upload outlives every remover.

A monolithic push that trickles in (well under 1 MiB a minute) leaves its temp
file looking idle. The CLI ``check`` and ``gc`` (other processes), online GC
and the upload janitor all run while it is held open, with no grace period, and
the push must still end in 201 with the exact bytes stored.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tests.conftest import AppFactory, Reg, digest_of


async def aioreg_cli(data: Path, *args: str) -> str:
    """Run the ``aioreg`` CLI in its own process (as an operator would) with no grace period."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioreg",
        *args,
        "--data",
        str(data),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "AIOREG_GC_GRACE_PERIOD": "0"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def poll(what: str, condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_slow_upload_survives_check_gc_and_janitor(make_registry: AppFactory) -> None:
    # A TTL of 4 s runs the janitor every second; GC keeps nothing for a grace period.
    reg = await make_registry(storage={"upload_session_ttl": 4}, gc={"grace_period": 0})
    uploads = reg.data_dir / "uploads"
    data = os.urandom(300_000)
    digest = digest_of(data)
    first_part_sent = asyncio.Event()
    go_on = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield data[:100_000]
        first_part_sent.set()
        await go_on.wait()
        yield data[100_000:]

    push = asyncio.create_task(
        reg.client.post(f"/v2/slow/blobs/uploads/?digest={digest}", data=trickle())
    )
    try:
        await first_part_sent.wait()
        await poll("the upload's temp file", lambda: any(uploads.iterdir()))
        await exercise_removers(reg, uploads)
    finally:
        go_on.set()
    resp = await push
    assert resp.status == 201, await resp.text()
    resp = await reg.client.get(f"/v2/slow/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    assert not any(uploads.iterdir()), "the finished upload's temp file stayed behind"


async def exercise_removers(reg: Reg, uploads: Path) -> None:
    """Every remover runs (and proves it runs) while the upload's file is held."""
    (owned,) = list(uploads.iterdir())
    # The remaining bytes are a minute away: the file looks idle to anything that asks.
    os.utime(owned, (0, 0))
    stray = uploads / ("f" * 32)  # a leftover no request owns: removers must still take it

    def leave_stray() -> None:
        stray.write_bytes(b"left by a crashed upload")
        os.utime(stray, (0, 0))

    for remover in ("aioreg check", "aioreg gc", "online gc", "upload janitor"):
        leave_stray()
        if remover == "online gc":
            resp = await reg.client.post("/api/v1/gc")
            assert resp.status == 200, await resp.text()
        elif remover.startswith("aioreg"):
            await aioreg_cli(reg.data_dir, remover.split()[1])
        await poll(f"{remover} to remove the stray file", lambda: not stray.exists())
        assert owned.exists(), f"{remover} took the temp file of an upload in flight"
