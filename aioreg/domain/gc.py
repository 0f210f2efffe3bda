"""Online garbage collection: mark and sweep while pushes and pulls go on.

Swept blob files go to a per-run trash directory inside the sweep's index
transaction and are deleted after it commits; ``aioreg.domain.trash`` settles
what a killed sweep leaves there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aioreg.domain.reference import Digest
from aioreg.domain.registry import Registry
from aioreg.domain.trash import recover_trash
from aioreg.index import Event, GcResult

log = logging.getLogger("aioreg.gc")


@dataclass
class GcReport:
    dry_run: bool
    manifests: list[tuple[str, str]] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    uploads_expired: int = 0
    seconds: float = 0.0
    held: bool = False  # a backup held sweeps off: nothing was removed


# Told of each run: its report (None when it failed) and how long it took, in seconds.
GcObserver = Callable[[GcReport | None, float], None]


class GarbageCollector:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.index
        self._lock = asyncio.Lock()
        self.observers: list[GcObserver] = []  # metrics listen here, the domain knows none

    async def run(self, *, dry_run: bool = False, untagged: bool | None = None) -> GcReport:
        """Mark and sweep while pushes and pulls go on; observers hear of every run."""
        started = time.monotonic()
        try:
            report = await self._run(dry_run, untagged)
        except Exception:
            for observe in self.observers:
                observe(None, time.monotonic() - started)
            raise
        for observe in self.observers:
            observe(report, report.seconds)
        return report

    async def _run(self, dry_run: bool, untagged: bool | None) -> GcReport:
        """Mark and sweep while pushes and pulls go on; see ``Index.collect_garbage``."""
        config = self.registry.config.gc
        untagged = config.delete_untagged if untagged is None else untagged
        started = time.monotonic()
        store = self.registry.store
        async with self._lock:
            with store.sweep_guard() as free:
                if not free and not dry_run:
                    # A backup is copying the blobs its snapshot names: remove nothing now.
                    log.info("gc: a backup or an import holds sweeps off; nothing removed this run")
                    return GcReport(dry_run, held=True, seconds=time.monotonic() - started)
                result, expired = await self._sweep(config.grace_period, untagged, dry_run)
        report = GcReport(
            dry_run=dry_run,
            manifests=result.manifests,
            blobs=len(result.blobs),
            bytes=sum(size for _, size in result.blobs),
            uploads_expired=expired,
            seconds=time.monotonic() - started,
        )
        if not dry_run and (report.blobs or report.manifests):
            self.index.activity.note_event(
                Event(
                    time.time(),
                    "gc",
                    "",
                    None,
                    None,
                    "gc",
                    f"{report.blobs} blobs, {report.bytes} bytes",
                )
            )
        return report

    async def _sweep(self, grace: float, untagged: bool, dry_run: bool) -> tuple[GcResult, int]:
        """Mark, sweep and clean up after it: (what the sweep removed, expired uploads)."""
        store = self.registry.store
        await recover_trash(self.index, store)  # what a killed sweep left, first
        run = store.trash_run()
        try:
            result = await self.index.gc.collect(
                grace,
                untagged,
                dry_run,
                lambda digest: store.trash(Digest.parse(digest), run),
            )
        except BaseException:
            # The sweep rolled back: its files go back where they were.
            await recover_trash(self.index, store)
            raise
        # The sweep has committed: cleaning up after it must not turn its answer into a 500.
        expired = 0
        try:
            await asyncio.to_thread(store.empty_trash, run)
            if not dry_run:
                expired = await self.registry.uploads.expire()
        except Exception:
            log.exception("gc: cleanup after the sweep failed; the next run retries it")
        return result, expired
