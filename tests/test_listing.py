"""Tag lists and the catalog: byte order, ``n``/``last`` pagination and Link headers."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest
from aiohttp import ClientResponse

from tests.conftest import AppFactory, Reg, error_codes

LINK_RE = re.compile(r'<([^>]+)>;\s*rel="next"')

TAGS = [
    "latest",
    "Latest",
    "LATEST",
    "v1.0",
    "v1_0",
    "v1-0",
    "v1.0.1",
    "v10",
    "v9",
    "_private",
    "1.0",
    "a",
    "B",
    "Z-last",
    "z",
]

REPOSITORIES = [
    "team/app/api",
    "team/app",
    "team/app-api",
    "team/app.x",
    "team-b/x",
    "frontend/web",
    "frontend",
    "alpha",
    "a_b",
    "a.b/c",
    "zeta",
]


async def tag_all(reg: Reg, name: str, tags: list[str]) -> None:
    _, body = await reg.push_image(name, tags[0])
    for tag in tags[1:]:
        await reg.push_manifest(name, tag, body)


async def make_repositories(reg: Reg, names: list[str]) -> None:
    for name in names:
        await reg.push_blob(name, f"blob of {name}".encode())


def next_url(resp: ClientResponse) -> str | None:
    link = resp.headers.get("Link")
    if link is None:
        return None
    match = LINK_RE.fullmatch(link.strip())
    assert match, f"malformed Link header: {link!r}"
    return match.group(1)


def link_query(url: str) -> dict[str, str]:
    query = parse_qs(urlparse(url).query, keep_blank_values=True)
    return {key: values[0] for key, values in query.items()}


async def get_json(reg: Reg, url: str) -> tuple[ClientResponse, dict[str, object]]:
    resp = await reg.client.get(url)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].split(";")[0] == "application/json"
    return resp, await resp.json()


async def walk(reg: Reg, first: str, key: str, path: str, n: int) -> list[list[str]]:
    """Follow Link headers from ``first``; returns each page's names."""
    pages: list[list[str]] = []
    url: str | None = first
    while url is not None:
        assert len(pages) < 100, "pagination does not end"
        resp, payload = await get_json(reg, url)
        page = payload[key]
        assert isinstance(page, list)
        pages.append(page)
        url = next_url(resp)
        if url is not None:
            assert urlparse(url).path == path, url
            assert link_query(url) == {"n": str(n), "last": page[-1]}, url
    return pages


# -- tags --------------------------------------------------------------------


async def test_tags_are_in_byte_order(reg: Reg) -> None:
    await tag_all(reg, "team/app", TAGS)
    resp, payload = await get_json(reg, "/v2/team/app/tags/list")
    assert payload == {"name": "team/app", "tags": sorted(TAGS)}
    assert payload["tags"][:4] == ["1.0", "B", "LATEST", "Latest"]
    assert "Link" not in resp.headers


async def test_tags_walk_with_n(reg: Reg) -> None:
    await tag_all(reg, "r", TAGS)
    pages = await walk(reg, "/v2/r/tags/list?n=2", "tags", "/v2/r/tags/list", 2)
    assert [len(p) for p in pages] == [2] * 7 + [1]
    flat = [tag for page in pages for tag in page]
    assert flat == sorted(TAGS)


async def test_tags_walk_ends_without_an_empty_page(reg: Reg) -> None:
    tags = TAGS[:6]
    await tag_all(reg, "r", tags)
    pages = await walk(reg, "/v2/r/tags/list?n=2", "tags", "/v2/r/tags/list", 2)
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [t for p in pages for t in p] == sorted(tags)
    pages = await walk(reg, "/v2/r/tags/list?n=6", "tags", "/v2/r/tags/list", 6)
    assert pages == [sorted(tags)]


async def test_tags_last_alone_returns_the_rest(reg: Reg) -> None:
    await tag_all(reg, "r", TAGS)
    ordered = sorted(TAGS)
    for i, last in enumerate(ordered):
        resp, payload = await get_json(reg, f"/v2/r/tags/list?last={last}")
        assert payload["tags"] == ordered[i + 1 :], last
        assert "Link" not in resp.headers
    # ``last`` need not be a tag that exists.
    _, payload = await get_json(reg, "/v2/r/tags/list?last=m")
    assert payload["tags"] == [t for t in ordered if t > "m"]


async def test_tags_n_and_last(reg: Reg) -> None:
    await tag_all(reg, "r", TAGS)
    ordered = sorted(TAGS)
    resp, payload = await get_json(reg, f"/v2/r/tags/list?n=3&last={ordered[4]}")
    assert payload["tags"] == ordered[5:8]
    url = next_url(resp)
    assert url is not None
    assert link_query(url) == {"n": "3", "last": ordered[7]}
    resp, payload = await get_json(reg, f"/v2/r/tags/list?n=100&last={ordered[4]}")
    assert payload["tags"] == ordered[5:]
    assert "Link" not in resp.headers


async def test_tags_n_zero_is_empty_without_link(reg: Reg) -> None:
    await tag_all(reg, "r", TAGS[:3])
    resp, payload = await get_json(reg, "/v2/r/tags/list?n=0")
    assert payload == {"name": "r", "tags": []}
    assert "Link" not in resp.headers


async def test_tags_n_larger_than_the_list(reg: Reg) -> None:
    await tag_all(reg, "r", TAGS[:3])
    resp, payload = await get_json(reg, "/v2/r/tags/list?n=3")
    assert payload["tags"] == sorted(TAGS[:3])
    assert "Link" not in resp.headers
    resp, payload = await get_json(reg, "/v2/r/tags/list?n=99999999999999999999")
    assert payload["tags"] == sorted(TAGS[:3])
    assert "Link" not in resp.headers


# "\u00b2" (superscript two) passes str.isdigit() but int() refuses it.
BAD_N = ["-1", "abc", "1.5", "0x10", "2abc", "1e3", " 2", "\u00b2"]


@pytest.mark.parametrize("n", BAD_N)
async def test_tags_bad_n_is_400(reg: Reg, n: str) -> None:
    await tag_all(reg, "r", TAGS[:3])
    resp = await reg.client.get("/v2/r/tags/list", params={"n": n})
    assert resp.status == 400, f"n={n!r} must be refused as a client error: {await resp.text()}"
    assert error_codes(await resp.json()) == ["PAGINATION_NUMBER_INVALID"]


@pytest.mark.parametrize("url", ["/v2/r/tags/list", "/v2/_catalog"])
async def test_enormous_n_is_capped(reg: Reg, url: str) -> None:
    """An ``n`` over the maximum is capped, however many digits it has (int() stops at 4300)."""
    await tag_all(reg, "r", TAGS[:3])
    resp = await reg.client.get(url, params={"n": "9" * 5000})
    assert resp.status == 200, f"a 5000-digit n must be capped, not fail: {await resp.text()}"
    assert "Link" not in resp.headers


async def test_tags_of_an_empty_repository(reg: Reg) -> None:
    await reg.push_blob("r", b"a blob, no manifests")
    _, payload = await get_json(reg, "/v2/r/tags/list")
    assert payload == {"name": "r", "tags": []}


async def test_deleted_tags_leave_the_list(reg: Reg) -> None:
    await tag_all(reg, "r", ["a", "b", "c"])
    resp = await reg.client.delete("/v2/r/manifests/b")
    assert resp.status == 202
    _, payload = await get_json(reg, "/v2/r/tags/list")
    assert payload["tags"] == ["a", "c"]


async def test_tags_are_per_repository(reg: Reg) -> None:
    await tag_all(reg, "one", ["x", "y"])
    await tag_all(reg, "one/two", ["z"])
    _, payload = await get_json(reg, "/v2/one/tags/list")
    assert payload == {"name": "one", "tags": ["x", "y"]}
    _, payload = await get_json(reg, "/v2/one/two/tags/list")
    assert payload == {"name": "one/two", "tags": ["z"]}


async def test_multi_level_name_pagination(reg: Reg) -> None:
    await tag_all(reg, "team/app/api", TAGS[:5])
    path = "/v2/team/app/api/tags/list"
    pages = await walk(reg, f"{path}?n=2", "tags", path, 2)
    assert [t for p in pages for t in p] == sorted(TAGS[:5])


async def test_tags_of_unknown_repository_is_name_unknown(reg: Reg) -> None:
    await tag_all(reg, "known", ["a"])
    for name in ("unknown", "known/child", "kno"):
        resp = await reg.client.get(f"/v2/{name}/tags/list")
        assert resp.status == 404, name
        assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]


@pytest.mark.parametrize(
    "name", ["Upper", "team/App", "-lead", "trail-", "a__b__c/.x", "a" * 256, "a/__b"]
)
async def test_tags_of_invalid_name_is_name_invalid(reg: Reg, name: str) -> None:
    resp = await reg.client.get(f"/v2/{name}/tags/list")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["NAME_INVALID"]


async def test_page_size_max_caps_tag_lists(make_registry: AppFactory) -> None:
    reg = await make_registry(page_size_max=3)
    await tag_all(reg, "r", TAGS)
    ordered = sorted(TAGS)
    for first in ("/v2/r/tags/list", "/v2/r/tags/list?n=50"):
        resp, payload = await get_json(reg, first)
        assert payload["tags"] == ordered[:3]
        url = next_url(resp)
        assert url is not None, "a capped listing must say there is more"
        assert link_query(url) == {"n": "3", "last": ordered[2]}
    pages = await walk(reg, "/v2/r/tags/list", "tags", "/v2/r/tags/list", 3)
    assert [t for p in pages for t in p] == ordered


# -- catalog -------------------------------------------------------------------


async def test_catalog_is_in_byte_order(reg: Reg) -> None:
    await make_repositories(reg, REPOSITORIES)
    resp, payload = await get_json(reg, "/v2/_catalog")
    assert payload == {"repositories": sorted(REPOSITORIES)}
    assert payload["repositories"][-6:-1] == [
        "team-b/x",
        "team/app",
        "team/app-api",
        "team/app.x",
        "team/app/api",
    ]
    assert "Link" not in resp.headers


async def test_empty_catalog(reg: Reg) -> None:
    resp, payload = await get_json(reg, "/v2/_catalog")
    assert payload == {"repositories": []}
    assert "Link" not in resp.headers


async def test_catalog_lists_repositories_made_by_manifest_push(reg: Reg) -> None:
    await reg.push_image("team/app/api", "v1")
    await reg.push_image("frontend/web", "v1")
    _, payload = await get_json(reg, "/v2/_catalog")
    assert payload == {"repositories": ["frontend/web", "team/app/api"]}


async def test_catalog_walk_with_n(reg: Reg) -> None:
    await make_repositories(reg, REPOSITORIES)
    pages = await walk(reg, "/v2/_catalog?n=2", "repositories", "/v2/_catalog", 2)
    assert [len(p) for p in pages] == [2] * 5 + [1]
    assert [r for p in pages for r in p] == sorted(REPOSITORIES)


async def test_catalog_walk_ends_without_an_empty_page(reg: Reg) -> None:
    await make_repositories(reg, REPOSITORIES[:4])
    pages = await walk(reg, "/v2/_catalog?n=2", "repositories", "/v2/_catalog", 2)
    assert [len(p) for p in pages] == [2, 2]
    assert [r for p in pages for r in p] == sorted(REPOSITORIES[:4])


async def test_catalog_last_alone_returns_the_rest(reg: Reg) -> None:
    await make_repositories(reg, REPOSITORIES)
    ordered = sorted(REPOSITORIES)
    for i, last in enumerate(ordered):
        resp = await reg.client.get("/v2/_catalog", params={"last": last})
        assert resp.status == 200
        assert (await resp.json())["repositories"] == ordered[i + 1 :], last
        assert "Link" not in resp.headers


async def test_catalog_n_and_last(reg: Reg) -> None:
    await make_repositories(reg, REPOSITORIES)
    ordered = sorted(REPOSITORIES)
    resp = await reg.client.get("/v2/_catalog", params={"n": "3", "last": "frontend"})
    assert resp.status == 200
    start = ordered.index("frontend") + 1
    assert (await resp.json())["repositories"] == ordered[start : start + 3]
    url = next_url(resp)
    assert url is not None
    assert link_query(url) == {"n": "3", "last": ordered[start + 2]}


async def test_catalog_n_zero_is_empty_without_link(reg: Reg) -> None:
    await make_repositories(reg, REPOSITORIES[:3])
    resp, payload = await get_json(reg, "/v2/_catalog?n=0")
    assert payload == {"repositories": []}
    assert "Link" not in resp.headers


@pytest.mark.parametrize("n", BAD_N)
async def test_catalog_bad_n_is_400(reg: Reg, n: str) -> None:
    await make_repositories(reg, REPOSITORIES[:3])
    resp = await reg.client.get("/v2/_catalog", params={"n": n})
    assert resp.status == 400, f"n={n!r} must be refused as a client error: {await resp.text()}"
    assert error_codes(await resp.json()) == ["PAGINATION_NUMBER_INVALID"]


async def test_empty_n_is_no_n(reg: Reg) -> None:
    await make_repositories(reg, REPOSITORIES[:3])
    resp, payload = await get_json(reg, "/v2/_catalog?n=")
    assert payload == {"repositories": sorted(REPOSITORIES[:3])}
    assert "Link" not in resp.headers


async def test_page_size_max_caps_the_catalog(make_registry: AppFactory) -> None:
    reg = await make_registry(page_size_max=3)
    await make_repositories(reg, REPOSITORIES)
    ordered = sorted(REPOSITORIES)
    for first in ("/v2/_catalog", "/v2/_catalog?n=1000"):
        resp, payload = await get_json(reg, first)
        assert payload["repositories"] == ordered[:3]
        url = next_url(resp)
        assert url is not None, "a capped listing must say there is more"
        assert link_query(url) == {"n": "3", "last": ordered[2]}
    pages = await walk(reg, "/v2/_catalog", "repositories", "/v2/_catalog", 3)
    assert [r for p in pages for r in p] == ordered
