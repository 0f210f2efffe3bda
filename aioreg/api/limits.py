"""Per-client request rate and a registry-wide cap on concurrent uploads."""

from __future__ import annotations

import time
from collections import OrderedDict

from aiohttp import web

from aioreg.api.errors import Handler
from aioreg.config import LimitsConfig
from aioreg.errors import TooManyRequestsError

UPLOAD_METHODS = frozenset({"POST", "PATCH", "PUT"})
TRACKED_CLIENTS = 65536


class TokenBucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class Limiter:
    def __init__(self, limits: LimitsConfig) -> None:
        self.rate = limits.requests_per_second
        self.burst = float(max(limits.request_burst, 1))
        self.max_uploads = limits.max_concurrent_uploads
        self.uploads = 0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _take(self, client: str) -> float:
        """Spend a token for ``client``; returns 0, or the seconds until one is free."""
        now = time.monotonic()
        bucket = self._buckets.pop(client, None) or TokenBucket(self.burst, now)
        self._buckets[client] = bucket  # most recently used last
        if len(self._buckets) > TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.rate > 0:
            wait = self._take(request.remote or "unknown")
            if wait > 0:
                raise TooManyRequestsError(
                    f"more than {self.rate:g} requests per second from {request.remote}", wait
                )
        is_upload = request.method in UPLOAD_METHODS and "/blobs/uploads" in request.path
        if not is_upload or self.max_uploads <= 0:
            return await handler(request)
        if self.uploads >= self.max_uploads:
            raise TooManyRequestsError(
                f"{self.uploads} uploads are in progress, the most this registry takes at once",
                1.0,
            )
        self.uploads += 1
        try:
            return await handler(request)
        finally:
            self.uploads -= 1
