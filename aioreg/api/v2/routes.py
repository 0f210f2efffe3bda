"""The distribution-spec's endpoint table.

Repository names span several path segments, so ``name`` matches greedily and
each route ends in the literal segments that tell them apart; handlers then
check the name against the spec's grammar (``NAME_INVALID``).

A pull may carry ``?ns=<host>``, the registry the client meant to reach (sent by
containerd and others to a mirror). Hosted repositories ignore it, as the spec
allows: the answer is the same as without it, with no ``OCI-Namespace`` header.
When it names the upstream host of a configured proxy, the manifest, blob, tag
list and referrers handlers read that proxy's namespace instead
(``api/v2/proxied.py``), access control checks the routed repository, and the
answer carries ``OCI-Namespace: <host>``.
"""

from __future__ import annotations

from aiohttp import web

from aioreg.api import auth
from aioreg.api.v2 import blobs, listing, manifests, uploads

NAME = "{name:.+}"


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/token", auth.token_get)
    router.add_post("/token", auth.token_post)
    router.add_get("/v2/", listing.base)
    router.add_get("/v2", listing.base)
    router.add_get("/v2/_catalog", listing.catalog)
    router.add_post(f"/v2/{NAME}/blobs/uploads/", uploads.start_upload)
    router.add_post(f"/v2/{NAME}/blobs/uploads", uploads.start_upload)
    add_upload_session_routes(router)
    blob = router.add_resource(f"/v2/{NAME}/blobs/{{digest:[^/]+}}")
    blob.add_route("GET", blobs.get_blob)
    blob.add_route("HEAD", blobs.get_blob)
    blob.add_route("DELETE", blobs.delete_blob)
    manifest = router.add_resource(f"/v2/{NAME}/manifests/{{reference:[^/]+}}")
    manifest.add_route("GET", manifests.get_manifest)
    manifest.add_route("HEAD", manifests.get_manifest)
    manifest.add_route("PUT", manifests.put_manifest)
    manifest.add_route("DELETE", manifests.delete_manifest)
    router.add_get(f"/v2/{NAME}/tags/list", listing.tags_list)
    router.add_get(f"/v2/{NAME}/referrers/{{digest:[^/]+}}", listing.referrers)


def add_upload_session_routes(router: web.UrlDispatcher) -> None:
    """One upload session's verbs (also what a worker serves its peers: ``api.forward``)."""
    upload = router.add_resource(f"/v2/{NAME}/blobs/uploads/{{upload_id:[^/]+}}")
    upload.add_route("GET", uploads.upload_status)
    upload.add_route("PATCH", uploads.patch_upload)
    upload.add_route("PUT", uploads.finish_upload)
    upload.add_route("DELETE", uploads.cancel_upload)
