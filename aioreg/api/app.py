"""The aiohttp application: registry lifecycle tied to the app's start-up and clean-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from aioreg.api.auth import AUTH_KEY, auth_middleware
from aioreg.api.errors import API_VERSION_HEADER, Handler, error_middleware
from aioreg.api.forward import FORWARDER_KEY, Forwarder
from aioreg.api.health import add_routes as add_health_routes
from aioreg.api.http import REGISTRY_KEY
from aioreg.api.limits import Limiter
from aioreg.api.management.handlers import MANAGEMENT_KEY
from aioreg.api.management.routes import add_routes as add_management_routes
from aioreg.api.metrics import Metrics
from aioreg.api.metrics import install as install_metrics
from aioreg.api.metrics import install_peer as install_peer_metrics
from aioreg.api.request_id import add_request_id_header, request_id_middleware
from aioreg.api.v2.manifests import MANIFEST_BUDGET_KEY, ManifestBudget
from aioreg.api.v2.proxied import PROXIES_KEY, add_namespace_header, refuse_proxy_writes
from aioreg.api.v2.routes import add_routes, add_upload_session_routes
from aioreg.api.warnings import add_warning_headers, warnings_middleware
from aioreg.auth.service import AuthService
from aioreg.config import Config
from aioreg.console.routes import add_routes as add_console_routes
from aioreg.console.session import SESSION_EXPIRY_SECONDS, SESSIONS_KEY
from aioreg.domain.management import Management
from aioreg.domain.periodic import PeriodicJob
from aioreg.domain.registry import Registry
from aioreg.domain.workers import WorkerIdentity
from aioreg.proxy.service import Proxies


async def _api_version_header(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v2"):
        response.headers.update(API_VERSION_HEADER)


class InFlight:
    """Counts requests being handled so shutdown can wait for them.

    aiohttp's own shutdown stops reading from sockets, which would cut an
    upload off mid-body; draining first lets every started request finish.
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            response = await handler(request)
            if self.draining:
                response.force_close()
            return response
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if the timeout ran out first."""
        self.draining = True
        await asyncio.sleep(0.05)  # let requests already read off sockets reach their handlers
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


IN_FLIGHT_KEY = web.AppKey("in_flight", InFlight)
# How soon a running server sees proxies another process (`aioreg proxy`) added or removed.
PROXY_RELOAD_SECONDS = 2.0


# Which worker process answered (``server.workers`` > 1 only): shows how connections spread.
WORKER_HEADER = "X-Aioreg-Worker"


def create_app(config: Config, worker: WorkerIdentity | None = None) -> web.Application:
    """The registry's app; ``worker``: this process's place among ``server.workers``."""
    in_flight = InFlight()
    metrics = Metrics(config.metrics)
    app = web.Application(
        middlewares=[
            request_id_middleware,
            metrics.middleware,
            in_flight.middleware,
            warnings_middleware,
            error_middleware,
            Limiter(config.limits).middleware,
            auth_middleware,
            refuse_proxy_writes,
        ],
        client_max_size=config.limits.manifest_max_bytes + 1,
    )
    registry = Registry(config, worker)
    auth = AuthService(config.auth, registry.index, config.data_path)
    management = Management(registry)
    management.gc.observers.append(metrics.observe_gc)
    registry.index.observe_write_waits(metrics.index_wait.observe)
    install_metrics(app, metrics)
    add_health_routes(app)
    app[REGISTRY_KEY] = registry
    app[AUTH_KEY] = auth
    app[MANAGEMENT_KEY] = management
    app[IN_FLIGHT_KEY] = in_flight
    app[MANIFEST_BUDGET_KEY] = ManifestBudget(config.limits.manifest_memory_bytes)
    proxies = Proxies(registry, config.proxy)
    app[PROXIES_KEY] = proxies

    async def registry_context(app: web.Application) -> AsyncIterator[None]:
        await registry.open()
        await auth.open()
        await proxies.open()
        await proxies.reload()
        schedules = [
            # Proxies added or removed by another process (the CLI).
            PeriodicJob("proxy definitions", PROXY_RELOAD_SECONDS, proxies.reload),
        ]
        if worker is None or worker.maintenance:  # once per server, not once per worker
            schedules += [
                PeriodicJob("scheduled gc", config.gc.interval, management.gc.run, log_result=True),
                PeriodicJob(
                    "scheduled retention",
                    config.retention.interval,
                    management.retention.apply,
                    log_result=True,
                ),
                PeriodicJob(
                    "console session expiry", SESSION_EXPIRY_SECONDS, app[SESSIONS_KEY].expire
                ),
            ]
        for job in schedules:
            job.start()
        yield
        for job in schedules:
            await job.stop()
        await proxies.close()
        await auth.close()
        await registry.close()

    app.cleanup_ctx.append(registry_context)
    app.on_response_prepare.append(_api_version_header)
    app.on_response_prepare.append(add_request_id_header)
    app.on_response_prepare.append(add_warning_headers)
    app.on_response_prepare.append(add_namespace_header)
    if worker is not None:
        forwarder = Forwarder(worker)
        app[FORWARDER_KEY] = forwarder

        async def close_forwarder(app: web.Application) -> None:
            await forwarder.close()

        app.on_cleanup.append(close_forwarder)
        number = str(worker.number)

        async def add_worker_header(request: web.Request, response: web.StreamResponse) -> None:
            response.headers[WORKER_HEADER] = number

        app.on_response_prepare.append(add_worker_header)
    add_routes(app)
    add_management_routes(app)
    add_console_routes(app)
    return app


def create_peer_app(app: web.Application, config: Config) -> web.Application:
    """What a worker serves its peers on its Unix socket: the upload-session verbs of
    sessions it holds, forwarded by the worker the client reached (``api.forward``),
    and its own metrics, for the worker a scrape reached (``api.metrics``).

    No auth or rate limit: the forwarding worker applied them, and only this
    user can reach the socket. Same registry, and the same in-flight count, so
    a draining worker finishes forwarded requests too.
    """
    in_flight = app[IN_FLIGHT_KEY]
    peer = web.Application(
        middlewares=[
            request_id_middleware,
            in_flight.middleware,
            warnings_middleware,
            error_middleware,
        ],
        client_max_size=config.limits.manifest_max_bytes + 1,
    )
    peer[REGISTRY_KEY] = app[REGISTRY_KEY]
    peer[IN_FLIGHT_KEY] = in_flight
    add_upload_session_routes(peer.router)
    install_peer_metrics(peer, app)
    peer.on_response_prepare.append(add_request_id_header)
    peer.on_response_prepare.append(add_warning_headers)
    return peer
