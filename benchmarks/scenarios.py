"""The scenarios. Each runs against one freshly started registry, times only its
measured phase, and verifies everything it moved (status codes, digests, sizes,
listings); a wrong answer raises :class:`~benchmarks.client.VerifyError`."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import math
import os
import random
import shutil
import string
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import loadgen
from benchmarks.client import (
    OCI_LAYER,
    OCI_MANIFEST,
    Blob,
    Client,
    VerifyError,
    config_blob,
    file_chunks,
    image_manifest,
    push_small_image,
    sha256_digest,
)
from benchmarks.data import BigBlob, BlobPool
from benchmarks.servers import Aioreg, Running
from benchmarks.units import GiB, KiB, MiB, mbps, median, percentile

clock = time.perf_counter


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass
class Outcome:
    """What one run of one scenario against one registry measured."""

    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # chart data: series name -> {concurrency: value}
    series: dict[str, dict[int, float]] = field(default_factory=dict)


@dataclass
class Context:
    """Shared by all scenarios of one bench run."""

    workdir: Path
    scale: float
    curl: str | None
    wrk: str | None
    loadgen_procs: int
    aioreg: Aioreg | None = None  # how to start more aioreg servers (the proxy scenario)
    _big: BigBlob | None = None
    _pools: dict[int, BlobPool] = field(default_factory=dict)

    @property
    def big(self) -> BigBlob:
        if self._big is None:
            size = max(1 * MiB, int(1 * GiB * self.scale))
            print(
                f"[bench] writing a {size / MiB:.0f} MiB random blob", file=sys.stderr, flush=True
            )
            self._big = BigBlob.create(self.workdir / "big.bin", size)
        return self._big

    def pool(self, size: int) -> BlobPool:
        if size not in self._pools:
            self._pools[size] = BlobPool(size)
        return self._pools[size]

    def seconds(self, full: float, floor: float) -> float:
        """A load duration: ``full`` at scale 1, never under ``floor``."""
        return max(floor, min(full, full * self.scale))


Kind = Callable[[Context, Running, Client], Awaitable[Outcome]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    metrics: Sequence[Metric]
    run: Kind
    needs: tuple[str, ...] = ()  # tools without which it is skipped
    big_blob: bool = False  # uses the large random file (made before any server starts)
    aioreg_only: bool = False  # nothing to compare with: other registries are not run
    access_log: bool = False  # the server under test logs requests (the scenario counts them)


RESOURCE_METRICS = (
    Metric("peak_rss_mib", "server peak RSS (VmHWM)", "MiB", False),
    Metric("end_rss_mib", "server RSS at the end", "MiB", False),
    Metric("server_cpu_s", "server CPU, whole run incl. start-up", "s", False),
)


async def _cpu_per_gib(server: Running, nbytes: int, work: Callable[[], Awaitable[None]]) -> float:
    """Run ``work``; server CPU seconds it took per GiB of ``nbytes``."""
    before = server.cpu_seconds()
    await work()
    return (server.cpu_seconds() - before) / (nbytes / GiB)


# -- 1, 2: one large blob pushed ---------------------------------------------


async def push_monolithic(ctx: Context, server: Running, client: Client) -> Outcome:
    big = ctx.big
    repo = "bench/big-mono"
    mode = "POST ?digest=" if await client.probe_post_digest(repo) else "POST + PUT ?digest="
    elapsed = 0.0

    async def work() -> None:
        nonlocal elapsed
        start = clock()
        await client.push_monolithic(repo, big.digest, big.size, file_chunks(big.path, 0, big.size))
        elapsed = clock() - start

    cpu = await _cpu_per_gib(server, big.size, work)
    await client.head_blob(repo, big.digest, big.size)
    return Outcome(
        metrics={"MBps": mbps(big.size, elapsed), "seconds": elapsed, "cpu_s_per_gib": cpu},
        details={"bytes": big.size, "mode": mode},
        notes=[]
        if mode.startswith("POST ?")
        else [f"{server.kind}: POST ?digest= unsupported; POST + PUT"],
    )


def chunk_size(size: int) -> int:
    """16 MiB at full size; smaller blobs still go in 8 or more chunks."""
    return max(64 * KiB, min(16 * MiB, size // 8))


async def push_chunked(ctx: Context, server: Running, client: Client) -> Outcome:
    big = ctx.big
    repo = "bench/big-chunked"
    chunk = chunk_size(big.size)
    elapsed = 0.0
    patches = 0

    async def work() -> None:
        nonlocal elapsed, patches
        start = clock()
        patches = await client.push_chunked(repo, big.digest, big.path, big.size, chunk)
        elapsed = clock() - start

    cpu = await _cpu_per_gib(server, big.size, work)
    await client.head_blob(repo, big.digest, big.size)
    return Outcome(
        metrics={"MBps": mbps(big.size, elapsed), "seconds": elapsed, "cpu_s_per_gib": cpu},
        details={"bytes": big.size, "chunk": chunk, "patches": patches},
    )


PUSH_METRICS = (
    Metric("MBps", "push throughput", "MB/s", True),
    Metric("seconds", "push time", "s", False),
    Metric("cpu_s_per_gib", "server CPU per GiB pushed", "s/GiB", False),
)


# -- 3, 4, 5: the large blob pulled -------------------------------------------

BIG_PULL_REPO = "bench/big-pull"


async def _push_big(ctx: Context, client: Client) -> BigBlob:
    big = ctx.big
    await client.push_monolithic(
        BIG_PULL_REPO, big.digest, big.size, file_chunks(big.path, 0, big.size)
    )
    await client.head_blob(BIG_PULL_REPO, big.digest, big.size)
    return big


async def pull_python(ctx: Context, server: Running, client: Client) -> Outcome:
    big = await _push_big(ctx, client)
    elapsed = 0.0

    async def work() -> None:
        nonlocal elapsed
        start = clock()
        await client.pull_blob(BIG_PULL_REPO, big.digest, big.size)
        elapsed = clock() - start

    cpu = await _cpu_per_gib(server, big.size, work)
    return Outcome(
        metrics={"MBps": mbps(big.size, elapsed), "seconds": elapsed, "cpu_s_per_gib": cpu},
        details={"bytes": big.size, "client": "aiohttp + hashlib.sha256"},
    )


async def pull_curl(ctx: Context, server: Running, client: Client) -> Outcome:
    assert ctx.curl is not None
    big = await _push_big(ctx, client)
    url = f"{server.url}/v2/{BIG_PULL_REPO}/blobs/{big.digest}"
    headers_file = server.root / "curl-headers.txt"
    argv = [
        ctx.curl,
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        str(headers_file),
        "-w",
        "%{http_code} %{size_download} %{speed_download} %{time_total}",
        url,
    ]
    before = server.cpu_seconds()
    out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=600)
    cpu = (server.cpu_seconds() - before) / (big.size / GiB)
    if out.returncode != 0:
        raise VerifyError(f"curl failed ({out.returncode}): {out.stderr.strip()}")
    code, size, speed, total = out.stdout.split()
    if code != "200":
        raise VerifyError(f"curl GET blob: status {code}")
    if int(size) != big.size:
        raise VerifyError(f"curl GET blob: {size} bytes, expected {big.size}")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (
            line.partition(":") for line in headers_file.read_text().splitlines() if ":" in line
        )
    }
    if headers.get("docker-content-digest") != big.digest:
        raise VerifyError(
            f"curl GET blob: Docker-Content-Digest {headers.get('docker-content-digest')!r}"
        )
    return Outcome(
        metrics={"MBps": float(speed) / 1e6, "seconds": float(total), "cpu_s_per_gib": cpu},
        details={"bytes": big.size, "client": "curl -o /dev/null (size + digest header checked)"},
    )


PULL_METRICS = (
    Metric("MBps", "pull throughput", "MB/s", True),
    Metric("seconds", "pull time", "s", False),
    Metric("cpu_s_per_gib", "server CPU per GiB pulled", "s/GiB", False),
)

RANGE_READS = 5


async def pull_range(ctx: Context, server: Running, client: Client) -> Outcome:
    big = await _push_big(ctx, client)
    length = min(max(64 * KiB, int(64 * MiB * ctx.scale)), big.size // 2)
    start = big.size // 2 - length // 2 + 1  # deliberately not block-aligned
    expect = big.range_sha256(start, length)
    times = []
    for _ in range(RANGE_READS):
        t0 = clock()
        await client.pull_range(BIG_PULL_REPO, big.digest, big.size, start, length, expect)
        times.append(clock() - t0)
    elapsed = median(times)
    return Outcome(
        metrics={"MBps": mbps(length, elapsed), "ms": elapsed * 1e3},
        details={
            "range": f"bytes={start}-{start + length - 1}",
            "bytes": length,
            "reads": RANGE_READS,
        },
    )


RANGE_METRICS = (
    Metric("MBps", "range read throughput", "MB/s", True),
    Metric("ms", "range read time (median)", "ms", False),
)


# -- 6: many clients pushing and pulling mid-sized blobs ----------------------

CONCURRENT_CLIENTS = 32
BLOBS_PER_CLIENT = 8


def concurrency_levels(clients: int) -> list[int]:
    return sorted({1, 8, clients})


async def _concurrent_level(
    ctx: Context, server: Running, client: Client, clients: int, first_id: int, size: int
) -> dict[str, float]:
    pool = ctx.pool(size)
    ids = {
        j: [first_id + j * BLOBS_PER_CLIENT + i for i in range(BLOBS_PER_CLIENT)]
        for j in range(clients)
    }
    for blob_ids in ids.values():  # digests known before the clock starts
        for k in blob_ids:
            pool.digest(k)
    push_lat: list[float] = []
    pull_lat: list[float] = []
    manifests: dict[int, tuple[bytes, str]] = {}

    async def pusher(j: int) -> None:
        repo = f"bench/c{clients}/client{j:02d}"
        for k in ids[j]:
            data = pool.content(k)
            t0 = clock()
            await client.push_monolithic(repo, pool.digest(k), size, data)
            push_lat.append(clock() - t0)
        config = config_blob(f"c{clients}-{j}")
        config_ref = Blob(sha256_digest(config), len(config))
        await client.push_monolithic(repo, config_ref.digest, config_ref.size, config)
        manifest = image_manifest(config_ref, [Blob(pool.digest(k), size) for k in ids[j]])
        digest = sha256_digest(manifest)
        await client.put_manifest(repo, "v1", manifest, digest)
        manifests[j] = (manifest, digest)

    async def puller(j: int) -> None:
        repo = f"bench/c{clients}/client{j:02d}"
        manifest, digest = manifests[j]
        await client.get_manifest(repo, "v1", manifest, digest)
        for k in ids[j]:
            t0 = clock()
            await client.pull_blob(repo, pool.digest(k), size)
            pull_lat.append(clock() - t0)

    total = clients * BLOBS_PER_CLIENT * size
    cpu0 = server.cpu_seconds()
    t0 = clock()
    await asyncio.gather(*(pusher(j) for j in range(clients)))
    push_s = clock() - t0
    cpu1 = server.cpu_seconds()
    t0 = clock()
    await asyncio.gather(*(puller(j) for j in range(clients)))
    pull_s = clock() - t0
    expected = clients * BLOBS_PER_CLIENT
    if len(push_lat) != expected or len(pull_lat) != expected:
        raise VerifyError(f"{len(push_lat)} pushes and {len(pull_lat)} pulls, expected {expected}")
    return {
        "push_MBps": mbps(total, push_s),
        "push_p50_s": percentile(push_lat, 50),
        "push_p99_s": percentile(push_lat, 99),
        "pull_MBps": mbps(total, pull_s),
        "pull_p50_s": percentile(pull_lat, 50),
        "pull_p99_s": percentile(pull_lat, 99),
        "cpu_s_per_gib": (cpu1 - cpu0) / (total / GiB),
    }


async def concurrent(ctx: Context, server: Running, client: Client) -> Outcome:
    size = max(64 * KiB, int(8 * MiB * ctx.scale))
    await client.probe_post_digest("bench/probe")
    outcome = Outcome(
        details={
            "clients": CONCURRENT_CLIENTS,
            "blobs_per_client": BLOBS_PER_CLIENT,
            "blob_bytes": size,
        }
    )
    first_id = 0
    for clients in concurrency_levels(CONCURRENT_CLIENTS):
        level = await _concurrent_level(ctx, server, client, clients, first_id, size)
        first_id += clients * BLOBS_PER_CLIENT
        outcome.details[f"clients={clients}"] = level
        outcome.series.setdefault("push_MBps", {})[clients] = level["push_MBps"]
        outcome.series.setdefault("pull_MBps", {})[clients] = level["pull_MBps"]
        if clients == CONCURRENT_CLIENTS:
            outcome.metrics = dict(level)
    return outcome


CONCURRENT_METRICS = (
    Metric("push_MBps", "aggregate push", "MB/s", True),
    Metric("push_p50_s", "push p50 per blob", "s", False),
    Metric("push_p99_s", "push p99 per blob", "s", False),
    Metric("pull_MBps", "aggregate pull", "MB/s", True),
    Metric("pull_p50_s", "pull p50 per blob", "s", False),
    Metric("pull_p99_s", "pull p99 per blob", "s", False),
    Metric("cpu_s_per_gib", "server CPU per GiB pushed", "s/GiB", False),
)


# -- 7: manifest GET and HEAD rate --------------------------------------------

MANIFEST_CONNECTIONS = 64


async def _manifest_load(
    ctx: Context, url: str, digest: str, length: int, conns: int, duration: float
) -> list[tuple[str, loadgen.LoadResult]]:
    """GET with wrk (when installed) and HEAD with our generator, every answer verified."""
    accept = {"Accept": OCI_MANIFEST}
    runs: list[tuple[str, loadgen.LoadResult]] = []
    if ctx.wrk is not None:
        result = await asyncio.to_thread(loadgen.run_wrk, ctx.wrk, url, conns, duration, accept)
        runs.append(("get", result))
    result = await asyncio.to_thread(
        loadgen.run_aiohttp,
        url,
        "HEAD",
        conns,
        duration,
        accept,
        {"Docker-Content-Digest": digest, "Content-Length": str(length)},
        ctx.loadgen_procs,
    )
    runs.append(("head", result))
    for method, result in runs:
        if result.errors or result.requests == 0:
            raise VerifyError(
                f"manifest {method.upper()} x{conns}: {result.errors} errors of "
                f"{result.requests + result.errors} ({result.first_error or 'no requests'})"
            )
    return runs


MANIFEST_WORKERS = 2  # aioreg's `server.workers` for the extra rows: one per core here


async def manifest_rate(ctx: Context, server: Running, client: Client) -> Outcome:
    repo = "bench/manifest"
    manifest, digest = await push_small_image(client, repo, "manifest-rate")
    await client.put_manifest(repo, "latest", manifest, digest)
    await client.get_manifest(repo, "latest", manifest, digest)
    await client.head_manifest(repo, "latest", len(manifest), digest)
    path = f"/v2/{repo}/manifests/latest"
    outcome = Outcome(details={"url_path": path, "bytes": len(manifest)})
    if ctx.wrk is None:
        outcome.notes.append("wrk not installed: manifest GET rows skipped")
    for conns in sorted({1, 8, MANIFEST_CONNECTIONS}):
        duration = ctx.seconds(10, 1) if conns == MANIFEST_CONNECTIONS else ctx.seconds(3, 0.5)
        runs = await _manifest_load(ctx, server.url + path, digest, len(manifest), conns, duration)
        for method, result in runs:
            outcome.details[f"{method} c={conns}"] = result.as_dict()
            outcome.series.setdefault(f"{method}_rps", {})[conns] = result.rps
            if conns == MANIFEST_CONNECTIONS:
                outcome.metrics[f"{method}_rps"] = result.rps
                outcome.metrics[f"{method}_p99_ms"] = result.p99_ms
    await client.get_manifest(repo, "latest", manifest, digest)  # still intact after the load
    if server.kind == "aioreg" and ctx.aioreg is not None:
        # The same load on a fresh aioreg with several worker processes on the port.
        several = ctx.aioreg.configured(f"[server]\nworkers = {MANIFEST_WORKERS}\n")
        # Workers talk over Unix sockets in the data directory, whose paths have a
        # 107-byte limit: a short directory of its own, whatever --workdir is.
        short = Path(tempfile.mkdtemp(prefix="aw-", dir="/tmp" if os.path.isdir("/tmp") else None))
        try:
            extra = await asyncio.to_thread(several.start, short)
        except BaseException:
            shutil.rmtree(short, ignore_errors=True)
            raise
        try:
            other = Client(extra.url, client.session)
            await push_small_image(other, repo, "manifest-rate")
            await other.put_manifest(repo, "latest", manifest, digest)
            duration = ctx.seconds(10, 1)
            conns = MANIFEST_CONNECTIONS
            for method, result in await _manifest_load(
                ctx, extra.url + path, digest, len(manifest), conns, duration
            ):
                outcome.details[f"{method} c={conns} workers={MANIFEST_WORKERS}"] = result.as_dict()
                outcome.metrics[f"{method}_rps_workers"] = result.rps
            await other.get_manifest(repo, "latest", manifest, digest)
            extra.check_alive()
        finally:
            await asyncio.to_thread(extra.stop)
            shutil.rmtree(short, ignore_errors=True)
    return outcome


MANIFEST_METRICS = (
    Metric("get_rps", "GET req/s (wrk, 64 conns)", "req/s", True),
    Metric("get_p99_ms", "GET p99", "ms", False),
    Metric("head_rps", "HEAD req/s (aiohttp, 64 conns)", "req/s", True),
    Metric("head_p99_ms", "HEAD p99", "ms", False),
    Metric("get_rps_workers", f"GET req/s, server.workers = {MANIFEST_WORKERS}", "req/s", True),
    Metric("head_rps_workers", f"HEAD req/s, server.workers = {MANIFEST_WORKERS}", "req/s", True),
)


# -- 8: tag list and catalog --------------------------------------------------

LIST_ROUNDS = 5
WHOLE_PAGE = 10_000
FILL_WORKERS = 32


def page_size(count: int) -> int:
    return 100 if count >= 500 else max(3, count // 4)


async def _bounded(count: int, workers: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(i)`` for i in range(count), ``workers`` at a time."""
    items = iter(range(count))

    async def worker() -> None:
        for i in items:
            await job(i)

    await asyncio.gather(*(worker() for _ in range(min(workers, count))))


async def _time_listing(
    client: Client,
    server: Running,
    path: str,
    expected: list[str],
    page: int,
    what: str,
    outcome: Outcome,
) -> float:
    """Median milliseconds to list ``path`` whole (following Links), verifying every round:
    exactly the expected names, in byte order, in the expected number of pages. A registry
    whose known deviation (``server.deviations``) explains a wrong order or page count gets
    a note instead of a failure; missing or extra names always fail."""
    family = "tags" if "/tags/list" in path else "catalog"
    key = "tags" if family == "tags" else "repositories"
    expected_pages = max(1, math.ceil(len(expected) / page))
    times = []
    for _ in range(LIST_ROUNDS):
        t0 = clock()
        names, pages = await client.list_pages(path, key)
        times.append(clock() - t0)
        if len(names) != len(expected) or set(names) != set(expected):
            missing = sorted(set(expected) - set(names))[:5]
            extra = sorted(set(names) - set(expected))[:5]
            raise VerifyError(
                f"{what}: {len(names)} names ({len(set(names))} distinct), expected "
                f"{len(expected)}; missing {missing}, unexpected {extra}"
            )
        problems = []
        if names != expected:
            problems.append((f"{family}_unsorted", f"{what}: not in byte order"))
        if pages != expected_pages:
            problems.append(
                (f"{family}_unpaginated", f"{what}: {pages} page(s), expected {expected_pages}")
            )
        for deviation, message in problems:
            if deviation not in server.deviations:
                raise VerifyError(message)
            note = f"{server.kind}: {message} (known deviation: {deviation})"
            if note not in outcome.notes:
                outcome.notes.append(note)
    return median(times) * 1e3


async def _fill_tags(client: Client, repo: str, count: int) -> tuple[list[str], float, bytes, str]:
    """One small image under ``count`` tags (t00000...); (names, seconds the tagging took,
    the manifest and its digest)."""
    manifest, digest = await push_small_image(client, repo, "tags")
    names = [f"t{i:05d}" for i in range(count)]

    async def put(i: int) -> None:
        await client.put_manifest(repo, names[i], manifest, digest)

    t0 = clock()
    await _bounded(count, FILL_WORKERS, put)
    return names, clock() - t0, manifest, digest


async def _fill_repositories(client: Client, count: int) -> tuple[list[str], float]:
    """``count`` repositories cat/r0000... with one tagged image each; (names, seconds)."""
    names = [f"cat/r{i:04d}" for i in range(count)]
    await client.probe_post_digest(names[0])

    async def fill(i: int) -> None:
        manifest, digest = await push_small_image(client, names[i], "catalog")
        await client.put_manifest(names[i], "v1", manifest, digest)

    t0 = clock()
    await _bounded(count, FILL_WORKERS, fill)
    return names, clock() - t0


async def tags(ctx: Context, server: Running, client: Client) -> Outcome:
    count = max(20, round(10_000 * ctx.scale))
    repo = "bench/tags"
    names, fill_s, manifest, digest = await _fill_tags(client, repo, count)
    outcome = Outcome(details={"tags": count})
    page = page_size(count)
    base = f"/v2/{repo}/tags/list"
    whole = await _time_listing(
        client, server, f"{base}?n={WHOLE_PAGE}", names, WHOLE_PAGE, "tags whole", outcome
    )
    paged = await _time_listing(
        client, server, f"{base}?n={page}", names, page, "tags paginated", outcome
    )
    # O(page): the last page costs what the first does, however many tags come before it.
    first = await _time_tag_page(client, server, f"{base}?n={page}", names[:page], outcome)
    last = await _time_tag_page(
        client, server, f"{base}?n={page}&last={names[-page - 1]}", names[-page:], outcome
    )
    await client.get_manifest(repo, names[-1], manifest, digest)
    outcome.metrics = {
        "put_per_s": count / fill_s,
        "whole_ms": whole,
        "paged_ms": paged,
        "first_page_ms": first,
        "last_page_ms": last,
    }
    outcome.details["page_size"] = page
    return outcome


async def _time_tag_page(
    client: Client, server: Running, path: str, expected: list[str], outcome: Outcome
) -> float:
    """Median milliseconds of one ``tags/list`` page, verified: exactly ``expected``, or,
    from a registry that ignores ``n`` and ``last`` (a known deviation), all of them."""
    times = []
    for _ in range(LIST_ROUNDS):
        t0 = clock()
        async with client.session.get(client.url(path)) as r:
            body = await r.read()
        times.append(clock() - t0)
        if r.status != 200:
            raise VerifyError(f"GET {path}: {r.status}: {body[:200]!r}")
        got = json.loads(body).get("tags")
        if got != expected:
            if "tags_unpaginated" not in server.deviations or not set(expected) <= set(got or []):
                raise VerifyError(f"GET {path}: not exactly the {len(expected)} tags expected")
            note = f"{server.kind}: {path}: the whole list, not one page (known deviation)"
            if note not in outcome.notes:
                outcome.notes.append(note)
    return median(times) * 1e3


TAGS_METRICS = (
    Metric("put_per_s", "tag PUTs/s (32 concurrent)", "req/s", True),
    Metric("whole_ms", "list all (n=10000)", "ms", False),
    Metric("paged_ms", "list paginated (n=100)", "ms", False),
    Metric("first_page_ms", "first page (n=100)", "ms", False),
    Metric("last_page_ms", "last page (n=100, last= the one before it)", "ms", False),
)


async def catalog(ctx: Context, server: Running, client: Client) -> Outcome:
    count = max(10, round(1_000 * ctx.scale))
    names, fill_s = await _fill_repositories(client, count)
    outcome = Outcome(details={"repositories": count})
    page = page_size(count)
    whole = await _time_listing(
        client, server, f"/v2/_catalog?n={WHOLE_PAGE}", names, WHOLE_PAGE, "catalog whole", outcome
    )
    paged = await _time_listing(
        client, server, f"/v2/_catalog?n={page}", names, page, "catalog paginated", outcome
    )
    outcome.metrics = {"repos_per_s": count / fill_s, "whole_ms": whole, "paged_ms": paged}
    outcome.details["page_size"] = page
    return outcome


CATALOG_METRICS = (
    Metric("repos_per_s", "repositories pushed/s (32 concurrent)", "repo/s", True),
    Metric("whole_ms", "list all (n=10000)", "ms", False),
    Metric("paged_ms", "list paginated (n=100)", "ms", False),
)


# -- 9: web console ----------------------------------------------------------

CONSOLE_ROUNDS = 7
CONSOLE_PAGE = 50  # rows on a console page (tags, repositories)


def _server_ms(header: str) -> float:
    """``app;dur=12.3`` (the console's ``Server-Timing``) in milliseconds."""
    for part in header.split(";"):
        if part.strip().startswith("dur="):
            return float(part.strip()[4:])
    raise VerifyError(f"no duration in Server-Timing {header!r}")


async def _time_page(
    client: Client, path: str, expected: list[str], total: int
) -> dict[str, float]:
    """Median server time (``Server-Timing``) and wall time of a console page's first page,
    verifying every round: status 200, exactly the expected first rows, in order, and the
    total it reports."""
    server_ms, wall_ms = [], []
    for _ in range(CONSOLE_ROUNDS):
        t0 = clock()
        async with client.session.get(client.url(path)) as response:
            body = await response.text()
            wall_ms.append((clock() - t0) * 1e3)
            if response.status != 200:
                raise VerifyError(f"GET {path}: {response.status}: {body[:200]}")
            server_ms.append(_server_ms(response.headers.get("Server-Timing", "")))
        table = body.partition("<tbody>")[2].partition("</tbody>")[0]  # the page's first table
        at = [table.find(f">{name}</a></th>") for name in expected]
        if min(at) < 0 or at != sorted(at) or table.count("</a></th>") != len(expected):
            raise VerifyError(f"GET {path}: the first rows are not exactly {expected[:3]}...")
        if f" of {total}</p>" not in body:
            raise VerifyError(f"GET {path}: the page does not report {total} in all")
    return {"server_ms": median(server_ms), "wall_ms": median(wall_ms)}


async def console(ctx: Context, server: Running, client: Client) -> Outcome:
    """The console's first page of a repository with 10,000 tags and of a namespace with
    1,000 repositories (aioreg only: Distribution has no console)."""
    tag_count = max(20, round(10_000 * ctx.scale))
    repo_count = max(10, round(1_000 * ctx.scale))
    tag_names, _, _, _ = await _fill_tags(client, "bench/tags", tag_count)
    repo_names, _ = await _fill_repositories(client, repo_count)
    tags_page = await _time_page(client, "/r/bench/tags", tag_names[:CONSOLE_PAGE], tag_count)
    repos_page = await _time_page(client, "/namespaces/cat", repo_names[:CONSOLE_PAGE], repo_count)
    outcome = Outcome(details={"tags": tag_count, "repositories": repo_count})
    outcome.metrics = {
        "tags_server_ms": tags_page["server_ms"],
        "tags_wall_ms": tags_page["wall_ms"],
        "repos_server_ms": repos_page["server_ms"],
        "repos_wall_ms": repos_page["wall_ms"],
    }
    outcome.notes.append("server time: the console's Server-Timing header (handler + render)")
    return outcome


CONSOLE_METRICS = (
    Metric("tags_server_ms", "repository page, 10,000 tags: server time", "ms", False),
    Metric("tags_wall_ms", "repository page, 10,000 tags: wall time", "ms", False),
    Metric("repos_server_ms", "namespace page, 1,000 repositories: server time", "ms", False),
    Metric("repos_wall_ms", "namespace page, 1,000 repositories: wall time", "ms", False),
)


# -- 10: pull-through proxy ---------------------------------------------------

PROXY_REPO = "bench/proxied"
PROXY_NAMESPACE = "px"
PROXY_PULLERS = 16


def _upstream_gets(server: Running, repo: str, digest: str) -> int:
    """Whole-blob GETs (status 200) of one blob in the upstream's access log; a GET with any
    other status fails the run. Each sent the whole blob: the log's ``%b`` cannot say so
    (it counts only the headers of a sendfile response), the status can."""
    wanted = f'"GET /v2/{repo}/blobs/{digest} '
    count = 0
    for line in server.log_path.read_text(errors="replace").splitlines():
        if wanted in line:
            status = line.split(wanted, 1)[1].split('" ', 1)[1].split()[0]
            if status != "200":
                raise VerifyError(f"upstream answered a proxy's blob GET with {status}: {line}")
            count += 1
    return count


async def proxy(ctx: Context, server: Running, client: Client) -> Outcome:
    """``server`` is the upstream (access log on); fresh aioreg proxies are started in front
    of it: one for a cold then a warm pull, another for 16 concurrent cold pullers."""
    assert ctx.aioreg is not None
    big = ctx.big
    await client.push_monolithic(
        PROXY_REPO, big.digest, big.size, file_chunks(big.path, 0, big.size)
    )
    await client.head_blob(PROXY_REPO, big.digest, big.size)
    proxy_kind = ctx.aioreg.configured(
        f'[[proxy]]\nnamespace = "{PROXY_NAMESPACE}"\nupstream = "{server.url}"\n'
    )
    local = f"{PROXY_NAMESPACE}/{PROXY_REPO}"

    async def timed(pull: Client) -> float:
        t0 = clock()
        await pull.pull_blob(local if pull is not client else PROXY_REPO, big.digest, big.size)
        return clock() - t0

    def gets() -> int:
        return _upstream_gets(server, PROXY_REPO, big.digest)

    async def logged(count: int) -> None:
        """The upstream logs a request after its response went out: wait for the line."""
        deadline = clock() + 10
        while gets() < count and clock() < deadline:
            await asyncio.sleep(0.02)

    outcome = Outcome(details={"bytes": big.size, "pullers": PROXY_PULLERS})
    direct = await timed(client)  # the same pull, straight from the upstream (hosted)
    await logged(1)
    peak_rss = 0.0
    for phase in ("single", "concurrent"):
        before = gets()
        px = await asyncio.to_thread(proxy_kind.start, ctx.workdir)
        try:
            pclient = Client(px.url, client.session)
            if phase == "single":
                cold = await timed(pclient)
                await logged(before + 1)
                if (n := gets() - before) != 1:
                    raise VerifyError(f"cold pull through the proxy: {n} upstream GETs, expected 1")
                warm = await timed(pclient)
                if (n := gets() - before) != 1:
                    raise VerifyError(f"warm pull through the proxy went upstream ({n} GETs)")
            else:
                t0 = clock()
                await asyncio.gather(*(timed(pclient) for _ in range(PROXY_PULLERS)))
                crowd = clock() - t0
                await logged(before + 1)
                crowd_gets = gets() - before
                if crowd_gets != 1:
                    raise VerifyError(
                        f"{PROXY_PULLERS} concurrent cold pulls: {crowd_gets} upstream GETs of "
                        "the blob, expected 1"
                    )
            px.check_alive()
            peak_rss = max(peak_rss, px.peak_rss() / MiB)
        finally:
            await asyncio.to_thread(px.stop)
    outcome.metrics = {
        "direct_MBps": mbps(big.size, direct),
        "cold_MBps": mbps(big.size, cold),
        "warm_MBps": mbps(big.size, warm),
        "crowd_MBps": mbps(big.size * PROXY_PULLERS, crowd),
        "upstream_blob_x": float(crowd_gets),
        "proxy_peak_rss_mib": peak_rss,
    }
    outcome.details["upstream_gets_for_16"] = crowd_gets
    outcome.details["seconds"] = {"direct": direct, "cold": cold, "warm": warm, "crowd": crowd}
    outcome.notes.append("client: aiohttp hashing every pull with sha256 (one core for all)")
    return outcome


PROXY_METRICS = (
    Metric("cold_MBps", "cold pull through the proxy", "MB/s", True),
    Metric("direct_MBps", "same pull direct from the upstream", "MB/s", True),
    Metric("warm_MBps", "warm pull through the proxy (cached)", "MB/s", True),
    Metric("crowd_MBps", "16 concurrent cold pullers, aggregate", "MB/s", True),
    Metric("upstream_blob_x", "upstream bytes for the 16 pullers", "x blob", False),
    Metric("proxy_peak_rss_mib", "proxy peak RSS (VmHWM)", "MiB", False),
)


# -- export and import -----------------------------------------------------------

TRANSFER_LAYERS_PER_IMAGE = 4
OCI_GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class _Layer:
    path: Path
    digest: str
    size: int


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Pseudo-text (words, lines, some digits): what configs, scripts and docs in layers
    compress like."""
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(4000)
    ]
    words += [str(rng.randint(0, 99999)) for _ in range(500)] + ["\n"] * 300
    out: list[str] = []
    length = 0
    while length < size:
        chunk = " ".join(rng.choices(words, k=20000))
        out.append(chunk)
        length += len(chunk)
    return "".join(out).encode()[:size]


def _layer_tar(rng: random.Random, pool: bytes, size: int) -> bytes:
    """A real tar of files about ``size`` bytes in all: three quarters text cut from
    ``pool``, one quarter random bytes (binaries that are already compressed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        n = 0
        while buf.tell() < size:
            length = min(rng.randint(4 * KiB, 512 * KiB), max(size - buf.tell(), 1024))
            if n % 4 == 3:
                data = rng.randbytes(length)
            else:
                start = rng.randrange(0, max(1, len(pool) - length))
                data = pool[start : start + length]
            info = tarfile.TarInfo(f"usr/share/bench/{n // 50}/file{n}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            n += 1
    return buf.getvalue()


def _make_layers(root: Path, total: int, layer_size: int, gzipped: bool, seed: int) -> list[_Layer]:
    """Layers adding up to ``total`` bytes as stored: raw tars, or gzip (level 6, as
    ``docker build``) of other tars until the compressed bytes reach ``total``."""
    rng = random.Random(seed)
    pool = _text_pool(rng, 16 * MiB if total >= 256 * MiB else 2 * MiB)
    root.mkdir(parents=True, exist_ok=True)
    layers: list[_Layer] = []
    stored = 0
    while stored < total:
        data = _layer_tar(rng, pool, layer_size)
        if gzipped:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        digest = sha256_digest(data)
        path = root / digest.split(":")[1]
        path.write_bytes(data)
        layers.append(_Layer(path, digest, len(data)))
        stored += len(data)
    return layers


async def _push_layers(client: Client, repo: str, layers: list[_Layer], media_type: str) -> int:
    """Images of ``TRANSFER_LAYERS_PER_IMAGE`` layers, tagged v0, v1...; returns the tag count."""
    tags = 0
    for start in range(0, len(layers), TRANSFER_LAYERS_PER_IMAGE):
        group = layers[start : start + TRANSFER_LAYERS_PER_IMAGE]
        for layer in group:
            await client.push_monolithic(
                repo, layer.digest, layer.size, file_chunks(layer.path, 0, layer.size)
            )
        config = config_blob(f"{repo}-{start}")
        config_digest = sha256_digest(config)
        await client.push_monolithic(repo, config_digest, len(config), config)
        body = image_manifest(
            Blob(config_digest, len(config)), [Blob(x.digest, x.size) for x in group]
        ).replace(OCI_LAYER.encode(), media_type.encode())
        await client.put_manifest(repo, f"v{tags}", body, sha256_digest(body))
        tags += 1
    return tags


@dataclass(frozen=True)
class _Ran:
    seconds: float
    cpu: float  # user + system seconds of the command and every process it waited for
    peak_rss: int
    output: str


def _run_timed(command: str | list[str], env: dict[str, str], out: Path) -> _Ran:
    """Wall and CPU seconds, peak RSS (bytes, of the process itself: ``wait4``) and output of
    one command (a string runs in the shell, whose rusage includes its pipeline's); a
    failure fails the run."""
    started = clock()
    with open(out, "w+b") as log:
        proc = subprocess.Popen(
            command, shell=isinstance(command, str), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = clock() - started
        log.seek(0)
        text = log.read().decode(errors="replace")
    if proc.returncode != 0:
        raise VerifyError(f"{str(command)[:200]} exited {proc.returncode}: {text[-2000:]}")
    return _Ran(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * KiB, text)


async def transfer(ctx: Context, server: Running, client: Client) -> Outcome:
    """``aioreg export`` and ``aioreg import`` of 2 GiB (half raw tar layers, half gzip
    layers), against ``tar | zstd -T0`` and ``zstd -d | tar -x`` of the same blob files."""
    assert ctx.aioreg is not None
    total = max(2 * MiB, int(2 * GiB * ctx.scale))
    layer_size = max(256 * KiB, min(64 * MiB, total // 32))
    work = ctx.workdir / f"transfer-{server.pid}"
    try:
        raw, gz = await asyncio.gather(
            asyncio.to_thread(_make_layers, work / "raw", total // 2, layer_size, False, 1),
            asyncio.to_thread(_make_layers, work / "gz", total // 2, layer_size, True, 2),
        )
        tags = await _push_layers(client, "bench/raw", raw, OCI_LAYER)
        tags += await _push_layers(client, "bench/gz", gz, OCI_GZIP_LAYER)
        return await asyncio.to_thread(_transfer_timed, ctx, server, work, raw, gz, tags)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


def _transfer_timed(
    ctx: Context, server: Running, work: Path, raw: list[_Layer], gz: list[_Layer], tags: int
) -> Outcome:
    assert ctx.aioreg is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOREG_")}
    if ctx.aioreg.src is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ctx.aioreg.src), env.get("PYTHONPATH", "")) if p
        )
    aioreg = [sys.executable, "-m", "aioreg"]
    raw_bytes, gz_bytes = sum(x.size for x in raw), sum(x.size for x in gz)
    moved = raw_bytes + gz_bytes
    outcome = Outcome(details={"bytes": moved, "raw_bytes": raw_bytes, "gz_bytes": gz_bytes})
    archives = {"raw": work / "raw.tar.zst", "gz": work / "gz.tar.zst"}
    log = work / "command.log"
    export_s = import_s = export_cpu = import_cpu = 0.0
    peak_rss = set_tags = 0
    for name, archive in archives.items():
        ran = _run_timed(
            [
                *aioreg,
                "export",
                f"bench/{name}",
                "-o",
                str(archive),
                "--data",
                str(server.data_dir),
            ],
            env,
            log,
        )
        export_s += ran.seconds
        export_cpu += ran.cpu
        peak_rss = max(peak_rss, ran.peak_rss)
    fresh = work / "imported"
    for archive in archives.values():
        ran = _run_timed([*aioreg, "import", str(archive), "--data", str(fresh)], env, log)
        import_s += ran.seconds
        import_cpu += ran.cpu
        peak_rss = max(peak_rss, ran.peak_rss)
        set_tags += sum(
            1 for line in ran.output.splitlines() if line.startswith("tag ") and ": set" in line
        )
    if set_tags != tags:
        raise VerifyError(f"import set {set_tags} tags, the registry had {tags}")
    # Every imported blob's sha256 recomputed: one config per image besides the layers.
    scrubbed = _run_timed([*aioreg, "scrub", "--full", "--data", str(fresh)], env, log).output
    if f"checked {len(raw) + len(gz) + tags} blobs" not in scrubbed or "0 corrupt" not in scrubbed:
        raise VerifyError(f"scrub of the imported data: {scrubbed.strip()[-300:]}")
    outcome.metrics = {
        "export_MBps": mbps(moved, export_s),
        "import_MBps": mbps(moved, import_s),
        "raw_ratio_pct": 100.0 * archives["raw"].stat().st_size / raw_bytes,
        "gz_ratio_pct": 100.0 * archives["gz"].stat().st_size / gz_bytes,
        "export_cpu_s_per_gib": export_cpu / (moved / GiB),
        "import_cpu_s_per_gib": import_cpu / (moved / GiB),
        "cli_peak_rss_mib": peak_rss / MiB,
    }
    zstd = shutil.which("zstd")
    if zstd is None:
        outcome.notes.append("zstd not installed: the tar | zstd -T0 rows are missing")
    else:
        base = work / "baseline.tar.zst"
        blobs = server.data_dir / "blobs"
        ran = _run_timed(f"tar -cf - -C {blobs} . | {zstd} -q -3 -T0 -o {base}", env, log)
        outcome.metrics["zstd_export_MBps"] = mbps(moved, ran.seconds)
        outcome.metrics["zstd_export_cpu_s_per_gib"] = ran.cpu / (moved / GiB)
        target = work / "untarred"
        target.mkdir()
        ran = _run_timed(f"{zstd} -q -d -T0 -c {base} | tar -xf - -C {target}", env, log)
        outcome.metrics["zstd_import_MBps"] = mbps(moved, ran.seconds)
        outcome.metrics["zstd_import_cpu_s_per_gib"] = ran.cpu / (moved / GiB)
    outcome.notes.append(
        "aioreg export/import fsync what they write and verify every digest; "
        "tar | zstd -T0 and zstd -d | tar -x do neither (same blobs, same disk, level 3)"
    )
    outcome.details["seconds"] = {"export": export_s, "import": import_s}
    return outcome


TRANSFER_METRICS = (
    Metric("export_MBps", "aioreg export (tar.zst, level 3, all cores)", "MB/s", True),
    Metric("zstd_export_MBps", "tar | zstd -T0 -3 of the same blob files", "MB/s", True),
    Metric("import_MBps", "aioreg import into a fresh data dir", "MB/s", True),
    Metric("zstd_import_MBps", "zstd -d -T0 | tar -x of the same", "MB/s", True),
    Metric("export_cpu_s_per_gib", "aioreg export CPU (incl. start-up)", "s/GiB", False),
    Metric("zstd_export_cpu_s_per_gib", "tar | zstd -T0 CPU", "s/GiB", False),
    Metric("import_cpu_s_per_gib", "aioreg import CPU (incl. start-up)", "s/GiB", False),
    Metric("zstd_import_cpu_s_per_gib", "zstd -d | tar -x CPU", "s/GiB", False),
    Metric("raw_ratio_pct", "archive size, raw tar layers", "% of input", False),
    Metric("gz_ratio_pct", "archive size, gzip layers", "% of input", False),
    Metric("cli_peak_rss_mib", "export/import process peak RSS", "MiB", False),
)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "push_monolithic",
        "1 GiB blob, monolithic push",
        PUSH_METRICS,
        push_monolithic,
        big_blob=True,
    ),
    Scenario(
        "push_chunked",
        "1 GiB blob, 16 MiB PATCH chunks + PUT",
        PUSH_METRICS,
        push_chunked,
        big_blob=True,
    ),
    Scenario(
        "pull_python",
        "1 GiB blob pulled, aiohttp + sha256",
        PULL_METRICS,
        pull_python,
        big_blob=True,
    ),
    Scenario(
        "pull_curl",
        "1 GiB blob pulled, curl -o /dev/null",
        PULL_METRICS,
        pull_curl,
        needs=("curl",),
        big_blob=True,
    ),
    Scenario(
        "pull_range",
        "64 MiB Range read from the middle",
        RANGE_METRICS,
        pull_range,
        big_blob=True,
    ),
    Scenario(
        "concurrent",
        "32 clients x 8 x 8 MiB blobs + manifest, push then pull",
        CONCURRENT_METRICS,
        concurrent,
    ),
    Scenario("manifest", "manifest GET/HEAD, 64 connections", MANIFEST_METRICS, manifest_rate),
    Scenario("tags", "10,000 tags: PUT, list whole and paginated", TAGS_METRICS, tags),
    Scenario("catalog", "1,000 repositories: list whole and paginated", CATALOG_METRICS, catalog),
    Scenario(
        "console",
        "web console: first page of 10,000 tags and of 1,000 repositories",
        CONSOLE_METRICS,
        console,
        aioreg_only=True,
    ),
    Scenario(
        "proxy",
        "1 GiB blob through a pull-through proxy (aioreg upstream)",
        PROXY_METRICS,
        proxy,
        big_blob=True,
        aioreg_only=True,
        access_log=True,
    ),
    Scenario(
        "transfer",
        "2 GiB export and import (tar.zst), raw and gzip layers",
        TRANSFER_METRICS,
        transfer,
        aioreg_only=True,
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
