"""API version check and errors for requests no route serves."""

from __future__ import annotations

from tests.conftest import Reg, error_codes


async def test_version_check(reg: Reg) -> None:
    resp = await reg.client.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_unknown_route_is_spec_error_json(reg: Reg) -> None:
    resp = await reg.client.get("/v2/foo/nonsense")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]
    resp = await reg.client.get("/nothing-here")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]


async def test_wrong_method_is_unsupported(reg: Reg) -> None:
    resp = await reg.client.post("/v2/foo/tags/list")
    assert resp.status == 405
    assert error_codes(await resp.json()) == ["UNSUPPORTED"]
    assert "GET" in resp.headers["Allow"]
