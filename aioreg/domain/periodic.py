"""One helper for every background job that runs on a schedule.

A scheduled job must never die of one bad run (a file vanishing mid-walk, a
busy index): the failure is logged and the next run tries again. ``start`` and
``stop`` tie the job to its owner's open and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("aioreg.periodic")


class PeriodicJob:
    """Run ``job`` every ``interval`` seconds (never, if ``interval <= 0``) until stopped."""

    def __init__(
        self,
        name: str,
        interval: float,
        job: Callable[[], Awaitable[object]],
        *,
        log_result: bool = False,
    ) -> None:
        self.name = name
        self.interval = interval
        self._job = job
        self._log_result = log_result
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._forever(), name=f"periodic {self.name}")

    async def stop(self) -> None:
        """Cancel the job, waiting for a run in progress to unwind."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                result = await self._job()
            except Exception:
                log.exception("%s failed; the next run is in %gs", self.name, self.interval)
            else:
                if self._log_result:
                    log.info("%s: %s", self.name, result)
