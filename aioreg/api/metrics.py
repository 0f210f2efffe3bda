"""``/metrics``: the registry's Prometheus metrics, in the text exposition format.

Each app has a ``CollectorRegistry`` of its own (never prometheus-client's global
one), so several servers in one process (the test suite) keep separate figures.
Requests are counted by route template (the aiohttp resource's canonical form,
never the raw path: repository names and digests would make the series
unbounded), method and status. Figures about what is stored are read from the
index at scrape time, reused for ``metrics.storage_refresh_seconds``; the
webhook queue's depth is read at every scrape. The domain knows nothing of
Prometheus: garbage collection, the index and the webhook delivery worker
report to observers and collectors registered here.

Other components add their own metrics on ``app[METRICS_KEY].registry``
(``Metrics.register`` for a custom collector): what one process counts, which a
scrape of several workers sums.

Several workers (``server.workers`` > 1): a scrape reaches one worker, which
reports the whole server. It asks each live peer, over the peer's Unix socket
(``create_peer_app``), for that process's figures in the text format
(``PEER_PATH``), and sums counters, histograms and per-process gauges (uploads
in progress) over all of them; the ``process_*``/``python_*`` figures (memory,
CPU, fds) are not summed but kept per process with a ``worker`` label; what is
index-wide (stored content, the webhook queue) is read once, by the worker
answering. Webhook delivery, scheduled GC and retention run in worker 0 only,
so their counters are worker 0's (the others add zeros). A peer that does not
answer within ``PEER_TIMEOUT`` (starting, restarting) is left out of that
scrape; ``aioreg_metrics_workers`` says how many were summed. ``_created``
samples are left out of such a scrape (a sum of creation times means nothing).

Why not prometheus-client's multiprocess mode: it is switched on for the
whole process at import time (the test suite runs several servers in one
process, each with its own figures), it cannot serve custom collectors (stored
content, webhooks) or the process collectors, and it leaves one set of files
per process that ever ran, growing with every worker restart. Asking peers is
bounded: at most ``server.workers`` - 1 local requests per scrape, each under a
timeout, each answer bounded by the same label limits as this worker's own.
The price: a worker that restarts loses its figures, so the sum drops, which
Prometheus reads as a counter reset (as it would for a restarted single
process).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Iterable, Iterator

from aiohttp import web
from aiohttp.web_request import BaseRequest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from aioreg.api.auth import AUTH_KEY, IDENTITY, identify
from aioreg.api.errors import Handler, error_response
from aioreg.api.forward import FORWARDER_KEY, Forwarder
from aioreg.api.http import registry
from aioreg.auth.service import AuthError
from aioreg.config import MetricsConfig
from aioreg.domain.gc import GcReport
from aioreg.domain.workers import WorkerIdentity
from aioreg.errors import ErrorCode, RegistryError
from aioreg.events.delivery import DeliveryWorker
from aioreg.index.protocols import IndexProtocol
from aioreg.index.rows import StoreTotals

PREFIX = "aioreg"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "(unmatched)"  # no route: one series for every unknown path
OTHER_NAMESPACES = "(other)"
# Request latencies run from cached manifest reads to multi-gigabyte uploads.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30)
GC_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
UPLOAD_ROUTES = frozenset(
    {
        "/v2/{name}/blobs/uploads/",
        "/v2/{name}/blobs/uploads",
        "/v2/{name}/blobs/uploads/{upload_id}",
    }
)
UPLOAD_METHODS = frozenset({"POST", "PATCH", "PUT"})
MANIFEST_ROUTE = "/v2/{name}/manifests/{reference}"
CLIENT_GONE = "499"  # the client went away before an answer (nginx's figure)
# What a worker serves its peers on its Unix socket: its own figures, text format.
PEER_PATH = "/metrics/process"
PEER_TIMEOUT = 5.0  # seconds a scrape waits for a peer's figures
PER_PROCESS = ("process_", "python_")  # kept per worker (a label), never summed

log = logging.getLogger("aioreg.metrics")


def route_of(request: web.Request) -> str:
    """The matched route's template, bounded whatever the client sends."""
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


class StoredCollector(Collector):
    """Gauges of what is stored, from the last snapshot the scrape handler took."""

    def __init__(self, namespace_series_max: int) -> None:
        self.totals: StoreTotals | None = None
        self.taken = 0.0  # monotonic time of the snapshot
        self._namespace_series_max = namespace_series_max

    def collect(self) -> Iterator[Metric]:
        totals = self.totals
        if totals is None:
            return
        for name, doc, value in (
            ("blobs", "Blobs stored (each digest once)", totals.blobs),
            ("manifests", "Manifests stored (per repository)", totals.manifests),
            ("repositories", "Repositories", totals.repositories),
            ("stored_bytes", "Bytes of blobs stored, each blob once", totals.blob_bytes),
            (
                "upload_sessions",
                "Upload sessions open (started, not ended)",
                totals.upload_sessions,
            ),
        ):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        per_namespace = GaugeMetricFamily(
            f"{PREFIX}_namespace_stored_bytes",
            "Distinct blob bytes linked in each namespace (the largest ones; the rest summed "
            f'under namespace="{OTHER_NAMESPACES}")',
            labels=["namespace"],
        )
        ranked = sorted(totals.namespace_bytes.items(), key=lambda kv: (-kv[1], kv[0]))
        kept, rest = ranked[: self._namespace_series_max], ranked[self._namespace_series_max :]
        for namespace, size in kept:
            per_namespace.add_metric([namespace], size)
        if rest:
            per_namespace.add_metric([OTHER_NAMESPACES], sum(size for _, size in rest))
        yield per_namespace


class WebhookCollector(Collector):
    """What this process's webhook delivery worker did since it started."""

    def __init__(self, worker: DeliveryWorker) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        stats = self._worker.stats
        for name, doc, count in (
            ("attempts", "Webhook requests sent (each attempt of each delivery)", stats.attempts),
            ("deliveries", "Webhook deliveries a receiver accepted (2xx)", stats.delivered),
            (
                "failures",
                "Webhook attempts that did not deliver (no answer, or not a 2xx)",
                stats.failed,
            ),
            (
                "dead_letters",
                "Webhook deliveries given up on (max attempts reached, or a 4xx other than "
                "408 and 429); redeliverable by id",
                stats.dead_lettered,
            ),
        ):
            yield CounterMetricFamily(f"{PREFIX}_webhook_{name}", doc, value=count)


class _Families:
    """Metric families ready for ``generate_latest``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge(sources: Iterable[tuple[str, Iterable[Metric]]]) -> list[Metric]:
    """One server's families from each worker's (worker number, families): samples of the
    same name and labels summed, ``process_*``/``python_*`` ones labelled by worker."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, metrics in sources:
        for family in metrics:
            if family.type == "gauge" and family.name.endswith("_created"):
                continue  # a counter's creation times, as the text format splits them off
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
                sums[family.name] = {}
            into = sums[family.name]
            per_process = family.name.startswith(PER_PROCESS)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = {**sample.labels, "worker": worker} if per_process else sample.labels
                key = (sample.name, tuple(sorted(labels.items())))
                into[key] = into.get(key, 0.0) + sample.value
    for name, merged in families.items():
        for (sample_name, pairs), total in sums[name].items():
            merged.add_sample(sample_name, dict(pairs), total)
    return list(families.values())


class Metrics:
    """The metrics of one app, and the middleware and observers that feed them.

    ``registry``: what this process counts (summed over workers); ``shared``: what
    the index says for the whole server (read once per scrape, by the worker asked).
    """

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from a request's arrival to its handler's return (bodies included)",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.received = Counter(
            f"{PREFIX}_http_request_bytes",
            "Request body bytes read",
            ["route", "method"],
            registry=reg,
        )
        self.sent = Counter(
            f"{PREFIX}_http_response_bytes",
            "Response body bytes sent",
            ["route", "method"],
            registry=reg,
        )
        self.uploads_in_progress = Gauge(
            f"{PREFIX}_upload_requests_in_progress",
            "Upload requests (POST, PATCH, PUT of blob uploads) being handled",
            registry=reg,
        )
        self.upload_duration = Histogram(
            f"{PREFIX}_upload_request_duration_seconds",
            "Duration of blob upload requests (POST, PATCH, PUT), by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.commit_duration = Histogram(
            f"{PREFIX}_commit_duration_seconds",
            "Duration of successful commits: a blob upload's final request, a manifest PUT",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.gc_runs = Counter(
            f"{PREFIX}_gc_runs",
            "Garbage collection runs, by result (success, dry_run, failure)",
            ["result"],
            registry=reg,
        )
        self.gc_duration = Histogram(
            f"{PREFIX}_gc_duration_seconds",
            "Duration of garbage collection runs",
            buckets=GC_BUCKETS,
            registry=reg,
        )
        self.gc_freed = Counter(
            f"{PREFIX}_gc_freed_bytes", "Blob bytes garbage collection removed", registry=reg
        )
        self.gc_blobs = Counter(
            f"{PREFIX}_gc_removed_blobs", "Blobs garbage collection removed", registry=reg
        )
        self.gc_manifests = Counter(
            f"{PREFIX}_gc_removed_manifests",
            "Untagged manifests garbage collection removed",
            registry=reg,
        )
        self.index_wait = Histogram(
            f"{PREFIX}_index_write_wait_seconds",
            "Time each index write transaction waited for the write lock (this process's "
            "writers, then other processes')",
            buckets=WAIT_BUCKETS,
            registry=reg,
        )
        self.shared = CollectorRegistry(auto_describe=True)
        # Each route and method's series, looked up once: ``labels()`` validates and locks.
        self._series: dict[tuple[str, str], _RouteSeries] = {}
        self._counts: dict[tuple[str, str, str], Counter] = {}
        self.stored = StoredCollector(config.namespace_series_max)
        self.shared.register(self.stored)
        self.webhook_queue = Gauge(
            f"{PREFIX}_webhook_queue_depth",
            "Webhook events not yet fanned out to endpoints plus deliveries still to make",
            registry=self.shared,
        )
        self.workers = Gauge(
            f"{PREFIX}_metrics_workers",
            "Worker processes whose figures this scrape sums (fewer than server.workers "
            "while one starts or restarts)",
            registry=self.shared,
        )
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)

    def register(self, collector: Collector) -> None:
        """Add another component's per-process collector (the webhook worker's) to this
        app's metrics."""
        self.registry.register(collector)

    def observe_webhooks(self, worker: DeliveryWorker) -> None:
        self.register(WebhookCollector(worker))

    def observe_gc(self, report: GcReport | None, seconds: float) -> None:
        if report is None:
            self.gc_runs.labels("failure").inc()
        elif report.dry_run:
            self.gc_runs.labels("dry_run").inc()
        else:
            self.gc_runs.labels("success").inc()
            self.gc_freed.inc(report.bytes)
            self.gc_blobs.inc(report.blobs)
            self.gc_manifests.inc(len(report.manifests))
        self.gc_duration.observe(seconds)

    async def refresh_stored(self, index: IndexProtocol) -> None:
        """Read the stored-content figures again when the snapshot is older than allowed."""
        now = time.monotonic()
        stored = self.stored
        if stored.totals is not None and now - stored.taken < self.config.storage_refresh_seconds:
            return
        stored.totals = await index.usage.totals()
        stored.taken = now

    async def refresh_shared(self, index: IndexProtocol) -> None:
        """The index-wide figures, for a scrape."""
        await self.refresh_stored(index)
        self.webhook_queue.set(await index.webhooks.pending_count())

    def render_process(self) -> bytes:
        """This process's own figures: what a peer asks for."""
        return generate_latest(self.registry)

    async def render(self, forwarder: Forwarder | None) -> bytes:
        """The whole server's figures; ``forwarder``: this worker's way to its peers."""
        if forwarder is None:
            self.workers.set(1)
            return generate_latest(_Families([*self.registry.collect(), *self.shared.collect()]))
        worker = forwarder.worker
        peers = worker.peers()
        path = f"{PEER_PATH}?supervisor={worker.supervisor}"
        answers = await asyncio.gather(
            *(forwarder.fetch(token, path, PEER_TIMEOUT) for token in peers)
        )
        sources: list[tuple[str, Iterable[Metric]]] = [
            (str(worker.number), self.registry.collect())
        ]
        for token, answer in zip(peers, answers, strict=True):
            if answer is None:
                log.warning("worker %s sent no metrics; this scrape leaves it out", token)
                continue
            number = token[1:].partition("-")[0]
            sources.append((number, text_string_to_metric_families(answer.decode())))
        self.workers.set(len(sources))
        return generate_latest(_Families([*merge(sources), *self.shared.collect()]))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        route = route_of(request)
        method = request.method if request.method in METHODS else "other"
        upload = method in UPLOAD_METHODS and route in UPLOAD_ROUTES
        if upload:
            self.uploads_in_progress.inc()
        status = CLIENT_GONE
        sent = 0
        try:
            response = await handler(request)
            status = str(response.status)
            sent = sent_bytes(request, response)
            return response
        except web.HTTPException as exc:  # redirects and the like, past error_middleware
            status = str(exc.status)
            raise
        finally:
            elapsed = time.monotonic() - started
            if upload:
                self.uploads_in_progress.dec()
                self.upload_duration.labels(method).observe(elapsed)
            count = self._counts.get((route, method, status))
            if count is None:  # routes, methods and statuses are finite: so is this dict
                count = self._counts[route, method, status] = self.requests.labels(
                    route, method, status
                )
            count.inc()
            series = self._series.get((route, method))
            if series is None:
                series = self._series[route, method] = _RouteSeries(self, route, method)
            series.latency.observe(elapsed)
            series.received.inc(request.content.total_bytes)
            if sent:
                series.sent_to_client(sent)
            if status.startswith("2"):
                kind = _commit_kind(request, route, method)
                if kind is not None:
                    self.commit_duration.labels(kind).observe(elapsed)


class _RouteSeries:
    """The per-route series the middleware feeds on every request."""

    __slots__ = ("_metrics", "_sent", "key", "latency", "received")

    def __init__(self, metrics: Metrics, route: str, method: str) -> None:
        self._metrics = metrics
        self.key = (route, method)
        self.latency = metrics.latency.labels(route, method)
        self.received = metrics.received.labels(route, method)
        self._sent: Counter | None = None  # a series only once a body was sent

    def sent_to_client(self, size: int) -> None:
        if self._sent is None:
            self._sent = self._metrics.sent.labels(*self.key)
        self._sent.inc(size)


def _commit_kind(request: web.Request, route: str, method: str) -> str | None:
    """What a successful request committed: a blob (an upload's last request), a manifest."""
    if route == MANIFEST_ROUTE and method == "PUT":
        return "manifest"
    if route in UPLOAD_ROUTES and (
        method == "PUT" or (method == "POST" and "digest" in request.query)
    ):
        return "blob"
    return None


def sent_bytes(request: BaseRequest, response: web.StreamResponse) -> int:
    """The body bytes this response carries (a streamed file's Content-Length included)."""
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    length = response.content_length
    return length if length is not None else response.body_length


METRICS_KEY = web.AppKey("metrics", Metrics)
# On a peer app only (never FORWARDER_KEY there: a forwarded request is not forwarded on).
PEER_WORKER_KEY = web.AppKey("peer_worker", WorkerIdentity)


def _loopback(remote: str | None) -> bool:
    """A loopback peer, IPv4-mapped IPv6 (``::ffff:127.0.0.1``) included."""
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


async def _authorise(request: web.Request, config: MetricsConfig) -> None:
    """Loopback peers (unless turned off), the configured bearer token, or an admin."""
    if config.open_on_loopback and _loopback(request.remote):
        return
    header = request.headers.get("Authorization", "")
    kind, _, value = header.partition(" ")
    secret = config.secret()
    if (
        secret
        and kind.lower() == "bearer"
        and hmac.compare_digest(value.strip().encode(), secret.encode())
    ):
        return
    service = request.app[AUTH_KEY]
    if not service.enabled:
        if not secret:
            raise RegistryError(
                ErrorCode.DENIED,
                "metrics are served to loopback only; set [metrics] token to scrape from elsewhere",
            )
        raise AuthError("wrong metrics token" if header else "metrics need the metrics token")
    identity, how = await identify(request, service)
    request[IDENTITY] = identity
    if await service.registry_admin(identity):
        return
    if how == "none":
        raise AuthError("metrics need the metrics token or an admin's credentials")
    raise RegistryError(ErrorCode.DENIED, "metrics are for admins and the metrics token")


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    metrics = request.app[METRICS_KEY]
    try:
        await _authorise(request, metrics.config)
    except AuthError as exc:
        response = error_response(ErrorCode.UNAUTHORIZED, exc.message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    await metrics.refresh_shared(registry(request).index)
    body = await metrics.render(request.app.get(FORWARDER_KEY))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def process_metrics_handler(request: web.Request) -> web.StreamResponse:
    """A peer's question: this process's figures (409 to a worker of another server
    on the same data directory)."""
    if request.query.get("supervisor") != str(request.app[PEER_WORKER_KEY].supervisor):
        return error_response(ErrorCode.DENIED, "not a worker of this server", status=409)
    body = request.app[METRICS_KEY].render_process()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def install(app: web.Application, metrics: Metrics) -> None:
    """The route, when metrics are on; the middleware is the app's (``create_app``)."""
    app[METRICS_KEY] = metrics
    if metrics.config.enabled:
        app.router.add_get("/metrics", metrics_handler)


def install_peer(peer: web.Application, app: web.Application) -> None:
    """On a worker's peer app: its own figures, for the peer a scrape reached."""
    metrics = app[METRICS_KEY]
    peer[METRICS_KEY] = metrics
    peer[PEER_WORKER_KEY] = app[FORWARDER_KEY].worker
    if metrics.config.enabled:
        peer.router.add_get(PEER_PATH, process_metrics_handler)
