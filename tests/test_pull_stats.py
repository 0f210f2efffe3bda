"""Pull statistics and the activity feed, over HTTP and the CLI against real servers."""

from __future__ import annotations

import asyncio
import time

from aioreg.api.management.routes import PREFIX
from tests.conftest import AppFactory, Reg, error_codes
from tests.test_auth import ADMIN_PASSWORD, basic, push_image, start_auth
from tests.test_metrics import scrape, value
from tests.test_warnings import aioreg

DAY = 86400
ADMIN = basic("admin", ADMIN_PASSWORD)
ALICE = basic("alice", "alice-pw")
BOB = basic("bob", "bob-pw")


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


async def get_json(reg: Reg, path: str, headers: dict[str, str] | None = None) -> dict:
    resp = await reg.client.get(PREFIX + path, headers=headers or {})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def pull(reg: Reg, name: str, reference: str, times: int = 1) -> None:
    for _ in range(times):
        resp = await reg.client.get(f"/v2/{name}/manifests/{reference}")
        assert resp.status == 200, await resp.text()


async def test_pull_counts_per_repository_tag_artifact_and_day(reg: Reg) -> None:
    v1, _ = await reg.push_image("team/app", "v1", seed="one")
    v2, _ = await reg.push_image("team/app", "v2", seed="two")
    first_day = today()
    await pull(reg, "team/app", "v1", 3)
    await pull(reg, "team/app", "v2")
    await pull(reg, "team/app", v1, 2)  # by digest
    assert (await reg.client.head("/v2/team/app/manifests/v1")).status == 200  # not a pull
    assert (await reg.client.get("/v2/team/app/manifests/nope")).status == 404  # nor this

    detail = await get_json(reg, "/repositories/team/app")
    assert detail["pull_count"] == 6
    assert {t["name"]: t["pull_count"] for t in detail["tags"]} == {"v1": 3, "v2": 1}
    assert {a["digest"]: a["pull_count"] for a in detail["artifacts"]} == {v1: 5, v2: 1}
    days = detail["pulls_by_day"]
    assert len(days) == 30 and days[-1]["day"] in (first_day, today())
    assert sum(d["pulls"] for d in days) == 6

    tag = await get_json(reg, "/repositories/team/app/-/tags/v1/pulls?days=7")
    assert (tag["repository"], tag["tag"], tag["total"]) == ("team/app", "v1", 3)
    assert tag["last_pull_at"] is not None
    assert len(tag["days"]) == 7 and sum(d["pulls"] for d in tag["days"]) == 3
    assert (await get_json(reg, "/repositories/team/app/-/pulls?tag=v2"))["total"] == 1
    by_digest = await get_json(reg, "/repositories/team/app/-/pulls?by_digest=true")
    assert (by_digest["total"], by_digest["tag"]) == (2, None)
    whole = await get_json(reg, "/repositories/team/app/-/pulls?days=1")
    assert whole["total"] == 6 and len(whole["days"]) == 1


async def test_pull_statistics_survive_a_restart(make_registry: AppFactory) -> None:
    reg = await make_registry()
    await reg.push_image("team/app", "v1")
    await pull(reg, "team/app", "v1", 4)
    await reg.server.stop()  # the batched counts are written on the way out
    again = await make_registry(data_dir=reg.data_dir)
    assert (await get_json(again, "/repositories/team/app"))["pull_count"] == 4
    await pull(again, "team/app", "v1")
    assert (await get_json(again, "/repositories/team/app/-/tags/v1/pulls"))["total"] == 5


async def test_pulls_are_batched_not_one_write_each(reg: Reg) -> None:
    await reg.push_image("team/app", "v1")
    await reg.registry.index.activity.flush()
    before = value(await scrape(reg), "aioreg_index_write_wait_seconds_count")
    pulls = 40
    await asyncio.gather(*(pull(reg, "team/app", "v1") for _ in range(pulls)))
    after = value(await scrape(reg), "aioreg_index_write_wait_seconds_count")
    # Each periodic flush (once a second) is two transactions (events, then counts),
    # however many pulls it carries.
    assert after - before < pulls / 2
    assert (await get_json(reg, "/repositories/team/app"))["pull_count"] == pulls


async def test_unknown_repository_and_bad_parameters(reg: Reg) -> None:
    await reg.push_image("team/app", "v1")
    resp = await reg.client.get(f"{PREFIX}/repositories/team/none/-/pulls")
    assert resp.status == 404 and error_codes(await resp.json()) == ["NAME_UNKNOWN"]
    for query in ("days=0", "days=x", "by_digest=maybe", "tag=v1&by_digest=true", "tag=%20"):
        resp = await reg.client.get(f"{PREFIX}/repositories/team/app/-/pulls?{query}")
        assert resp.status == 400, query
    for query in ("since=yesterday", "until=nan", "cursor=-1", "limit=x"):
        resp = await reg.client.get(f"{PREFIX}/activity?{query}")
        assert resp.status == 400, query


async def test_cli_repo_show_prints_pull_counts(reg: Reg) -> None:
    await reg.push_image("team/app", "v1")
    await pull(reg, "team/app", "v1", 3)
    await reg.registry.index.activity.flush()
    show = await asyncio.to_thread(aioreg, reg.data_dir, "repo", "show", "team/app")
    assert show.returncode == 0, show.stderr
    assert "3 pulls" in show.stdout.splitlines()[0]
    assert f"{today()} 3" in show.stdout
    tag_line = next(line for line in show.stdout.splitlines() if line.startswith("v1 "))
    assert tag_line.split()[-1] == "3"


async def test_activity_feed_filters_and_pages(reg: Reg) -> None:
    await reg.push_image("team/app", "v1", seed="a")
    await reg.push_image("team/web", "v1", seed="b")
    await pull(reg, "team/app", "v1")
    assert (await reg.client.delete("/v2/team/web/manifests/v1")).status == 202
    feed = await get_json(reg, "/activity")
    assert [(e["action"], e["repository"]) for e in feed["events"]] == [
        ("untag", "team/web"),
        ("pull", "team/app"),
        ("push", "team/web"),
        ("push", "team/app"),
    ]
    assert feed["next_cursor"] is None
    pulls = await get_json(reg, "/activity?action=pull,untag")
    assert [e["action"] for e in pulls["events"]] == ["untag", "pull"]
    app = await get_json(reg, "/activity?repository=team/app")
    assert {e["repository"] for e in app["events"]} == {"team/app"}
    assert (await get_json(reg, f"/activity?since={time.time() + DAY}"))["events"] == []
    assert len((await get_json(reg, "/activity?until=1970-01-02T00:00:00Z"))["events"]) == 0
    # One event a page, following the cursor: each once, newest first, then the end.
    seen, cursor = [], ""
    while True:
        page = await get_json(reg, f"/activity?limit=1{cursor}")
        seen += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [e["id"] for e in feed["events"]]


async def test_activity_feed_shows_only_what_the_caller_may_pull(
    make_registry: AppFactory,
) -> None:
    reg = await start_auth(make_registry)
    for repo, creds in (("team/app", ALICE), ("pub/web", ALICE), ("bob/own", BOB)):
        status, text = await push_image(reg, repo, "v1", creds, seed=repo)
        assert status == 201, text
    resp = await reg.client.get("/v2/bob/own/manifests/v1", headers=BOB)
    assert resp.status == 200
    resp = await reg.client.post(f"{PREFIX}/gc", headers=ADMIN)
    assert resp.status == 200

    def repositories(feed: dict) -> set[str]:
        return {e["repository"] for e in feed["events"]}

    assert repositories(await get_json(reg, "/activity", ALICE)) == {"team/app", "pub/web"}
    assert repositories(await get_json(reg, "/activity", BOB)) == {"bob/own", "pub/web"}
    assert repositories(await get_json(reg, "/activity")) == {"pub/web"}  # anonymous: public
    everything = await get_json(reg, "/activity", ADMIN)
    assert repositories(everything) >= {"team/app", "pub/web", "bob/own"}
    bob_pulls = await get_json(reg, "/activity?actor=bob&action=pull", ADMIN)
    assert [(e["repository"], e["actor"]) for e in bob_pulls["events"]] == [("bob/own", "bob")]
    resp = await reg.client.get(f"{PREFIX}/activity?repository=bob/own", headers=ALICE)
    assert resp.status == 403 and error_codes(await resp.json()) == ["DENIED"]
    resp = await reg.client.get(f"{PREFIX}/repositories/bob/own/-/pulls", headers=ALICE)
    assert resp.status == 403
    own = await get_json(reg, "/repositories/bob/own/-/tags/v1/pulls", BOB)
    assert own["total"] == 1
