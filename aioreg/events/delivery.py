"""The webhook delivery worker: outbox → one delivery per endpoint → signed POSTs.

At least once and in order per endpoint: only an endpoint's oldest pending
delivery is sent, and it is marked delivered only after a 2xx, so a crash
mid-send sends it again after the restart. Failures back off exponentially
with jitter up to ``max_attempts``, then the delivery is dead-lettered; a 4xx
other than 408 and 429 is dead-lettered at once (sending it again would not
help). Each attempt is kept. Sends run in their own tasks, at most
``concurrency`` at once and each under ``timeout``: a slow or dead receiver
holds back its own queue, never a push or a pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import math
import random
import socket
import time
import urllib.parse
import uuid
from dataclasses import dataclass

import aiohttp

from aioreg import __version__
from aioreg.config import Config, WebhooksConfig
from aioreg.domain.rules import namespace_of
from aioreg.events.formats import Source, render
from aioreg.index.protocols import IndexProtocol
from aioreg.index.webhooks import DEAD, DELIVERED, PENDING, AttemptRow, EndpointRow, OutboxEventRow

log = logging.getLogger("aioreg.webhooks")

DISPATCH_BATCH = 500
ERROR_TEXT_MAX = 300
NO_RETRY_STATUSES = frozenset({408, 429})  # 4xx that say "later", not "never"


def source_of(config: Config) -> Source:
    """Who sends: ``webhooks.public_url`` (else this host and port) and a run's instance id."""
    host = socket.gethostname()
    addr = f"{host}:{config.server.port}"
    base = config.webhooks.public_url.rstrip("/") or f"http://{addr}"
    return Source(base, addr, str(uuid.uuid4()))


async def send(
    endpoint: EndpointRow,
    event: OutboxEventRow,
    delivery_id: int | None,
    source: Source,
    timeout: float,
    session: aiohttp.ClientSession | None = None,
) -> AttemptRow:
    """POST ``event`` to ``endpoint`` once; the attempt as kept in the delivery history."""
    request = render(event, endpoint.format, source, endpoint.secret, delivery_id)
    started = time.monotonic()
    at = time.time()
    status: int | None = None
    error: str | None = None
    owned = session is None
    client = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        async with client.post(
            endpoint.url,
            data=request.body,
            headers={**request.headers, "User-Agent": f"aioreg-webhooks/{__version__}"},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            status = response.status
            if not 200 <= status < 300:
                text = (await response.content.read(ERROR_TEXT_MAX)).decode("utf-8", "replace")
                error = f"HTTP {status} {response.reason or ''}: {text}".strip(": ")
    except TimeoutError:
        error = f"no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
    finally:
        if owned:
            await client.close()
    return AttemptRow(at, status, time.monotonic() - started, error)


def matches(endpoint: EndpointRow, event: OutboxEventRow) -> bool:
    """Whether ``endpoint`` hears ``event``: enabled when it happened, in its namespace,
    of a kind, repository and media type its filters let through (empty: any)."""
    if not endpoint.enabled or endpoint.created_at > event.at:
        return False
    if endpoint.namespace is not None and namespace_of(event.repository) != endpoint.namespace:
        return False
    if endpoint.events and event.action not in endpoint.events:
        return False
    if not fnmatch.fnmatchcase(event.repository, endpoint.repository_pattern):
        return False
    return not endpoint.media_types or event.media_type in endpoint.media_types


def outcome(status: int | None, attempts: int, max_attempts: int) -> str:
    """What becomes of a delivery after its ``attempts``-th attempt answered ``status``."""
    if status is not None and 200 <= status < 300:
        return DELIVERED
    if status is not None and 400 <= status < 500 and status not in NO_RETRY_STATUSES:
        return DEAD
    return DEAD if attempts >= max_attempts else PENDING


def backoff(config: WebhooksConfig, attempts: int) -> float:
    """Seconds before the next attempt: doubling from ``backoff_base`` up to ``backoff_max``,
    jittered to between half and all of that so receivers are not hit in lockstep."""
    delay = min(config.backoff_max, config.backoff_base * 2.0 ** min(attempts - 1, 62))
    return delay * random.uniform(0.5, 1.0)


@dataclass(slots=True)
class DeliveryStats:
    """What this process's worker did since it started (for metrics)."""

    attempts: int = 0
    delivered: int = 0
    failed: int = 0  # attempts that did not deliver
    dead_lettered: int = 0


class DeliveryWorker:
    """Started and stopped with the server; wakes on new events, due retries, or every
    ``poll_interval`` (events another process wrote)."""

    def __init__(self, index: IndexProtocol, config: Config) -> None:
        self.index = index
        self.config = config.webhooks
        self.source = source_of(config)
        self._task: asyncio.Task[None] | None = None
        self._sending: dict[int, asyncio.Task[None]] = {}  # endpoint id -> its send
        self._session: aiohttp.ClientSession | None = None
        self.stats = DeliveryStats()

    def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            )
            self._task = asyncio.create_task(self._forever(), name="webhook delivery")

    async def stop(self) -> None:
        """Stop sending; an attempt cut off here is made again after the next start."""
        task, self._task = self._task, None
        tasks = [t for t in (task, *self._sending.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._sending.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _forever(self) -> None:
        wake = self.index.webhooks.written
        while True:
            wake.clear()
            try:
                wait = await self.run_once()
            except Exception:
                log.exception("webhook delivery failed; retrying in %gs", self.config.poll_interval)
                wait = self.config.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, min(wait, self.config.poll_interval)))

    async def run_once(self) -> float:
        """Fan out new events, start every due send; seconds until the next one is due."""
        now = time.time()
        await self._dispatch(now)
        next_due = math.inf
        for delivery_id, endpoint_id, due in await self.index.webhooks.heads():
            if endpoint_id in self._sending:
                continue
            if due > now:
                next_due = min(next_due, due)
            elif len(self._sending) < self.config.concurrency:
                self._sending[endpoint_id] = asyncio.create_task(
                    self._deliver(delivery_id, endpoint_id), name=f"webhook {delivery_id}"
                )
        return next_due - now

    async def _dispatch(self, now: float) -> None:
        while events := await self.index.webhooks.undispatched(DISPATCH_BATCH):
            endpoints = await self.index.webhooks.endpoints()
            targets = {e.id: [p.id for p in endpoints if matches(p, e)] for e in events}
            await self.index.webhooks.fan_out(targets, now)
            if len(events) < DISPATCH_BATCH:
                return

    async def _deliver(self, delivery_id: int, endpoint_id: int) -> None:
        sent = False
        try:
            sent = await self._attempt(delivery_id, endpoint_id)
        except Exception:
            # Left pending as it was: the next poll tries again, not a tight loop.
            log.exception("webhook delivery %d failed", delivery_id)
        finally:
            self._sending.pop(endpoint_id, None)
        if sent:
            self.index.webhooks.written.set()  # the endpoint's next delivery may go

    async def _attempt(self, delivery_id: int, endpoint_id: int) -> bool:
        """One attempt at a delivery, recorded; False when it was no longer due."""
        delivery = await self.index.webhooks.delivery(delivery_id)
        endpoint = await self.index.webhooks.endpoint(endpoint_id)
        if delivery is None or endpoint is None or delivery.state != PENDING:
            return False  # removed, or finished by another process meanwhile
        attempt = await send(
            endpoint, delivery.event, delivery_id, self.source, self.config.timeout, self._session
        )
        attempts = delivery.attempts + 1
        state = outcome(attempt.status, attempts, self.config.max_attempts)
        next_at = attempt.at + backoff(self.config, attempts) if state == PENDING else 0.0
        await self.index.webhooks.record_attempt(delivery_id, attempt, state, next_at)
        # Counted once recorded: the metrics never run ahead of the delivery history.
        self.stats.attempts += 1
        if state == DELIVERED:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
        if state == DEAD:
            self.stats.dead_lettered += 1
        if state == DEAD:
            # The endpoint by id and host: a URL's path may carry a token.
            log.warning(
                "webhook delivery %d (event %s, %s) to endpoint %d (%s) dead-lettered "
                "after %d attempts: %s",
                delivery_id,
                delivery.event.uid,
                delivery.event.action,
                endpoint.id,
                urllib.parse.urlsplit(endpoint.url).hostname,
                attempts,
                attempt.error,
            )
        return True
