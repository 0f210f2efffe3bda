"""Log output as plain lines or as one JSON object per line (``[log] format``).

JSON is for log shippers: every record becomes an object with its time, level,
logger, message and the request and upload ids of the request that caused it;
a request's access line adds the fields its ``access`` extra carries (method,
route, status, bytes, duration, user, repository).
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import msgspec

from aioreg import logcontext

ACCESS_FIELD = "access"  # the ``extra`` key an access line's fields travel under


def effective(fmt: str) -> str:
    """``plain`` or ``json``: ``auto`` is plain on a terminal, JSON otherwise."""
    if fmt == "auto":
        return "plain" if sys.stderr.isatty() else "json"
    return fmt


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if logcontext.worker is not None:  # which of ``server.workers`` logged it
            entry["worker"] = logcontext.worker
        # Inside a request, the ids the record factory copied (see logcontext.install).
        for key in ("request_id", "upload_id"):
            if (value := getattr(record, key, None)) is not None:
                entry[key] = value
        fields = getattr(record, ACCESS_FIELD, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def install(fmt: str) -> None:
    """Give the root logger's handlers the formatter ``fmt`` (``plain``, ``json``, ``auto``)."""
    formatter = (
        JsonFormatter() if effective(fmt) == "json" else logging.Formatter(logcontext.LOG_FORMAT)
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
