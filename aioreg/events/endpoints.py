"""Webhook endpoints managed through ``/api/v1/webhooks`` and ``aioreg webhook``.

An endpoint is registry-wide or belongs to one namespace (it hears only that
namespace's repositories). Its secret is write-only: given (or generated) when
it is added, shown that once, then only used to sign. Endpoints of the config
file (``[[webhook]]``) are stored at start and listed, but only the file changes
them. ``aioreg.events.delivery.matches`` decides which endpoints hear an event.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass

from aioreg.config import ConfigError, WebhookEndpointConfig, validate_webhook
from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.events.delivery import send, source_of
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
DELIVERY_STATES = (PENDING, DELIVERED, DEAD)


@dataclass(frozen=True, slots=True)
class DeliveryHistory:
    delivery: DeliveryRow
    attempts: list[AttemptRow]


def _bad(message: str) -> RegistryError:
    return RegistryError(ErrorCode.BAD_REQUEST, message)


def _stored(spec: WebhookEndpointConfig, secret: str) -> NewEndpoint:
    return NewEndpoint(
        spec.namespace or None,
        spec.url,
        secret,
        list(dict.fromkeys(spec.events)),
        spec.repository_pattern,
        list(dict.fromkeys(spec.media_types)),
        spec.format,
        spec.enabled,
    )


class WebhookEndpoints:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.index

    async def add(self, spec: WebhookEndpointConfig) -> tuple[EndpointRow, str]:
        """Store an endpoint; returns it with its secret (generated when none is given),
        which is never shown again."""
        try:
            validate_webhook(spec)
            secret = spec.resolved_secret() or secrets.token_urlsafe(32)
        except (ConfigError, OSError) as exc:
            raise _bad(str(exc)) from None
        if len(await self.index.webhooks.endpoints()) >= MAX_ENDPOINTS:
            raise RegistryError(ErrorCode.DENIED, f"at most {MAX_ENDPOINTS} webhook endpoints")
        endpoint_id = await self.index.webhooks.add_endpoint(_stored(spec, secret), time.time())
        return await self.get(endpoint_id), secret

    async def sync_config(self, configured: list[WebhookEndpointConfig]) -> None:
        """Store the config file's ``[[webhook]]`` endpoints (validated at load) as they
        are now; those removed from the file go, with their queue and history."""
        await self.index.webhooks.sync_config(
            [_stored(c, c.resolved_secret()) for c in configured], time.time()
        )

    async def all(self) -> list[EndpointRow]:
        return await self.index.webhooks.endpoints()

    async def get(self, endpoint_id: int) -> EndpointRow:
        endpoint = await self.index.webhooks.endpoint(endpoint_id)
        if endpoint is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no webhook endpoint {endpoint_id}")
        return endpoint

    async def _changeable(self, endpoint_id: int) -> None:
        if (await self.get(endpoint_id)).source == "config":
            raise RegistryError(
                ErrorCode.DENIED,
                f"webhook endpoint {endpoint_id} is defined in the config file; change it there",
            )

    async def remove(self, endpoint_id: int) -> None:
        """Forget an endpoint, its queued deliveries and their history."""
        await self._changeable(endpoint_id)
        if not await self.index.webhooks.remove_endpoint(endpoint_id):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no webhook endpoint {endpoint_id}")

    async def set_enabled(self, endpoint_id: int, enabled: bool) -> EndpointRow:
        """Pause or resume an endpoint: while paused nothing is queued or sent to it."""
        await self._changeable(endpoint_id)
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
        attempts = await self.index.webhooks.attempts([d.id for d in rows])
        return [DeliveryHistory(d, attempts[d.id]) for d in rows]

    async def delivery(self, delivery_id: int) -> DeliveryHistory:
        row = await self.index.webhooks.delivery(delivery_id)
        if row is None:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no webhook delivery {delivery_id}")
        return DeliveryHistory(
            row, (await self.index.webhooks.attempts([delivery_id]))[delivery_id]
        )

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
