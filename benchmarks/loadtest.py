"""Load-testing any running registry: ``python -m benchmarks --target URL [--target URL]``.

Each scenario runs at every concurrency level for a duration or a number of operations,
against every target in turn (so they see the same client and machine), and reports per
operation requests/s, MB/s and p50/p95/p99 latency. Everything moved is verified as in
the local comparison (status, digest, size, bytes); a wrong answer counts as an error.

Blob content is generated while it is sent (:class:`benchmarks.data.BlobSource`) and
pulled blobs are hashed as they stream in, so memory does not grow with blob sizes;
only the latencies (8 bytes per operation) are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import platform
import random
import socket
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from benchmarks import loadreport
from benchmarks.auth import AuthError, Credentials, RegistryAuth
from benchmarks.client import (
    Blob,
    Client,
    VerifyError,
    config_blob,
    image_manifest,
    new_session,
    sha256_digest,
)
from benchmarks.data import BlobSource
from benchmarks.units import KiB, MiB, percentile, size_label

T = TypeVar("T")
clock = time.perf_counter

LOAD_SCENARIOS = {
    "push": "blob push (POST, one streamed PATCH, PUT ?digest=)",
    "pull": "blob pull (GET, sha256 checked)",
    "manifest": "manifest GET by tag (bytes checked)",
    "mixed": "image pulls / pushes / manifest HEADs in the --mix proportions",
}
DEFAULT_SCENARIOS = ("push", "pull", "manifest", "mixed")
MIX_OPS = ("pull", "push", "head")
SEED_IMAGES = 4  # images (or blobs) pushed before the pulls of a scenario are timed
SEED_LAYERS_UP_TO = 64 * MiB  # larger pull blobs are seeded once, not SEED_IMAGES times
PULL_POOL_MAX = 1000  # images the mixed pulls choose from (pushed ones replace older ones)
PROGRESS_EVERY = 0.5
OWNERSHIP_FLAG = "--i-own-this-registry"


# -- arguments ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    label: str
    url: URL  # scheme://host[:port], no path, no credentials
    credentials: Credentials


def parse_target(text: str, default: Credentials) -> Target:
    """``URL`` or ``LABEL=URL``; credentials in the URL (``http://user:pw@host``) win."""
    label, sep, rest = text.partition("=")
    if not sep or "://" in label:
        label, rest = "", text
    url = URL(rest.rstrip("/"))
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"target {text!r}: expected http(s)://HOST[:PORT]")
    if url.path not in ("", "/") or url.query_string:
        raise ValueError(f"target {text!r}: give the registry's base URL (no path)")
    credentials = default
    if url.user is not None:
        credentials = Credentials(url.user, url.password, default.token)
    base = url.with_user(None).with_path("")
    return Target(label or f"{url.host}:{url.port}", base, credentials)


def loopback_refusal(url: URL) -> str | None:
    """Why ``url`` is not known to be this machine (None: it is loopback). No connection is
    made; a host name is resolved and every address must be loopback."""
    host = url.host or ""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            return None
        try:
            infos = socket.getaddrinfo(host, url.port, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            return f"{host} does not resolve ({exc})"
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    outside = [str(a) for a in addresses if not a.is_loopback]
    if outside:
        return f"{host} is not a loopback address ({', '.join(sorted(set(outside)))})"
    return None


def parse_mix(text: str) -> dict[str, float]:
    """``pull=80,push=20`` -> weights; operations are pull, push and head."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, sep, weight = item.strip().partition("=")
        if not sep or name not in MIX_OPS:
            raise ValueError(f"--mix item {item!r}: expected OP=WEIGHT with OP in {MIX_OPS}")
        value = float(weight)
        if value < 0:
            raise ValueError(f"--mix {name}: weight must not be negative")
        mix[name] = value
    if sum(mix.values()) <= 0:
        raise ValueError("--mix: at least one weight must be positive")
    return mix


@dataclass(frozen=True)
class LoadSpec:
    scenarios: list[str]
    concurrency: list[int]
    duration: float | None  # seconds per level, or
    requests: int | None  # operations per level
    sizes: list[int]
    mix: dict[str, float]
    layers: int
    repo_prefix: str
    verify_tls: bool
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenarios": self.scenarios,
            "concurrency": self.concurrency,
            "duration_s": self.duration,
            "requests": self.requests,
            "sizes": [size_label(s) for s in self.sizes],
            "mix": self.mix,
            "layers": self.layers,
            "repo_prefix": self.repo_prefix,
            "verify_tls": self.verify_tls,
            "seed": self.seed,
        }


# -- measurements ---------------------------------------------------------------

_FAILURES = (VerifyError, aiohttp.ClientError, TimeoutError, OSError, ValueError)


@dataclass
class OpStats:
    latencies: array[float] = field(default_factory=lambda: array("d"))
    bytes: int = 0
    errors: int = 0
    first_error: str = ""


class Recorder:
    """Latency and bytes of every operation of one level on one target."""

    def __init__(self) -> None:
        self.ops: dict[str, OpStats] = {}
        self.started = clock()

    async def measure(self, op: str, work: Awaitable[T], nbytes: int | Callable[[T], int] = 0) -> T:
        """Time ``work`` as one ``op`` that moved ``nbytes`` (or ``nbytes(result)``); a
        failure is counted, then raised."""
        stats = self.ops.setdefault(op, OpStats())
        t0 = clock()
        try:
            result = await work
        except _FAILURES as exc:
            stats.errors += 1
            stats.first_error = stats.first_error or f"{type(exc).__name__}: {exc}"[:500]
            raise
        stats.latencies.append(clock() - t0)
        stats.bytes += nbytes if isinstance(nbytes, int) else nbytes(result)
        return result

    def totals(self) -> tuple[int, int, int]:
        """Operations, bytes and errors of the top-level operations (not ``op:part``)."""
        top = [s for op, s in self.ops.items() if ":" not in op]
        return (
            sum(len(s.latencies) for s in top),
            sum(s.bytes for s in top),
            sum(s.errors for s in top),
        )

    def rows(self, seconds: float) -> list[dict[str, Any]]:
        out = []
        for op in sorted(self.ops, key=lambda o: (o.split(":")[0], ":" in o, o)):
            s = self.ops[op]
            lat = list(s.latencies)
            out.append(
                {
                    "op": op,
                    "count": len(lat),
                    "errors": s.errors,
                    "seconds": seconds,
                    "rps": len(lat) / seconds if seconds > 0 else 0.0,
                    "MBps": s.bytes / seconds / 1e6 if seconds > 0 else 0.0,
                    "bytes": s.bytes,
                    "p50_ms": percentile(lat, 50) * 1e3,
                    "p95_ms": percentile(lat, 95) * 1e3,
                    "p99_ms": percentile(lat, 99) * 1e3,
                    "first_error": s.first_error,
                }
            )
        return out


class Progress:
    """One live line on stderr, redrawn in place; silent unless stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def show(self, text: str) -> None:
        if self.enabled:
            width = os.get_terminal_size(sys.stderr.fileno()).columns - 1
            sys.stderr.write("\r\x1b[K" + text[:width])
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def log(message: str, progress: Progress | None = None) -> None:
    if progress is not None:
        progress.clear()
    print(f"[load] {message}", file=sys.stderr, flush=True)


# -- images -----------------------------------------------------------------------


@dataclass
class Image:
    repo: str
    tag: str
    manifest: bytes
    digest: str
    blobs: list[Blob]  # config first

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)


class Session:
    """One target during the run: its client, credentials and the blobs it was given."""

    def __init__(self, target: Target, spec: LoadSpec, source: BlobSource) -> None:
        self.target = target
        self.spec = spec
        self.source = source
        self.auth = RegistryAuth(target.url, target.credentials)
        connections = max(spec.concurrency) + 4
        self.http = new_session(
            connections, verify_tls=spec.verify_tls, middlewares=(self.auth.middleware,)
        )
        self.client = Client(str(target.url), self.http)
        self.next_id = 0
        self.pushed_tags: dict[str, list[str]] = {}

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    async def push_blob(self, rec: Recorder | None, op: str, repo: str, size: int) -> Blob:
        k = self.new_id()
        work = self.client.push_stream(repo, size, self.source.chunks(k, size))
        digest = await (rec.measure(op, work, size) if rec else work)
        return Blob(digest, size)

    def layer_sizes(self, largest: int, rng: random.Random) -> list[int]:
        """A realistic shape: a big base layer, then layers about 4x smaller each."""
        return [
            max(256, int(largest * rng.uniform(0.5, 1.0) / 4**i)) for i in range(self.spec.layers)
        ]

    async def push_image(
        self, rec: Recorder | None, repo: str, tag: str, layers: list[int]
    ) -> Image:
        """Config and layers one after another, then the manifest under ``tag``."""
        config = config_blob(f"{tag}-{self.source.header(self.new_id()).hex()[:16]}")
        config_ref = Blob(sha256_digest(config), len(config))
        work = self.client.push_stream(repo, len(config), [config])
        await (rec.measure("push:blob", work, len(config)) if rec else work)
        blobs = [config_ref]
        for size in layers:
            blobs.append(await self.push_blob(rec, "push:blob", repo, size))
        manifest = image_manifest(config_ref, blobs[1:])
        digest = sha256_digest(manifest)
        work_m = self.client.put_manifest(repo, tag, manifest, digest)
        await (rec.measure("push:manifest", work_m, len(manifest)) if rec else work_m)
        self.pushed_tags.setdefault(repo, []).append(tag)
        return Image(repo, tag, manifest, digest, blobs)

    async def pull_image(self, rec: Recorder, image: Image) -> None:
        get = self.client.get_manifest(image.repo, image.tag, image.manifest, image.digest)
        await rec.measure("pull:manifest", get, len(image.manifest))
        for blob in image.blobs:
            work = self.client.pull_blob(image.repo, blob.digest, blob.size)
            await rec.measure("pull:blob", work, blob.size)

    async def close(self) -> None:
        await self.http.close()


# -- scenarios ----------------------------------------------------------------------

Op = Callable[[int, random.Random, Recorder], Awaitable[None]]


@dataclass
class Prepared:
    """A scenario made ready on one target (seeded), and its one operation."""

    op: Op
    repository: str
    after: Callable[[], Awaitable[None]] | None = None  # a check once all levels ran


async def prepare(name: str, size: int | None, s: Session, run_id: str) -> Prepared:
    prefix = s.spec.repo_prefix
    if name == "push":
        assert size is not None
        repo = f"{prefix}/push"

        async def push(worker: int, rng: random.Random, rec: Recorder) -> None:
            await s.push_blob(rec, "blob_push", repo, size)

        return Prepared(push, repo)
    if name == "pull":
        assert size is not None
        repo = f"{prefix}/pull"
        count = SEED_IMAGES if size <= SEED_LAYERS_UP_TO else 1  # seeding 4 GiB is too much
        seed = await s.push_image(None, repo, f"{run_id}-{size_label(size)}", [size] * count)
        layers = seed.blobs[1:]

        async def pull(worker: int, rng: random.Random, rec: Recorder) -> None:
            blob = rng.choice(layers)
            work = s.client.pull_blob(repo, blob.digest, blob.size)
            await rec.measure("blob_pull", work, blob.size)

        return Prepared(pull, repo)
    if name == "manifest":
        repo = f"{prefix}/manifest"
        image = await s.push_image(None, repo, f"{run_id}-manifest", [4 * KiB])

        async def manifest(worker: int, rng: random.Random, rec: Recorder) -> None:
            work = s.client.get_manifest(repo, image.tag, image.manifest, image.digest)
            await rec.measure("manifest_get", work, len(image.manifest))

        return Prepared(manifest, repo)
    assert name == "mixed" and size is not None
    repo = f"{prefix}/mixed"
    shape_rng = random.Random(s.spec.seed)
    label = size_label(size)
    images = [
        await s.push_image(None, repo, f"{run_id}-{label}-seed{i}", s.layer_sizes(size, shape_rng))
        for i in range(SEED_IMAGES)
    ]
    ops = list(s.spec.mix)
    weights = [s.spec.mix[o] for o in ops]
    counter = 0

    async def mixed(worker: int, rng: random.Random, rec: Recorder) -> None:
        nonlocal counter
        op = rng.choices(ops, weights)[0]
        if op == "pull":
            image = rng.choice(images)
            await rec.measure("pull", s.pull_image(rec, image), image.size + len(image.manifest))
        elif op == "head":
            image = rng.choice(images)
            work = s.client.head_manifest(repo, image.tag, len(image.manifest), image.digest)
            await rec.measure("head", work)
        else:
            counter += 1
            sizes = s.layer_sizes(size, rng)
            tag = f"{run_id}-{label}-w{worker}-{counter}"
            pushed = await rec.measure(
                "push", s.push_image(rec, repo, tag, sizes), lambda i: i.size + len(i.manifest)
            )
            if len(images) < PULL_POOL_MAX:
                images.append(pushed)
            else:
                images[rng.randrange(len(images))] = pushed

    async def check_tags() -> None:
        """Every image pushed is listed under its tag afterwards."""
        names, _ = await s.client.list_pages(f"/v2/{repo}/tags/list?n=1000", "tags")
        missing = set(s.pushed_tags.get(repo, [])) - set(names)
        if missing:
            raise VerifyError(f"{len(missing)} pushed tags are not listed, e.g. {min(missing)}")

    return Prepared(mixed, repo, check_tags)


async def run_level(
    s: Session, prepared: Prepared, spec: LoadSpec, concurrency: int, what: str, progress: Progress
) -> tuple[Recorder, float]:
    """``concurrency`` workers repeat the operation until the duration or count is reached."""
    rec = Recorder()
    issued = 0
    deadline = None if spec.duration is None else clock() + spec.duration
    stop = asyncio.Event()

    async def worker(w: int) -> None:
        nonlocal issued
        rng = random.Random(spec.seed * 7919 + w)
        while (deadline is None or clock() < deadline) and (
            spec.requests is None or issued < spec.requests
        ):
            issued += 1
            with contextlib.suppress(*_FAILURES):  # counted by the recorder; the load goes on
                await prepared.op(w, rng, rec)

    async def ticker() -> None:
        while not stop.is_set():
            elapsed = clock() - rec.started
            count, nbytes, errors = rec.totals()
            goal = (
                f"{elapsed:.0f}/{spec.duration:.0f}s"
                if spec.duration
                else f"{count}/{spec.requests}"
            )
            progress.show(
                f"[load] {s.target.label} {what} c={concurrency} {goal}: {count} ops, "
                f"{count / max(elapsed, 1e-9):,.0f} ops/s, "
                f"{nbytes / max(elapsed, 1e-9) / 1e6:,.1f} MB/s, {errors} errors"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROGRESS_EVERY)

    tick = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        stop.set()
        await tick
    seconds = clock() - rec.started
    progress.clear()
    return rec, seconds


# -- the run ------------------------------------------------------------------------


async def run_targets(
    targets: list[Target], spec: LoadSpec, progress: Progress
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """Every scenario, size and level against every target; rows, per-target facts, errors."""
    run_id = f"{int(time.time()):x}{os.urandom(2).hex()}"
    source = BlobSource()
    sessions = [Session(t, spec, source) for t in targets]
    rows: list[dict[str, Any]] = []
    fatal: list[str] = []
    try:
        for s in sessions:
            await s.auth.discover(s.http)
            log(f"{s.target.label}: {s.target.url} (auth: {s.auth.mode})")
        for name in spec.scenarios:
            sizes: list[int | None] = [None] if name == "manifest" else list(spec.sizes)
            for size in sizes:
                what = name if size is None else f"{name} {size_label(size)}"
                prepared: dict[str, Prepared] = {}
                for s in sessions:
                    try:
                        prepared[s.target.label] = await prepare(name, size, s, run_id)
                    except _FAILURES as exc:
                        message = (
                            f"{s.target.label} {what}: setup failed: {type(exc).__name__}: {exc}"
                        )
                        log(message, progress)
                        fatal.append(message)
                for concurrency in spec.concurrency:
                    for s in sessions:
                        if s.target.label not in prepared:
                            continue
                        p = prepared[s.target.label]
                        rec, seconds = await run_level(s, p, spec, concurrency, what, progress)
                        for row in rec.rows(seconds):
                            rows.append(
                                {
                                    "target": s.target.label,
                                    "url": str(s.target.url),
                                    "scenario": name,
                                    "size": size_label(size) if size else "",
                                    "size_bytes": size or 0,
                                    "concurrency": concurrency,
                                    "repository": p.repository,
                                    **row,
                                }
                            )
                        count, nbytes, errors = rec.totals()
                        log(
                            f"{s.target.label} {what} c={concurrency}: {count} ops in "
                            f"{seconds:.1f}s, {count / seconds:,.1f} ops/s, "
                            f"{nbytes / seconds / 1e6:,.1f} MB/s, {errors} errors",
                            progress,
                        )
                for s in sessions:
                    after = prepared.get(s.target.label)
                    if after is not None and after.after is not None:
                        try:
                            await after.after()
                        except _FAILURES as exc:
                            message = f"{s.target.label} {what}: check failed: {exc}"
                            log(message, progress)
                            fatal.append(message)
    finally:
        for s in sessions:
            await s.close()
    facts = {
        s.target.label: {
            "url": str(s.target.url),
            "auth": s.auth.mode,
            "tokens_fetched": s.auth.fetched,
            "images_pushed": {repo: len(tags) for repo, tags in s.pushed_tags.items()},
        }
        for s in sessions
    }
    return rows, facts, fatal


def run(args: argparse.Namespace, targets: list[Target], spec: LoadSpec) -> int:
    """Refuses foreign hosts, runs, writes the table, JSON, CSV and chart; exit status."""
    if not args.i_own_this_registry:
        for target in targets:
            reason = loopback_refusal(target.url)
            if reason:
                print(
                    f"refusing to load-test {target.url}: {reason}. A load test can overload a "
                    f"registry and fill its storage; run it only against a registry you own "
                    f"and pass {OWNERSHIP_FLAG} to confirm.",
                    file=sys.stderr,
                )
                return 2
    if args.chart is not None and not loadreport.have_matplotlib():
        print(loadreport.NO_MATPLOTLIB, file=sys.stderr)
        return 2
    started = time.time()
    progress = Progress()
    try:
        try:
            import uvloop

            rows, facts, fatal = uvloop.run(run_targets(targets, spec, progress))
        except ImportError:
            rows, facts, fatal = asyncio.run(run_targets(targets, spec, progress))
    except AuthError as exc:
        progress.clear()
        print(f"[load] authentication failed: {exc}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError) as exc:
        progress.clear()
        print(f"[load] cannot reach the registry: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.clear()
        print("[load] interrupted", file=sys.stderr)
        return 130
    failed = [
        f"{r['target']} {r['scenario']} {r['size']} c={r['concurrency']} {r['op']}: "
        f"{r['errors']} errors ({r['first_error']})"
        for r in rows
        if r["errors"]
    ] + fatal
    results: dict[str, Any] = {
        "meta": {
            "mode": "load",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "spec": spec.as_dict(),
            "targets": facts,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
                "python": platform.python_version(),
                "kernel": platform.release(),
            },
        },
        "results": rows,
        "failed": failed,
    }
    print(loadreport.table(rows, [t.label for t in targets]))
    if args.json is not None:
        loadreport.write_json(results, args.json)
        print(f"json: {args.json}")
    if args.csv is not None:
        loadreport.write_csv(rows, args.csv)
        print(f"csv: {args.csv}")
    if args.chart is not None:
        print(loadreport.chart(rows, args.chart))
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0
