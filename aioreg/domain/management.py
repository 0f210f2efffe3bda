"""The operations behind /api/v1 and the CLI, one object per noun.

Both hold one ``Management`` built over a ``Registry``; each operation lives on
its noun: ``listings``, ``repositories``, ``gc``, ``retention``, ``proxies``,
``activity`` (pull statistics, the activity feed), ``webhooks``.
"""

from __future__ import annotations

from aioreg.domain.activity import Activity
from aioreg.domain.gc import GarbageCollector
from aioreg.domain.listings import Listings
from aioreg.domain.proxies import ProxyDefinitions
from aioreg.domain.registry import Registry
from aioreg.domain.repositories import Repositories
from aioreg.domain.retention import Retention
from aioreg.events.endpoints import WebhookEndpoints


class Management:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.listings = Listings(registry)
        self.repositories = Repositories(registry)
        self.gc = GarbageCollector(registry)
        self.retention = Retention(registry)
        self.proxies = ProxyDefinitions(registry, self.repositories)
        self.activity = Activity(registry)
        self.webhooks = WebhookEndpoints(registry)
