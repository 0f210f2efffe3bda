"""``/metrics`` scraped from a real server after a known sequence of requests.

The text is parsed with prometheus-client's own parser; every counter must say
exactly what the test did, by route template (never the raw path).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from aioreg.auth.accounts import Accounts
from tests.conftest import AppFactory, Reg, digest_of, error_codes
from tests.process import Server
from tests.test_auth import ADMIN_PASSWORD, basic
from tests.test_workers import WORKER, fresh, pinned, start_workers, worker_pids

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

UPLOADS = "/v2/{name}/blobs/uploads/"
UPLOAD = "/v2/{name}/blobs/uploads/{upload_id}"
MANIFEST = "/v2/{name}/manifests/{reference}"
BLOB = "/v2/{name}/blobs/{digest}"


async def scrape(reg: Reg, **kwargs: object) -> Samples:
    return await parse(await reg.client.get("/metrics", **kwargs))


async def parse(resp: aiohttp.ClientResponse) -> Samples:
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, route: str, method: str, status: int) -> float:
    return value(
        samples, "aioreg_http_requests_total", route=route, method=method, status=str(status)
    )


async def test_counters_match_a_known_sequence_of_requests(reg: Reg) -> None:
    digest, _ = await reg.push_image("team/app", "v1", seed="m")
    layer = b"layer-m" * 100
    for _ in range(3):
        resp = await reg.client.get("/v2/team/app/manifests/v1")
        assert resp.status == 200
    assert (await reg.client.head("/v2/team/app/manifests/v1")).status == 200
    assert (await reg.client.get(f"/v2/team/app/manifests/{digest}")).status == 200
    resp = await reg.client.get(f"/v2/team/app/blobs/{digest_of(layer)}")
    assert resp.status == 200 and await resp.read() == layer
    for _ in range(2):
        assert (await reg.client.get("/v2/team/app/manifests/missing")).status == 404
    assert (await reg.client.get("/no/such/endpoint")).status == 404
    # A chunked upload: start, one PATCH, the final PUT.
    chunk = b"chunk" * 1000
    resp = await reg.client.post("/v2/team/app/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    resp = await reg.client.patch(
        location, data=chunk, headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status == 202
    location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    resp = await reg.client.put(f"{location}{sep}digest={digest_of(chunk)}")
    assert resp.status == 201, await resp.text()
    # One more upload started and left open.
    assert (await reg.client.post("/v2/team/app/blobs/uploads/")).status == 202

    samples = await scrape(reg)
    assert requests(samples, UPLOADS, "POST", 201) == 2  # config and layer, monolithic
    assert requests(samples, UPLOADS, "POST", 202) == 2
    assert requests(samples, UPLOAD, "PATCH", 202) == 1
    assert requests(samples, UPLOAD, "PUT", 201) == 1
    assert requests(samples, MANIFEST, "PUT", 201) == 1
    assert requests(samples, MANIFEST, "GET", 200) == 4
    assert requests(samples, MANIFEST, "HEAD", 200) == 1
    assert requests(samples, MANIFEST, "GET", 404) == 2
    assert requests(samples, BLOB, "GET", 200) == 1
    assert requests(samples, "(unmatched)", "GET", 404) == 1
    assert not [key for key in samples if "team/app" in str(key)], "raw paths leaked"
    total = sum(v for (n, _), v in samples.items() if n == "aioreg_http_requests_total")
    assert total == 16
    # Latency: one observation per request, by route and method.
    latency = "aioreg_http_request_duration_seconds_count"
    assert value(samples, latency, route=MANIFEST, method="GET") == 6
    # Bytes: what the uploads carried in, what the blob GET carried out.
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": "m"}).encode()
    received = "aioreg_http_request_bytes_total"
    assert value(samples, received, route=UPLOADS, method="POST") == len(config) + len(layer)
    assert value(samples, received, route=UPLOAD, method="PATCH") == len(chunk)
    assert value(samples, "aioreg_http_response_bytes_total", route=BLOB, method="GET") == len(
        layer
    )
    # Uploads: none left in flight; each upload request and each commit timed.
    assert value(samples, "aioreg_upload_requests_in_progress") == 0
    upload = "aioreg_upload_request_duration_seconds_count"
    assert value(samples, upload, method="POST") == 4
    assert value(samples, upload, method="PATCH") == 1
    assert value(samples, upload, method="PUT") == 1
    commit = "aioreg_commit_duration_seconds_count"
    assert value(samples, commit, kind="blob") == 3  # two monolithic POSTs and the PUT
    assert value(samples, commit, kind="manifest") == 1
    # What is stored, read from the index at scrape time.
    assert value(samples, "aioreg_blobs") == 3
    assert value(samples, "aioreg_manifests") == 1
    assert value(samples, "aioreg_repositories") == 1
    assert value(samples, "aioreg_upload_sessions") == 1
    stored = len(config) + len(layer) + len(chunk)
    assert value(samples, "aioreg_stored_bytes") == stored
    assert value(samples, "aioreg_namespace_stored_bytes", namespace="team") == stored
    # Every write waited for the index lock, however briefly, and was counted.
    assert value(samples, "aioreg_index_write_wait_seconds_count") > 0
    assert value(samples, "process_cpu_seconds_total") > 0

    # The scrape itself is counted by the next one.
    samples = await scrape(reg)
    assert requests(samples, "/metrics", "GET", 200) == 1


async def test_gc_runs_and_bytes_freed(make_registry: AppFactory) -> None:
    reg = await make_registry(gc={"grace_period": 0})
    lone = b"nobody references me" * 50
    await reg.push_blob("team/gc", lone)
    await reg.push_image("team/gc", "v1", seed="kept")
    assert (await reg.client.post("/api/v1/gc?dry_run=true")).status == 200
    resp = await reg.client.post("/api/v1/gc")
    assert resp.status == 200
    assert (await resp.json())["bytes_freed"] == len(lone)
    samples = await scrape(reg)
    assert value(samples, "aioreg_gc_runs_total", result="success") == 1
    assert value(samples, "aioreg_gc_runs_total", result="dry_run") == 1
    assert value(samples, "aioreg_gc_freed_bytes_total") == len(lone)
    assert value(samples, "aioreg_gc_removed_blobs_total") == 1
    assert value(samples, "aioreg_gc_duration_seconds_count") == 2
    assert value(samples, "aioreg_blobs") == 2


async def test_namespace_series_are_bounded(make_registry: AppFactory) -> None:
    reg = await make_registry(sections={"metrics": {"namespace_series_max": 2}})
    sizes = {"big": 3000, "mid": 2000, "small": 1000, "tiny": 500}
    for namespace, size in sizes.items():
        await reg.push_blob(f"{namespace}/r", namespace.encode() * (size // len(namespace)))
        await reg.push_image(f"{namespace}/r", "v1", seed=namespace)
    samples = await scrape(reg)
    series = {
        dict(labels)["namespace"]: v
        for (name, labels), v in samples.items()
        if name == "aioreg_namespace_stored_bytes"
    }
    assert set(series) == {"big", "mid", "(other)"}
    assert sum(series.values()) == value(samples, "aioreg_stored_bytes")


async def test_metrics_beyond_loopback_need_the_token(make_registry: AppFactory) -> None:
    reg = await make_registry(
        sections={"metrics": {"open_on_loopback": False, "token": "scrape-secret"}}
    )
    resp = await reg.client.get("/metrics")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_codes(await resp.json()) == ["UNAUTHORIZED"]
    resp = await reg.client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    await scrape(reg, headers={"Authorization": "Bearer scrape-secret"})


async def test_metrics_without_a_token_are_loopback_only(make_registry: AppFactory) -> None:
    reg = await make_registry(sections={"metrics": {"open_on_loopback": False}})
    resp = await reg.client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert resp.status == 403
    assert error_codes(await resp.json()) == ["DENIED"]


async def test_metrics_for_admins_not_for_other_users(make_registry: AppFactory) -> None:
    reg = await make_registry(
        auth={"enabled": True, "admin_password": ADMIN_PASSWORD},
        sections={"metrics": {"open_on_loopback": False}},
    )
    await Accounts(reg.registry.index).add_user("alice", "alice-pw")
    assert (await reg.client.get("/metrics")).status == 401
    resp = await reg.client.get("/metrics", headers=basic("alice", "alice-pw"))
    assert resp.status == 403
    assert error_codes(await resp.json()) == ["DENIED"]
    await scrape(reg, headers=basic("admin", ADMIN_PASSWORD))


async def test_metrics_can_be_turned_off(make_registry: AppFactory) -> None:
    reg = await make_registry(sections={"metrics": {"enabled": False}})
    assert (await reg.client.get("/metrics")).status == 404


async def test_two_servers_in_one_process_keep_their_own_figures(
    make_registry: AppFactory,
) -> None:
    first = await make_registry()
    second = await make_registry(data_dir=first.data_dir.parent / "second")
    assert (await first.client.get("/v2/x/manifests/nope")).status == 404
    samples = await scrape(second)
    assert requests(samples, MANIFEST, "GET", 404) == 0
    assert requests(await scrape(first), MANIFEST, "GET", 404) == 1


async def test_any_worker_scraped_reports_every_workers_requests(
    servers: list[Server], tmp_path: Path
) -> None:
    _, base = start_workers(servers, tmp_path / "d")
    answered = {"0": 0, "1": 0}
    sent = 0
    async with fresh(base) as http:
        # Each request on a new connection: the kernel picks the worker each time.
        while min(answered.values()) < 3:
            assert sent < 400, answered
            path = "/v2/" if sent % 2 else "/v2/team/app/manifests/nope"
            resp = await http.get(path)
            assert resp.status == (200 if sent % 2 else 404)
            answered[resp.headers[WORKER]] += 1
            sent += 1
        scraped_by = {"0": 0, "1": 0}
        scrapes = 0
        while min(scraped_by.values()) < 2:
            assert scrapes < 200, scraped_by
            resp = await http.get("/metrics")
            scraped_by[resp.headers[WORKER]] += 1
            samples = await parse(resp)
            # Every request so far, whichever worker answered it; the scrapes before
            # this one too (a scrape is counted once answered).
            assert requests(samples, MANIFEST, "GET", 404) == (sent + 1) // 2
            assert requests(samples, "/v2/", "GET", 200) == sent // 2
            assert requests(samples, "/metrics", "GET", 200) == scrapes
            total = sum(v for (n, _), v in samples.items() if n == "aioreg_http_requests_total")
            assert total == sent + scrapes
            latency = "aioreg_http_request_duration_seconds_count"
            assert value(samples, latency, route="/v2/", method="GET") == sent // 2
            assert value(samples, "aioreg_metrics_workers") == 2
            # Per-process figures stay per process, labelled by worker.
            cpu = {
                dict(labels).get("worker")
                for (name, labels) in samples
                if name == "process_cpu_seconds_total"
            }
            assert cpu == {"0", "1"}
            assert value(samples, "aioreg_webhook_attempts_total") == 0
            assert value(samples, "aioreg_webhook_queue_depth") == 0
            assert value(samples, "aioreg_repositories") == 0
            scrapes += 1


async def test_a_worker_that_does_not_answer_is_left_out_not_waited_for(
    servers: list[Server], tmp_path: Path
) -> None:
    server, base = start_workers(servers, tmp_path / "d")
    http = await pinned(base, "0")
    stopped = worker_pids(server)["1"]
    os.kill(stopped, signal.SIGSTOP)  # alive (its lock held) but answering nothing
    try:
        resp = await http.get("/metrics")
        assert resp.headers[WORKER] == "0"
        samples = await parse(resp)
    finally:
        os.kill(stopped, signal.SIGCONT)
        await http.close()
    assert value(samples, "aioreg_metrics_workers") == 1
    cpu = {
        dict(labels)["worker"] for (name, labels) in samples if name == "process_cpu_seconds_total"
    }
    assert cpu == {"0"}
    assert f"worker w1-{stopped} sent no metrics" in server.output
