"""Webhook endpoints managed through ``/api/v1/webhooks`` and ``aioreg webhook``.

An endpoint is registry-wide or belongs to one namespace (it hears only that
namespace's repositories). Its secret is write-only: given (or generated) when
it is added, shown that once, then only used to sign. ``matches`` is the
policy deciding which endpoints hear an event (``aioreg.events.delivery.matches``).
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from dataclasses import dataclass, field

from aioreg.config import PROXY_NAMESPACE_RE
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.events.delivery import send, source_of
from aioreg.events.formats import CLOUDEVENTS, FORMATS
from aioreg.index.outbox import EVENT_KINDS
from aioreg.index.webhooks import (
    DEAD,
    DELIVERED,
    PENDING,
    AttemptRow,
    DeliveryRow,
    EndpointRow,
    NewEndpoint,
    OutboxEventRow,
)

MAX_ENDPOINTS = 1000
MAX_FILTER_ITEMS = 50
MAX_TEXT = 2048
SECRET_MIN, SECRET_MAX = 16, 256
DELIVERY_STATES = (PENDING, DELIVERED, DEAD)
_URL_RE = re.compile(r"https?://[^/\s@?#]+(?:[/?]\S*)?")


@dataclass(frozen=True, slots=True, repr=False)
class EndpointSpec:
    """A new endpoint as asked for; ``secret`` None: one is generated (and shown once)."""

    url: str
    secret: str | None = None
    namespace: str | None = None
    events: list[str] = field(default_factory=list)
    repository_pattern: str = "*"
    media_types: list[str] = field(default_factory=list)
    format: str = CLOUDEVENTS
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class DeliveryHistory:
    delivery: DeliveryRow
    attempts: list[AttemptRow]


def _bad(message: str) -> RegistryError:
    return RegistryError(ErrorCode.BAD_REQUEST, message)


def validate(spec: EndpointSpec) -> None:
    if len(spec.url) > MAX_TEXT or not _URL_RE.fullmatch(spec.url):
        # No user:password@ (URLs are listed and logged): the secret signs instead.
        raise _bad("url must be http(s)://host[:port][/path], without credentials")
    if spec.secret is not None and not SECRET_MIN <= len(spec.secret) <= SECRET_MAX:
        raise _bad(f"a secret has {SECRET_MIN} to {SECRET_MAX} characters")
    if spec.namespace is not None and not PROXY_NAMESPACE_RE.fullmatch(spec.namespace):
        raise _bad("namespace must be one lowercase path component")
    unknown = sorted(set(spec.events) - set(EVENT_KINDS))
    if unknown:
        raise _bad(f"unknown events {', '.join(unknown)}; known: {', '.join(EVENT_KINDS)}")
    if not spec.repository_pattern or len(spec.repository_pattern) > MAX_TEXT:
        raise _bad("repository_pattern is a glob of 1 to 2048 characters")
    if len(spec.media_types) > MAX_FILTER_ITEMS or any(
        not m or len(m) > 255 for m in spec.media_types
    ):
        raise _bad(f"media_types has at most {MAX_FILTER_ITEMS} types of 1-255 characters")
    if spec.format not in FORMATS:
        raise _bad(f"format must be one of {', '.join(FORMATS)}")


class WebhookEndpoints:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.index

    async def add(self, spec: EndpointSpec) -> tuple[EndpointRow, str]:
        """Store an endpoint; returns it with its secret, which is never shown again."""
        validate(spec)
        if len(await self.index.webhooks.endpoints()) >= MAX_ENDPOINTS:
            raise RegistryError(ErrorCode.DENIED, f"at most {MAX_ENDPOINTS} webhook endpoints")
        secret = spec.secret or secrets.token_urlsafe(32)
        endpoint_id = await self.index.webhooks.add_endpoint(
            NewEndpoint(
                spec.namespace,
                spec.url,
                secret,
                list(dict.fromkeys(spec.events)),
                spec.repository_pattern,
                list(dict.fromkeys(spec.media_types)),
                spec.format,
                spec.enabled,
            ),
            time.time(),
        )
        return await self.get(endpoint_id), secret

    async def all(self) -> list[EndpointRow]:
        return await self.index.webhooks.endpoints()

    async def get(self, endpoint_id: int) -> EndpointRow:
        endpoint = await self.index.webhooks.endpoint(endpoint_id)
        if endpoint is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no webhook endpoint {endpoint_id}")
        return endpoint

    async def remove(self, endpoint_id: int) -> None:
        """Forget an endpoint, its queued deliveries and their history."""
        if not await self.index.webhooks.remove_endpoint(endpoint_id):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no webhook endpoint {endpoint_id}")

    async def set_enabled(self, endpoint_id: int, enabled: bool) -> EndpointRow:
        """Pause or resume an endpoint: while paused nothing is queued or sent to it."""
        if not await self.index.webhooks.set_enabled(endpoint_id, enabled):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no webhook endpoint {endpoint_id}")
        return await self.get(endpoint_id)

    async def deliveries(
        self, endpoint_id: int, limit: int, state: str | None = None
    ) -> list[DeliveryHistory]:
        """An endpoint's deliveries, newest first, each with every attempt made."""
        await self.get(endpoint_id)
        if state is not None and state not in DELIVERY_STATES:
            raise _bad(f"state must be one of {', '.join(DELIVERY_STATES)}")
        rows = await self.index.webhooks.deliveries(endpoint_id, limit, state)
        return [DeliveryHistory(d, await self.index.webhooks.attempts(d.id)) for d in rows]

    async def delivery(self, delivery_id: int) -> DeliveryHistory:
        row = await self.index.webhooks.delivery(delivery_id)
        if row is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no webhook delivery {delivery_id}")
        return DeliveryHistory(row, await self.index.webhooks.attempts(delivery_id))

    async def redeliver(self, delivery_id: int) -> DeliveryHistory:
        """Queue a delivery again (a dead-lettered one, or a delivered one once more)."""
        if not await self.index.webhooks.redeliver(delivery_id, time.time()):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no webhook delivery {delivery_id}")
        return await self.delivery(delivery_id)

    async def test(self, endpoint_id: int) -> AttemptRow:
        """Send a ``test`` event to the endpoint now, outside its queue; nothing is kept."""
        endpoint = await self.get(endpoint_id)
        now = time.time()
        event = OutboxEventRow(
            0,
            str(uuid.uuid4()),
            now,
            "test",
            endpoint.namespace or "",
            None,
            None,
            None,
            None,
            None,
            None,
            {"endpoint": endpoint.id},
        )
        config = self.registry.config
        return await send(endpoint, event, None, source_of(config), config.webhooks.timeout)
