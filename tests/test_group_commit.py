"""Group commit: concurrent blob links share one write transaction (one WAL fsync), each in
its own savepoint, so one refusal rolls back only its own link."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading

import pytest

from aioreg.index import BlobRow
from tests.conftest import Reg, digest_of, error_codes
from tests.test_quotas import _quota, _refused
from tests.test_uploads import poll
from tests.test_webhooks import api


async def test_concurrent_pushes_commit_in_fewer_transactions_than_blobs(reg: Reg) -> None:
    index = reg.registry.index
    blobs = [os.urandom(20_000 + i) for i in range(32)]
    # While the write lock is held (as a GC sweep holds it), every push queues its link.
    async with index.blobs.files():
        pushes = [
            asyncio.create_task(reg.push_blob(f"gc/app{i % 4}", b)) for i, b in enumerate(blobs)
        ]
        await poll(lambda: index.blobs.batches.waiting == len(blobs), "all 32 links queue")
        before = index.db.write_transactions
    digests = await asyncio.gather(*pushes)
    assert index.db.write_transactions - before < len(blobs)
    for i, (blob, digest) in enumerate(zip(blobs, digests, strict=True)):
        resp = await reg.client.get(f"/v2/gc/app{i % 4}/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == blob
    assert list((reg.data_dir / "uploads").iterdir()) == []


async def test_a_batch_refuses_exactly_the_links_past_the_quota(reg: Reg) -> None:
    index = reg.registry.index
    await _quota(reg, "q", 3 * 1000 + 500)
    blobs = [os.urandom(1000) for _ in range(8)]
    locations = []
    for blob in blobs:
        resp = await reg.client.post("/v2/q/app/blobs/uploads/")
        location = resp.headers["Location"]
        resp = await reg.client.patch(location, data=blob, headers={"Content-Range": "0-999"})
        assert resp.status == 202, await resp.text()
        locations.append(location)
    async with index.blobs.files():
        closes = [
            asyncio.create_task(reg.client.put(f"{loc}?digest={digest_of(b)}"))
            for loc, b in zip(locations, blobs, strict=True)
        ]
        await poll(lambda: index.blobs.batches.waiting == len(blobs), "all 8 links queue")
    responses = await asyncio.gather(*closes)
    admitted = [i for i, r in enumerate(responses) if r.status == 201]
    assert len(admitted) == 3
    for i, resp in enumerate(responses):
        if i in admitted:
            assert (await reg.client.get(f"/v2/q/app/blobs/{digest_of(blobs[i])}")).status == 200
            continue
        await _refused(resp)
        assert (await reg.client.head(f"/v2/q/app/blobs/{digest_of(blobs[i])}")).status == 404
        # The refusal ends its session, as it does outside a batch.
        resp = await reg.client.get(locations[i])
        assert resp.status == 404
        assert error_codes(await resp.json()) == ["BLOB_UPLOAD_UNKNOWN"]
    assert await index.usage.namespace("q") == 3000
    assert await index.uploads.all() == []
    assert list((reg.data_dir / "uploads").iterdir()) == []


async def test_a_cancelled_caller_never_cancels_its_batch(reg: Reg) -> None:
    blobs = reg.registry.index.blobs
    rows = [BlobRow(digest_of(b"blob %d" % i), 6, None) for i in range(3)]
    placing, go_on = threading.Event(), threading.Event()

    def slow_place() -> None:
        placing.set()
        go_on.wait(10)

    async with blobs.files():
        first = asyncio.create_task(blobs.link("c/app", rows[0]))
        second = asyncio.create_task(blobs.link("c/app", rows[1], place_file=slow_place))
        dropped = asyncio.create_task(blobs.link("c/app", rows[2]))
        await poll(lambda: blobs.batches.waiting == 3, "three links queue")
        dropped.cancel()  # not yet in a batch: it is never linked
        await asyncio.wait([dropped])
        assert blobs.batches.waiting == 2
    await poll(placing.is_set, "the batch runs the second link")
    first.cancel()  # its link ran already: the cancellation waits for the commit
    done, _ = await asyncio.wait([first], timeout=0.2)
    assert not done
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert dropped.cancelled()
    assert await blobs.in_repository("c/app", rows[0].digest) is not None
    assert await blobs.in_repository("c/app", rows[1].digest) is not None
    assert await blobs.in_repository("c/app", rows[2].digest) is None


async def test_each_link_of_a_batch_announces_with_its_own_request_id(reg: Reg) -> None:
    await api(reg, "POST", "/webhooks", 201, json={"url": "http://127.0.0.1:9/x"})
    index = reg.registry.index
    async with index.blobs.files():
        pushes = [
            asyncio.create_task(
                reg.client.post(
                    f"/v2/ids/app{i}/blobs/uploads/?digest={digest_of(b'%d' % i)}",
                    data=b"%d" % i,
                    headers={"X-Request-Id": f"push-{i}"},
                )
            )
            for i in range(4)
        ]
        await poll(lambda: index.blobs.batches.waiting == 4, "all 4 links queue")
    assert [r.status for r in await asyncio.gather(*pushes)] == [201] * 4
    with contextlib.closing(sqlite3.connect(reg.data_dir / "index.db")) as db:
        rows = db.execute(
            "SELECT repository, request_id FROM webhook_events WHERE action = 'repository_created'"
        ).fetchall()
    assert sorted(rows) == [(f"ids/app{i}", f"push-{i}") for i in range(4)]


async def test_a_push_cancelled_while_its_batch_commits_leaves_no_temp_file(reg: Reg) -> None:
    """The link committed after its caller was cancelled: the session is over and its temp
    file goes with it, as after a push that returned; one cancelled before its batch keeps
    its session, resumable."""
    index, uploads = reg.registry.index, reg.registry.uploads
    placing, go_on = threading.Event(), threading.Event()

    def slow_place() -> None:
        placing.set()
        go_on.wait(10)

    sessions = []
    for data in (b"committed anyway", b"never linked"):
        resp = await reg.client.post("/v2/cx/app/blobs/uploads/")
        location = resp.headers["Location"]
        resp = await reg.client.patch(
            location, data=data, headers={"Content-Range": f"0-{len(data) - 1}"}
        )
        assert resp.status == 202
        sessions.append((location, location.rsplit("/", 1)[1].split("?")[0], data))
    (loc1, id1, data1), (loc2, id2, data2) = sessions
    async with index.blobs.files():
        blocker = asyncio.create_task(
            index.blobs.link("cx/app", BlobRow(digest_of(b"x"), 1, None), place_file=slow_place)
        )
        await poll(lambda: index.blobs.batches.waiting == 1, "the blocking link queues")
        finish = asyncio.create_task(uploads.finish("cx/app", id1, digest_of(data1), None, None))
        await poll(lambda: index.blobs.batches.waiting == 2, "the push's link queues")
    await poll(placing.is_set, "the batch holding both links runs")
    finish.cancel()
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await finish
    await blocker
    resp = await reg.client.get(f"/v2/cx/app/blobs/{digest_of(data1)}")
    assert resp.status == 200 and await resp.read() == data1
    assert (await reg.client.get(loc1)).status == 404
    # Cancelled while queued: never linked, the session goes on.
    async with index.blobs.files():
        finish = asyncio.create_task(uploads.finish("cx/app", id2, digest_of(data2), None, None))
        await poll(lambda: index.blobs.batches.waiting == 1, "the second push's link queues")
        finish.cancel()
        await asyncio.wait([finish])
    assert (await reg.client.head(f"/v2/cx/app/blobs/{digest_of(data2)}")).status == 404
    assert [p.name for p in (reg.data_dir / "uploads").iterdir()] == [id2]
    resp = await reg.client.put(
        f"{loc2}&digest={digest_of(data2)}" if "?" in loc2 else f"{loc2}?digest={digest_of(data2)}"
    )
    assert resp.status == 201, await resp.text()
    assert list((reg.data_dir / "uploads").iterdir()) == []


async def test_a_batch_takes_at_most_64_links(reg: Reg) -> None:
    blobs = reg.registry.index.blobs
    placing, go_on = threading.Event(), threading.Event()

    def slow_place() -> None:
        placing.set()
        go_on.wait(10)

    rows = [BlobRow(digest_of(b"bound %d" % i), 8, None) for i in range(65)]
    async with blobs.files():
        links = [asyncio.create_task(blobs.link("bound/app", rows[0], place_file=slow_place))]
        await poll(lambda: blobs.batches.waiting == 1, "the first link queues")
        links += [asyncio.create_task(blobs.link("bound/app", row)) for row in rows[1:]]
        await poll(lambda: blobs.batches.waiting == 65, "65 links queue")
    await poll(placing.is_set, "the first batch runs")
    assert blobs.batches.waiting == 1  # the 65th waits for the next batch
    go_on.set()
    await asyncio.gather(*links)
    for row in rows:
        assert await blobs.in_repository("bound/app", row.digest) is not None
