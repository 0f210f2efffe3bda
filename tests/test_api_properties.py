"""Property tests on ``/api/v1`` query parameters: 200 or 400 with the error JSON, never 5xx.

A real ``aioreg serve`` process with access control on takes every generated
request over raw HTTP (http.client), authenticated as the admin so each value
reaches the handler that parses it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.process import Server, free_port, start
from tests.test_bad_input import SETTINGS, Target, seed_repository

ADMIN_PASSWORD = "props-admin-pw"
API_CODES = {"BAD_REQUEST", "PAGINATION_NUMBER_INVALID"}
SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("api-props")
    port = free_port()
    started: list[Server] = []
    server = start(
        started,
        ["--listen", f"127.0.0.1:{port}", "--data", str(root / "data")],
        {
            "AIOREG_SERVER_ACCESS_LOG": "false",
            "AIOREG_AUTH": "1",
            "AIOREG_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        },
    )
    target = AdminTarget("127.0.0.1", port, root)
    seed_repository(target)
    yield target
    assert server.stop() == 0, server.output


class AdminTarget(Target):
    """Every request with the admin's Basic credentials."""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        return super().request(
            method, path, body, {"Authorization": f"Basic {token}", **(headers or {})}
        )


def expect_ok_or_400(status: int, body: bytes, allowed: frozenset[int] = frozenset()) -> None:
    assert status < 500, f"server error {status}: {body[:300]!r}"
    assert status in {200, 400} | allowed, f"unexpected status {status}: {body[:300]!r}"
    if status >= 400:
        errors = json.loads(body)["errors"]
        assert errors and errors[0]["message"], errors
        if status == 400:
            assert errors[0]["code"] in API_CODES, errors


def encoded(value: str | bytes) -> str:
    return quote_from_bytes(value, safe="") if isinstance(value, bytes) else quote(value, safe="")


values = st.one_of(
    st.text(max_size=60),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(alphabet="0123456789" + SUPERSCRIPTS + "٣०", min_size=1, max_size=12),
    st.sampled_from(
        ["9" * 4301, "0" * 4400 + "1", "1" * 4301, "", " 1", "1 ", "+1", "0x10", "1e3"]
    ),
    st.binary(max_size=30),
)
words = st.one_of(
    values,
    st.sampled_from(["name", "size", "last_push", "last_pull", "asc", "desc", "seed", "app"]),
)


def query(**params: str | bytes | None) -> str:
    """The query string; past the HTTP parser's request-line limit (8190 bytes) the
    request never reaches the registry, so such combinations are not generated."""
    text = "&".join(f"{key}={encoded(v)}" for key, v in params.items() if v is not None)
    assume(len(text) < 7000)
    return text


@SETTINGS
@given(
    namespace=st.one_of(st.just("seed"), st.text(alphabet="abc-_.", min_size=1, max_size=20)),
    sort=st.none() | words,
    order=st.none() | words,
    offset=st.none() | values,
    limit=st.none() | values,
)
def test_repository_listing_parameters(
    api: Target,
    namespace: str,
    sort: str | bytes | None,
    order: str | bytes | None,
    offset: str | bytes | None,
    limit: str | bytes | None,
) -> None:
    q = query(sort=sort, order=order, offset=offset, limit=limit)
    status, _, body = api.request(
        "GET", f"/api/v1/namespaces/{encoded(namespace)}/repositories?{q}"
    )
    # "." and ".." are path steps, not a namespace: no such route.
    expect_ok_or_400(status, body, frozenset({404}) if namespace in (".", "..") else frozenset())


@SETTINGS
@given(q=words, limit=st.none() | values)
def test_search_parameters(api: Target, q: str | bytes, limit: str | bytes | None) -> None:
    status, _, body = api.request("GET", f"/api/v1/search?{query(q=q, limit=limit)}")
    expect_ok_or_400(status, body)


@SETTINGS
@given(namespace=words, limit=st.none() | values)
def test_usage_and_events_parameters(
    api: Target, namespace: str | bytes, limit: str | bytes | None
) -> None:
    status, _, body = api.request("GET", f"/api/v1/usage?{query(namespace=namespace)}")
    expect_ok_or_400(status, body)
    status, _, body = api.request("GET", f"/api/v1/events?{query(limit=limit)}")
    expect_ok_or_400(status, body)
