"""Request and upload ids on every log line a request causes.

The ids live in context variables, set by the API layer for the duration of
a request; a log record factory copies them onto each record so the format
can show them without every call site passing them along.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
upload_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("upload_id", default=None)

# What a client may send as X-Request-Id: anything else is replaced by our own.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


def new_request_id(offered: str | None) -> str:
    """The client's id when it is a sane token, else a fresh one."""
    if offered is not None and REQUEST_ID_RE.fullmatch(offered):
        return offered
    return os.urandom(16).hex()  # uuid4().hex's 32 hex digits, at a seventh of its cost


def sane_upload_id(value: str | None) -> str | None:
    """An upload id from a URL, when it has the shape of one (never arbitrary client text)."""
    return value if value is not None and UPLOAD_ID_RE.fullmatch(value) else None


# "w<n>" in a worker process of ``server.workers`` > 1: which worker logged a line.
worker: str | None = None


def context_suffix() -> str:
    parts = [] if worker is None else [worker]
    if (rid := request_id.get()) is not None:
        parts.append(f"req={rid}")
    if (uid := upload_id.get()) is not None:
        parts.append(f"upload={uid}")
    return f" [{' '.join(parts)}]" if parts else ""


def install() -> None:
    """Give every log record a ``context`` attribute (empty outside a request), and the
    ids themselves as ``request_id`` and ``upload_id`` (None outside one)."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.context = context_suffix()
        record.request_id = request_id.get()
        record.upload_id = upload_id.get()
        return record

    logging.setLogRecordFactory(factory)
