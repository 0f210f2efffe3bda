"""The aiohttp application: registry lifecycle tied to the app's start-up and clean-up."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from aioreg.api.errors import API_VERSION_HEADER, error_middleware
from aioreg.api.http import REGISTRY_KEY
from aioreg.api.routes import add_routes
from aioreg.config import Config
from aioreg.registry import Registry


async def _api_version_header(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v2"):
        response.headers.update(API_VERSION_HEADER)


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=config.limits.manifest_max_bytes + 1,
    )
    registry = Registry(config)
    app[REGISTRY_KEY] = registry

    async def registry_context(app: web.Application) -> AsyncIterator[None]:
        await registry.open()
        yield
        await registry.close()

    app.cleanup_ctx.append(registry_context)
    app.on_response_prepare.append(_api_version_header)
    add_routes(app)
    return app
