"""Proxy definitions managed through ``/api/v1`` and ``aioreg proxy``.

Proxies of the config file are listed (source ``config``) but only the file
changes them; others are stored in the index, where a running server picks
them up (``aioreg.proxy.service.Proxies.reload``). Credentials are write-only:
listings say whether a password is set, never what or where it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from aioreg.config import ConfigError, ProxyConfig, validate_proxy
from aioreg.domain.registry import Registry
from aioreg.domain.repositories import Repositories
from aioreg.errors import ErrorCode, RegistryError

Source = Literal["config", "api"]


@dataclass(frozen=True, slots=True)
class ProxyDefinition:
    """One proxy and where it is defined."""

    config: ProxyConfig
    source: Source

    @property
    def password_set(self) -> bool:
        c = self.config
        return bool(c.password or c.password_env or c.password_file)


class ProxyDefinitions:
    def __init__(self, registry: Registry, repositories: Repositories) -> None:
        self.registry = registry
        self.repositories = repositories

    async def all(self) -> list[ProxyDefinition]:
        """The config file's proxies first, then the stored ones its namespaces do not shadow."""
        configured = self.registry.config.proxy
        taken = {c.namespace for c in configured}
        stored = [p for p in await self.registry.index.proxies.all() if p.namespace not in taken]
        return [ProxyDefinition(c, "config") for c in configured] + [
            ProxyDefinition(c, "api") for c in stored
        ]

    async def get(self, namespace: str) -> ProxyDefinition:
        for definition in await self.all():
            if definition.config.namespace == namespace:
                return definition
        raise RegistryError(ErrorCode.NAME_UNKNOWN, f"{namespace} is not a proxy namespace")

    async def add(self, proxy: ProxyConfig) -> ProxyDefinition:
        """Store a new proxy; its namespace must be free (no proxy, no hosted repository)."""
        try:
            validate_proxy(proxy)
        except ConfigError as exc:
            raise RegistryError(ErrorCode.BAD_REQUEST, str(exc)) from None
        if any(d.config.namespace == proxy.namespace for d in await self.all()):
            raise RegistryError(ErrorCode.DENIED, f"namespace {proxy.namespace} is already a proxy")
        hosted = await self.registry.index.repositories.in_namespace(proxy.namespace)
        if hosted:
            raise RegistryError(
                ErrorCode.DENIED,
                f"namespace {proxy.namespace} holds {len(hosted)} hosted repositories; "
                "a proxy needs a namespace of its own",
            )
        if not await self.registry.index.proxies.add(proxy, time.time()):
            raise RegistryError(ErrorCode.DENIED, f"namespace {proxy.namespace} is already a proxy")
        return ProxyDefinition(proxy, "api")

    async def remove(self, namespace: str, actor: str | None = None) -> list[str]:
        """Forget a stored proxy and purge its cache; the cached repositories removed.

        The cache goes with the proxy: left behind, it would turn into hosted
        repositories of a namespace now free for pushes. GC frees the blobs.
        """
        definition = await self.get(namespace)
        if definition.source == "config":
            raise RegistryError(
                ErrorCode.DENIED,
                f"proxy {namespace} is defined in the config file; remove it there",
            )
        # Purged first, so a refusal (an immutable tag) leaves the proxy as it was, and
        # again after: what a server filled meanwhile goes too.
        purged = await self.repositories.delete_namespace(namespace, actor)
        if not await self.registry.index.proxies.remove(namespace):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"{namespace} is not a proxy namespace")
        late = await self.repositories.delete_namespace(namespace, actor)
        return sorted({*purged, *late})

    async def purge(self, namespace: str, actor: str | None = None) -> list[str]:
        """Remove the proxy's cached repositories; GC then frees their blobs."""
        await self.get(namespace)
        return await self.repositories.delete_namespace(namespace, actor)
