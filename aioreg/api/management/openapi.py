"""The management API's OpenAPI document, generated from the endpoint table.

The document is built from the same table that registers the routes, so what
is documented is exactly what is served (``tests/test_management.py`` checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from aioreg import __version__

if TYPE_CHECKING:
    from aioreg.api.management.routes import Endpoint

# The OCI error body every operation may answer with instead.
ERRORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "detail": {},
                },
                "required": ["code", "message"],
            },
        }
    },
    "required": ["errors"],
}


def openapi_path(path: str) -> str:
    """aiohttp's ``{name:regex}`` to OpenAPI's ``{name}``."""
    out, depth, skipping = [], 0, False
    for ch in path:
        if ch == "{":
            depth += 1
            if depth == 1:
                out.append(ch)
                skipping = False
                continue
        if ch == "}":
            depth -= 1
            if depth == 0:
                skipping = False
                out.append(ch)
                continue
        if depth == 1 and ch == ":":
            skipping = True
            continue
        if not skipping:
            out.append(ch)
    return "".join(out)


def _path_params(path: str) -> list[str]:
    return [
        segment.strip("{}") for segment in openapi_path(path).split("/") if segment.startswith("{")
    ]


def _operation(endpoint: Endpoint, refs: dict[type[Any], Any]) -> dict[str, Any]:
    params = [
        {"name": p.split(":")[0], "in": "path", "required": True, "schema": {"type": "string"}}
        for p in _path_params(endpoint.path)
    ] + [
        {"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
        for q in endpoint.query
    ]
    response_schema = refs[endpoint.response] if endpoint.response else {"type": "object"}
    content = {"application/json": {"schema": response_schema}}
    if endpoint.response_media:
        content = _binary(endpoint.response_media)
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.operation_id or endpoint.handler.__name__,
        "parameters": params,
        "responses": {
            str(endpoint.status): {
                "description": "OK",
                "content": content,
            },
            "default": {
                "description": "OCI error body",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}
                },
            },
        },
    }
    if endpoint.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[endpoint.request]}},
        }
    elif endpoint.request_media:
        operation["requestBody"] = {"required": True, "content": _binary(endpoint.request_media)}
    return operation


def _binary(media_types: Sequence[str]) -> dict[str, Any]:
    """A body of bytes (an archive streamed), in any of ``media_types``."""
    return {t: {"schema": {"type": "string", "format": "binary"}} for t in media_types}


def build_openapi(endpoints: Sequence[Endpoint], prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints`` mounted under ``prefix``."""
    types = [t for e in endpoints for t in (e.response, e.request) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, Any] = {}
    for endpoint in endpoints:
        path = prefix + openapi_path(endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint, refs)
    components["Errors"] = ERRORS_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": "aioreg management API", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }
