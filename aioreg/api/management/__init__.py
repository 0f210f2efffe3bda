"""``/api/v1``: repository management over HTTP, described by an OpenAPI document."""
