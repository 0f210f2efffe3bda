"""Fixtures: a real aioreg app on a loopback port with its data in a temp dir."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from aioreg.api.http import REGISTRY_KEY
from aioreg.api.server import RegistryServer
from aioreg.config import Config, load_config
from aioreg.domain.registry import Registry
from tests.process import Server


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on uvloop, the loop ``aioreg serve`` runs on."""
    return {"uvloop": uvloop.new_event_loop}


class HttpClient:
    """An HTTP client bound to one server's base URL (``client.get("/v2/")``)."""

    def __init__(self, server: RegistryServer) -> None:
        self.server = server
        self.session = aiohttp.ClientSession(
            server.url, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300)
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("allow_redirects", False)
        return self.session.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Any:
        return self.request("HEAD", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    async def close(self) -> None:
        await self.session.close()


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest(config: bytes, layers: list[bytes], **extra: object) -> bytes:
    """An OCI image manifest referencing exactly these config and layer bytes."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
                for layer in layers
            ],
            **extra,
        }
    ).encode()


OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


def artifact_manifest(
    artifact_type: str, subject: tuple[str, str, int] | None = None, **extra: object
) -> bytes:
    """An OCI 1.1 artifact: empty config (``EMPTY_JSON``), no layers, optional subject
    given as (media type, digest, size)."""
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": digest_of(EMPTY_JSON), "size": 2},
        "layers": [],
        **extra,
    }
    if subject is not None:
        media_type, digest, size = subject
        body["subject"] = {"mediaType": media_type, "digest": digest, "size": size}
    return json.dumps(body).encode()


def make_config(
    data_dir: Path,
    server: dict[str, object] | None = None,
    storage: dict[str, object] | None = None,
    auth: dict[str, object] | None = None,
    gc: dict[str, object] | None = None,
    proxy: list[dict[str, object]] | None = None,
    sections: dict[str, dict[str, object]] | None = None,
    **limits: float,
) -> Config:
    """``sections``: any other config sections, e.g. ``{"metrics": {"token": "t"}}``."""
    overrides: dict[str, object] = {"storage": {"data_dir": str(data_dir), **(storage or {})}}
    overrides.update(sections or {})
    if limits:
        overrides["limits"] = dict(limits)
    if server:
        overrides["server"] = server
    if auth:
        overrides["auth"] = auth
    if gc:
        overrides["gc"] = gc
    if proxy:
        overrides["proxy"] = proxy
    return load_config(None, environ={}, overrides=overrides)


class Reg:
    """A test client with helpers for the common pushes."""

    def __init__(self, client: HttpClient, server: RegistryServer) -> None:
        self.client = client
        self.server = server
        self.app: web.Application = server.app

    @property
    def registry(self) -> Registry:
        return self.app[REGISTRY_KEY]

    @property
    def data_dir(self) -> Path:
        return self.registry.config.data_path

    async def push_blob(self, name: str, data: bytes) -> str:
        digest = digest_of(data)
        resp = await self.client.post(f"/v2/{name}/blobs/uploads/?digest={digest}", data=data)
        assert resp.status == 201, await resp.text()
        return digest

    async def push_manifest(
        self, name: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        resp = await self.client.put(
            f"/v2/{name}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
        )
        assert resp.status == 201, await resp.text()
        return resp.headers["Docker-Content-Digest"]

    async def push_image(
        self, name: str, tag: str | None, seed: str = "x", **extra: object
    ) -> tuple[str, bytes]:
        """Config + one layer + OCI manifest; returns (manifest digest, manifest bytes)."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layer = f"layer-{seed}".encode() * 100
        config_digest = await self.push_blob(name, config)
        layer_digest = await self.push_blob(name, layer)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
            **extra,
        }
        body = json.dumps(manifest, indent=1).encode()
        digest = await self.push_manifest(name, tag or digest_of(body), body)
        return digest, body


AppFactory = Callable[..., Awaitable[Reg]]


@pytest.fixture
async def make_registry(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Start (and restart) registries on a data dir, each built exactly as ``aioreg serve``
    builds it (same runner, uvloop); all are stopped at teardown."""
    started: list[Reg] = []

    async def start(
        data_dir: Path | None = None,
        server: dict[str, object] | None = None,
        storage: dict[str, object] | None = None,
        auth: dict[str, object] | None = None,
        gc: dict[str, object] | None = None,
        proxy: list[dict[str, object]] | None = None,
        sections: dict[str, dict[str, object]] | None = None,
        **limits: float,
    ) -> Reg:
        config = make_config(
            data_dir or tmp_path / "data",
            {"listen": "127.0.0.1:0", "access_log": False, **(server or {})},
            storage,
            auth,
            gc,
            proxy,
            sections,
            **limits,
        )
        loop = asyncio.get_running_loop()
        assert isinstance(loop, uvloop.Loop), "tests must run on the loop aioreg serve runs on"
        registry_server = RegistryServer(config)
        await registry_server.start()
        reg = Reg(HttpClient(registry_server), registry_server)
        started.append(reg)
        return reg

    yield start
    for reg in started:
        await reg.client.close()
        await reg.server.stop()


@pytest.fixture
async def reg(make_registry: AppFactory) -> Reg:
    return await make_registry()


def error_codes(payload: dict[str, object]) -> list[str]:
    return [e["code"] for e in payload["errors"]]  # type: ignore[index, union-attr]


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()
        if os.environ.get("AIOREG_KEEP_LOGS") is None:
            server.log_path.unlink(missing_ok=True)


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[list[str]]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (.ci/run installs it)")
    runroot = tempfile.mkdtemp(prefix="aioreg-podman-", dir="/tmp")
    base = [
        "podman",
        "--storage-driver",
        "vfs",
        "--root",
        str(tmp_path / "podman-root"),
        "--runroot",
        runroot,  # podman refuses a runroot path longer than 50 characters
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]
    result = subprocess.run([*base, "info"], capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        pytest.skip(f"podman cannot run on this machine: {result.stderr.strip()[:500]}")
    yield base
    subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, timeout=180)
    shutil.rmtree(runroot, ignore_errors=True)
