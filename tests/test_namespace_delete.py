"""Deleting a namespace takes all of it or nothing."""

from __future__ import annotations

from aioreg.auth.accounts import Accounts
from tests.conftest import Reg
from tests.test_management import api, push


async def test_namespace_delete_refused_whole_when_one_tag_is_immutable(reg: Reg) -> None:
    await push(reg, "team/a-first", "v1", [b"first"])
    await push(reg, "team/b-locked", "release-1", [b"locked"])
    await push(reg, "team/c-last", "v1", [b"last"])
    accounts = Accounts(reg.registry.index)
    await accounts.create_namespace("team", None)
    await accounts.configure("team", "team/b-locked", None, {"immutable_tags": ["release-*"]})

    resp = await reg.client.delete("/api/v1/namespaces/team")
    assert resp.status == 403, await resp.text()
    assert "team/b-locked:release-1" in (await resp.json())["errors"][0]["message"]
    # Nothing went: the repository sorted before the protected one is still whole.
    for name in ("team/a-first", "team/b-locked", "team/c-last"):
        tags = await reg.client.get(f"/v2/{name}/tags/list")
        assert tags.status == 200, name
    assert (await reg.client.get("/v2/team/a-first/manifests/v1")).status == 200
    assert await reg.registry.index.accounts.namespace("team") is not None

    await accounts.configure("team", "team/b-locked", None, {"immutable_tags": []})
    deleted = await api(reg, "DELETE", "/namespaces/team")
    assert deleted["deleted"] == ["team/a-first", "team/b-locked", "team/c-last"]
    assert (await reg.client.get("/v2/team/c-last/tags/list")).status == 404
    assert await reg.registry.index.accounts.namespace("team") is None
