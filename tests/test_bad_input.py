"""Property tests: whatever a client sends, it gets the status and spec code its class of
input calls for (never a 500, never a code from another class).

A real ``aioreg serve`` process takes every generated request over raw HTTP
(http.client, so paths and headers go out exactly as generated). Each property
classifies its input with the spec's own grammar (written out here, not taken
from aioreg) and asserts the answer for that class. After all properties ran,
nothing outside the data directory has been touched.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import string
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
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


# The distribution-spec's grammar, the oracle the properties classify inputs with.
SPEC_NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
VERIFIABLE_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


def valid_name(name: str) -> bool:
    return len(name) <= 255 and SPEC_NAME.fullmatch(name) is not None


def routable(segment: str) -> bool:
    """A path segment that reaches the handler as sent (no '/', no dot segment)."""
    return segment not in ("", ".", "..") and "/" not in segment


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

    def expect(self, status: int, body: bytes, expected: set[tuple[int, str | None]]) -> None:
        """The answer is one of ``expected`` (status, spec code; None for no error body)."""
        assert status < 500, f"server error {status}: {body[:300]!r}"
        code = json.loads(body)["errors"][0]["code"] if status >= 400 and body else None
        assert (status, code) in expected, f"got {status} {code}: {body[:300]!r}"

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


SEED_CONFIG, SEED_LAYER = b'{"os":"linux","architecture":"amd64"}', b"layer bytes" * 100


def seed_repository(target: Target) -> None:
    config, layer = SEED_CONFIG, SEED_LAYER
    for blob in (config, layer):
        for repository in ("seed/app", "seed/refs"):
            status, _, _ = target.request(
                "POST", f"/v2/{repository}/blobs/uploads/?digest={digest_of(blob)}", blob
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
    target.manifest = manifest  # type: ignore[attr-defined]


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
    if name == "seed/app":
        target.expect(status, body, {(200, None)})
    elif valid_name(name):
        target.expect(status, body, {(404, "NAME_UNKNOWN")})
    else:
        target.expect(status, body, {(400, "NAME_INVALID"), (404, "NAME_UNKNOWN")})
        if status == 404:  # only when the path matches no endpoint at all
            assert b"no such endpoint" in body, body[:300]


@SETTINGS
@given(reference=references)
def test_manifest_references(target: Target, reference: str) -> None:
    """GET/HEAD: a reference that is neither tag nor digest names a manifest that is not there."""
    assume(routable(reference))
    for method in ("GET", "HEAD"):
        status, _, body = target.request(method, f"/v2/seed/app/manifests/{encode(reference)}")
        if reference == "latest":
            target.expect(status, body, {(200, None)})
        elif method == "HEAD":
            target.expect(status, body, {(404, None)})
        else:
            target.expect(status, body, {(404, "MANIFEST_UNKNOWN")})


@SETTINGS
@given(reference=references)
def test_manifest_references_on_push(target: Target, reference: str) -> None:
    """PUT: a bad tag is TAG_INVALID, anything with a colon that is not the body's digest
    DIGEST_INVALID, a valid tag is stored."""
    assume(routable(reference))
    manifest = target.manifest  # type: ignore[attr-defined]
    status, _, body = target.request(
        "PUT",
        f"/v2/seed/refs/manifests/{encode(reference)}",
        manifest,
        {"Content-Type": OCI_MANIFEST},
    )
    if reference == digest_of(manifest) or (":" not in reference and SPEC_TAG.fullmatch(reference)):
        target.expect(status, body, {(201, None)})
    elif ":" in reference:
        target.expect(status, body, {(400, "DIGEST_INVALID")})
    else:
        target.expect(status, body, {(400, "TAG_INVALID")})


@SETTINGS
@given(digest=references)
def test_blob_digests(target: Target, digest: str) -> None:
    assume(routable(digest))
    valid = VERIFIABLE_DIGEST.fullmatch(digest) is not None
    for method in ("GET", "HEAD", "DELETE"):
        status, _, body = target.request(method, f"/v2/seed/other/blobs/{encode(digest)}")
        code = "BLOB_UNKNOWN" if valid else "DIGEST_INVALID"
        expected = (404 if valid else 400, None if method == "HEAD" else code)
        target.expect(status, body, {expected})


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
    target.expect(
        status, body, {(202, None), (400, "BLOB_UPLOAD_INVALID"), (416, "BLOB_UPLOAD_INVALID")}
    )
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
        number = re.fullmatch(r"[0-9]*", n) is not None  # empty: no limit asked
        target.expect(status, body, {(200, None) if number else (400, "PAGINATION_NUMBER_INVALID")})


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
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        target.expect(status, response, {(400, "MANIFEST_INVALID")})
    else:  # well-formed descriptors may name blobs seed/fuzz does not have
        target.expect(status, response, {(400, "MANIFEST_INVALID"), (400, "MANIFEST_BLOB_UNKNOWN")})


# -- raw manifest bytes: what JSON libraries disagree on ----------------------------


class Members(list):  # type: ignore[type-arg]
    """A JSON object as written: ordered (key, value) members, repeats allowed."""


def dump(value: object) -> bytes:
    """JSON text with ``Members`` objects as written and ``bytes`` inserted verbatim."""
    if isinstance(value, Members):
        return b"{" + b", ".join(dump(k) + b": " + dump(v) for k, v in value) + b"}"
    if isinstance(value, list):
        return b"[" + b", ".join(dump(v) for v in value) + b"]"
    if isinstance(value, bytes):
        return value
    return json.dumps(value).encode()


def seed_manifest() -> Members:
    def descriptor(media_type: str, data: bytes) -> Members:
        return Members(
            [("mediaType", media_type), ("digest", digest_of(data)), ("size", len(data))]
        )

    return Members(
        [
            ("schemaVersion", 2),
            ("mediaType", OCI_MANIFEST),
            ("config", descriptor(OCI_CONFIG, SEED_CONFIG)),
            ("layers", [descriptor(OCI_LAYER, SEED_LAYER)]),
            ("annotations", Members([("org.example.note", "seed")])),
        ]
    )


def objects(manifest: Members) -> dict[str, Members]:
    """The objects whose field names clients know: the manifest and its descriptors."""
    fields = dict(manifest)
    return {"manifest": manifest, "config": fields["config"], "layer": fields["layers"][0]}


FIELDS = {
    "manifest": ["schemaVersion", "mediaType", "artifactType", "config", "layers", "subject"],
    "config": ["mediaType", "digest", "size", "urls", "annotations", "platform", "data"],
    "layer": ["mediaType", "digest", "size", "urls", "annotations", "artifactType"],
}
# Byte sequences that are not UTF-8: a stray lead or continuation byte, an encoded
# surrogate, an overlong '/', a code point past U+10FFFF.
NOT_UTF8 = [b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"]
json_text = st.text(max_size=20)
huge = st.one_of(
    st.integers(min_value=2**63 - 2, max_value=10**40),
    st.integers(max_value=-1, min_value=-(10**40)),
    # More digits than Python's int() reads by default: written out as raw JSON.
    st.integers(min_value=4300, max_value=6000).map(lambda n: b"9" * n),
)


@st.composite
def raw_manifests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(body, whether it is a valid manifest of the seed blobs)."""
    manifest = seed_manifest()
    where = draw(st.sampled_from(["manifest", "config", "layer"]))
    target = objects(manifest)[where]
    kind = draw(st.sampled_from(["not-utf8", "duplicate", "case", "integer", "text"]))
    if kind == "not-utf8":
        broken = json.dumps(draw(json_text))[1:-1].encode()
        cut = draw(st.integers(0, len(broken)))
        raw = b'"' + broken[:cut] + draw(st.sampled_from(NOT_UTF8)) + broken[cut:] + b'"'
        as_key = draw(st.booleans())
        target.append((raw, "v") if as_key else ("org.example.raw", raw))
        return dump(manifest), False
    if kind == "duplicate":
        key, value = draw(st.sampled_from(list(target)))
        again = draw(st.one_of(st.just(value), json_text, st.integers()))
        target.insert(draw(st.integers(0, len(target))), (key, again))
        return dump(manifest), False
    if kind == "case":
        name = draw(st.sampled_from(FIELDS[where]))
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        variant = "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))
        assume(variant != name)
        target.append((variant, draw(st.one_of(json_text, st.integers()))))
        return dump(manifest), False
    if kind == "integer":
        field = "schemaVersion" if where == "manifest" else "size"
        value = draw(st.one_of(huge, st.integers(-5, 5000)))
        current = dict(target)[field]
        target[[k for k, _ in target].index(field)] = (field, value)
        return dump(manifest), value == current
    # Any text a client may put in an annotation is fine (escaped or not, any plane).
    text = draw(st.text(max_size=30))
    target.append(("org.example.text", text))
    return dump(manifest), True


@SETTINGS
@given(case=raw_manifests())
def test_raw_manifest_bytes(target: Target, case: tuple[bytes, bool]) -> None:
    """Invalid UTF-8, repeated keys, case variants of fields, integers past int64, sizes that
    are not the blob's: each is MANIFEST_INVALID; the same manifest without them is stored."""
    body, valid = case
    status, _, response = target.request(
        "PUT", "/v2/seed/refs/manifests/raw", body, {"Content-Type": OCI_MANIFEST}
    )
    target.expect(status, response, {(201, None)} if valid else {(400, "MANIFEST_INVALID")})


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
