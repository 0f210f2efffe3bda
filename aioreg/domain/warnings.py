"""Things a client should hear about without its request failing.

Any code serving a request (the domain, access control, a future proxy serving
stale content) calls ``warn(message)``; the API collects what one request
gathered and renders it as the distribution-spec's ``Warning: 299 - "..."``
headers (aioreg/api/warnings.py). Outside a request, ``warn`` does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_collected: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "aioreg_warnings", default=None
)


def warn(message: str) -> None:
    """Tell the client of the request being served; the same message is said once."""
    collected = _collected.get()
    if collected is not None and message not in collected:
        collected.append(message)


@contextlib.contextmanager
def collecting() -> Iterator[list[str]]:
    """Gather the warnings of the code run inside, in the order they were given."""
    collected: list[str] = []
    token = _collected.set(collected)
    try:
        yield collected
    finally:
        _collected.reset(token)
