"""The registry's domain layer: policy between the API and the index and blob storage.

- ``registry``: distribution-spec operations (blobs, manifests, tags, referrers);
- ``uploads``: upload sessions and every way out of one; ``quotas``: namespace quotas;
- ``listings``, ``repositories``, ``gc``, ``retention``: what /api/v1 and the CLI do,
  held together by ``management.Management``;
- ``trash``, ``scrub``, ``check``: upkeep beside a running server;
- ``manifest``, ``reference``, ``rules``: parsing and push rules;
- ``periodic``: the one helper for scheduled jobs;
- ``errors``: storage's typed errors as the spec's codes.
"""
