"""Versioned schema: ``NNNN_name.sql`` files, each run once, in order, in one transaction.

The number is the schema version the file brings the index to; an index at
version ``n`` runs the files numbered above ``n``. Files are never edited once
released: a change is a new file.
"""

from __future__ import annotations

import importlib.resources
import re
import sqlite3
from collections.abc import Iterator

_NAME = re.compile(r"(\d{4})_\w+\.sql")


def _load() -> list[str]:
    """The migration scripts in version order; the numbering must run 1, 2, 3... unbroken."""
    found: dict[int, str] = {}
    for entry in importlib.resources.files(__name__).iterdir():
        match = _NAME.fullmatch(entry.name)
        if match is not None:
            version = int(match.group(1))
            if version in found:
                raise RuntimeError(f"two migrations are numbered {version}")
            found[version] = entry.read_text(encoding="utf-8")
    if sorted(found) != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration numbers are not 1..n: {sorted(found)}")
    return [found[v] for v in sorted(found)]


MIGRATIONS: list[str] = _load()


def statements(script: str) -> Iterator[str]:
    """A migration's statements one by one; a trigger body's ``;`` does not end its CREATE."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending.strip()
            pending = ""
    if pending.strip(" \n;"):
        yield pending.strip()
