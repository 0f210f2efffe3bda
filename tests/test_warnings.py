"""Warning headers (distribution-spec "Warnings"), repository deprecation, and ``?ns=``."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import AppFactory, Reg, error_codes
from tests.test_auth import basic, bearer, push_image, start_auth, token

PREFIX = "/api/v1"
# RFC 7234 warning-value with the spec's constraints: code 299, agent "-", no date.
WARNING = re.compile(r'299 - "((?:[^"\\\x00-\x1f\x7f]|\\.)*)"')


def warnings_of(headers: object) -> list[str]:
    values: list[str] = headers.getall("Warning", [])  # type: ignore[attr-defined]
    for value in values:
        assert WARNING.fullmatch(value), value
    return values


def warning_bytes(values: list[str]) -> int:
    """Every header line whole: "Warning: " + value + CRLF."""
    return sum(len(b"Warning: ") + len(v.encode()) + 2 for v in values)


async def deprecate(reg: Reg, name: str, message: str, status: int = 200, **kw: object) -> dict:
    resp = await reg.client.put(
        f"{PREFIX}/repositories/{name}/-/deprecation", json={"message": message}, **kw
    )
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_deprecated_repository_warns_on_pulls_until_cleared(reg: Reg) -> None:
    digest, _ = await reg.push_image("team/old", "v1")
    await reg.push_image("team/new", "v1")
    for method in ("GET", "HEAD"):
        resp = await reg.client.request(method, "/v2/team/old/manifests/v1")
        assert resp.status == 200 and warnings_of(resp.headers) == []

    body = await deprecate(reg, "team/old", '  use team/new "v2"\r\nnow  ')
    assert body == {"repository": "team/old", "message": 'use team/new "v2"\r\nnow'}
    expected = '299 - "team/old is deprecated: use team/new \\"v2\\" now"'
    for method in ("GET", "HEAD"):
        for reference in ("v1", digest):
            resp = await reg.client.request(method, f"/v2/team/old/manifests/{reference}")
            assert resp.status == 200
            assert warnings_of(resp.headers) == [expected]
    resp = await reg.client.get("/v2/team/old/tags/list")
    assert resp.status == 200 and warnings_of(resp.headers) == [expected]
    resp = await reg.client.get("/v2/team/old/manifests/missing")
    assert resp.status == 404 and warnings_of(resp.headers) == [expected]
    resp = await reg.client.get("/v2/team/new/manifests/v1")
    assert warnings_of(resp.headers) == []
    detail = await (await reg.client.get(f"{PREFIX}/repositories/team/old")).json()
    assert detail["deprecation"] == 'use team/new "v2"\r\nnow'

    resp = await reg.client.delete(f"{PREFIX}/repositories/team/old/-/deprecation")
    assert resp.status == 200
    assert await resp.json() == {"repository": "team/old", "message": None}
    for method in ("GET", "HEAD"):
        resp = await reg.client.request(method, "/v2/team/old/manifests/v1")
        assert resp.status == 200 and warnings_of(resp.headers) == []
    detail = await (await reg.client.get(f"{PREFIX}/repositories/team/old")).json()
    assert detail["deprecation"] is None


async def test_deprecated_tag_warns_on_pulls_by_that_tag(reg: Reg) -> None:
    digest, body = await reg.push_image("team/app", "old")
    assert await reg.push_manifest("team/app", "current", body) == digest
    path = f"{PREFIX}/repositories/team/app/-/tags/old/deprecation"
    resp = await reg.client.put(path, json={"message": "use current"})
    assert resp.status == 200
    assert await resp.json() == {"repository": "team/app", "message": "use current", "tag": "old"}
    tag_warning = '299 - "team/app:old is deprecated: use current"'
    for method in ("GET", "HEAD"):
        resp = await reg.client.request(method, "/v2/team/app/manifests/old")
        assert warnings_of(resp.headers) == [tag_warning]
        for other in ("current", digest):
            resp = await reg.client.request(method, f"/v2/team/app/manifests/{other}")
            assert resp.status == 200 and warnings_of(resp.headers) == []
    detail = await (await reg.client.get(f"{PREFIX}/repositories/team/app")).json()
    assert {t["name"]: t["deprecation"] for t in detail["tags"]} == {
        "current": None,
        "old": "use current",
    }
    assert detail["deprecation"] is None
    # The repository's notice comes first, then the tag's.
    await deprecate(reg, "team/app", "moving to team/next")
    resp = await reg.client.get("/v2/team/app/manifests/old")
    assert warnings_of(resp.headers) == [
        '299 - "team/app is deprecated: moving to team/next"',
        tag_warning,
    ]
    resp = await reg.client.delete(path)
    assert resp.status == 200
    assert await resp.json() == {"repository": "team/app", "message": None, "tag": "old"}
    resp = await reg.client.get("/v2/team/app/manifests/old")
    assert warnings_of(resp.headers) == ['299 - "team/app is deprecated: moving to team/next"']
    resp = await reg.client.put(
        f"{PREFIX}/repositories/team/app/-/tags/-bad/deprecation", json={"message": "x"}
    )
    assert resp.status == 400 and error_codes(await resp.json()) == ["TAG_INVALID"]


async def test_deprecation_requests_that_are_refused(reg: Reg) -> None:
    await reg.push_image("team/app", "v1")
    body = await deprecate(reg, "team/nothing", "gone", 404)
    assert error_codes(body) == ["NAME_UNKNOWN"]
    for bad in ({"message": ""}, {"message": "   "}, {"message": "x" * 8193}, {"msg": "x"}, {}):
        resp = await reg.client.put(f"{PREFIX}/repositories/team/app/-/deprecation", json=bad)
        assert resp.status == 400, bad
        assert error_codes(await resp.json()) == ["BAD_REQUEST"]
    resp = await reg.client.get("/v2/team/app/manifests/v1")
    assert warnings_of(resp.headers) == []


async def test_warning_headers_stay_within_4096_bytes(reg: Reg) -> None:
    await reg.push_image("team/app", "v1")
    # Multi-byte characters and quotes: a cut must fall between characters and escapes.
    message = 'é"\\' * 2500
    await deprecate(reg, "team/app", message)
    for method in ("GET", "HEAD"):
        resp = await reg.client.request(method, "/v2/team/app/manifests/v1")
        assert resp.status == 200
        values = warnings_of(resp.headers)
        assert len(values) == 1
        assert 4000 < warning_bytes(values) <= 4096
        assert values[0].startswith('299 - "team/app is deprecated: é\\"\\\\é')
        assert values[0].endswith('..."')


async def test_only_admins_with_delete_rights_deprecate(make_registry: AppFactory) -> None:
    reg = await start_auth(make_registry)
    status, _ = await push_image(reg, "team/app", "v1", basic("alice", "alice-pw"))
    assert status == 201
    body = await deprecate(reg, "team/app", "moved", 401)
    assert error_codes(body) == ["UNAUTHORIZED"]
    body = await deprecate(reg, "team/app", "moved", 403, headers=basic("bob", "bob-pw"))
    assert error_codes(body) == ["DENIED"]
    resp = await reg.client.delete(
        f"{PREFIX}/repositories/team/app/-/deprecation", headers=basic("bob", "bob-pw")
    )
    assert resp.status == 403
    await deprecate(reg, "team/app", "moved to team/new", headers=basic("alice", "alice-pw"))
    alice = await token(reg, "repository:team/app:pull", basic("alice", "alice-pw"))
    resp = await reg.client.get("/v2/team/app/manifests/v1", headers=bearer(alice))
    assert resp.status == 200
    assert warnings_of(resp.headers) == ['299 - "team/app is deprecated: moved to team/new"']
    # Who may not pull hears nothing about the repository.
    resp = await reg.client.get("/v2/team/app/manifests/v1")
    assert resp.status == 401 and warnings_of(resp.headers) == []


async def test_token_about_to_expire_warns(make_registry: AppFactory) -> None:
    reg = await start_auth(make_registry, token_ttl=5)
    alice = basic("alice", "alice-pw")
    status, _ = await push_image(reg, "team/app", "v1", alice)
    assert status == 201
    await deprecate(reg, "team/app", "x" * 5000, headers=alice)
    value = await token(reg, "repository:team/app:pull", alice)
    resp = await reg.client.get("/v2/team/app/manifests/v1", headers=bearer(value))
    assert resp.status == 200
    (alone,) = warnings_of(resp.headers)
    assert alone.startswith('299 - "team/app is deprecated: xxx') and alone.endswith('..."')
    deadline = time.monotonic() + 15
    while True:
        resp = await reg.client.get("/v2/team/app/manifests/v1", headers=bearer(value))
        assert resp.status == 200, "the token expired without a warning"
        found = warnings_of(resp.headers)
        if len(found) > 1:
            break
        assert found == [alone]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # Access control speaks first; the long notice gives up what the two need.
    assert re.fullmatch(r'299 - "Your auth token will expire in [012] seconds\."', found[0])
    assert len(found) == 2 and alone.startswith(found[1][:-4]) and len(found[1]) < len(alone)
    assert 4000 < warning_bytes(found) <= 4096


def aioreg(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioreg", *args, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_deprecates_next_to_a_running_server(reg: Reg) -> None:
    await reg.push_image("team/app", "v1")
    run = await asyncio.to_thread(
        aioreg, reg.data_dir, "repo", "deprecate", "team/app", "--message", "use team/next"
    )
    assert run.returncode == 0, run.stderr
    assert "deprecated team/app: use team/next" in run.stdout
    resp = await reg.client.get("/v2/team/app/manifests/v1")
    assert warnings_of(resp.headers) == ['299 - "team/app is deprecated: use team/next"']
    show = await asyncio.to_thread(aioreg, reg.data_dir, "repo", "show", "team/app")
    assert show.returncode == 0 and "deprecated: use team/next" in show.stdout

    run = await asyncio.to_thread(aioreg, reg.data_dir, "repo", "undeprecate", "team/app")
    assert run.returncode == 0, run.stderr
    resp = await reg.client.get("/v2/team/app/manifests/v1")
    assert warnings_of(resp.headers) == []
    show = await asyncio.to_thread(aioreg, reg.data_dir, "repo", "show", "team/app")
    assert show.returncode == 0 and "deprecated" not in show.stdout

    run = await asyncio.to_thread(
        aioreg, reg.data_dir, "repo", "deprecate", "team/app", "--tag", "v1", "-m", "old"
    )
    assert run.returncode == 0, run.stderr
    resp = await reg.client.get("/v2/team/app/manifests/v1")
    assert warnings_of(resp.headers) == ['299 - "team/app:v1 is deprecated: old"']
    show = await asyncio.to_thread(aioreg, reg.data_dir, "repo", "show", "team/app")
    assert show.returncode == 0 and "  deprecated: old" in show.stdout
    run = await asyncio.to_thread(
        aioreg, reg.data_dir, "repo", "undeprecate", "team/app", "--tag", "v1"
    )
    assert run.returncode == 0, run.stderr
    resp = await reg.client.get("/v2/team/app/manifests/v1")
    assert warnings_of(resp.headers) == []

    run = await asyncio.to_thread(
        aioreg, reg.data_dir, "repo", "deprecate", "team/none", "--message", "x"
    )
    assert run.returncode != 0 and "team/none" in run.stderr


async def test_ns_on_pulls_is_ignored_by_a_hosted_registry(reg: Reg) -> None:
    digest, body = await reg.push_image("library/app", "v1")
    blob = await reg.push_blob("library/app", b"some layer")
    for path in (
        "/v2/library/app/manifests/v1",
        f"/v2/library/app/manifests/{digest}",
        f"/v2/library/app/blobs/{blob}",
        "/v2/library/app/tags/list",
        f"/v2/library/app/referrers/{digest}",
    ):
        for method in ("GET", "HEAD") if "/manifests/" in path or "/blobs/" in path else ("GET",):
            plain = await reg.client.request(method, path)
            scoped = await reg.client.request(method, path + "?ns=docker.io")
            assert scoped.status == plain.status, path
            assert await scoped.read() == await plain.read()
            assert "OCI-Namespace" not in scoped.headers
            for header in ("Docker-Content-Digest", "Content-Type", "Content-Length"):
                assert scoped.headers.get(header) == plain.headers.get(header), (path, header)
    resp = await reg.client.get("/v2/library/app/manifests/v1?ns=docker.io&ns=%00bad")
    assert resp.status == 200 and await resp.read() == body
