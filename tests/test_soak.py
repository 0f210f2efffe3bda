"""Bounded soak: 64 loopback clients push, pull, delete tags and list the catalog at once.

Afterwards the server must have answered every request without a server error,
hold no more file descriptors than before, leave no upload temp files, and stay
under a stated memory bound. ``AIOREG_SOAK_SECONDS`` sets the length (CI runs a
short soak; ``make reliability`` a long one).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.conftest import OCI_MANIFEST, digest_of, image_manifest
from tests.process import Server, free_port, start

SECONDS = float(os.environ.get("AIOREG_SOAK_SECONDS", "15"))
CLIENTS = 64
RSS_BOUND_KIB = 200 * 1024


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    first_error: str = ""

    def note(self, status: int, expected: tuple[int, ...], what: str) -> None:
        self.requests += 1
        if status not in expected:
            self.errors += 1
            self.first_error = self.first_error or f"{what}: {status}"


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return values


async def client(base: str, n: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(n)
    repo = f"soak/team{n % 8}/app"
    pushed: list[str] = []
    async with aiohttp.ClientSession(base) as http:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            roll = rng.random()
            if roll < 0.3 or not pushed:
                layer = rng.randbytes(rng.choice([512, 20_000, 200_000]))
                config = json.dumps({"os": "linux", "n": n, "i": i}).encode()
                for blob in (config, layer):
                    resp = await http.post(
                        f"/v2/{repo}/blobs/uploads/?digest={digest_of(blob)}", data=blob
                    )
                    tally.note(resp.status, (201,), "push blob")
                manifest = image_manifest(config, [layer])
                tag = f"c{n}-{i}"
                resp = await http.put(
                    f"/v2/{repo}/manifests/{tag}",
                    data=manifest,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                tally.note(resp.status, (201,), "push manifest")
                pushed.append(tag)
            elif roll < 0.75:
                tag = rng.choice(pushed)
                resp = await http.get(f"/v2/{repo}/manifests/{tag}")
                raw = await resp.read()
                tally.note(resp.status, (200,), f"pull manifest {repo}:{tag} {raw[:200]!r}")
                if resp.status != 200:
                    continue
                body = json.loads(raw)
                layer = body["layers"][0]["digest"]
                resp = await http.get(f"/v2/{repo}/blobs/{layer}")
                data = await resp.read()
                tally.note(resp.status, (200,), "pull blob")
                if digest_of(data) != layer:
                    tally.errors += 1
                    tally.first_error = tally.first_error or f"corrupt pull of {layer}"
            elif roll < 0.85:
                tag = pushed.pop(rng.randrange(len(pushed)))
                resp = await http.delete(f"/v2/{repo}/manifests/{tag}")
                tally.note(resp.status, (202,), "delete tag")
            else:
                resp = await http.get("/v2/_catalog?n=50")
                await resp.read()
                tally.note(resp.status, (200,), "catalog")


async def test_soak(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    servers: list[Server] = []
    server = start(
        servers,
        ["--listen", f"127.0.0.1:{port}", "--data", str(data)],
        {"AIOREG_SERVER_ACCESS_LOG": "false"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base) as http:
            assert (await http.get("/v2/")).status == 200
        await asyncio.sleep(0.5)
        before = proc_status(server.proc.pid)
        tally = Tally()
        deadline = time.monotonic() + SECONDS
        await asyncio.gather(*(client(base, n, deadline, tally) for n in range(CLIENTS)))
        await asyncio.sleep(1.0)  # let closed connections be reaped
        after = proc_status(server.proc.pid)
        print(
            f"soak: {SECONDS:g}s, {CLIENTS} clients, {tally.requests} requests, "
            f"{tally.errors} errors, fds {before['fds']}->{after['fds']}, "
            f"peak RSS {after['VmHWM'] // 1024} MiB"
        )
        assert tally.requests > CLIENTS
        assert tally.errors == 0, tally.first_error
        assert after["fds"] <= before["fds"] + 2, (before, after)
        assert list((data / "uploads").iterdir()) == []
        assert after["VmHWM"] < RSS_BOUND_KIB, after
    finally:
        code = server.stop()
        server.log_path.unlink(missing_ok=True)
    assert code == 0
