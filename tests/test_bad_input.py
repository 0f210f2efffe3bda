"""Property tests: whatever a client sends, it gets a 4xx with the spec's code, never a 500.

A real ``aioreg serve`` process takes every generated request over raw HTTP
(http.client, so paths and headers go out exactly as generated). After all
properties ran, nothing outside the data directory has been touched.
"""

from __future__ import annotations

import http.client
import json
import os
import string
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, digest_of
from tests.process import Server, free_port, start

EXAMPLES = int(os.environ.get("AIOREG_PROPERTY_EXAMPLES", "120"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SPEC_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNSUPPORTED",
    "PAGINATION_NUMBER_INVALID",
}


class Target:
    def __init__(self, host: str, port: int, root: Path) -> None:
        self.host, self.port, self.root = host, port, root
        self.tried = 0

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        self.tried += 1
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def expect_client_error(self, status: int, body: bytes, allowed: set[int]) -> str | None:
        assert status < 500, f"server error {status}: {body[:300]!r}"
        assert status in allowed, f"unexpected status {status}: {body[:300]!r}"
        if status >= 400 and body:
            errors = json.loads(body)["errors"]
            assert errors and errors[0]["code"] in SPEC_CODES, errors
            return errors[0]["code"]
        return None


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("bad-input")
    sentinel = root / "outside"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("untouched")
    port = free_port()
    started: list[Server] = []
    data = root / "data"
    server = start(
        started,
        ["--listen", f"127.0.0.1:{port}", "--data", str(data)],
        {"AIOREG_SERVER_ACCESS_LOG": "false"},
    )
    target = Target("127.0.0.1", port, root)
    seed_repository(target)
    before = sorted(p.relative_to(root) for p in root.rglob("*") if "data" not in p.parts)
    yield target
    assert server.stop() == 0, server.output
    after = sorted(p.relative_to(root) for p in root.rglob("*") if "data" not in p.parts)
    assert after == before, "files outside the data directory changed"
    assert (sentinel / "keep.txt").read_text() == "untouched"
    print(f"bad inputs tried: {target.tried}")


def seed_repository(target: Target) -> None:
    config, layer = b'{"os":"linux","architecture":"amd64"}', b"layer bytes" * 100
    for blob in (config, layer):
        status, _, _ = target.request(
            "POST", f"/v2/seed/app/blobs/uploads/?digest={digest_of(blob)}", blob
        )
        assert status == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
        }
    ).encode()
    status, _, _ = target.request(
        "PUT", "/v2/seed/app/manifests/latest", manifest, {"Content-Type": OCI_MANIFEST}
    )
    assert status == 201
    target.layer_digest = digest_of(layer)  # type: ignore[attr-defined]


def http_legal(value: str) -> str:
    """Keep generated header values inside HTTP's field-value grammar.

    Values that break HTTP framing itself are refused by the HTTP parser before
    any registry code runs; ``test_malformed_http_is_a_client_error`` covers them.
    """
    return "".join(c if " " <= c <= "~" else "?" for c in value)


def test_malformed_http_is_a_client_error(target: Target) -> None:
    status, _, _ = target.request("GET", "/v2/", headers={"X-Bad": "a\x08b"})
    assert status == 400


def encode(segment: str) -> str:
    return quote(segment, safe="/")


names = st.one_of(
    st.text(min_size=0, max_size=300),
    st.text(alphabet=string.ascii_letters + string.digits + "._-/", min_size=1, max_size=300),
    st.sampled_from(
        ["..", "../..", "a/../../etc", "a//b", "A", "a" * 256, "seed/app/..", "%2e%2e"]
    ),
)
references = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"[a-z0-9]{1,10}:[0-9a-fA-F]{0,140}", fullmatch=True),
    st.sampled_from(["sha256:" + "A" * 64, "sha256:abc", "md5:" + "0" * 32, "sha512:" + "0" * 64]),
)


@SETTINGS
@given(name=names)
def test_repository_names(target: Target, name: str) -> None:
    status, _, body = target.request("GET", f"/v2/{encode(name)}/tags/list")
    code = target.expect_client_error(status, body, {200, 400, 404})
    assert code in (None, "NAME_INVALID", "NAME_UNKNOWN")


@SETTINGS
@given(reference=references)
def test_manifest_references(target: Target, reference: str) -> None:
    status, _, body = target.request("GET", f"/v2/seed/app/manifests/{encode(reference)}")
    code = target.expect_client_error(status, body, {200, 400, 404})
    assert code in (None, "TAG_INVALID", "DIGEST_INVALID", "MANIFEST_UNKNOWN", "NAME_UNKNOWN")


@SETTINGS
@given(digest=references)
def test_blob_digests(target: Target, digest: str) -> None:
    for method in ("GET", "HEAD", "DELETE"):
        status, _, body = target.request(method, f"/v2/seed/other/blobs/{encode(digest)}")
        target.expect_client_error(status, body, {400, 404})


@SETTINGS
@given(
    header=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"(bytes[ =])?-?\d{0,12}--?\d{0,12}(/\d+|/\*)?", fullmatch=True),
    )
)
def test_content_range(target: Target, header: str) -> None:
    status, headers, body = target.request("POST", "/v2/seed/app/blobs/uploads/")
    assert status == 202
    location = headers["location"]
    header = http_legal(header)
    status, _, body = target.request("PATCH", location, b"0123456789", {"Content-Range": header})
    target.expect_client_error(status, body, {202, 400, 416})
    target.request("DELETE", location)


@SETTINGS
@given(
    header=st.one_of(
        st.text(max_size=40), st.from_regex(r"bytes=-?\d{0,8}-?\d{0,8}(,\d*-\d*)?", fullmatch=True)
    )
)
def test_blob_range(target: Target, header: str) -> None:
    header = http_legal(header)
    path = f"/v2/seed/app/blobs/{target.layer_digest}"  # type: ignore[attr-defined]
    status, headers, body = target.request("GET", path, headers={"Range": header})
    assert status in (200, 206, 416), status
    if status == 206:
        start, end = headers["content-range"].split(" ")[1].split("/")[0].split("-")
        assert len(body) == int(end) - int(start) + 1


@SETTINGS
@given(
    n=st.one_of(st.text(max_size=12), st.integers(-5, 10**12).map(str)), last=st.text(max_size=50)
)
def test_pagination_parameters(target: Target, n: str, last: str) -> None:
    for path in ("/v2/seed/app/tags/list", "/v2/_catalog"):
        status, _, body = target.request("GET", f"{path}?n={quote(n)}&last={quote(last)}")
        code = target.expect_client_error(status, body, {200, 400})
        assert code in (None, "PAGINATION_NUMBER_INVALID")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
manifest_like = st.fixed_dictionaries(
    {"schemaVersion": st.sampled_from([2, 1, "2", None])},
    optional={
        "mediaType": st.sampled_from([OCI_MANIFEST, OCI_INDEX, "text/plain", 7]),
        "config": json_values,
        "layers": json_values,
        "manifests": json_values,
        "subject": json_values,
    },
)


@SETTINGS
@given(
    body=st.one_of(manifest_like.map(lambda d: json.dumps(d).encode()), st.binary(max_size=300)),
    content_type=st.sampled_from([OCI_MANIFEST, OCI_INDEX, "application/json", ""]),
)
def test_manifest_bodies(target: Target, body: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, response = target.request("PUT", "/v2/seed/fuzz/manifests/t", body, headers)
    code = target.expect_client_error(status, response, {201, 400})
    assert code in (None, "MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID")


@SETTINGS
@given(
    path=st.one_of(
        st.text(max_size=300).map(encode),
        st.sampled_from(
            [
                "/v2/../../etc/passwd",
                "/v2/seed/app/blobs/..%2F..%2Findex.db",
                "/v2/a%00b/tags/list",
                "/v2/seed%2Fapp/tags/list",
                "/v2/" + "a/" * 2000 + "tags/list",
                "//v2//",
                "/v2/%ff/tags/list",
                "/v2/seed/app/blobs/uploads/..%2F..%2F..%2Findex.db",
            ]
        ),
    )
)
def test_arbitrary_paths(target: Target, path: str) -> None:
    if not path.startswith("/"):
        path = "/" + path
    for method in ("GET", "DELETE", "PATCH"):
        status, _, body = target.request(method, path, b"x" if method == "PATCH" else None)
        assert status < 500, f"{method} {path[:100]}: {status} {body[:200]!r}"
